import numpy as np

from training.data import digits, mnist5k, mnist5k_binarized


def test_mnist5k_split_is_fixed_and_stratified():
    a, b = mnist5k(), mnist5k()
    assert a.x_train.shape == (4500, 1, 28, 28) and a.x_test.shape == (500, 1, 28, 28)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    full = np.bincount(np.concatenate([a.y_train, a.y_test]), minlength=10) / 5000
    assert np.allclose(np.bincount(a.y_test, minlength=10) / 500, full, atol=0.01)
    assert a.x_train.max() == 255 and a.levels == 256


def test_binarization_is_static_and_matches_intensity():
    a, b = mnist5k_binarized(), mnist5k_binarized()
    assert np.array_equal(a.x_test, b.x_test) and set(np.unique(a.x_train)) == {0, 1}
    grey = mnist5k().x_train.astype(float) / 255
    assert abs(a.x_train.mean() - grey.mean()) < 0.005  # Bernoulli(intensity) in expectation


def test_digits():
    d = digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.max() <= 16 and d.levels == 17
