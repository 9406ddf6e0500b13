"""benchmarks/grpc_fuzz.py in small: hypothesis requests for every unary gRPC method of a real `genserve serve`
(genserve.v1 and the V2 service) answer no INTERNAL, UNKNOWN or DEADLINE_EXCEEDED, and the server stays SERVING.

Over a reduced copy of the shipped store (one model per kind of procedure, as tests/e2e/test_fuzz_server.py);
the wrapper starts and always stops the server and exits non-zero on any such status or a server log traceback.
About 10 s on 2 cores.
"""

import re
import subprocess
import sys

from tests.e2e.test_server import REPO

MODELS = "pixelcnn,charrnn,vae,gan,rbm,realnvp"
MAX_CASES = 400
MAX_TIME_S = 90


def test_grpc_fuzz_finds_no_server_error_on_a_real_server():
    command = [sys.executable, str(REPO / "benchmarks" / "grpc_fuzz.py"), "--only", MODELS,
               "--max-cases", str(MAX_CASES), "--max-time", str(MAX_TIME_S)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=MAX_TIME_S + 120,
                          stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    cases = int(re.search(r"cases: \*\*(\d+)\*\*", out).group(1))
    assert cases >= MAX_CASES // 2, out[-4000:]  # the time limit did not cut the run short
    assert "INTERNAL / UNKNOWN / DEADLINE_EXCEEDED: **0**; tracebacks in the server's log: 0" in out, out[-4000:]
    assert "health SERVING afterwards: yes" in out, out[-4000:]
