"""The single entry point: `genserve serve | train | export | eval`.

Each subcommand imports only its own side: `serve` loads the service (no
training code), the others load the training package.
"""

import argparse
import os
from pathlib import Path


def _serve(args: argparse.Namespace) -> None:
    from service.main import run

    run(host=args.host, port=args.port, grpc_port=args.grpc_port, models=args.models)


def _train(args: argparse.Namespace) -> None:
    from training.train import train

    config = args.config or Path(__file__).parent.parent / "training" / "configs" / f"{args.family}.json"
    run_dir = train(Path(config), Path(args.run_dir or f"runs/{args.family}"), epochs=args.epochs)
    print(f"checkpoint, samples (png or txt) and loss.png in {run_dir}")


def _export(args: argparse.Namespace) -> None:
    from training.export import export

    out = export(Path(args.run_dir), Path(args.models), name=args.name, version=args.version,
                 baseline=not args.no_baseline, reuse_eval=args.reuse_eval)
    print(f"exported to {out}")


def _eval(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate, store_table

    if args.run_dir is None:
        print(store_table(Path(args.models)))
        if args.quality:
            from genserve.quality import table

            print("\nSample quality (every 28x28 model that samples, through the serving engine):\n")
            print(table(Path(args.models), Path(args.models) / "evaluation", args.n, args.json))
    else:
        evaluate(Path(args.run_dir), baseline=not args.no_baseline)


def _env(name: str, default):
    return os.environ.get(f"GENSERVE_{name}", default)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="genserve", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the model store over REST and gRPC")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="env GENSERVE_HOST")
    serve.add_argument("--port", type=int, default=int(_env("PORT", 8000)), help="env GENSERVE_PORT")
    serve.add_argument("--grpc-port", type=int, default=int(_env("GRPC_PORT", 8001)), help="env GENSERVE_GRPC_PORT")
    serve.add_argument("--models", default=_env("MODELS", "models"), help="model store; env GENSERVE_MODELS")
    serve.set_defaults(run=_serve)

    train = sub.add_parser("train", help="train a family; resumes an interrupted run")
    train.add_argument("family", help="model family, e.g. pixelcnn")
    train.add_argument("--config", help="JSON config (default: training/configs/<family>.json)")
    train.add_argument("--run-dir", help="checkpoint directory (default: runs/<family>)")
    train.add_argument("--epochs", type=int, help="override the configured epochs")
    train.set_defaults(run=_train)

    export = sub.add_parser("export", help="export a run to ONNX + TorchScript + manifest")
    export.add_argument("run_dir")
    export.add_argument("--models", default="models", help="model store to write into")
    export.add_argument("--name", help="model name (default: the family)")
    export.add_argument("--version", type=int, default=1)
    export.add_argument("--no-baseline", action="store_true", help="skip the Bernoulli-mixture baseline")
    export.add_argument("--reuse-eval", action="store_true",
                        help="take the test metrics from the run's eval.json instead of measuring them again")
    export.set_defaults(run=_export)

    evaluate = sub.add_parser("eval", help="test NLL of a run, or (no run) the table of the store's models")
    evaluate.add_argument("run_dir", nargs="?", help="a training run: measure its test NLL, beside a baseline")
    evaluate.add_argument("--models", default="models",
                          help="without run_dir: print the test metrics of every binarized-mnist5k model here")
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the Bernoulli-mixture baseline")
    evaluate.add_argument("--quality", action="store_true",
                          help="(no run) also sample every 28x28 model and print IS, FID and mode coverage")
    evaluate.add_argument("--n", type=int, default=500, help="--quality: samples per model (and real images)")
    evaluate.add_argument("--json", type=Path, help="--quality: also save the scores as JSON")
    evaluate.set_defaults(run=_eval)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
