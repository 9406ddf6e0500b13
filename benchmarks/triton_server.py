"""NVIDIA Triton (through PyTriton, on CPU) serving functions of a genserve model store, for triton_compare.py.

Runs under the Python 3.12 venv .venv-triton (see triton_compare.py for how to make it), with the lib/ folder of
the Python 3.12 that made it on LD_LIBRARY_PATH (triton_compare.py sets it). It binds one V2 model
`<name>.<function>` (the name genserve gives it) per --serve entry (default: --name's --function), whose infer
function runs onnxruntime (CPU, --threads intra-op threads) on the store's ONNX file of that function, behind
Triton's dynamic batcher with the manifest's max_batch_size and max_queue_delay_us (or --max-batch-size /
--queue-delay-us), one instance per model.
HTTP and gRPC listen on 127.0.0.1 only; SIGTERM or Ctrl-C stops it.

Triton needs a batch dimension in front of every input, and no input of a batched model may be a scalar per item:
an input or output the manifest shapes [-1] (e.g. `label`, `log_prob`) is [-1, 1] here, so clients send and get
[B, 1] where genserve takes [B].

    LD_LIBRARY_PATH=<python 3.12 prefix>/lib .venv-triton/bin/python benchmarks/triton_server.py \\
        --http-port 8000 --grpc-port 8001 [--models models --name pixelcnn --function log_prob_given_label]
        [--serve vae.decode pixelcnn.log_prob_given_label] [--max-batch-size 64 --queue-delay-us 500]
"""

import argparse
import json
import signal
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def latest_manifest(models: Path, name: str) -> tuple[Path, dict]:
    """(version directory, manifest) of the highest numbered version of the model in the store."""
    versions = [d for d in (models / name).iterdir() if d.name.isdigit() and (d / "manifest.json").is_file()]
    if not versions:
        raise SystemExit(f"no version of model {name!r} in {models}")
    directory = max(versions, key=lambda d: int(d.name))
    return directory, json.loads((directory / "manifest.json").read_text())


def triton_tensor(spec: dict) -> Tensor:
    """A manifest tensor [-1, *dims] as Triton's per-item shape (dims, or (1,) for a scalar per item)."""
    return Tensor(name=spec["name"], dtype=np.dtype(spec["dtype"]), shape=tuple(spec["shape"][1:]) or (1,))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def infer_function(directory: Path, spec: dict, threads: int):
    """The batched infer function of one manifest function: onnxruntime on its ONNX file, Triton's shapes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # as genserve's runtime
    session = ort.InferenceSession(str(directory / spec["files"]["onnx"]), options,
                                   providers=["CPUExecutionProvider"])
    shapes = {t["name"]: t["shape"] for t in spec["inputs"] + spec["outputs"]}
    output_names = [t["name"] for t in spec["outputs"]]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        feed = {name: x.reshape(x.shape[0], *shapes[name][1:]) for name, x in inputs.items()}  # [B, 1] -> [B]
        results = dict(zip(output_names, session.run(output_names, feed), strict=True))
        return {name: y.reshape(y.shape[0], *(shapes[name][1:] or [1])) for name, y in results.items()}  # [B, 1]

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="genserve model store")
    parser.add_argument("--name", default="pixelcnn")
    parser.add_argument("--function", default="log_prob_given_label")
    parser.add_argument("--serve", nargs="+", metavar="MODEL.FUNCTION",
                        help="V2 models to serve (default: --name.--function)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="override the manifest's max_batch_size")
    parser.add_argument("--queue-delay-us", type=int, default=None, help="override the manifest's max_queue_delay_us")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    args = parser.parse_args()

    bindings = []
    for v2_model in args.serve or [f"{args.name}.{args.function}"]:
        name, function = v2_model.split(".", 1)
        directory, manifest = latest_manifest(args.models, name)
        spec = manifest["functions"][function]
        knobs = {**manifest["batching"], **{k: v for k, v in [("max_batch_size", args.max_batch_size),
                                                              ("max_queue_delay_us", args.queue_delay_us)]
                                            if v is not None}}
        config = ModelConfig(max_batch_size=knobs["max_batch_size"],
                             batcher=DynamicBatcher(max_queue_delay_microseconds=knobs["max_queue_delay_us"]))
        bindings.append((v2_model, directory, spec, config, knobs))
    triton_config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                                 grpc_port=args.grpc_port, allow_metrics=False, exit_timeout_secs=5)
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: Triton and its proxy stop too
    with Triton(config=triton_config) as triton:
        for v2_model, directory, spec, config, knobs in bindings:
            triton.bind(model_name=v2_model, infer_func=infer_function(directory, spec, args.threads),
                        inputs=[triton_tensor(t) for t in spec["inputs"]],
                        outputs=[triton_tensor(t) for t in spec["outputs"]], config=config, strict=True)
            print(f"serving {v2_model} from {directory} on 127.0.0.1: HTTP {args.http_port}, gRPC "
                  f"{args.grpc_port}; onnxruntime {ort.__version__}, {args.threads or 'default'} intra-op threads; "
                  f"max_batch_size {knobs['max_batch_size']}, max_queue_delay_us {knobs['max_queue_delay_us']}",
                  flush=True)
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
