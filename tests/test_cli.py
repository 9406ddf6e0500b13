"""The CLI fails safely (issue 22): one line naming the problem, never a traceback, and never an overwrite.

train: a typo or a wrong --config lists the known families; the family and the config's must agree.
export: an existing version is refused unless --force, naming the next free one; torch's known-harmless
warnings are silenced within the export only; the baseline `genserve eval` fitted is reused.
serve: a taken port names its flag; a store with no model is refused unless --allow-empty, saying what the
path looks like instead.
"""

import json
import socket
import warnings
from pathlib import Path

import pytest

from genserve import cli
from training.families import FAMILIES

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "training" / "configs"


def refusal(argv: list[str]) -> str:
    """The one-line message a command exits with (SystemExit carrying a string, not a traceback)."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


@pytest.mark.parametrize("argv", [["train", "pixelcnnn"], ["train", "pixelcnn", "--config", "no/such.json"]])
def test_train_typo_or_missing_config_is_one_line_listing_the_families(argv):
    message = refusal(argv)
    assert message.startswith("genserve train:")
    assert (argv[1] if len(argv) == 2 else "no/such.json") in message
    assert all(family in message for family in FAMILIES)
    assert "realnvp" in message and "wgan-gp" in message  # the config names that train takes


def test_train_refuses_a_config_of_another_family():
    message = refusal(["train", "vae", "--config", str(CONFIGS / "pixelcnn-tiny.json")])
    assert "'pixelcnn' model, not 'vae'" in message


def test_train_accepts_a_config_of_the_family_named_or_of_its_config():
    assert cli._train_config("pixelcnn", str(CONFIGS / "pixelcnn-tiny.json"))[1]["family"] == "pixelcnn"
    assert cli._train_config("realnvp", str(CONFIGS / "realnvp-tiny.json"))[1]["family"] == "flow"
    assert cli._train_config("flow", str(CONFIGS / "realnvp-tiny.json"))[1]["family"] == "flow"
    assert cli._train_config("wgan-gp", None)[0] == CONFIGS / "wgan-gp.json"


def test_train_refuses_a_config_that_is_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not a usable config" in refusal(["train", "pixelcnn", "--config", str(bad)])


def _help(*argv: str) -> str:
    subparsers = next(a for a in cli.parser()._actions if a.dest == "command")
    return subparsers.choices[argv[0]].format_help()


def test_help_lists_the_families_and_shows_defaults():
    train = _help("train")
    assert "pixelcnn" in train and "realnvp" in train and "wgan-gp" in train
    export = " ".join(_help("export").split())
    assert "a training run directory" in export  # run_dir has help
    assert "an existing one is refused unless --force (default: 1)" in export  # --version, with its default
    assert "(default: models)" in export
    serve = " ".join(_help("serve").split())
    assert "(default: 8001)" in serve and "--allow-empty" in serve
    assert "(default: None)" not in train + export + serve and "(default: False)" not in train + export + serve


@pytest.fixture
def fake_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "pixelcnn"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"family": "pixelcnn"}))
    return run


def test_export_refuses_an_existing_version_naming_the_next_free_one(fake_run, tmp_path):
    store = tmp_path / "models"
    for version in ("1", "3"):
        (store / "pixelcnn" / version).mkdir(parents=True)
        (store / "pixelcnn" / version / "manifest.json").write_text("{}")
    message = refusal(["export", str(fake_run), "--models", str(store)])
    assert f"{store / 'pixelcnn' / '1'} exists" in message
    assert "--version 4" in message and "--force" in message
    assert (store / "pixelcnn" / "1" / "manifest.json").read_text() == "{}"  # untouched


def test_export_of_a_new_version_or_with_force_gets_past_the_check(fake_run, tmp_path, monkeypatch):
    import training.export as export

    def loaded(run_dir):
        raise RuntimeError("past the check")

    monkeypatch.setattr(export, "load_model", loaded)
    (tmp_path / "models" / "pixelcnn" / "1").mkdir(parents=True)
    for kwargs in ({"version": 2}, {"version": 1, "force": True}):
        with pytest.raises(RuntimeError, match="past the check"):
            export.export(fake_run, tmp_path / "models", **kwargs)


def test_export_of_a_directory_that_is_no_run_is_one_line(tmp_path):
    assert "is not a training run" in refusal(["export", str(tmp_path)])


def test_the_export_silences_only_the_known_harmless_warnings():
    from training.export import quiet_export

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_export():
            warnings.warn("Constant folding - Only steps=1 can be constant folded for opset >= 10 onnx::Slice op.",
                          UserWarning, stacklevel=1)
            warnings.warn("`torch.jit.trace` is deprecated. Please switch to `torch.compile`", DeprecationWarning,
                          stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
        warnings.warn("Constant folding - Only steps=1 can be constant folded, outside the export", UserWarning,
                      stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "something else", "Constant folding - Only steps=1 can be constant folded, outside the export"]


def test_export_reuses_the_baseline_that_eval_fitted(tmp_path, monkeypatch):
    import training.export as export

    baseline = {"name": "bernoulli_mixture", "components": 100, "test_nll_nats": 143.1, "test_bits_per_dim": 0.26}
    (tmp_path / "eval.json").write_text(json.dumps({"dataset": "mnist5k-binarized", "baseline": baseline}))
    asked = []

    def evaluate(run_dir, baseline, loaded):
        asked.append(baseline)
        return {"dataset": "mnist5k-binarized", "test_nll_nats": 555.0}

    monkeypatch.setattr(export, "evaluate", evaluate)
    split = type("Split", (), {"name": "mnist5k-binarized"})()
    report = export.measured_report(tmp_path, baseline=True, reuse_eval=False, loaded=(None, None, split))
    assert asked == [False] and report["baseline"] == baseline  # not fitted again
    assert json.loads((tmp_path / "eval.json").read_text())["baseline"] == baseline
    other = type("Split", (), {"name": "mnist5k-gray"})()
    assert export.saved_baseline(tmp_path / "eval.json", other) is None  # another split: fitted afresh


def test_eval_says_which_test_nll_it_gives():
    from training.data import load
    from training.train import build_model, load_config

    config = load_config(CONFIGS / "charrnn-tiny.json")
    split = load(config["dataset"])
    assert cli._scored_quantity(build_model(config, split), config, split) == "unconditional"
    config = load_config(CONFIGS / "pixelcnn-tiny.json")
    split = load(config["dataset"])
    assert cli._scored_quantity(build_model(config, split), config, split) == "marginal"
    assert "-log p(x | y)" in cli.NLL_NOTES["marginal"] and "marginal -log p(x)" in cli.NLL_NOTES["marginal"]


def _serve_refusal(**kwargs) -> str:
    from service.main import run

    with pytest.raises(SystemExit) as info:
        run(**kwargs)
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_serve_refuses_a_taken_port_naming_its_flag_before_loading_anything(flag, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy, free = taken.getsockname()[1], _free_port()
        ports = {"port": busy, "grpc_port": free} if flag == "--port" else {"port": free, "grpc_port": busy}
        message = _serve_refusal(host="127.0.0.1", models=tmp_path / "no-store", **ports)  # the store is not read
    assert f"127.0.0.1:{busy}" in message and message.endswith(f"give another {flag}")


def test_serve_refuses_the_same_port_twice(tmp_path):
    port = _free_port()
    assert "both" in _serve_refusal(host="127.0.0.1", port=port, grpc_port=port, models=tmp_path)


def test_serve_refuses_a_bad_setting_in_one_line_naming_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("GENSERVE_LOG_FORMAT", "xml")
    message = _serve_refusal(host="127.0.0.1", port=_free_port(), grpc_port=_free_port(), models=tmp_path)
    assert message.startswith("genserve: bad setting: GENSERVE_LOG_FORMAT:") and "'xml'" in message


def _store_path_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    store = tmp_path / "store"
    (store / "pixelcnn" / "1").mkdir(parents=True)
    (store / "pixelcnn" / "1" / "manifest.json").write_text("{}")
    run = tmp_path / "runs" / "pixelcnn"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    return {
        "empty": (tmp_path / "empty", "is empty"),
        "model": (store / "pixelcnn", f"is a model directory (<version>/manifest.json under it), not a store; the "
                                      f"store is one level up: --models {store}"),
        "version": (store / "pixelcnn" / "1", f"store is two levels up: --models {store}"),
        "run": (run, "is a training run"),
        "runs": (tmp_path / "runs", "holds training runs"),
        "above": (tmp_path, f"holds no model itself, but {store} does: --models {store}"),
    }


@pytest.mark.parametrize("case", ["empty", "model", "version", "run", "runs", "above"])
def test_serve_refuses_a_store_with_no_model_saying_what_the_path_is(case, tmp_path):
    path, expected = _store_path_cases(tmp_path)[case]
    message = _serve_refusal(host="127.0.0.1", port=_free_port(), grpc_port=_free_port(), models=path)
    assert message.startswith("genserve: no model to serve:") and expected in message
    assert "--allow-empty" in message


def test_call_refuses_an_unknown_method_or_a_bad_request_in_one_line():
    assert "known: ListModels, GetModel, Sample" in refusal(["call", "Sampel"])
    assert "not a genserve.v1.SampleRequest" in refusal(["call", "Sample", '{"modle": "pixelcnn"}'])


def test_call_to_no_server_is_one_line():
    message = refusal(["call", "ListModels", "--target", f"127.0.0.1:{_free_port()}", "--timeout", "5"])
    assert message.startswith("genserve call: UNAVAILABLE") or message.startswith("genserve call: DEADLINE_EXCEEDED")


@pytest.mark.parametrize("timeout", ["0", "-1", "nan"])
def test_call_refuses_a_timeout_that_is_not_a_positive_number_of_seconds(timeout, capsys):
    with pytest.raises(SystemExit) as usage:
        cli.parser().parse_args(["call", "ListModels", "--timeout", timeout])
    assert usage.value.code == 2 and "must be more than 0 seconds" in capsys.readouterr().err
