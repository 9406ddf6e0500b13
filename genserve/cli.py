"""The single entry point: `genserve serve | train | export | eval | call`.

Each subcommand imports only its own side: `serve` loads the service and `call`
its gRPC stubs (no training code), the others load the training package.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from genserve import __version__


def _serve(args: argparse.Namespace) -> None:
    """Only what the command line gives goes to run(): the rest it reads from GENSERVE_* itself (the same values
    as the parser's defaults), so that a bad value is named as the user set it, flag or variable."""
    from service.main import run

    settings = ("host", "port", "grpc_port", "models", "allow_empty")
    run(**{key: getattr(args, key) if key in args.given else None for key in settings})


CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"


def _config_names() -> list[str]:
    """The configs shipped in training/configs, without their -tiny variants: what `genserve train` takes."""
    return sorted(p.stem for p in CONFIGS.glob("*.json") if not p.stem.endswith("-tiny"))


def _known() -> str:
    from training.families import FAMILIES

    return f"known configs: {', '.join(_config_names())}; families: {', '.join(FAMILIES)}"


def _family_of(name: str) -> str | None:
    """The family a `train` argument names: the family of training/configs/<name>.json where <name> is a config
    there (a name, never a path), else the name itself when it is a family (e.g. realnvp -> flow, wgan-gp -> gan,
    flow -> flow); None when it is neither."""
    from training.families import FAMILIES

    if name in {p.stem for p in CONFIGS.glob("*.json")}:
        try:
            return json.loads((CONFIGS / f"{name}.json").read_text())["family"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return name if name in FAMILIES else None


def _train_config(family: str, path: str | None, epochs: int | None = None) -> tuple[Path, dict]:
    """The config that `genserve train family [--config path] [--epochs epochs]` runs, with `epochs` in place, and
    its path, checked before anything loads (the only check of a `genserve train`): it exists, parses, names a known
    family, that family is the one the argument names, its train settings are an object whose epochs (unless `epochs`
    overrides them) are 1 or more, and check_config passes it. Refusals are one line."""
    from training.families import FAMILIES
    from training.train import check_config, load_config

    if "/" in family or os.sep in family or family.endswith(".json"):
        raise SystemExit(f"genserve train: {family!r} is a path, not a config name or family: give the config's "
                         f"family and the file as --config, e.g. `genserve train <family> --config {family}`")
    wanted = _family_of(family)
    if wanted is None:
        raise SystemExit(f"genserve train: unknown family or config {family!r}; {_known()}")
    config_path = Path(path) if path else CONFIGS / f"{family}.json"
    if not config_path.is_file():
        raise SystemExit(f"genserve train: no config file {config_path}" +
                         ("" if path else f" (family {family!r} has no default config; give --config)") +
                         f"; {_known()}")
    try:
        config = load_config(config_path)
    except ValueError as e:  # not JSON (json.JSONDecodeError is a ValueError), or a key missing
        raise SystemExit(f"genserve train: {config_path}: not a usable config: {e}") from e
    if config["family"] not in FAMILIES:
        raise SystemExit(f"genserve train: {config_path} names the family {config['family']!r}; {_known()}")
    if config["family"] != wanted:
        named = f"{family!r}" if wanted == family else f"{family!r} (a {wanted!r})"
        raise SystemExit(f"genserve train: {config_path} trains a {config['family']!r} model, not {named}; give "
                         f"the matching family, e.g. `genserve train {config['family']} --config {config_path}`")
    if not isinstance(config["train"], dict):
        raise SystemExit(f"genserve train: {config_path}: not a usable config: train must be an object")
    if epochs is None and not _is_count(config["train"].get("epochs")):
        raise SystemExit(f"genserve train: {config_path}: not a usable config: train.epochs must be a whole number, "
                         f"1 or more, got {config['train'].get('epochs')!r} (or give --epochs)")
    config = {**config, "train": {**config["train"], "epochs": epochs or config["train"]["epochs"]}}
    try:
        check_config(config)
    except ValueError as e:
        raise SystemExit(f"genserve train: {config_path}: not a usable config: {e}") from e
    return config_path, config


def _check_writable(path: Path, command: str, flag: str) -> None:
    """Refuse, in one line naming the flag, a directory that cannot be made or written in: a file on its way, or a
    nearest existing folder where no file can be made (tried with a nameless temporary file, since root's
    permission bits do not tell, e.g. under /proc). Nothing is left behind."""
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))
    if not os.path.isdir(existing):
        raise SystemExit(f"genserve {command}: {flag} {path}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise SystemExit(f"genserve {command}: {flag} {path}: cannot write in {existing} ({e.strerror})") from e


def _check_output_file(path: Path, command: str, flag: str) -> None:
    """Refuse, in one line naming the flag, a file that cannot be written: a directory, or one whose folder is
    missing or cannot be written in (checked before the work whose result it is meant to hold)."""
    if path.is_dir():
        raise SystemExit(f"genserve {command}: {flag} {path} is a directory")
    if not path.parent.is_dir():
        raise SystemExit(f"genserve {command}: {flag} {path}: no directory {path.parent}")
    _check_writable(path.parent, command, flag)


def _check_run_dir(run_dir: Path, config: dict) -> None:
    """`genserve train`: refuse, in one line, an exported model version (training would write into the store), a
    run dir that holds a run of another family (naming both), or a checkpoint of the same family with another model
    or dataset (resuming it could not load its weights)."""
    if (run_dir / "manifest.json").is_file():
        raise SystemExit(f"genserve train: --run-dir {run_dir} is an exported model version (it holds a "
                         "manifest.json), not a training run; give another --run-dir")
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text())
        family = saved["family"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"genserve train: --run-dir {run_dir} holds a config.json that is not a genserve run's; "
                         "give another --run-dir") from e
    if family != config["family"]:
        raise SystemExit(f"genserve train: --run-dir {run_dir} holds a run of the family {family!r}, not "
                         f"{config['family']!r}; give another --run-dir")
    changed = [key for key in ("dataset", "model") if saved.get(key) != config[key]]
    if changed and (run_dir / "state.json").is_file():
        raise SystemExit(f"genserve train: --run-dir {run_dir} holds a {family!r} checkpoint of another "
                         f"{' and '.join(changed)} than this config's, which cannot be resumed; give another --run-dir")


def _train(args: argparse.Namespace) -> None:
    from training.train import Refused, train_run

    config_path, config = _train_config(args.family, args.config, args.epochs)
    run_dir = Path(args.run_dir or f"runs/{args.family}")
    _check_writable(run_dir, "train", "--run-dir")
    _check_run_dir(run_dir, config)
    try:
        trained = train_run(config, config_path, run_dir)
    except Refused as e:  # the data cannot be made (no espeak-ng), the model does not fit it, fewer epochs than run
        raise SystemExit(f"genserve train: {e}") from e
    except KeyboardInterrupt:
        _interrupted(run_dir)
    if not trained.written:  # nothing to train: train_run said so
        return
    print(f"wrote {', '.join(trained.written)} in {run_dir}")
    note = _training_nll_note(*trained.loaded)
    if note:
        print(note)


def _interrupted(run_dir: Path) -> None:
    """Ctrl-C during `genserve train`: which epoch the run saved last, that the same command resumes; status 130."""
    from training.train import trained_epochs

    try:
        epoch = trained_epochs(run_dir)
    except (OSError, ValueError, KeyError, TypeError):  # a state.json that is not a run's
        epoch = None
    said = (f"before {run_dir} saved an epoch; the same command starts it again" if epoch == 0 else
            f"{run_dir} saved epoch {epoch} last; the same command resumes after it" if epoch else
            f"the same command resumes {run_dir} after the last epoch it saved")
    print(f"\ngenserve train: interrupted, {said}", file=sys.stderr)
    raise SystemExit(130)


def _scored_quantity(model, config: dict, split) -> str | None:
    """What `genserve eval` measures for a run whose test NLL comes from its exported `log_prob` (None for a
    family with its own evaluate_test): -log p(x | label) where log_prob takes the label, else -log p(x),
    marginal over the class prior where the model is class-conditional (it has log_prob_given_label)."""
    from training.families import family_module

    family = family_module(config["family"])
    if hasattr(family, "evaluate_test"):
        return None
    functions, _ = family.exported_functions(model, split)
    if "label" in functions["log_prob"][1]:
        return "conditional"
    return "marginal" if "log_prob_given_label" in functions else "unconditional"


NLL_NOTES = {
    "marginal": ("test NLL: training's epoch lines give -log p(x | y), each test image given its true label y; "
                 "`genserve eval` and the service's score give the marginal -log p(x) = -log sum_y p(x | y) p(y) "
                 "over the class prior, so the two figures differ"),
    "conditional": "test NLL: training and `genserve eval` both give -log p(x | y), given each example's label y",
    "unconditional": "test NLL: training and `genserve eval` both give -log p(x)",
}


def _training_nll_note(model, config: dict, split) -> str | None:
    """After training, which test NLL the epoch lines printed, beside what `genserve eval` will print (for the
    model just trained, not loaded again)."""
    from training.families import family_module

    family = family_module(config["family"])
    if hasattr(family, "train_step"):  # the epoch lines name the family's own loss already
        return None
    if hasattr(family, "evaluate_test"):
        doc = (family.loss.__doc__ or "").strip().splitlines()[0]
        return (f"test NLL: training's epoch lines give the family's loss ({doc}); `genserve eval` gives the "
                "bound or estimate that the service's score computes")
    kind = _scored_quantity(model, config, split)
    return NLL_NOTES[kind]


def _export(args: argparse.Namespace) -> None:
    from training.export import VersionExists, export
    from training.train import Refused

    _check_writable(Path(args.models), "export", "--models")
    try:
        out = export(Path(args.run_dir), Path(args.models), name=args.name, version=args.version,
                     baseline=not args.no_baseline, reuse_eval=args.reuse_eval, force=args.force)
    except VersionExists as e:
        raise SystemExit(f"genserve export: {e}") from e
    except (FileNotFoundError, ValueError, Refused) as e:  # not a run directory, no exporter, a stale eval.json;
        raise SystemExit(f"genserve export: {e}") from e  # Refused: a training run holds it, or it mixes two epochs
    print(f"exported to {out}")


RUN_FILES = ("config.json", "model.safetensors")  # what `load_model` reads from a training run


def _check_run(run_dir: Path) -> None:
    """`genserve eval`: refuse, in one line naming the path and what it lacks, a run_dir that is not a training
    run (before torch loads)."""
    if not run_dir.is_dir():
        raise SystemExit(f"genserve eval: {run_dir} is not a training run: no such directory")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        exported = ""
        if (run_dir / "manifest.json").is_file():
            store = run_dir.parent.parent  # an exported model is <store>/<name>/<version>
            exported = f" (an exported model: `genserve eval --models {store}` prints the store's table)"
        raise SystemExit(f"genserve eval: {run_dir} is not a training run: it has no "
                         f"{' and no '.join(missing)}{exported}")


def _check_store(models: Path) -> None:
    """`genserve eval` without a run: refuse, in one line as `serve` does, a store path with no model in it."""
    from service.store.store import describe_store_path

    if not models.is_dir():
        raise SystemExit(f"genserve eval: model store {models} is not a directory")
    if not any(models.glob("*/*/manifest.json")):
        raise SystemExit(f"genserve eval: no model in the store: {describe_store_path(models)}")


def _eval(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate, store_table

    if args.run_dir is None:
        _check_store(Path(args.models))
        if args.quality:
            from genserve.quality import check, table

            if args.json:
                _check_output_file(args.json, "eval", "--json")
            check(Path(args.models) / "evaluation", args.n)  # refused before the store table, not after it
        print(store_table(Path(args.models)))
        if args.quality:
            print("\nSample quality (every 28x28 model that samples, through the serving engine):\n")
            print(table(Path(args.models), Path(args.models) / "evaluation", args.n, args.json))
    else:
        from training.train import Refused, load_model, run_lock

        _check_run(Path(args.run_dir))
        try:  # the shared lock to the end: eval.json is written beside the weights it measured
            with run_lock(Path(args.run_dir), shared=True):
                loaded = load_model(Path(args.run_dir))
                evaluate(Path(args.run_dir), baseline=not args.no_baseline, loaded=loaded)
        except Refused as e:  # a training run holds the run, or its checkpoint mixes two epochs
            raise SystemExit(f"genserve eval: {e}") from e
        kind = _scored_quantity(*loaded)
        if kind:
            print(NLL_NOTES[kind])


def _call(args: argparse.Namespace) -> None:
    """One genserve.v1 gRPC call with the committed stubs: the request as JSON, the answer printed as JSON."""
    import grpc
    from google.protobuf import json_format

    from service.grpc.gen import genserve_pb2, genserve_pb2_grpc

    methods = genserve_pb2.DESCRIPTOR.services_by_name["Genserve"].methods_by_name
    if args.method not in methods:
        raise SystemExit(f"genserve call: no method {args.method!r}; known: {', '.join(methods)}")
    method = methods[args.method]
    try:
        request = json_format.ParseDict(json.loads(args.request), getattr(genserve_pb2, method.input_type.name)())
    except (ValueError, json_format.ParseError) as e:
        detail = " ".join(str(e).split())
        raise SystemExit(f"genserve call: the request is not a {method.input_type.full_name}: {detail}") from e
    key = args.key or os.environ.get("GENSERVE_API_KEY")
    metadata = [("authorization", f"Bearer {key}")] if key else None
    with grpc.insecure_channel(args.target) as channel:
        call = getattr(genserve_pb2_grpc.GenserveStub(channel), args.method)
        try:
            answers = call(request, metadata=metadata, timeout=args.timeout)
            for answer in answers if method.server_streaming else [answers]:
                print(json_format.MessageToJson(answer, indent=None, always_print_fields_with_no_presence=True),
                      flush=True)
        except grpc.RpcError as e:
            raise SystemExit(f"genserve call: {e.code().name}: {e.details()}") from e
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a shell tool does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _count(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more, got {text}")
    return value


def _env(name: str, default):
    return os.environ.get(f"GENSERVE_{name}", default)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one (not None, not a flag's False)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="genserve", description=__doc__.splitlines()[0], formatter_class=_Help)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the model store over REST and gRPC", formatter_class=_Help)
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="env GENSERVE_HOST")
    # string defaults: argparse converts them only when `serve` parses, so a bad GENSERVE_PORT is serve's usage error
    serve.add_argument("--port", type=int, default=_env("PORT", "8000"), help="HTTP port; env GENSERVE_PORT")
    serve.add_argument("--grpc-port", type=int, default=_env("GRPC_PORT", "8001"),
                       help="gRPC port; env GENSERVE_GRPC_PORT")
    serve.add_argument("--models", default=_env("MODELS", "models"),
                       help="model store (<name>/<version>/manifest.json under it); env GENSERVE_MODELS")
    serve.add_argument("--allow-empty", action="store_true", default=None,
                       help="serve a store that holds no model (refused otherwise); env GENSERVE_ALLOW_EMPTY")
    serve.set_defaults(run=_serve)

    known = ", ".join(_config_names())
    train = sub.add_parser("train", help="train a family; resumes an interrupted run", formatter_class=_Help,
                           description=f"Train a model from a config in training/configs. Known: {known}.")
    train.add_argument("family", help=f"a config name in training/configs ({known}) or a family; "
                                      "with --config, the config's family must match it")
    train.add_argument("--config", help="JSON config (default: training/configs/<family>.json)")
    train.add_argument("--run-dir", help="checkpoint directory (default: runs/<family>)")
    train.add_argument("--epochs", type=_count, help="override the configured epochs")
    train.set_defaults(run=_train)

    export = sub.add_parser("export", help="export a run to ONNX + TorchScript + manifest", formatter_class=_Help)
    export.add_argument("run_dir", help="a training run directory (config.json, model.safetensors), e.g. runs/pixelcnn")
    export.add_argument("--models", default="models", help="model store to write into")
    export.add_argument("--name", help="model name (default: the config's family)")
    export.add_argument("--version", type=int, default=1,
                        help="version to write, <models>/<name>/<version>; an existing one is refused unless --force")
    export.add_argument("--force", action="store_true", help="replace an existing <name>/<version>")
    export.add_argument("--no-baseline", action="store_true", help="skip the Bernoulli-mixture baseline")
    export.add_argument("--reuse-eval", action="store_true",
                        help="take the test metrics from the run's eval.json instead of measuring them again")
    export.set_defaults(run=_export)

    evaluate = sub.add_parser("eval", help="test NLL of a run, or (no run) the table of the store's models",
                              formatter_class=_Help)
    evaluate.add_argument("run_dir", nargs="?", help="a training run: measure its test NLL, beside a baseline")
    evaluate.add_argument("--models", default="models",
                          help="without run_dir: print the test metrics of every binarized-mnist5k model here")
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the Bernoulli-mixture baseline")
    evaluate.add_argument("--quality", action="store_true",
                          help="(no run) also sample every 28x28 model and print IS, FID and mode coverage")
    evaluate.add_argument("--n", type=_count, default=500, help="--quality: samples per model (and real images)")
    evaluate.add_argument("--json", type=Path, help="--quality: also save the scores as JSON")
    evaluate.set_defaults(run=_eval)

    call = sub.add_parser("call", help="one genserve.v1 gRPC call (plain, no TLS), the answer printed as JSON",
                          formatter_class=_Help, epilog="e.g. genserve call Sample "
                          "'{\"model\": \"charrnn\", \"seed\": 0, \"prompt\": \"def \", \"length\": 40}'")
    call.add_argument("method", help="a genserve.v1.Genserve method: ListModels, GetModel, Sample, Score, ...")
    call.add_argument("request", nargs="?", default="{}",
                      help="the request as JSON (protobuf JSON: field names as in proto/genserve/v1/genserve.proto; "
                           "a Tensor's data is base64)")
    call.add_argument("--target", default=f"127.0.0.1:{_env('GRPC_PORT', 8001)}", help="the gRPC server")
    call.add_argument("--key", help="API key (default: env GENSERVE_API_KEY)")
    call.add_argument("--timeout", type=_seconds, default=60.0, help="seconds")
    call.set_defaults(run=_call)
    return top


TRAINING_COMMANDS = {"train", "export", "eval"}  # they need the `train` extra (torch, ...), which serving lacks

# Options that do nothing in some combination, refused as usage errors: command -> (option, the other, whether it
# needs the other (True) or does nothing with it (False), why).
IGNORED = {
    "eval": [("quality", "run_dir", False, "it samples the store's models (--models), not a run"),
             ("models", "run_dir", False, "a run is measured on its own data; --models is the store to table"),
             ("no_baseline", "run_dir", True, "the store's table fits no baseline"),
             ("n", "quality", True, "it is the number of samples that --quality draws"),
             ("json", "quality", True, "it saves the scores that --quality measures")],
    "export": [("no_baseline", "reuse_eval", False, "the metrics, baseline included, come from the run's eval.json "
                "(`genserve eval --no-baseline <run_dir>` writes one without)")],
}


def _subcommand(top: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    return next(action for action in top._actions if action.dest == "command").choices[command]


def _given(argv: list[str] | None, args: argparse.Namespace) -> set[str]:
    """The options (and positionals) that the command line gives itself, not by default: argv parsed again with
    every default of its subcommand suppressed."""
    top = parser()
    for action in _subcommand(top, args.command)._actions:
        action.default = argparse.SUPPRESS
    return set(vars(top.parse_args(argv))) - {"command", "run"}


def _option(dest: str) -> str:
    return dest if dest == "run_dir" else "--" + dest.replace("_", "-")


def _refuse_ignored(top: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (status 2) naming both options, for an option that the other option, or its absence, makes
    do nothing."""
    for option, other, needs, why in IGNORED.get(args.command, []):
        if option in args.given and (other in args.given) != needs:
            said = "applies only with" if needs else "does nothing with"
            _subcommand(top, args.command).error(f"{_option(option)} {said} {_option(other)}: {why}")


def main(argv: list[str] | None = None) -> None:
    top = parser()
    args = top.parse_args(argv)
    args.given = _given(argv, args)
    _refuse_ignored(top, args)
    try:
        args.run(args)
    except ModuleNotFoundError as e:
        if args.command not in TRAINING_COMMANDS:
            raise
        raise SystemExit(f"genserve {args.command}: needs the training dependencies ({e.name} is not installed): "
                         "pip install 'genserve[train]'") from e


if __name__ == "__main__":
    main()
