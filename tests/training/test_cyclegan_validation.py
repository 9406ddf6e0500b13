"""cyclegan's validation split: the rows that `held_out` scores are never among the rows that training's batches draw
from domain a (the train setting max_train must stop before them), shown on a tiny split where every row is
distinct, and checked for every config that holds rows out."""

import json
from pathlib import Path

import numpy as np
import pytest

from training import train
from training.data import Split, mnist5k
from training.families import cyclegan

HOLDING_OUT = [path for path in sorted((Path(train.__file__).parent / "configs").glob("cyclegan*.json"))
               if json.loads(path.read_text())["model"].get("validation")]


def _rows_trained_on(split: Split, settings: dict, epochs: int = 2) -> set[int]:
    """The row numbers of every image the training loop's batches yield (each image holds its row number)."""
    return {int(image[0, 0, 0]) for epoch in range(epochs) for _, x, _ in train._batches(split, settings, epoch)
            for image in x.numpy()}


def _held_out_rows(split: Split, validation: int) -> set[int]:
    model = cyclegan.CycleGAN(cyclegan.CycleGANConfig(channels=2, residual_blocks=1, critic_channels=2,
                                                      validation=validation))
    x, _ = cyclegan.held_out(model, split)["a"]
    return {int(image[0, 0, 0]) for image in x}


@pytest.fixture
def tiny() -> Split:
    rows = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None, None], (40, 1, 28, 28)).copy()
    return Split("tiny", rows, np.arange(40) % 10, rows[:4], np.arange(4), levels=256)


def test_held_out_rows_are_the_last_ones_and_disjoint_from_the_trained_rows(tiny):
    settings = {"epochs": 2, "batch_size": 8, "seed": 0, "max_train": 32}
    trained, held = _rows_trained_on(tiny, settings), _held_out_rows(tiny, validation=8)
    assert held == set(range(32, 40)) and trained == set(range(32))
    assert not trained & held
    # the check can fail: a max_train past the held-out rows trains on some of them
    assert _rows_trained_on(tiny, settings | {"max_train": 36}) & held == set(range(32, 36))


@pytest.fixture(scope="module")
def mnist5k_train_rows() -> int:
    return len(mnist5k().x_train)


@pytest.mark.parametrize("path", HOLDING_OUT, ids=lambda path: path.stem)
def test_every_config_that_holds_rows_out_stops_its_batches_before_them(path, mnist5k_train_rows):
    config = json.loads(path.read_text())
    assert config["train"]["max_train"] + config["model"]["validation"] <= mnist5k_train_rows
