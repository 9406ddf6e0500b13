"""`make fuzz` in small (issue 15): schemathesis `--checks all` over a real `genserve serve`, never a 5xx.

Runs benchmarks/fuzz.py, the wrapper `make fuzz` uses, with a small case budget over a reduced copy of the shipped
store (one model per kind of procedure: autoregressive image and text, latent, implicit, Markov chain, flow). The
wrapper starts and always stops the server, and exits non-zero on any 5xx (schemathesis' check or the server's
own count in /metrics), a traceback in the server's log, a server that is not ready afterwards, too few cases or a
run past its wall-clock limit. Findings of other checks are printed, not failed on, here: `make fuzz` fails on them.
About a minute on 2 cores.
"""

import re
import subprocess
import sys

from tests.e2e.test_server import REPO

MODELS = "pixelcnn,charrnn,vae,gan,rbm,realnvp"
MAX_EXAMPLES = 8  # per operation and phase: about 1,500 cases
MIN_CASES = 500
MAX_TIME_S = 150


def test_schemathesis_finds_no_server_error_on_a_real_server():
    command = [sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--only", MODELS,
               "--max-examples", str(MAX_EXAMPLES), "--min-cases", str(MIN_CASES), "--max-time", str(MAX_TIME_S),
               "--server-errors-only"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=MAX_TIME_S + 120,
                          stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    cases = int(re.search(r"cases: \*\*(\d+)\*\*", out).group(1))
    assert cases >= MIN_CASES, out[-4000:]
    assert re.search(r"server errors: \*\*0\*\* found by schemathesis", out), out[-4000:]
    assert re.search(r"5xx answers \(`genserve_http_requests_total`\): \*\*0\*\*", out), out[-4000:]
    assert "server still ready after the run: yes" in out, out[-4000:]
