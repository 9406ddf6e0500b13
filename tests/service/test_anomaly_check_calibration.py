"""The statistics of benchmarks/anomaly.py --check-calibration without models or a server: the fresh digits' flag
count (fresh_flags: the served percentile against the entry's quantiles, at least 100 q), its binomial p-value
(against an exact sum and scipy's binomtest), and the permutation p-value over random splits of the pooled scores
(permutation_tests: against the exact distribution over every split, enumerated, and its (1 + #{permuted >=
observed}) / (1 + draws) at both extremes)."""

from itertools import combinations
from math import comb

import numpy as np
import pytest
from scipy import stats

from benchmarks import anomaly as bench
from service.engine import anomaly

QUANTILES = bench.QUANTILES  # the grid a shipped calibration stores


def calibrated(held_out: np.ndarray) -> dict:
    return anomaly.calibration_for(held_out, "synthetic", "half A", QUANTILES)


def weibull(cal: np.ndarray, q: float) -> np.ndarray:
    """The quantile q at rank h = q (n + 1) of each row of cal [S, n], interpolated by hand (1 <= h < n here)."""
    s = np.sort(cal, axis=-1)
    h = q * (cal.shape[-1] + 1)
    lo = int(np.floor(h))
    return s[..., lo - 1] + (h - lo) * (s[..., lo] - s[..., lo - 1])


def row(held_out: np.ndarray, fresh: np.ndarray, q: float) -> dict:
    """A check_calibration row, its flags from fresh_flags as the command counts them."""
    r = {"model": "synthetic", "n_cal": len(held_out), "n_fresh": len(fresh), "expected_fpr": 1 - q,
         "quantile_method": anomaly.QUANTILE_METHOD, "held_out_scores": held_out.tolist(),
         "fresh_scores": fresh.tolist()}
    return r | bench.fresh_flags(calibrated(held_out), fresh, q, np.arange(len(fresh)))


def test_the_flags_are_the_fresh_scores_at_or_above_the_rank_q_n_plus_1_threshold():
    """250 held-out scores 0..249: the 0.99 threshold sits at rank 0.99 * 251 = 248.49, between the sorted 248th and
    249th scores (247 and 248), at 247.49. Scores beyond the stored range clip to percentile 0 and 100."""
    held_out = np.random.default_rng(0).permutation(250).astype(float)
    fresh = np.array([-1e6, 0.0, 120.0, 247.48, 247.5, 249.0, 1e6])
    index = np.array([7, 11, 13, 17, 19, 23, 29])  # test-split indices of the fresh digits
    assert weibull(held_out[None], 0.99)[0] == pytest.approx(247.49)
    got = bench.fresh_flags(calibrated(held_out), fresh, 0.99, index)
    assert got["flags"] == 3 and got["flagged"] == [19, 23, 29] and got["fpr"] == 3 / 7
    assert got["binomial_p"] == pytest.approx(stats.binomtest(3, 7, 0.01, alternative="greater").pvalue, rel=1e-9)
    assert bench.fresh_flags(calibrated(held_out), fresh, 0.5, index)["flagged"] == [17, 19, 23, 29]  # >= 124.5


@pytest.mark.parametrize(("flags", "significant"), [(8, True), (3, False), (0, False)])
def test_the_binomial_p_is_the_upper_tail_of_binomial_250_one_percent(flags, significant):
    """8 of 250 fresh scores above every held-out one: P(X >= 8), X ~ Binomial(250, 0.01) = 0.004 (significant);
    3 of 250: 0.24; none: 1. Checked against the exact sum and scipy's binomtest."""
    rng = np.random.default_rng(1)
    held_out = rng.normal(size=250)
    fresh = np.concatenate([rng.uniform(-1.5, 1.5, 250 - flags), rng.uniform(10, 11, flags)])
    got = bench.fresh_flags(calibrated(held_out), fresh, 0.99, np.arange(250))
    exact = 1 - sum(comb(250, i) * 0.01 ** i * 0.99 ** (250 - i) for i in range(flags))
    assert got["flags"] == flags and got["flagged"] == list(range(250 - flags, 250))
    assert got["binomial_p"] == pytest.approx(exact, rel=1e-9, abs=1e-12)
    assert got["binomial_p"] == pytest.approx(stats.binomtest(flags, 250, 0.01, alternative="greater").pvalue,
                                              rel=1e-9)
    assert (got["binomial_p"] < 0.01) == significant


@pytest.mark.parametrize(("fresh_ranks", "significant"), [((12, 13, 14, 15), True), ((1, 5, 9, 13), False)])
def test_the_permutation_p_estimates_the_exact_tail_over_every_split(fresh_ranks, significant):
    """16 pooled scores 0..15, 12 calibrate and 4 are fresh, flagged at q = 0.75: over all C(16, 4) = 1820 splits,
    each thresholded by the hand-written rank-q (n + 1) quantile, the tail P(flags >= observed). The top four flag 4,
    which a split reaches only when its calibration's 10th-smallest score (the threshold is 0.75 of the way from the
    9th to the 10th) lies below all four fresh ones, i.e. when they are 4 of the top 6: 15 / 1820 = 0.008,
    significant. Ranks 1, 5, 9, 13 flag 1: above 0.3. permutation_tests' 2000 random splits estimate the tail within
    4 standard errors (plus the 1 / 2001 of the observed split it counts)."""
    pooled = np.random.default_rng(2).permutation(16).astype(float)  # the splits below are by position
    fresh = np.array(fresh_ranks, float)
    held_out = np.setdiff1d(pooled, fresh)
    r = row(held_out, fresh, 0.75)
    splits = [list(f) for f in combinations(range(16), 4)]
    cal = np.array([np.delete(pooled, f) for f in splits])  # [1820, 12]
    counts = (pooled[splits] >= weibull(cal, 0.75)[:, None]).sum(axis=1)  # [1820]
    observed = int(np.count_nonzero(fresh >= weibull(held_out[None], 0.75)[0]))
    assert r["flags"] == observed  # the served flag counts what the permuted splits count
    exact_p = float(np.mean(counts >= observed))
    assert exact_p == 15 / 1820 if significant else exact_p > 0.3
    bench.permutation_tests([r], seed=0)
    tolerance = 4 * np.sqrt(exact_p * (1 - exact_p) / bench.PERMUTATIONS) + 1 / (1 + bench.PERMUTATIONS)
    assert abs(r["exchangeable_p"] - exact_p) <= tolerance
    assert abs(r["exchangeable_mean"] - counts.mean()) <= 4 * counts.std() / np.sqrt(bench.PERMUTATIONS)
    assert (r["exchangeable_p"] < 0.05) == significant


def test_the_permutation_p_counts_the_observed_split_at_both_ends():
    """Ten fresh scores above all 30 held-out ones flag ten, which no random split reaches (exact p 1 / C(40, 10) and
    a few more): p = 1 / 2001, not 0. Ten below them flag none, which every split reaches: p = 2001 / 2001 = 1."""
    rng = np.random.default_rng(3)
    held_out = rng.normal(size=30)
    top = bench.permutation_tests([row(held_out, rng.uniform(5, 6, 10), 0.9)], seed=0)
    bottom = bench.permutation_tests([row(held_out, rng.uniform(-6, -5, 10), 0.9)], seed=0)
    assert top["flags"] == 10 and top["exchangeable_p"] == 1 / (1 + bench.PERMUTATIONS)
    assert bottom["flags"] == 0 and bottom["exchangeable_p"] == 1.0
