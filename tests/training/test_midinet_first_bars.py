"""MidiNet's first bars: how alike a set's bars are (bar_repeats, bar_diversity), and feature matching within the
bars after an empty bar apart from the others (first_bar_matching)."""

import numpy as np
import pytest
import torch

from training.families import midinet

R = midinet.REST


def bar(pitch: int, rests: int = 0) -> list[int]:
    return [R] * rests + [pitch] * (midinet.STEPS - rests)


def test_bar_repeats_is_the_chance_that_two_bars_drawn_are_the_same():
    a, b, c = bar(0), bar(4, rests=12), bar(7)
    assert midinet.bar_repeats(np.array([a, a, b, c])) == pytest.approx(2 / 12)  # the ordered pairs (a, a) of 12
    assert midinet.bar_repeats(np.array([a, a, a, a])) == 1
    assert midinet.bar_repeats(np.array([a, b, c])) == 0
    assert midinet.bar_repeats(np.array([a, a, b, b] * 25)) == pytest.approx(49 / 99)  # not the distinct share 0.02


def test_bar_diversity_tells_first_bars_from_later_ones():
    pieces = [np.array([bar(0, rests=12), bar(pitch), bar(pitch + 1)]) for pitch in (2, 5, 9, 14)]
    pieces[3][0] = bar(3, rests=12)  # three pieces of four open alike
    diversity = midinet.bar_diversity(pieces, bars=3)
    assert diversity["first_bars_distinct"] == pytest.approx(2 / 4)
    assert diversity["first_bars_repeat"] == pytest.approx(6 / 12)
    assert diversity["later_bars_repeat"] == 0


def test_a_short_piece_counts_at_the_positions_it_reaches():
    pieces = [np.array([bar(0), bar(1), bar(2)]), np.array([bar(0), bar(1), bar(2)]), np.array([bar(5)])]
    diversity = midinet.bar_diversity(pieces, bars=4)  # the fourth bar: none reaches it
    assert diversity["first_bars_repeat"] == pytest.approx(2 / 6) and diversity["later_bars_repeat"] == 1


def test_one_bar_pieces_have_no_later_bars_to_compare():
    """eval_bars 1: no later_bars_repeat (it was NaN, from the mean of nothing)."""
    diversity = midinet.bar_diversity([np.array([bar(0)]), np.array([bar(1)])], bars=1)
    assert diversity == {"first_bars_distinct": 1.0, "first_bars_repeat": 0.0}


def pairs(previous: list[list[int]]) -> torch.Tensor:
    """Pairs x [B, 2, 16] with the given previous bars (the bars themselves all C)."""
    return torch.tensor([[p, bar(0)] for p in previous])


def test_first_bar_matching_matches_the_bars_after_an_empty_bar_apart():
    x = pairs([[R] * 16, bar(3), [R] * 16, bar(3, rests=15)])  # the last follows a bar that is not empty
    off, on = midinet.MidiNetConfig(), midinet.MidiNetConfig(first_bar_matching=True)
    assert [g.tolist() for g in midinet._matching_groups(off, x)] == [[True] * 4]
    assert [g.tolist() for g in midinet._matching_groups(on, x)] == [[True, False, True, False],
                                                                      [False, True, False, True]]
    assert [g.tolist() for g in midinet._matching_groups(on, pairs([bar(3)] * 2))] == [[True, True]]


def test_a_generator_that_draws_an_average_bar_for_every_condition_is_matched_only_with_the_groups():
    """Real batch: first bars all rests but the last beat, later bars full; a generator drawing the batch's mean bar
    (and mean features) whatever comes before it meets the whole batch's feature matching (0) but not the grouped
    one."""
    real = torch.stack([midinet.one_hot(torch.tensor([bar(7, rests=12)]))[0]] * 2 +
                       [midinet.one_hot(torch.tensor([bar(2)]))[0]] * 6)  # [8, L, 16]
    features = real[:, :4, ::2]  # stands in for the discriminator's first layer [8, D, 8]
    fake = tuple(t.mean(0, keepdim=True).expand_as(t) for t in (real, features))
    x = pairs([[R] * 16] * 2 + [bar(2)] * 6)
    whole, grouped = (midinet.feature_matching(midinet.MidiNetConfig(first_bar_matching=on), x, (real, features), fake)
                      for on in (False, True))
    assert whole < 1e-9 and grouped > 1
