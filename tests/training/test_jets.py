"""The jet-image simulator: determinism, pT conservation, the preprocessing's geometry, the observables' maths."""

import numpy as np
import pytest

from training.data import jets


@pytest.fixture(scope="module")
def simulated() -> dict[str, np.ndarray]:
    return {name: jets.simulate(300, label, seed=5) for label, name in enumerate(jets.CLASSES)}


def test_seeded_and_non_negative(simulated):
    again = jets.simulate(300, 1, seed=5)
    assert np.array_equal(again, simulated["w"])
    assert not np.array_equal(jets.simulate(300, 1, seed=6), again)
    for images in simulated.values():
        assert images.shape == (300, 25, 25) and images.min() >= 0


def test_preprocessing_centres_rotates_flips_and_keeps_pt():
    """Leading particle (100 GeV) at the centre, the second subjet (50 GeV, 0.5 away) straight down, the third
    (10 GeV, 0.4 from the leading one, to the left once rotated) flipped to the right; a fourth outside is lost."""
    lead = np.array([0.3, 0.2])
    particles = np.array([[100, *lead], [50, *lead + [0.5, 0]], [10, *lead + [0, -0.4]], [5, *lead + [2.0, 0]]])
    image = jets.preprocess(particles)
    expected = np.zeros((25, 25))
    expected[12, 12], expected[17, 12], expected[12, 16] = 100, 50, 10
    np.testing.assert_allclose(image, expected)
    assert image.sum() == pytest.approx(160.0)  # every particle inside the window, its pT in exactly one pixel


def test_simulated_jets_are_centred_rotated_and_flipped(simulated):
    for images in simulated.values():
        flat = images.reshape(len(images), -1)
        assert (flat.argmax(1) == 12 * 25 + 12).mean() > 0.85  # the leading subjet's core is the centre pixel
        assert (images[:, 13:].sum((1, 2)) > images[:, :12].sum((1, 2))).mean() > 0.7  # the second subjet below
        assert (images[:, :, 13:].sum((1, 2)) >= images[:, :, :12].sum((1, 2))).all()  # more pT on the right


def test_w_mass_peaks_near_the_w_and_qcd_is_lower(simulated):
    w, qcd = jets.jet_mass(simulated["w"]), jets.jet_mass(simulated["qcd"])
    counts, edges = np.histogram(w, bins=np.arange(0, 151, 10))
    assert 70 <= edges[counts.argmax()] <= 90  # the most populated 10 GeV bin
    assert 75 < np.median(w) < 95
    assert np.median(qcd) < np.median(w) - 20
    assert np.median(jets.tau21(simulated["w"])) < np.median(jets.tau21(simulated["qcd"]))  # two prongs


def test_observables_of_two_pixels():
    """Two massless pixels of pT a, b a distance d apart in eta: m^2 = 2 a b (cosh d - 1), pT = a + b, and
    tau_2 = 0 (an axis on each): tau21 = 0; one pixel alone has tau_1 = 0, so tau21 = 0 by definition."""
    image = np.zeros((1, 25, 25))
    image[0, 12, 12], image[0, 12, 17] = 60.0, 40.0  # eta 0 and 0.5, phi 0
    assert jets.jet_mass(image)[0] == pytest.approx(np.sqrt(2 * 60 * 40 * (np.cosh(0.5) - 1)))
    assert jets.jet_pt(image)[0] == pytest.approx(100.0)
    assert jets.tau21(image)[0] == pytest.approx(0.0, abs=1e-12)
    three = image.copy()
    three[0, 2, 12] = 20.0  # a third prong: tau_2 > 0
    assert 0 < jets.tau21(three)[0] < 1


def test_levels_round_trip_within_half_a_log_step():
    pt = np.geomspace(jets.PT_MIN, jets.PT_MAX, 1000)
    back = jets.to_pt(jets.to_levels(pt))
    assert np.all(np.abs(np.log(back / pt)) <= jets.STEP / 2 + 1e-9)
    assert jets.to_levels(np.zeros(3)).tolist() == [0, 0, 0] and jets.to_pt(np.zeros(2)).tolist() == [0, 0]
