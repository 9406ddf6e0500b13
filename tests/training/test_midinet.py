"""MidiNet: the conditioner's causality by input gradients, the sampler's Gumbel-max maths, export parity, the melody
statistics, and the chorale parser (where music21 is installed)."""

import numpy as np
import pytest
import torch

from training.data import music
from training.export import export_function
from training.families import midinet

TINY = midinet.MidiNetConfig(latent=4, channels=4, conditioner=2, critic=4, hidden=8)


def tiny_model(seed: int = 0) -> midinet.MidiNet:
    torch.manual_seed(seed)
    model = midinet.MidiNet(TINY)
    for module in model.modules():  # non-trivial batch-norm statistics, so eval mode is not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_a_bar_depends_on_the_bar_before_it_and_on_no_other():
    """d logits(bar t) / d bar s is nonzero for s = t - 1 only: the conditioner reads the previous bar, never the bar
    itself or a later one (teacher forcing, as in training)."""
    model = tiny_model()
    b, t = 2, 4
    bars = midinet.one_hot(torch.randint(0, midinet.LEVELS, (b * t, midinet.STEPS))).view(b, t, midinet.LEVELS, -1)
    bars.requires_grad_(True)
    z, chords = torch.rand(b, t, TINY.latent) * 2 - 1, torch.randint(0, midinet.CHORDS, (b, t))
    logits = midinet.teacher_forced_logits(model, bars, z, chords)  # [B, T, L, 16]
    for target in range(t):
        (grad,) = torch.autograd.grad(logits[:, target].sum(), bars, retain_graph=True)
        moved = grad.abs().sum(dim=(0, 2, 3)) > 0  # [T]: which bars bar `target` depends on
        assert moved.tolist() == [s == target - 1 for s in range(t)], (target, moved)


@pytest.mark.parametrize("temperature", [0.5, 1.5])
def test_the_step_samples_the_softmax_of_logits_over_temperature(temperature):
    """With z fixed and the Gumbel uniforms varying, each sixteenth's pitch frequencies match softmax(logits / T)."""
    model = tiny_model(1)
    with torch.no_grad():  # logits far enough apart that T matters
        model.generator.out.weight.mul_(20)
    step, n = midinet.SampleStep(model), 4000
    g = torch.Generator().manual_seed(0)
    z_uniforms = torch.rand(1, TINY.latent, generator=g).expand(n, -1)
    noise = torch.cat([z_uniforms, torch.rand(n, midinet.LEVELS * midinet.STEPS, generator=g)], 1)
    previous = torch.randint(0, midinet.LEVELS, (1, midinet.STEPS), generator=g).expand(n, -1)
    chords = torch.full((n,), 3)
    with torch.no_grad():
        x = step(previous, noise, torch.full((n,), temperature), chords)  # [n, 16]
        logits = model.generator(z_uniforms[:1] * 2 - 1, chords[:1], midinet.one_hot(previous[:1]))[0]  # [L, 16]
    expected = torch.softmax(logits / temperature, dim=0)  # [L, 16]
    assert expected.max() > 0.2  # not near uniform
    for s in (0, 7, 15):
        observed = torch.bincount(x[:, s], minlength=midinet.LEVELS) / n
        assert (observed - expected[:, s]).abs().max() < 0.03


def test_sample_step_export_parity(tmp_path, three_ways):
    step = midinet.SampleStep(tiny_model(2))
    g = torch.Generator().manual_seed(0)
    inputs = {"x_prev": torch.randint(0, midinet.LEVELS, (5, midinet.STEPS), generator=g),
              "noise": torch.rand(5, TINY.latent + midinet.LEVELS * midinet.STEPS, generator=g),
              "temperature": torch.tensor([1.0, 0.5, 2.0, 1.0, 0.1]), "chords": torch.tensor([0, 24, 5, 13, 24])}
    export_function(tmp_path, "sample_step", step, inputs, ["x"])
    eager, onnx_out, scripted = three_ways(tmp_path, "sample_step", step, inputs)
    assert eager[0].shape == (5, midinet.STEPS) and eager[0].dtype == np.int64
    assert np.array_equal(onnx_out[0], eager[0]) and np.array_equal(scripted[0], eager[0])


def test_notes_merge_runs_and_the_statistics_count_them():
    r = music.REST
    bars = np.array([[0] * 4 + [2] * 4 + [r] * 4 + [4] * 4,
                     [4] * 4 + [6] * 12,  # the first note goes on across the bar line
                     [r] * 16])
    assert music.notes(bars) == [(music.LOW, 0, 4), (music.LOW + 2, 4, 4), (music.LOW + 4, 12, 8),
                                 (music.LOW + 6, 20, 12)]
    histogram = music.pitch_class_histogram([bars])
    assert histogram.sum() == pytest.approx(1.0)
    stats = music.statistics([bars], histogram)
    assert stats["pitch_class_tv"] == 0 and stats["empty_bars"] == pytest.approx(1 / 3)
    in_key = np.isin((np.array([0, 2, 4, 6]) + music.LOW) % 12, music.IN_KEY).mean()
    assert stats["in_key"] == pytest.approx(in_key) and stats["mean_abs_interval"] == 2


def test_the_random_baseline_keeps_the_rhythm_and_draws_pitches_uniformly():
    rng = np.random.default_rng(0)
    bars = np.array([[3] * 4 + [music.REST] * 4 + [5] * 8] * 200)
    (random,) = music.random_pitches([bars], rng)
    assert np.array_equal(random == music.REST, bars == music.REST)
    starts = random.reshape(-1)[::4]  # every note is 4 steps
    counts = np.bincount(starts[starts != music.REST], minlength=music.PITCHES)
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()


def test_a_parsed_chorale_is_in_c_major_or_a_minor():
    corpus = pytest.importorskip("music21.corpus", reason="music21 (the train extra) is not installed")
    pieces = (music._piece(path) for path in sorted(map(str, corpus.getComposer("bach"))))
    bars, chords = next(piece for piece in pieces if piece is not None)  # the first in 4/4 with four parts
    assert bars.shape[1] == music.STEPS and len(chords) == len(bars)
    assert bars.min() >= 0 and bars.max() <= music.REST
    stats = music.statistics([bars], music.pitch_class_histogram([bars]))
    assert stats["in_key"] > 0.85 and stats["notes_per_bar"] >= 1


def test_chord_tones_count_the_notes_in_each_bars_triad():
    c_major, a_minor, none = music.CHORDS.index("C"), music.CHORDS.index("Am"), music.NO_CHORD
    e, f, a = (p - music.LOW for p in (64, 65, 69))  # E4, F4, A4: E is in C and in Am, F in neither, A in Am
    bars = np.array([[e] * 8 + [f] * 8, [a] * 16, [f] * 16])
    assert music.chord_tones([bars], [[c_major, a_minor, none]]) == pytest.approx(2 / 3)  # E, F | A | (left out)
    assert music.chord_tones([bars], [[a_minor, c_major, c_major]]) == pytest.approx(1 / 4)  # E, F | A | F
