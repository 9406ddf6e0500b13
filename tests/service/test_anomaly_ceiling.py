"""benchmarks/anomaly_ceiling.py's supervised reference detector: trained on an easy kind it separates it, trained on
two samples of the same digits it does not, and its per-class breakdown follows the very digits the report kinds
transform."""

import numpy as np
import pytest
import torch

from benchmarks import anomaly_ceiling as ceiling
from benchmarks.anomaly import auroc, report_kinds
from training.data import load


@pytest.fixture(scope="module")
def data():
    return load("mnist5k")  # a few seconds: once for every test


def trained_auroc(train_in: np.ndarray, train_out: np.ndarray, test_in: np.ndarray, test_out: np.ndarray) -> float:
    torch.set_num_threads(1)
    net = ceiling.train_detector(train_in, train_out, 256, epochs=2, seed=0)
    return auroc(ceiling.detector_scores(net, test_in, 256), ceiling.detector_scores(net, test_out, 256))


def test_the_detector_separates_an_easy_kind_it_was_trained_on(data):
    train, test = data.x_train[:300], data.x_test[:100]
    assert trained_auroc(train, 255 - train, test, 255 - test[::-1]) > 0.9


def test_the_detector_stays_near_chance_on_identical_data(data):
    a = trained_auroc(data.x_train[:300], data.x_train[300:600], data.x_test[:100], data.x_test[100:200])
    assert abs(a - 0.5) < 0.1  # its own training sets would give 0.615 (overfit)


def test_the_classes_are_those_of_the_digits_the_report_kinds_transform(data):
    test = data.x_test[:250]
    index = ceiling.source_classes([0, 2], np.arange(250), 64)  # identity labels: the source digits' indices
    flipped = report_kinds(test, 64, np.random.default_rng([0, 2]))["flipped"]
    assert np.array_equal(flipped[:, :, :, ::-1], test[index])
