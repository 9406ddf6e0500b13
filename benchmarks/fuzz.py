"""`make fuzz`: schemathesis (`--checks all`) over the whole OpenAPI of a real `genserve serve` (issue 15).

Starts `genserve serve` on free ports of 127.0.0.1 over the model store (default models/, all 20 models; `--only`
serves a reduced copy of it, made of links), runs the schemathesis CLI of this venv against its /openapi.json,
always stops the server, then prints the command, the number of cases, the failures by check, the server's own
count of answers by status (from /metrics) and whether it is still ready. Exits non-zero when any answer was a
5xx, when any check that is not excluded below failed, when fewer than --min-cases cases ran, when the run hit its
wall-clock limit, or when the server did not survive.

    .venv/bin/python benchmarks/fuzz.py [--max-examples 250] [--min-cases 5000] [--max-time 900] [--out fuzz.md]
    .venv/bin/python benchmarks/fuzz.py --only pixelcnn,charrnn --max-examples 5 --min-cases 0   # quick

The same file is the schemathesis hooks module (SCHEMATHESIS_HOOKS=fuzz): half the generated model names are
models the server holds (from /v1/models and /v2/repository/index), so cases get past the 404 of an unknown model.
"""

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import REPO, free_port, reduced_store, revision, start_server, stop, wait_ready

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120.0
NAMES_ENV = "GENSERVE_FUZZ_NAMES"  # JSON {"v1": [...], "v2": [...]}, set by main() for the hooks

# Checks of `--checks all` that cannot apply to this API, each with its reason. Every other check stays on.
EXCLUDED_CHECKS = {
    # Whether a schema-valid body is acceptable depends on the model named in the path: its capabilities (a GAN
    # has no stream, an image model no prompt), its data (shape, levels, vocabulary of every input), and options
    # that only some procedures take (steps: Markov chains; k/method: latent models). One OpenAPI schema per
    # operation cannot say that, so a body valid by the schema is often, rightly, a 400/422.
    "positive_data_acceptance": "validity depends on the model in the path (capabilities, data shape, "
                                "per-procedure options), which one schema per operation cannot express",
}

# --- hooks (imported by schemathesis through SCHEMATHESIS_HOOKS) ----------------------------------------------------

if NAMES_ENV in os.environ and __name__ != "__main__":
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis.core import NOT_SET

    _NAMES = json.loads(os.environ[NAMES_ENV])
    _KNOWN = {"name": _NAMES["v1"], "model": _NAMES["v1"], "model_name": _NAMES["v2"]}

    def _known(value, keys):
        """A strategy replacing, in the dict `value`, each key in `keys` by a name the server holds."""
        if not isinstance(value, dict):
            return st.just(value)
        present = [k for k in keys if k in value and _KNOWN.get(k)]
        if not present:
            return st.just(value)
        return st.fixed_dictionaries({k: st.sampled_from(_KNOWN[k]) for k in present}).map(
            lambda names: {**value, **names})

    @schemathesis.hook
    def before_generate_path_parameters(_context, strategy):
        """Half the time, models that exist (and version "1"): otherwise nearly every case would stop at 404."""
        known = strategy.flatmap(lambda p: _known(p, ("name", "model_name"))).map(
            lambda p: {**p, "model_version": "1"} if isinstance(p, dict) and "model_version" in p else p)
        return st.one_of(strategy, known)

    @schemathesis.hook
    def before_generate_body(_context, strategy):
        """Likewise for the "model" field of POST /score."""
        return st.one_of(strategy, strategy.flatmap(lambda body: _known(body, ("model",))))

    # V2 infer's OpenAPI declares no request body (it is the Open Inference Protocol's InferenceRequest), so without
    # this hook its cases would carry none. Bodies are drawn after the model's metadata: the right input names and
    # datatypes most of the time, shapes of 0..3 for each -1 (sometimes off by some), values of the datatype
    # (sometimes extreme or of another type) and data lengths that sometimes do not match the shape.
    _V2_TYPES = ["FP32", "FP64", "INT64", "INT32", "UINT8", "BOOL", "BYTES", "FP16"]

    def _values(datatype):
        if datatype.startswith("FP"):
            return st.one_of(st.floats(-4, 4, width=32), st.floats(allow_nan=False, allow_infinity=False))
        if datatype == "BOOL":
            return st.booleans()
        if datatype == "BYTES":
            return st.text(max_size=8)
        return st.one_of(st.integers(0, 3), st.integers(-2**63, 2**63 - 1), st.integers(2**63, 2**70))

    def _tensor(spec):
        dims = [st.integers(0, 3) if d < 0 else st.one_of(st.just(d), st.just(d), st.integers(0, 2 * d + 1))
                for d in spec["shape"]]
        datatype = st.one_of(st.just(spec["datatype"]), st.just(spec["datatype"]), st.sampled_from(_V2_TYPES))
        name = st.one_of(st.just(spec["name"]), st.just(spec["name"]), st.text(max_size=6))

        def filled(shape, dtype, tensor_name):
            size = 1
            for d in shape:
                size *= d
            length = st.one_of(st.just(size), st.just(size), st.integers(0, size + 2))
            return st.tuples(length, st.lists(_values(dtype), min_size=1, max_size=6)).map(
                lambda lv: {"name": tensor_name, "datatype": dtype, "shape": list(shape),
                            "data": (lv[1] * (lv[0] // len(lv[1]) + 1))[:lv[0]]})

        return st.tuples(st.tuples(*dims), datatype, name).flatmap(lambda t: filled(*t))

    def _infer_body(model_name):
        inputs = _NAMES["v2_inputs"].get(model_name) or [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        tensors = st.tuples(*(_tensor(spec) for spec in inputs)).map(list)
        tensors = st.one_of(tensors, tensors, tensors, tensors.map(lambda t: t[:-1]), tensors.map(lambda t: t * 2))
        return st.fixed_dictionaries({"inputs": tensors}, optional={"id": st.text(max_size=4),
                                                                    "parameters": st.just({})})

    @schemathesis.hook
    def flatmap_case(context, case):
        """A V2 InferenceRequest body for /v2/models/{model_name}[/versions/{v}]/infer."""
        if not context.operation or not context.operation.path.endswith("/infer") or case.body is not NOT_SET:
            return st.just(case)
        name = (case.path_parameters or {}).get("model_name")

        def with_body(body):
            case.body, case.media_type = body, "application/json"
            return case

        return _infer_body(name).map(with_body)


# --- the wrapper ----------------------------------------------------------------------------------------------------


def get(url: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, str]:
    import httpx

    response = httpx.request(method, url, timeout=timeout)
    return response.status_code, response.text


def answers_by_status(base: str) -> dict[tuple[str, str], float]:
    """genserve_http_requests_total by (endpoint, status code), summed over models."""
    counts: dict[tuple[str, str], float] = {}
    for line in get(f"{base}/metrics")[1].splitlines():
        if line.startswith("genserve_http_requests_total{"):
            series, _, value = line.rpartition(" ")
            code = series.split('code="', 1)[1].split('"', 1)[0]
            endpoint = series.split('endpoint="', 1)[1].split('"', 1)[0]
            counts[endpoint, code] = counts.get((endpoint, code), 0.0) + float(value)
    return counts


def known_names(base: str) -> dict[str, list[str]]:
    v1 = [m["name"] for m in json.loads(get(f"{base}/v1/models")[1])["models"]]
    v2 = [m["name"] for m in json.loads(get(f"{base}/v2/repository/index", "POST")[1])]
    inputs = {name: json.loads(get(f"{base}/v2/models/{name}")[1])["inputs"] for name in v2}
    return {"v1": sorted(v1), "v2": sorted(v2), "v2_inputs": inputs}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=REPO / "models", help="the model store")
    p.add_argument("--only", default="", help="comma-separated models: serve a reduced store of just these")
    p.add_argument("--max-examples", type=int, default=250, help="schemathesis cases per operation and phase")
    p.add_argument("--min-cases", type=int, default=5000, help="fail if fewer cases ran")
    p.add_argument("--max-time", type=float, default=900.0, help="wall-clock limit of the schemathesis run, s")
    p.add_argument("--request-timeout", type=float, default=70.0, help="per request, s (> the server's deadline)")
    # one schemathesis worker: with two threads, hypothesis's lambda descriptions call ast.parse concurrently, which
    # on CPython 3.11 can fail ("SystemError: AST constructor recursion depth mismatch"), a schemathesis error that
    # failed one CI run of make test (2026-12-07) with no server error found
    p.add_argument("--workers", default="1")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--server-errors-only", action="store_true",
                   help="fail only on 5xx (and crashes), not on other checks' findings")
    p.add_argument("--out", type=Path, help="also write the printed report (markdown) here")
    p.add_argument("--keep", type=Path, help="copy schemathesis' reports and the server log into this folder")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    args.revision = revision()
    work = Path(tempfile.mkdtemp(prefix="genserve-fuzz-"))
    try:
        return fuzz(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fuzz(args: argparse.Namespace, work: Path) -> int:
    started = time.monotonic()
    store = reduced_store(args.models, args.only.split(","), work) if args.only else args.models
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    process = start_server(store, port, grpc_port, log)
    try:
        wait_ready(process, base, log, START_TIMEOUT_S)
        ready_s = time.monotonic() - started
        names = known_names(base)
        before = answers_by_status(base)
        report_dir = work / "report"
        st_cmd = ["timeout", "--kill-after=10", f"{args.max_time:.0f}", str(VENV_BIN / "schemathesis"), "run",
                  f"{base}/openapi.json", "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
                  "--max-examples", str(args.max_examples), "--seed", str(args.seed), "--workers", args.workers,
                  "--generation-database", "none", "--suppress-health-check", "all",
                  "--continue-on-failure",  # a finding must not end an operation's cases early
                  "--request-timeout", str(args.request_timeout), "--report", "json",
                  "--report-dir", str(report_dir), "--no-color"]
        path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
        env = os.environ | {"SCHEMATHESIS_HOOKS": "fuzz", NAMES_ENV: json.dumps(names), "PYTHONPATH": path}
        print(f"$ SCHEMATHESIS_HOOKS=fuzz PYTHONPATH=benchmarks {shlex.join(st_cmd)}", flush=True)
        t0 = time.monotonic()
        st = subprocess.run(st_cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        run_s = time.monotonic() - t0
        alive = process.poll() is None
        ready = alive and get(f"{base}/readyz")[0] == 200
        after = answers_by_status(base) if alive else {}
    finally:
        stop(process)
    reports = sorted(glob.glob(str(work / "report" / "json-*.json")))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for f in [*reports, str(log)]:
            shutil.copy(f, args.keep)
        (args.keep / "schemathesis.out").write_text(st.stdout + st.stderr)
    timed_out = st.returncode in (124, 137)
    if not reports:
        print(st.stdout[-6000:], st.stderr[-3000:], sep="\n")
        print(f"fuzz: schemathesis wrote no report (exit {st.returncode}{', timed out' if timed_out else ''})")
        return 1
    report = json.loads(Path(reports[-1]).read_text())
    return summarize(args, report, st, names, before, after, alive and ready, timed_out, ready_s, run_s,
                     time.monotonic() - started, log)


def summarize(args, report, st, names, before, after, ready, timed_out, ready_s, run_s, total_s, log) -> int:
    cases = report["test_cases"]["generated"]
    failures = report["failures"]
    server_failures = sum(f["count"] for f in failures if f["type"] in ("ServerError", "ContentTypeServerError"))
    delta = {key: int(after.get(key, 0) - before.get(key, 0)) for key in sorted(set(after) | set(before))}
    by_code: dict[str, int] = {}
    by_endpoint: dict[str, dict[str, int]] = {}
    for (endpoint, code), n in delta.items():
        if n:
            by_code[code] = by_code.get(code, 0) + n
            row = by_endpoint.setdefault(endpoint, {})
            row[code[0] + "xx"] = row.get(code[0] + "xx", 0) + n
    answered_5xx = sum(n for code, n in by_code.items() if code.startswith("5"))
    tracebacks = log.read_text(errors="replace").count("Traceback")
    lines = ["# `make fuzz`: schemathesis `--checks all` over a real `genserve serve`", "",
             f"- run: {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC (end), {os.cpu_count()} cores, "
             f"revision {args.revision}",
             f"- store: {args.models}" + (f" (only {args.only})" if args.only else "")
             + f"; {len(names['v1'])} models, {len(names['v2'])} V2 models; server ready in {ready_s:.1f} s",
             f"- schemathesis {report['schemathesis_version']}: `{report['command']}`",
             "- excluded checks: " + "; ".join(f"`{c}` ({why})" for c, why in EXCLUDED_CHECKS.items()),
             f"- cases: **{cases}** generated ({report['test_cases']['with_failures']} with failures) over "
             f"{report['operations']['tested']}/{report['operations']['total']} operations in {run_s:.0f} s "
             f"(all in {total_s:.0f} s); stop reason: {report['stop_reason']}"
             + (" (**hit the wall-clock limit**)" if timed_out else ""),
             "- phases: " + ", ".join(f"{k} {v['status']}" for k, v in report["phases"].items()),
             f"- server errors: **{server_failures}** found by schemathesis; the server's own count of 5xx "
             f"answers (`genserve_http_requests_total`): **{answered_5xx}**; tracebacks in its log: {tracebacks}",
             f"- server still ready after the run: {'yes' if ready else '**no**'}", "",
             "Answers by status, from the server's /metrics (this run only):", "",
             table(["status", "answers"], [[c, n] for c, n in sorted(by_code.items())]), "",
             "By endpoint (the server's route label; `unmatched`: no route):", "",
             table(["endpoint", "2xx", "4xx", "5xx"], [[e, r.get("2xx", 0), r.get("4xx", 0), r.get("5xx", 0)]
                                                       for e, r in sorted(by_endpoint.items())]), "",
             "Failures by check:", ""]
    if failures:
        lines.append(table(["code", "failure", "unique failures", "operations"],
                           [[f["code"], f["title"], f["count"], "<br>".join(f["operations"])] for f in failures]))
    else:
        lines.append("none")
    if report.get("errors"):
        lines += ["", "Errors (schemathesis could not run a case):", "",
                  table(["error", "operations"], [[e.get("title", e), e.get("operations", "")]
                                                   for e in report["errors"]])]
    text = "\n".join(lines) + "\n"
    print(text)
    if failures or report.get("errors"):
        print("schemathesis output (tail):\n" + st.stdout[-12000:])
    if args.out:
        args.out.write_text(text)
    problems = []
    if server_failures or answered_5xx or tracebacks:
        problems.append(f"{max(server_failures, answered_5xx)} server errors, {tracebacks} tracebacks")
    if failures and not args.server_errors_only:
        problems.append(f"{sum(f['count'] for f in failures)} failures of checks not excluded")
    if cases < args.min_cases:
        problems.append(f"{cases} cases < --min-cases {args.min_cases}")
    if timed_out:
        problems.append(f"the run hit its {args.max_time:.0f} s limit")
    if not ready:
        problems.append("the server did not survive")
    if report.get("errors"):
        problems.append(f"{len(report['errors'])} schemathesis errors")
    print("fuzz: " + ("FAIL: " + "; ".join(problems) if problems else "OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(run(parse_args()))
