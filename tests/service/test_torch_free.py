"""The serving install without torch (`pip install genserve`, no extras), with torch made unimportable in every
process the test starts (a sitecustomize that puts a blocker first on sys.meta_path; spawned engine workers
inherit it through PYTHONPATH): `genserve serve` serves an ONNX model, GENSERVE_RUNTIME=torchscript is refused
naming the torchscript extra, and the training commands name the train extra."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.test_server import REPO, free_port, serve_command, stop, wait_ready

MODEL = "gan"  # a shipped model with ONNX files (2.4 MB)
START_TIMEOUT_S = 60.0

BLOCKER = '''
import sys


class NoTorch:
    """As if torch were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoTorch())
'''


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict[str, str]:
    """An environment in which no Python process can import torch."""
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    env.update(PYTHONPATH=str(folder), OMP_NUM_THREADS="1", GENSERVE_INTRA_OP_THREADS="1", PYTHONUNBUFFERED="1")
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr, probe.stderr
    return env


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store holding one shipped ONNX model."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / MODEL, models / MODEL)
    return models


def serve(store: Path, env: dict[str, str], port: int, logs: Path) -> subprocess.Popen:
    with open(logs, "wb") as err:
        return subprocess.Popen(serve_command(store, port), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL)


def test_serves_onnx_without_torch(store, no_torch_env, tmp_path):
    port = free_port()
    process = serve(store, no_torch_env, port, tmp_path / "stderr")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, tmp_path)  # its stderr is tmp_path / "stderr"
        answers = [httpx.post(f"{base}/v1/models/{MODEL}/sample", json={"n": 2, "seed": 5, "format": "array"},
                              timeout=60) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        samples = answers[0].json()["samples"]
        assert len(samples) == 2 and samples == answers[1].json()["samples"]  # seeded: the same images again
        images = np.asarray(samples)
        assert images.shape == (2, 28, 28) and images.min() >= 0 and images.max() <= 255  # 256-level digits
    finally:
        stop(process)


def test_torchscript_runtime_names_its_extra(store, no_torch_env, tmp_path):
    env = no_torch_env | {"GENSERVE_RUNTIME": "torchscript"}
    process = serve(store, env, free_port(), tmp_path / "stderr")
    try:
        process.wait(timeout=START_TIMEOUT_S)
    finally:
        stop(process)
    assert process.returncode != 0
    stderr = (tmp_path / "stderr").read_text()
    assert "pip install 'genserve[torchscript]'" in stderr and "Traceback" not in stderr  # one line, no traceback


@pytest.mark.parametrize("command", [["train", "pixelcnn-tiny"], ["eval", "--models", "models"]])
def test_training_commands_name_the_train_extra(no_torch_env, command):
    answer = subprocess.run([sys.executable, "-m", "genserve", *command], cwd=REPO, env=no_torch_env,
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 1
    assert answer.stderr.strip().endswith("(torch is not installed): pip install 'genserve[train]'"), answer.stderr
