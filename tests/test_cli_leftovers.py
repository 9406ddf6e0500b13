"""What the offline-CLI hunt left, each a defect a user could hit: a checkpoint or run file stopped mid-write was left
truncated for the next resume to read; there was no `genserve --version`; `serve --port 70000` blamed GENSERVE_PORT,
and a taken port from GENSERVE_PORT was named as --port first; options that do nothing in some combination were taken
silently; the store table gave a model the published figure of another family that shared its name, and export
suggested a version the store does not read."""

import json
import pathlib
import socket

import pytest
import safetensors.torch
import torch

import genserve
import training.train as train
from genserve import cli
from training.evaluate import store_table
from training.export import VersionExists, check_free


def _checkpoint(run, weight: float, epoch: int) -> None:
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.weight, weight)
    optimizers = {"optimizer": torch.optim.Adam(model.parameters())}
    state = {"epoch": epoch, "history": [{"epoch": epoch, "train_losses": {}}], "sessions": []}  # no loss.png
    train._save_checkpoint(run, model, optimizers, state)


def _cut_tensors(real):
    def cut(tensors, filename, metadata=None):  # safetensors' writer, stopped half way through the file
        real(tensors, filename, metadata=metadata)
        data = pathlib.Path(filename).read_bytes()
        pathlib.Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    return cut


def _cut_text(real):
    def cut(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    return cut


@pytest.mark.parametrize(("name", "patch"), [
    ("model.safetensors", (safetensors.torch, "serialize_file", _cut_tensors(safetensors.torch.serialize_file))),
    ("state.json", (pathlib.Path, "write_text", _cut_text(pathlib.Path.write_text))),
])
def test_a_checkpoint_file_stopped_mid_write_keeps_the_last_one_whole(name, patch, tmp_path, monkeypatch):
    _checkpoint(tmp_path, 1.0, epoch=1)
    before = (tmp_path / name).read_bytes()
    monkeypatch.setattr(*patch)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint(tmp_path, 2.0, epoch=2)
    monkeypatch.undo()
    assert (tmp_path / name).read_bytes() == before
    assert torch.equal(safetensors.torch.load_file(tmp_path / "model.safetensors")["weight"],
                       torch.full((2, 2), 1.0 if name == "model.safetensors" else 2.0))
    assert train.trained_epochs(tmp_path) == 1  # what the next resume reads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                         "rng.safetensors", "state.json"]  # no temporary file


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"genserve {genserve.__version__}\n"


def _serve_refusal(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", *argv])
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_an_out_of_range_port_is_named_as_the_user_gave_it(flag, monkeypatch, tmp_path):
    env = "GENSERVE_" + flag.removeprefix("--").replace("-", "_").upper()
    monkeypatch.delenv(env, raising=False)
    assert _serve_refusal([flag, "70000"]).startswith(f"genserve: bad setting: {flag}: ")
    monkeypatch.setenv(env, "70000")
    assert _serve_refusal([]).startswith(f"genserve: bad setting: {env}: ")
    assert _serve_refusal([flag, "70001"]).startswith(f"genserve: bad setting: {flag}: ")  # the flag wins


def test_a_taken_port_is_named_as_the_user_gave_it(monkeypatch, tmp_path):
    monkeypatch.setenv("GENSERVE_HOST", "127.0.0.1")
    monkeypatch.delenv("GENSERVE_GRPC_PORT", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("GENSERVE_PORT", str(taken.getsockname()[1]))
        from_env = _serve_refusal(["--grpc-port", "0", "--models", str(tmp_path)])
    assert from_env.endswith("; give another GENSERVE_PORT"), from_env


IGNORED = [
    (["eval", "runs/x", "--quality"], "--quality does nothing with run_dir"),
    (["eval", "runs/x", "--models", "elsewhere"], "--models does nothing with run_dir"),
    (["eval", "--no-baseline"], "--no-baseline applies only with run_dir"),
    (["eval", "--n", "50"], "--n applies only with --quality"),
    (["eval", "runs/x", "--n", "50"], "--n applies only with --quality"),
    (["eval", "--json", "q.json"], "--json applies only with --quality"),
    (["export", "runs/x", "--reuse-eval", "--no-baseline"], "--no-baseline does nothing with --reuse-eval"),
]


@pytest.mark.parametrize(("argv", "said"), IGNORED)
def test_an_option_that_would_do_nothing_is_a_usage_error_naming_both(argv, said, capsys, monkeypatch):
    for command in ("eval", "export"):  # refused before anything runs
        monkeypatch.setattr(cli, f"_{command}", lambda args: pytest.fail("ran"))
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"genserve {argv[0]}: error: {said}: ")


@pytest.mark.parametrize("argv", [["eval", "runs/x", "--no-baseline"], ["eval", "--quality", "--n", "50", "--json",
                                  "q.json", "--models", "m"], ["export", "runs/x", "--reuse-eval"],
                                  ["export", "runs/x", "--no-baseline"], ["eval", "--models", "models"]])
def test_the_combinations_that_act_are_taken(argv, monkeypatch):
    ran = []
    for command in ("eval", "export"):
        monkeypatch.setattr(cli, f"_{command}", ran.append)
    cli.main(argv)
    assert [args.command for args in ran] == [argv[0]]


def _manifest(root, name: str, family: str) -> None:
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(json.dumps({
        "name": name, "family": family, "data": {"shape": [1, 28, 28]},
        "metrics": {"dataset": "mnist5k-binarized", "test_nll_nats": 90.0}}))


def test_the_published_figure_goes_only_to_a_model_of_its_family(tmp_path):
    _manifest(tmp_path, "vae", "hvae")  # an hvae exported as `--name vae`: no 1-layer VAE
    _manifest(tmp_path, "pixelcnn", "pixelcnn")
    rows = [[cell.strip() for cell in row.split("|")[1:-1]] for row in store_table(tmp_path).splitlines()[2:]]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("pixelcnn", "pixelcnn", "81.30 (PixelCNN; van den Oord et al. 2016)"), ("vae", "hvae", "")]


def test_export_suggests_only_a_version_the_store_reads(tmp_path):
    for name in ("1", "2", "1" + "0" * 19):  # 20 digits: the store does not read it as a version
        (tmp_path / "pixelcnn" / name).mkdir(parents=True)
    with pytest.raises(VersionExists, match=r"export as --version 3 \(the next free version\)"):
        check_free(tmp_path / "pixelcnn" / "1", force=False)
