"""genserve side by side with NVIDIA Triton (PyTriton, CPU): the same ONNX function, machine, client and load.

Optional, outside `make test`. It starts both servers on 127.0.0.1 (free ports): `genserve serve` from .venv and
benchmarks/triton_server.py from .venv-triton (Python 3.12, LD_LIBRARY_PATH with its lib directory), both serving
the V2 model `pixelcnn.log_prob_given_label` from the same ONNX file with the same onnxruntime intra-op threads
(--threads) and the manifest's dynamic batching (max_batch_size, max_queue_delay_us), one model instance each.
It checks that both answer the same log_prob (within 1e-4) over every protocol, then drives the same V2 infer
request (mnist5k-binarized test image --image-index and its label; binary tensor data over REST, raw_input_contents
over gRPC) through the same client code at each concurrency, alternating the servers level by level, with
loadgen.py's machinery (closed-loop clients, warm-up, windows until two agree, p50/p99 over the last two).
It always stops both servers.

The one difference in the requests: Triton takes no per-item scalar in a batched model, so its `label` is [1, 1]
and its `log_prob` [1, 1], where genserve's are [1] (the manifest's shape).

Make the Triton venv once (nvidia-pytriton ships a Triton server that runs on CPU; it needs Python 3.12):

    /root/.pyenv/versions/3.12.1/bin/python3.12 -m venv .venv-triton
    .venv-triton/bin/pip install nvidia-pytriton onnxruntime numpy

then, from the repository root:

    .venv/bin/python benchmarks/triton_compare.py [--concurrency 1 8 32 64] [--protocols rest grpc]
        [--window-s 3] [--threads 1] [--json out.json]
"""

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
from common import fmt, markdown_table, write_json
from loadgen import PROTOCOLS, REPO, Level, Server, Workload, _interrupt, load_workload, measure, report_level

PYTHON312 = Path("/root/.pyenv/versions/3.12.1")
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
FUNCTION = "log_prob_given_label"
TOLERANCE = 1e-4
VENV_HELP = (f"the Triton venv is missing ({TRITON_PYTHON}); make it with\n"
             f"    {PYTHON312}/bin/python3.12 -m venv .venv-triton\n"
             "    .venv-triton/bin/pip install nvidia-pytriton onnxruntime numpy")


class Genserve(Server):
    """`genserve serve`, ready when the V2 model is."""

    def __init__(self, models: str, name: str, threads: int):
        super().__init__(models, {"GENSERVE_RUNTIME": "onnx", "GENSERVE_INTRA_OP_THREADS": str(threads)}, "genserve")
        self.ready_path = f"/v2/models/{name}.{FUNCTION}/ready"
        self.label_shape = [1]


class Triton(Server):
    """benchmarks/triton_server.py under .venv-triton, in its own process group (tritonserver is its child)."""

    new_session = True

    def __init__(self, models: str, name: str, threads: int):
        library = ":".join(filter(None, [str(PYTHON312 / "lib"), os.environ.get("LD_LIBRARY_PATH")]))
        super().__init__(models, {"LD_LIBRARY_PATH": library}, "triton")
        self.name, self.threads = name, threads
        self.ready_path = f"/v2/models/{name}.{FUNCTION}/ready"
        self.label_shape = [1, 1]

    def command(self) -> list[str]:
        return [str(TRITON_PYTHON), "benchmarks/triton_server.py", "--models", self.models, "--name", self.name,
                "--function", FUNCTION, "--threads", str(self.threads), "--http-port", str(self.port),
                "--grpc-port", str(self.grpc_port)]

    def stop(self) -> None:
        super().stop()  # SIGTERM, bounded waits, SIGKILL
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group we started: a tritonserver left behind
            except ProcessLookupError:
                pass


# --- one V2 client for both servers --------------------------------------------------------------------------------


def v2_inputs(work: Workload, label_shape: list[int]) -> dict[str, np.ndarray]:
    """The infer request's tensors, little-endian: the image [1, 1, 28, 28] and its label."""
    return {"x": work.x.astype("<i8"), "label": np.full(label_shape, work.label, dtype="<i8")}


class RestV2:
    """POST /v2/models/<model>/infer with Triton's binary tensor data extension; log_prob comes back as JSON."""

    def __init__(self, server: Server, model: str, inputs: dict[str, np.ndarray], concurrency: int, timeout_s: float):
        import httpx

        from service.engine.oip import v2_datatype

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=timeout_s)
        header = {"inputs": [{"name": name, "shape": list(a.shape), "datatype": v2_datatype(a.dtype.name),
                              "parameters": {"binary_data_size": a.nbytes}} for name, a in inputs.items()],
                  "outputs": [{"name": "log_prob", "parameters": {"binary_data": False}}]}
        head = json.dumps(header).encode()
        self.url, self.body = f"/v2/models/{model}/infer", head + b"".join(a.tobytes() for a in inputs.values())
        self.headers = {"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"}

    async def call(self) -> float:
        response = await self.client.post(self.url, content=self.body, headers=self.headers)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return float(np.ravel(response.json()["outputs"][0]["data"])[0])

    async def close(self) -> None:
        await self.client.aclose()


class GrpcV2:
    """inference.GRPCInferenceService/ModelInfer with raw_input_contents (grpc.aio, the repo's V2 protos)."""

    def __init__(self, server: Server, model: str, inputs: dict[str, np.ndarray], concurrency: int, timeout_s: float):
        import grpc

        from service.engine.oip import v2_datatype
        from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb
        from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(server.grpc_target)
        self.stub, self.timeout_s = pb_grpc.GRPCInferenceServiceStub(self.channel), timeout_s
        tensors = [pb.ModelInferRequest.InferInputTensor(name=name, datatype=v2_datatype(a.dtype.name),
                                                         shape=list(a.shape)) for name, a in inputs.items()]
        self.request = pb.ModelInferRequest(model_name=model, inputs=tensors,
                                            raw_input_contents=[a.tobytes() for a in inputs.values()])

    async def call(self) -> float:
        response = await self.stub.ModelInfer(self.request, timeout=self.timeout_s)
        if response.raw_output_contents:
            return float(np.frombuffer(response.raw_output_contents[0], dtype="<f4")[0])
        return float(response.outputs[0].contents.fp32_contents[0])

    async def close(self) -> None:
        await self.channel.close()


CLIENTS = {"rest": RestV2, "grpc": GrpcV2}


def client_factory(protocol: str, server: Server, model: str, work: Workload, concurrency: int, timeout_s: float):
    inputs = v2_inputs(work, server.label_shape)
    return lambda: CLIENTS[protocol](server, model, inputs, concurrency, timeout_s)


async def one_call(make_client) -> float:
    client = make_client()
    try:
        return await client.call()
    finally:
        await client.close()


# --- main ----------------------------------------------------------------------------------------------------------


def compare_row(protocol: str, concurrency: int, g: Level, t: Level) -> list[str]:
    throughput = g.throughput / t.throughput if t.throughput else float("inf")
    p99 = g.percentile_ms(99) / t.percentile_ms(99)
    goal = "yes" if throughput >= 1 and p99 <= 1 else "no"
    return [protocol, str(concurrency), fmt(g.throughput), fmt(g.percentile_ms(50)), fmt(g.percentile_ms(99)),
            fmt(t.throughput), fmt(t.percentile_ms(50)), fmt(t.percentile_ms(99)), f"{fmt(throughput)}x",
            f"{fmt(p99)}x", goal, f"{'yes' if g.stable else 'no'} / {'yes' if t.stable else 'no'}",
            f"{g.errors} / {t.errors}"]


HEADERS = ["protocol", "concurrency", "genserve (req/s)", "genserve p50 (ms)", "genserve p99 (ms)",
           "Triton (req/s)", "Triton p50 (ms)", "Triton p99 (ms)", "throughput genserve/Triton",
           "p99 genserve/Triton", "goal met", "stable g / T", "errors g / T"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="model store both servers serve (default: %(default)s)")
    parser.add_argument("--name", default="pixelcnn", help="model whose log_prob_given_label is served")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=PROTOCOLS)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64], help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of both servers "
                        "(0: onnxruntime's default) (default: %(default)s)")
    parser.add_argument("--image-index", type=int, default=0, help="test image to score (default: %(default)s)")
    parser.add_argument("--window-s", type=float, default=3.0, help="measurement window (default: %(default)s)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="untimed warm-up per level (default: %(default)s)")
    parser.add_argument("--max-windows", type=int, default=5, help="windows per level at most (default: %(default)s)")
    parser.add_argument("--stability", type=float, default=0.10,
                        help="two windows agree when throughputs differ by at most this fraction of the larger")
    parser.add_argument("--request-timeout-s", type=float, default=30.0, help="client timeout per request")
    parser.add_argument("--json", type=Path, help="also write the results (and every latency) as JSON")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.max_windows < 2 or args.window_s <= 0:
        parser.error("concurrency must be >= 1, --max-windows >= 2 and --window-s > 0")
    if not TRITON_PYTHON.exists():
        print(f"error: {VENV_HELP}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, so both servers are stopped too
    work = load_workload(args.name, args.image_index, marginal=False)
    model = f"{args.name}.{FUNCTION}"
    print(f"workload: V2 model {model} on mnist5k-binarized test image {work.index} (label {work.label}); "
          f"onnxruntime, {args.threads or 'default'} intra-op threads, the manifest's batching, in both servers; "
          f"windows of {args.window_s:g} s after {args.warmup_s:g} s warm-up, stable within {args.stability:.0%}, "
          f"at most {args.max_windows}; clients and servers on {os.cpu_count()} CPUs of one machine\n")
    results: dict = {"workload": {"model": model, "image_index": work.index, "label": work.label},
                     "args": vars(args), "log_prob": {}, "levels": [], "rows": []}

    with Genserve(args.models, args.name, args.threads) as genserve, \
            Triton(args.models, args.name, args.threads) as triton:
        servers = [genserve, triton]
        for server in servers:
            for protocol in args.protocols:
                make = client_factory(protocol, server, model, work, 1, args.request_timeout_s)
                results["log_prob"][f"{server.label} {protocol}"] = asyncio.run(one_call(make))
        values = results["log_prob"]
        print("log_prob returned: " + ", ".join(f"{k} {v:.6f}" for k, v in values.items()), file=sys.stderr)
        if max(values.values()) - min(values.values()) > TOLERANCE:
            print(f"error: the servers disagree by more than {TOLERANCE:g}: {values}", file=sys.stderr)
            return 1

        rows, failed = [], False
        for protocol in args.protocols:
            for c in args.concurrency:
                pair = {}
                for server in servers if len(rows) % 2 == 0 else servers[::-1]:  # alternate who goes first
                    print(f"{server.label:>8}", end="", file=sys.stderr)
                    make = client_factory(protocol, server, model, work, c, args.request_timeout_s)
                    pair[server.label] = level = report_level(asyncio.run(measure(make, protocol, c, "on", args)))
                    results["levels"].append({"server": server.label, **level.to_dict()})
                    failed |= bool(level.errors or not level.windows or not level.throughput)
                rows.append(compare_row(protocol, c, pair["genserve"], pair["triton"]))
    results["rows"] = [dict(zip(HEADERS, row, strict=True)) for row in rows]

    print(f"## genserve vs Triton (PyTriton, CPU): {model}\n")
    print(markdown_table(HEADERS, rows))
    print("\nthroughput and latency over each level's last two windows; goal met: genserve's throughput at least "
          "Triton's and its p99 no worse; stable: the two windows agreed within "
          f"{args.stability:.0%}\nlog_prob (every server and protocol): "
          + ", ".join(f"{v:.6f}" for v in values.values()))
    write_json(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
