"""`genserve eval <run_dir>` on a path that is no training run exits with one line naming the path and what it
lacks (as `genserve export` does), never a traceback; checked through the console script and `cli.main`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genserve import cli

REPO = Path(__file__).resolve().parent.parent


def eval_refusal(run_dir: Path) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", str(run_dir)])
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message  # a message, not an exit status
    return message


def test_a_missing_directory_is_one_line_through_the_entry_point(tmp_path):
    missing = tmp_path / "runs" / "nosuch"
    done = subprocess.run([sys.executable, "-m", "genserve.cli", "eval", str(missing)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip() == f"genserve eval: {missing} is not a training run: no such directory"
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_an_exported_model_names_what_it_lacks_and_the_store_table(tmp_path):
    version = tmp_path / "models" / "pixelcnn" / "1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text("{}")
    message = eval_refusal(version)
    assert message.startswith(f"genserve eval: {version} is not a training run: it has no config.json and no "
                              "model.safetensors")
    assert f"genserve eval --models {tmp_path / 'models'}" in message


def test_a_run_without_its_checkpoint_names_the_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"family": "pixelcnn"}))
    message = eval_refusal(tmp_path)
    assert message == f"genserve eval: {tmp_path} is not a training run: it has no model.safetensors"
