"""`make soak`: mixed traffic against a real `genserve serve` for --minutes, with the engine worker SIGKILLed twice.

Starts `genserve serve` on free ports of 127.0.0.1 over the model store (default models/; `--only` serves a reduced
copy of it made of links), then --clients threads each send, one at a time, requests drawn from a fixed mix:
REST sample, score and complete (pixelcnn, charrnn, vae, gan, rbm), streams (charrnn SSE text, wavenet WAV audio),
V2 infer over REST, and gRPC (Sample, Score, SampleStream, V2 ModelInfer). At 1/3 and 2/3 of the run the engine
worker (the server's multiprocessing child) gets SIGKILL. The server is always stopped at the end.

Every request must get an answer: a success or a documented error, which is
  - HTTP 503 `worker_unavailable` / `overloaded` / `draining` with Retry-After, or 504 (`deadline_exceeded`);
  - for a text stream (SSE) that had begun: an `event: error` whose code is one of those;
  - for a WAV stream that had begun: a body ending short of its declared Content-Length (README, issue 15 #5);
  - gRPC UNAVAILABLE, RESOURCE_EXHAUSTED (overloaded) or DEADLINE_EXCEEDED.
Anything else (a 500, another status, an unexpected gRPC code, a stream that stops without `done`, or a transport
error with no answer at all) is counted as undocumented / unanswered, and the script exits 1.

Prints requests sent, answered, outcomes by kind, a per-minute timeline, the worker restarts and the RSS of the API
process and the worker at start and end (the worker's pid changes after each kill).

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 8] [--kills 2] [--out benchmarks/results/soak.md]
"""

import argparse
import base64
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import wave
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np
from servers import REPO, free_port, ready, reduced_store, revision, rss_mb, start_server, stop, wait_ready, worker_pid

sys.path.insert(0, str(REPO))
from service.grpc.gen import genserve_pb2 as pb  # noqa: E402
from service.grpc.gen import genserve_pb2_grpc as pb_grpc  # noqa: E402
from service.grpc.gen_inference import grpc_predict_v2_pb2 as v2pb  # noqa: E402
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as v2grpc  # noqa: E402

START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0  # per request; the server's own deadlines and WORKER_WAIT_S are shorter
DOCUMENTED_503 = {"worker_unavailable", "overloaded", "draining"}
DOCUMENTED_GRPC = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
TEXT = "Return the number of items in a sequence."
BLANK = [[0] * 28 for _ in range(28)]
HALF_MASK = [[1] * 28 if r < 14 else [0] * 28 for r in range(28)]


# --- outcomes -----------------------------------------------------------------------------------------------------

OK, DOCUMENTED, UNDOCUMENTED, UNANSWERED = "ok", "documented error", "undocumented error", "no answer"


def http_outcome(response: httpx.Response) -> tuple[str, str]:
    """(class, label) of a complete HTTP answer."""
    status = response.status_code
    if status == 200:
        return OK, "200"
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    code = error.get("code", "") if isinstance(error, dict) else ""  # /v2 errors are {"error": "<message>"}
    label = f"http {status} {code}".strip()
    if status == 503 and response.headers.get("retry-after") and (code in DOCUMENTED_503 or not code):
        return DOCUMENTED, label
    if status == 504:
        return DOCUMENTED, label
    return UNDOCUMENTED, f"{label}: {response.text[:200]}"


def grpc_outcome(e: grpc.RpcError) -> tuple[str, str]:
    name = e.code().name
    if name in DOCUMENTED_GRPC:
        return DOCUMENTED, f"grpc {name}"
    return UNDOCUMENTED, f"grpc {name}: {e.details()[:200]}"


# --- the requests -------------------------------------------------------------------------------------------------


def post(client: httpx.Client, path: str, body: dict):
    return http_outcome(client.post(path, json=body))


def sse(client: httpx.Client, path: str, body: dict):
    with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            response.read()
            return http_outcome(response)
        event, last = None, None
        try:
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("done", "error"):
                    last = (event, json.loads(line[6:]))
        except httpx.TransportError as e:
            return UNDOCUMENTED, f"sse cut without an error event ({type(e).__name__})"
    if last and last[0] == "done":
        return OK, "200 sse done"
    if last and last[0] == "error":
        code = last[1].get("error", {}).get("code", "")
        return (DOCUMENTED if code in DOCUMENTED_503 | {"deadline_exceeded"} else UNDOCUMENTED), f"sse error {code}"
    return UNDOCUMENTED, "sse ended without done or error"


def wav_stream(client: httpx.Client, path: str, body: dict):
    with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            response.read()
            return http_outcome(response)
        declared = int(response.headers.get("content-length", -1))
        got = 0
        try:
            for chunk in response.iter_raw():
                got += len(chunk)
        except httpx.RemoteProtocolError:  # h11: the peer closed before the declared length
            return DOCUMENTED, "wav cut short of its Content-Length"
    if declared < 0:
        return UNDOCUMENTED, "wav stream without Content-Length"
    if got == declared:
        return OK, "200 wav complete"
    return DOCUMENTED, "wav cut short of its Content-Length"


def tensor(array: np.ndarray) -> pb.Tensor:
    return pb.Tensor(dtype=str(array.dtype), shape=list(array.shape), data=array.tobytes())


def grpc_call(fn, *args, stream=False):
    try:
        if stream:
            for _ in fn(*args, timeout=REQUEST_TIMEOUT_S):
                pass
        else:
            fn(*args, timeout=REQUEST_TIMEOUT_S)
    except grpc.RpcError as e:
        return grpc_outcome(e)
    return OK, "grpc OK"


def wav_bytes(seconds: float = 0.1, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.1 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(pcm.tobytes())
    return out.getvalue()


WAV = wav_bytes()


def mix(seed: int):
    """(kind, weight, fn(http client, genserve stub, v2 stub, seed) -> (class, label)) of every request kind."""
    v1 = "/v1/models"
    z = np.zeros((1, 32), np.float32)
    return [
        ("rest sample pixelcnn", 3, lambda c, g, v, s: post(c, f"{v1}/pixelcnn/sample", {"n": 2, "seed": s})),
        ("rest sample charrnn", 3, lambda c, g, v, s: post(c, f"{v1}/charrnn/sample", {"length": 48, "seed": s})),
        ("rest sample vae", 2, lambda c, g, v, s: post(c, f"{v1}/vae/sample", {"n": 4, "seed": s})),
        ("rest sample gan", 2, lambda c, g, v, s: post(c, f"{v1}/gan/sample", {"n": 4, "seed": s})),
        ("rest sample rbm", 1, lambda c, g, v, s: post(c, f"{v1}/rbm/sample", {"n": 2, "steps": 200, "seed": s})),
        ("rest score pixelcnn", 3, lambda c, g, v, s: post(c, "/score", {"model": "pixelcnn", "inputs": [BLANK]})),
        ("rest score charrnn", 3, lambda c, g, v, s: post(c, f"{v1}/charrnn/score", {"inputs": [TEXT]})),
        ("rest score vae", 2, lambda c, g, v, s: post(c, f"{v1}/vae/score", {"inputs": [BLANK], "k": 64, "seed": s})),
        ("rest score wavenet", 1, lambda c, g, v, s: post(
            c, f"{v1}/wavenet/score", {"inputs": [base64.b64encode(WAV).decode()]})),
        ("rest complete pixelcnn", 2, lambda c, g, v, s: post(
            c, f"{v1}/pixelcnn/complete", {"inputs": [BLANK], "mask": HALF_MASK, "n": 1, "seed": s})),
        ("rest complete charrnn", 2, lambda c, g, v, s: post(
            c, f"{v1}/charrnn/complete", {"inputs": ["def "], "length": 24, "seed": s})),
        ("rest stream sse charrnn", 3, lambda c, g, v, s: sse(
            c, f"{v1}/charrnn/sample/stream", {"length": 48, "seed": s})),
        ("rest stream wav wavenet", 2, lambda c, g, v, s: wav_stream(
            c, f"{v1}/wavenet/sample/stream", {"seconds": 0.25, "seed": s, "chunk_ms": 50})),
        ("rest v2 infer vae.decode", 2, lambda c, g, v, s: post(
            c, "/v2/models/vae.decode/infer",
            {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 32}]})),
        ("rest v2 infer pixelcnn.log_prob", 2, lambda c, g, v, s: post(
            c, "/v2/models/pixelcnn.log_prob/infer",
            {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 1, 28, 28], "data": [0] * 784}]})),
        ("grpc Sample pixelcnn", 2, lambda c, g, v, s: grpc_call(
            g.Sample, pb.SampleRequest(model="pixelcnn", n=1, seed=s))),
        ("grpc Score charrnn", 2, lambda c, g, v, s: grpc_call(
            g.Score, pb.ScoreRequest(model="charrnn", texts=[TEXT]))),
        ("grpc SampleStream charrnn", 2, lambda c, g, v, s: grpc_call(
            g.SampleStream, pb.SampleRequest(model="charrnn", length=32, seed=s), stream=True)),
        ("grpc ModelInfer vae.decode", 2, lambda c, g, v, s: grpc_call(
            v.ModelInfer, v2pb.ModelInferRequest(
                model_name="vae.decode", inputs=[v2pb.ModelInferRequest.InferInputTensor(
                    name="z", datatype="FP32", shape=[1, 32])], raw_input_contents=[z.tobytes()]))),
    ]


# --- the run ------------------------------------------------------------------------------------------------------


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.by_kind: dict[str, Counter] = {}
        self.labels: Counter = Counter()
        self.examples: dict[str, str] = {}

    def begin(self):
        with self.lock:
            self.sent += 1

    def end(self, kind: str, cls: str, label: str):
        with self.lock:
            self.by_kind.setdefault(kind, Counter())[cls] += 1
            key = label if cls != UNDOCUMENTED else label.split(":")[0]
            self.labels[(cls, key)] += 1
            self.examples.setdefault(key, f"{kind}: {label}")

    def totals(self) -> Counter:
        with self.lock:
            total = Counter()
            for c in self.by_kind.values():
                total.update(c)
            return total


def client_loop(i: int, base: str, grpc_target: str, kinds, weights, end: float, max_requests: int, tally: Tally):
    rng = random.Random(1000 + i)
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as http, grpc.insecure_channel(grpc_target) as ch:
        stub, v2stub = pb_grpc.GenserveStub(ch), v2grpc.GRPCInferenceServiceStub(ch)
        for _ in range(max_requests):
            if time.monotonic() >= end:
                return
            kind, _, fn = rng.choices(kinds, weights)[0]
            tally.begin()
            try:
                cls, label = fn(http, stub, v2stub, rng.randrange(2**31))
            except httpx.TransportError as e:  # no HTTP answer at all
                cls, label = UNANSWERED, f"transport {type(e).__name__}"
            except Exception as e:  # a bug of this script, or an answer it could not read: never hidden
                cls, label = UNANSWERED, f"client {type(e).__name__}: {e}"[:200]
            tally.end(kind, cls, label)


def warm_up(base: str, target: str, kinds) -> dict[str, str]:
    """Send every kind of request once, one after another (not counted); {kind: label} of those not ok."""
    failed = {}
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as http, grpc.insecure_channel(target) as ch:
        stub, v2stub = pb_grpc.GenserveStub(ch), v2grpc.GRPCInferenceServiceStub(ch)
        for kind, _, fn in kinds:
            cls, label = fn(http, stub, v2stub, 0)
            if cls != OK:
                failed[kind] = label
    return failed


def table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)])


def fmt_mb(x):
    return "-" if x is None else f"{x:.0f}"


def metric(base: str, name: str) -> float | None:
    try:
        for line in httpx.get(f"{base}/metrics", timeout=5.0).text.splitlines():
            if line.split("{")[0].split(" ")[0] == name:
                return float(line.rpartition(" ")[2])
    except httpx.TransportError:
        return None
    return None


def run(args) -> int:
    args.revision = revision()
    work = Path(tempfile.mkdtemp(prefix="genserve-soak-"))
    store = reduced_store(args.models, args.only.split(","), work) if args.only else args.models
    port, grpc_port = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    log = work / "server.log"
    process = start_server(store, port, grpc_port, log)
    tally, timeline, kills = Tally(), [], []
    try:
        wait_ready(process, base, log, START_TIMEOUT_S)
        kinds = mix(0)
        available = {m["name"] for m in httpx.get(f"{base}/v1/models").json()["models"]}
        kinds = [k for k in kinds if k[0].split()[-1].split(".")[0] in available]
        weights = [k[1] for k in kinds]
        warmup = warm_up(base, target, kinds)  # every kind once, in turn: loads the models it uses
        api_pid, first_worker = process.pid, worker_pid(process.pid)
        rss_start = (rss_mb(api_pid), first_worker, rss_mb(first_worker))
        duration = args.minutes * 60.0
        t0 = time.monotonic()
        end = t0 + duration
        threads = [threading.Thread(target=client_loop, daemon=True,
                                    args=(i, base, target, kinds, weights, end, args.max_requests, tally))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        kill_at = [t0 + duration * (j + 1) / (args.kills + 1) for j in range(args.kills)]
        next_row = t0 + args.every
        while any(t.is_alive() for t in threads):
            now = time.monotonic()
            if kill_at and now >= kill_at[0]:
                kill_at.pop(0)
                pid = worker_pid(api_pid)
                if pid:
                    rss = rss_mb(pid)
                    os.kill(pid, signal.SIGKILL)
                    kills.append({"at_s": now - t0, "pid": pid, "rss": rss, "back_s": None})
                    print(f"soak: {now - t0:.0f} s: SIGKILL worker {pid}", flush=True)
            for k in kills:
                if k["back_s"] is None and time.monotonic() - t0 > k["at_s"] + 0.5 and ready(base):
                    k["back_s"] = time.monotonic() - t0 - k["at_s"]
                    k["new_pid"] = worker_pid(api_pid)
            if now >= next_row:
                next_row += args.every
                total, wpid = tally.totals(), worker_pid(api_pid)
                row = [f"{now - t0:.0f}", tally.sent, sum(total.values()), total[OK], total[DOCUMENTED],
                       total[UNDOCUMENTED], total[UNANSWERED], fmt_mb(rss_mb(api_pid)), wpid, fmt_mb(rss_mb(wpid))]
                timeline.append(row)
                print("soak: " + " ".join(map(str, row)), flush=True)
            time.sleep(0.2)
        for t in threads:
            t.join(timeout=REQUEST_TIMEOUT_S + 10)
        wall = time.monotonic() - t0
        back = time.monotonic() + 60
        while not ready(base) and time.monotonic() < back:
            time.sleep(0.5)
        alive_ready = process.poll() is None and ready(base)
        last_worker = worker_pid(api_pid)
        rss_end = (rss_mb(api_pid), last_worker, rss_mb(last_worker))
        restarts = metric(base, "genserve_worker_restarts_total")
    finally:
        stop(process)
    log_text = log.read_text(errors="replace")
    code = report(args, tally, timeline, kills, rss_start, rss_end, api_pid, wall, alive_ready, restarts,
                  log_text.count("Traceback"), stuck=[t.name for t in threads if t.is_alive()], warmup=warmup)
    if code:
        print(f"soak: the server's log is kept in {log}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return code


def report(args, tally, timeline, kills, rss_start, rss_end, api_pid, wall, alive_ready, restarts, tracebacks,
           stuck, warmup) -> int:
    total = tally.totals()
    answered = total[OK] + total[DOCUMENTED] + total[UNDOCUMENTED]
    lines = [
        f"# `make soak`: mixed traffic for {args.minutes:g} minutes, the engine worker SIGKILLed {len(kills)} times",
        "",
        f"- run: {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC (end), {os.cpu_count()} cores, "
        f"revision {args.revision}",
        f"- command: `.venv/bin/python benchmarks/soak.py --minutes {args.minutes:g} --clients {args.clients} "
        f"--kills {args.kills}" + (f" --only {args.only}" if args.only else "") + "`",
        f"- store: {args.models}" + (f" (only {args.only})" if args.only else "")
        + f"; {args.clients} clients, one request at a time each; ran {wall:.0f} s",
        f"- requests sent: **{tally.sent}**, answered: **{answered}** ({total[OK]} ok, {total[DOCUMENTED]} "
        f"documented errors, {total[UNDOCUMENTED]} undocumented), without an answer: **{total[UNANSWERED]}**"
        + (f"; still running at the end: {len(stuck)} clients" if stuck else ""),
        f"- worker restarts (`genserve_worker_restarts_total`): {restarts}; tracebacks in the server log: "
        f"{tracebacks}; server ready at the end: {'yes' if alive_ready else '**no**'}", "",
        "RSS (MB; start: after one warm-up request of each kind, before the traffic):", "",
        table(["process", "pid at start", "RSS at start", "pid at end", "RSS at end"],
              [["API", api_pid, fmt_mb(rss_start[0]), api_pid, fmt_mb(rss_end[0])],
               ["engine worker", rss_start[1], fmt_mb(rss_start[2]), rss_end[1], fmt_mb(rss_end[2])]]), "",
        "Kills:", "",
        table(["at (s)", "worker pid", "its RSS (MB)", "ready again after (s)", "new worker pid"],
              [[f"{k['at_s']:.0f}", k["pid"], fmt_mb(k["rss"]),
                "-" if k["back_s"] is None else f"{k['back_s']:.1f}", k.get("new_pid", "-")] for k in kills]), "",
        "Outcomes:", "",
        table(["outcome", "answer", "requests"],
              [[cls, label, n] for (cls, label), n in sorted(tally.labels.items())]), "",
        "By request kind:", "",
        table(["kind", "sent", OK, DOCUMENTED, UNDOCUMENTED, UNANSWERED],
              [[kind, sum(c.values()), c[OK], c[DOCUMENTED], c[UNDOCUMENTED], c[UNANSWERED]]
               for kind, c in sorted(tally.by_kind.items())]), "",
        f"Timeline (every {args.every:g} s):", "",
        table(["t (s)", "sent", "answered+lost", OK, DOCUMENTED, UNDOCUMENTED, UNANSWERED, "API RSS",
               "worker pid", "worker RSS"], timeline),
    ]
    bad = {k: v for k, v in tally.examples.items()
           if any(cls in (UNDOCUMENTED, UNANSWERED) and key == k for cls, key in tally.labels)}
    if bad:
        lines += ["", "First example of each undocumented error or missing answer:", "",
                  *(f"- {v}" for v in bad.values())]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    problems = []
    if total[UNANSWERED] or stuck:
        problems.append(f"{total[UNANSWERED] + len(stuck)} requests without an answer")
    if total[UNDOCUMENTED]:
        problems.append(f"{total[UNDOCUMENTED]} undocumented errors")
    if len(kills) < args.kills or any(k["back_s"] is None for k in kills):
        problems.append("a planned kill did not happen or the worker did not come back")
    if warmup:
        problems.append(f"warm-up requests failed: {warmup}")
    if not alive_ready or tracebacks:
        problems.append("the server is not ready at the end" if not alive_ready else f"{tracebacks} tracebacks")
    print("soak: " + ("FAIL: " + "; ".join(problems) if problems else "OK"))
    return 1 if problems else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs of the worker, evenly spaced")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="per client, a bound besides time")
    p.add_argument("--every", type=float, default=60.0, help="seconds between timeline rows")
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--only", default="", help="comma-separated models: serve a reduced store of just these")
    p.add_argument("--out", type=Path, help="also write the printed report (markdown) here")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
