"""MidiNet: a melody GAN that draws one bar at a time, conditioned on the previous bar and the bar's chord.

MidiNet (Yang, Chou & Yang 2017, "MidiNet: A Convolutional Generative Adversarial Network for Symbolic-domain
Music Generation"). A bar is STEPS = 16 sixteenths, each one of PITCHES pitches or a rest (monophonic:
training/data/music.py), seen as one-hot columns [L = PITCHES + 1, 16]. The generator maps noise z ~ U(-1, 1)
and the chord (one-hot over 24 triads and "none") through two dense layers to [C, 2] and transposed
convolutions over time 2 -> 4 -> 8 -> 16, then a 1x1 convolution over the pitch axis to logits [L, 16]; before
every layer it concatenates the chord and the conditioner's feature map of the same length. The conditioner is a
CNN over the previous bar: a convolution across the whole pitch axis, then strided convolutions over time
16 -> 8 -> 4 -> 2 (the paper's 2-D convolutions over [128, 16] with full-height kernels are these 1-D ones).

Training (the paper's recipe): the non-saturating GAN loss with one-sided label smoothing (real target 0.9), two
generator updates per discriminator update, and feature matching: the generator also minimizes
    mean_weight * ||E x - E G(z)||^2 + feature_weight * ||E f(x) - E f(G(z))||^2,
f the discriminator's first layer. With first_bar_matching (an experiment: training/configs/midinet-first-bars.json)
the two means are matched within each of two groups, the bars that follow an empty bar (every first bar) and the
others, and the two terms summed. The whole batch's mean is nearly that of later bars: first bars are 6.6% of the
pairs, with 9 rest steps of 16 where a later bar has 1.7. Matched in their own group, first bars stopped collapsing
(over epochs 20-52 of a 52-epoch run, seed 1: bar_repeats of first bars at most 0.017 against up to 0.97 without
it), but the melodies came out busier and less in key (median 5.9 notes per bar against 4.0, 0.94 of notes in key
against 0.996), so it is not the shipped config. Nor is any of that run's saved epochs 20-52: judged on the training
pieces (seeds 1 and 2) by the thresholds that its epoch 52 failed on the test pieces, none met them all (chord
tones under chords reached 0.456 only at epochs 37-38, whose pitch-class distance was 0.19-0.27).
The generator's bars reach the discriminator as each sixteenth's softmax (as the
paper's sigmoid outputs do), which pushes the generator towards one-hot columns, or with relaxation "gumbel" as
straight-through Gumbel-softmax samples (one-hot forward, softmax gradient). The discriminator sees the bar, its
chord and (unlike the paper's) the previous bar, so that it judges how a bar follows the last. The chord is
replaced by "none" with probability chord_dropout, so that one model samples with and without chords.

Exported: `sample_step` (x_prev [B, 16] pitch indices, noise [B, latent + 16 L] uniform, temperature [B],
chords [B] chord index) -> x [B, 16]: z = 2 u - 1 from the first `latent` uniforms, then Gumbel-max over
logits / temperature at each sixteenth from the rest. The service rolls it bar by bar (procedure autoregressive,
the previous bar as x_prev, all rests before the first; the chord a per-step control). No likelihood:
`evaluate_test` compares melodies of generated, corpus and random pieces (training/data/music.py's statistics).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import music

STEPS, LEVELS, REST, CHORDS = music.STEPS, music.LEVELS, music.REST, music.NO_CHORD + 1


@dataclass
class MidiNetConfig:
    latent: int = 32
    channels: int = 32  # C: the generator's width
    conditioner: int = 16  # the conditioner's width at every length
    critic: int = 32  # D: the discriminator's first width (2D after)
    hidden: int = 256  # the generator's first dense layer
    mean_weight: float = 0.1  # lambda_1: feature matching of the bars themselves
    feature_weight: float = 1.0  # lambda_2: feature matching of the discriminator's first layer
    real_target: float = 0.9  # one-sided label smoothing
    generator_steps: int = 2  # generator updates per discriminator update
    chord_dropout: float = 0.3
    relaxation: str = "softmax"  # how the discriminator sees generated bars: "softmax" or "gumbel" (one-hot)
    critic_kernel: int = 2  # the discriminator's first convolution over time (stride 2): 4 also sees steps 1-2, 3-4
    minibatch_std: bool = False  # the discriminator also sees its first features' spread over the batch
    first_bar_matching: bool = False  # feature matching within bars after an empty bar and within the others
    eval_pieces: int = 200  # generated pieces that evaluate_test measures
    eval_bars: int = 8


def one_hot(bars: torch.Tensor) -> torch.Tensor:
    """Pitch indices [B, 16] -> one-hot columns [B, L, 16] float."""
    return F.one_hot(bars, LEVELS).transpose(1, 2).float()


def chord_map(chords: torch.Tensor, length: int) -> torch.Tensor:
    """Chord indices [B] -> one-hot [B, CHORDS, length], the same at every time step."""
    return F.one_hot(chords, CHORDS).float().unsqueeze(2).expand(-1, -1, length)


class Conditioner(nn.Module):
    """Previous bar [B, L, 16] -> feature maps [[B, K, 2], [B, K, 4], [B, K, 8], [B, K, 16]]."""

    def __init__(self, c: MidiNetConfig):
        super().__init__()
        k = c.conditioner
        self.pitch = nn.Sequential(nn.Conv1d(LEVELS, k, 1), nn.BatchNorm1d(k), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(nn.Sequential(nn.Conv1d(k, k, 2, 2), nn.BatchNorm1d(k), nn.LeakyReLU(0.2))
                                  for _ in range(3))

    def forward(self, previous: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.pitch(previous)]
        for layer in self.down:
            maps.insert(0, layer(maps[0]))
        return maps


class Generator(nn.Module):
    """(z [B, latent], chords [B], previous bar [B, L, 16]) -> logits [B, L, 16] over pitches and the rest."""

    def __init__(self, c: MidiNetConfig):
        super().__init__()
        self.channels = c.channels
        self.conditioner = Conditioner(c)
        self.dense = nn.Sequential(nn.Linear(c.latent + CHORDS, c.hidden), nn.BatchNorm1d(c.hidden), nn.ReLU(),
                                   nn.Linear(c.hidden, c.channels * 2), nn.BatchNorm1d(c.channels * 2), nn.ReLU())
        width = c.channels + c.conditioner + CHORDS  # each layer's input: its own, the conditioner's, the chord
        self.up = nn.ModuleList(nn.Sequential(nn.ConvTranspose1d(width, c.channels, 2, 2),
                                              nn.BatchNorm1d(c.channels), nn.ReLU()) for _ in range(3))
        self.out = nn.Conv1d(width, LEVELS, 1)

    def forward(self, z: torch.Tensor, chords: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        maps = self.conditioner(previous)  # lengths 2, 4, 8, 16
        h = self.dense(torch.cat([z, F.one_hot(chords, CHORDS).float()], 1)).view(-1, self.channels, 2)
        for layer, condition, length in zip(self.up, maps, (2, 4, 8), strict=False):  # [B, C, 2] -> 4 -> 8 -> 16
            h = layer(torch.cat([h, condition, chord_map(chords, length)], 1))
        return self.out(torch.cat([h, maps[-1], chord_map(chords, STEPS)], 1))  # [B, L, 16]


class Discriminator(nn.Module):
    """(bar [B, L, 16], chords [B], previous bar [B, L, 16]) -> (logit [B], first-layer features [B, D, 8]).
    With minibatch_std the later layers also see the features' standard deviation over the batch, averaged, as one
    more channel (Karras et al. 2018), which tells a batch of one repeated melody from real ones."""

    def __init__(self, c: MidiNetConfig):
        super().__init__()
        d, k, self.minibatch_std = c.critic, c.critic_kernel, c.minibatch_std
        self.first = nn.Sequential(nn.Conv1d(2 * LEVELS + CHORDS, d, k, 2, padding=(k - 2) // 2), nn.LeakyReLU(0.2))
        self.rest = nn.Sequential(nn.Conv1d(d + c.minibatch_std, 2 * d, 2, 2), nn.BatchNorm1d(2 * d),
                                  nn.LeakyReLU(0.2),  # [B, 2D, 4]
                                  nn.Flatten(), nn.Linear(8 * d, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    def forward(self, bar: torch.Tensor, chords: torch.Tensor, previous: torch.Tensor):
        features = self.first(torch.cat([bar, previous, chord_map(chords, STEPS)], 1))  # [B, D, 8]
        h = features
        if self.minibatch_std:
            spread = features.std(0).mean().expand(len(features), 1, features.shape[2])  # [B, 1, 8]
            h = torch.cat([features, spread], 1)
        return self.rest(h).squeeze(1), features


class MidiNet(nn.Module):
    def __init__(self, config: MidiNetConfig):
        super().__init__()
        self.config = config
        self.generator, self.discriminator = Generator(config), Discriminator(config)

    def prior(self, b: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(b, self.config.latent, generator=generator) * 2 - 1

    def fake(self, chords: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Generated bars [B, L, 16] as the discriminator sees them: each sixteenth's softmax over pitches and the
        rest, or (relaxation "gumbel") one-hot samples by straight-through Gumbel-softmax."""
        logits = self.generator(self.prior(len(chords)), chords, previous)
        if self.config.relaxation == "gumbel":
            return F.gumbel_softmax(logits, tau=1.0, hard=True, dim=1)
        return torch.softmax(logits, dim=1)


def build(model_config: dict, split) -> MidiNet:
    if split.levels != LEVELS or split.shape != (2, STEPS):
        raise ValueError(f"MidiNet needs pairs of bars [2, {STEPS}] of {LEVELS} levels, got {split.shape}")
    return MidiNet(MidiNetConfig(**model_config))


def optimizers(model: MidiNet, settings: dict) -> dict[str, torch.optim.Optimizer]:
    betas = tuple(settings.get("betas", (0.5, 0.999)))
    return {"discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=settings["lr"], betas=betas),
            "generator": torch.optim.Adam(model.generator.parameters(), lr=settings["lr"], betas=betas)}


def _inputs(model: MidiNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs x [B, 2, 16] and chords y [B] -> (bar, previous) one-hot [B, L, 16] and the chords, each replaced
    by "none" with probability chord_dropout while training."""
    if model.training:
        y = torch.where(torch.rand(len(y)) < model.config.chord_dropout, torch.full_like(y, CHORDS - 1), y)
    return one_hot(x[:, 1]), one_hot(x[:, 0]), y


def _discriminator_loss(model: MidiNet, real: torch.Tensor, previous: torch.Tensor, chords: torch.Tensor,
                        fake: torch.Tensor) -> torch.Tensor:
    real_logit, _ = model.discriminator(real, chords, previous)
    fake_logit, _ = model.discriminator(fake, chords, previous)
    target = torch.full_like(real_logit, model.config.real_target)
    return F.binary_cross_entropy_with_logits(real_logit, target) + F.softplus(fake_logit).mean()


def train_step(model: MidiNet, optimizers: dict, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
    """One discriminator update and generator_steps generator updates on pairs x [B, 2, 16], chords y [B]."""
    c = model.config
    real, previous, chords = _inputs(model, x, y)
    with torch.no_grad():
        fake = model.fake(chords, previous)
    critic = _discriminator_loss(model, real, previous, chords, fake)
    _step(optimizers["discriminator"], critic)
    with torch.no_grad():
        _, real_features = model.discriminator(real, chords, previous)
    for _ in range(c.generator_steps):
        fake = model.fake(chords, previous)
        logit, features = model.discriminator(fake, chords, previous)
        matching = feature_matching(c, x, (real, real_features), (fake, features))
        generator = F.softplus(-logit).mean() + matching
        _step(optimizers["generator"], generator)
    return {"discriminator": critic.item(), "generator": generator.item(), "matching": matching.item()}


def feature_matching(c: MidiNetConfig, x: torch.Tensor, real: tuple, fake: tuple) -> torch.Tensor:
    """mean_weight ||E bar - E G(z)||^2 + feature_weight ||E f(bar) - E f(G(z))||^2 over the pairs x [B, 2, 16],
    real and fake each (bars [B, L, 16], first-layer features [B, D, 8]); with first_bar_matching summed over
    two groups, the pairs after an empty bar and the others, each mean within its group."""
    (bars, features), (fake_bars, fake_features) = real, fake
    return sum(c.mean_weight * (bars[g].mean(0) - fake_bars[g].mean(0)).square().sum() +
               c.feature_weight * (features[g].mean(0) - fake_features[g].mean(0)).square().sum()
               for g in _matching_groups(c, x))


def _matching_groups(c: MidiNetConfig, x: torch.Tensor) -> list[torch.Tensor]:
    """The groups of pairs x [B, 2, 16] that feature_matching matches: the whole batch, or with first_bar_matching
    the pairs after an empty bar and the others (each that has any)."""
    if not c.first_bar_matching:
        return [torch.ones(len(x), dtype=torch.bool)]
    first = (x[:, 0] == REST).all(1)
    return [g for g in (first, ~first) if g.any()]


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def loss(model: MidiNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NOT a likelihood: the discriminator's loss on the batch against as many fresh bars."""
    real, previous, chords = _inputs(model, x, y)
    return _discriminator_loss(model, real, previous, chords, model.fake(chords, previous))


def teacher_forced_logits(model: MidiNet, bars: torch.Tensor, z: torch.Tensor, chords: torch.Tensor) -> torch.Tensor:
    """Every bar's logits given the bar before it (all rests before the first): one-hot bars [B, T, L, 16],
    z [B, T, latent], chords [B, T] -> [B, T, L, 16]. Bar t's logits depend on bar t - 1 alone."""
    b, t = bars.shape[:2]
    rest = one_hot(torch.full((b, 1, STEPS), REST).flatten(0, 1)).view(b, 1, LEVELS, STEPS)
    previous = torch.cat([rest, bars[:, :-1]], 1)  # [B, T, L, 16]
    logits = model.generator(z.flatten(0, 1), chords.flatten(), previous.flatten(0, 1))
    return logits.view(b, t, LEVELS, STEPS)


class SampleStep(nn.Module):
    """x_prev [B, 16], noise [B, latent + 16 L] uniform, temperature [B], chords [B] -> x [B, 16] pitch indices."""

    def __init__(self, model: MidiNet):
        super().__init__()
        self.generator, self.latent = model.generator, model.config.latent

    def forward(self, x_prev: torch.Tensor, noise: torch.Tensor, temperature: torch.Tensor,
                chords: torch.Tensor) -> torch.Tensor:
        z = noise[:, : self.latent] * 2 - 1
        logits = self.generator(z, chords, one_hot(x_prev))  # [B, L, 16]
        u = noise[:, self.latent:].view(-1, LEVELS, STEPS).clamp(1e-7, 1 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        return torch.argmax(logits / temperature.clamp(min=1e-3).view(-1, 1, 1) + gumbel, dim=1)


@torch.no_grad()
def generate(model: MidiNet, chords: torch.Tensor, generator: torch.Generator,
             temperature: float = 1.0) -> torch.Tensor:
    """Pieces bar by bar from all rests, chords [N, T] -> pitch indices [N, T, 16], as the service rolls them."""
    model.eval()
    step, (n, bars) = SampleStep(model), chords.shape
    x, out = torch.full((n, STEPS), REST), []
    for t in range(bars):
        noise = torch.rand(n, model.config.latent + LEVELS * STEPS, generator=generator)
        x = step(x, noise, torch.full((n,), temperature), chords[:, t])
        out.append(x)
    return torch.stack(out, 1)


def sample_grid(model: MidiNet, generator: torch.Generator) -> torch.Tensor:
    """Eight 8-bar pieces without chords as piano rolls [8, 1, PITCHES, 128] (high pitches on top) in 0..L-1."""
    pieces = generate(model, torch.full((8, 8), CHORDS - 1), generator).flatten(1)  # [8, 128]
    rolls = F.one_hot(pieces, LEVELS)[..., :REST].transpose(1, 2).flip(1)  # [8, PITCHES, 128]
    return (rolls * (LEVELS - 1)).unsqueeze(1)


def bar_repeats(bars: np.ndarray) -> float:
    """The chance that two of the bars [N, STEPS] (N >= 2), drawn without replacement, are the same bar:
    sum of k (k - 1) over each distinct bar's count k, over N (N - 1). 0 when all differ, 1 when all are one; unlike
    the share of distinct bars it does not fall as N grows, so sets of different sizes compare."""
    _, counts = np.unique(bars, axis=0, return_counts=True)
    return float((counts * (counts - 1)).sum() / (len(bars) * (len(bars) - 1)))


def bar_diversity(pieces, bars: int) -> dict:
    """How alike the pieces' bars at one position are: of the first bars, the share of distinct ones and
    bar_repeats; of bars 2..bars, bar_repeats at each position averaged (positions that two pieces reach; none,
    and no later_bars_repeat, for one bar)."""
    first = np.stack([piece[0] for piece in pieces])
    at = [[piece[t] for piece in pieces if len(piece) > t] for t in range(1, bars)]
    later = [bar_repeats(np.stack(these)) for these in at if len(these) > 1]
    return {"first_bars_distinct": len(np.unique(first, axis=0)) / len(first), "first_bars_repeat": bar_repeats(first),
            **({"later_bars_repeat": float(np.mean(later))} if later else {})}


def evaluate_test(model: MidiNet, split) -> dict:
    """Melody statistics (music.statistics) of eval_pieces generated pieces of eval_bars bars (seed 0), without
    chords and with the chords of test pieces, beside the test pieces themselves, the training pieces and a
    random baseline (the test pieces' rhythms with uniform random pitches); each with the total-variation
    distance of its pitch-class histogram to the test pieces', and the share of chord tones (music.chord_tones)
    under the chords it was given (the generated pieces without chords: under the same chords, for reference), and
    how alike their first bars and their later bars are (bar_diversity: the corpus's at its pieces' first
    eval_bars bars)."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    test = split.pieces_test
    chords = np.stack([np.resize(chords, c.eval_bars) for _, chords in test])  # each test piece's, repeated
    chords = chords[np.arange(c.eval_pieces) % len(chords)]  # [eval_pieces, eval_bars]
    pieces = {
        "midinet": (list(generate(model, torch.full(chords.shape, CHORDS - 1), g).numpy()), chords),
        "midinet_chords": (list(generate(model, torch.from_numpy(chords), g).numpy()), chords),
        "corpus_test": ([bars for bars, _ in test], [these for _, these in test]),
        "corpus_train": ([bars for bars, _ in split.pieces_train], [these for _, these in split.pieces_train]),
        "random": (music.random_pitches([bars for bars, _ in test], np.random.default_rng(0)),
                   [these for _, these in test]),
    }
    reference = music.pitch_class_histogram(pieces["corpus_test"][0])
    report = {"eval_pieces": c.eval_pieces, "eval_bars": c.eval_bars}
    for name, (these, their_chords) in pieces.items():
        for key, value in music.statistics(these, reference).items():
            report[f"{name}_{key}"] = value
        report[f"{name}_chord_tones"] = music.chord_tones(these, their_chords)
        for key, value in bar_diversity(these, c.eval_bars).items():
            report[f"{name}_{key}"] = value
    return report


SELECTION_MEASURES = ("pitch_class_tv", "in_key", "empty_bars", "first_bars_repeat", "later_bars_repeat")


def selection_score(model: MidiNet, split) -> float:
    """How far the model's melodies are from the training pieces: the rule that picks a run's epoch (train.select,
    training/configs/midinet-select.json), declared before that run trained. Generated from rests (seed 1,
    temperature 1): eval_pieces pieces of eval_bars bars without chords, then as many with the training pieces'
    chords (each piece's repeated to eval_bars, the pieces cycled). The score is the sum of the absolute gaps to the
    training pieces' own values of, for each of the two sets: the total-variation distance of the pitch-class
    histogram to the training pieces' histogram (theirs 0), the share of notes in key (0 where there is no note),
    the share of empty bars, and how alike the first bars and the later bars are (bar_diversity's
    first_bars_repeat and later_bars_repeat; the training pieces' at their first eval_bars bars); and, for the set
    with chords, of the share of chord tones under its chords (the training pieces' under theirs). Lower is
    better, 0 a match. The test pieces play no part."""
    c, train = model.config, split.pieces_train
    chords = np.stack([np.resize(these, c.eval_bars) for _, these in train])[np.arange(c.eval_pieces) % len(train)]
    reference = music.pitch_class_histogram([bars for bars, _ in train])
    corpus = _melodies([bars for bars, _ in train], [these for _, these in train], reference, c.eval_bars)
    g = torch.Generator().manual_seed(1)
    free, given = (_melodies(list(generate(model, torch.from_numpy(these), g).numpy()), chords, reference, c.eval_bars)
                   for these in (np.full_like(chords, CHORDS - 1), chords))
    gaps = [abs(measured[key] - corpus[key]) for measured in (free, given) for key in SELECTION_MEASURES]
    return float(sum(gaps) + abs(given["chord_tones"] - corpus["chord_tones"]))


def _melodies(pieces, chords, reference: np.ndarray, bars: int) -> dict:
    """What selection_score compares of pieces (each [T, STEPS]) under chords (each [T]): SELECTION_MEASURES
    (the pitch-class distance to `reference`) and chord_tones."""
    pitches = np.array([p for piece in pieces for p, _, _ in music.notes(piece)], dtype=np.int64)
    return {"pitch_class_tv": 0.5 * np.abs(music.pitch_class_histogram(pieces) - reference).sum(),
            "in_key": np.isin(pitches % 12, music.IN_KEY).mean() if len(pitches) else 0.0,
            "empty_bars": (np.concatenate(pieces) == REST).all(1).mean(),
            "chord_tones": music.chord_tones(pieces, chords), **bar_diversity(pieces, bars)}


def exported_functions(model: MidiNet, split) -> tuple[dict, dict]:
    """(functions, capabilities): see the module docstring."""
    model.eval()
    c, g = model.config, torch.Generator().manual_seed(0)
    inputs = {"x_prev": torch.full((2, STEPS), REST), "noise": torch.rand(2, c.latent + LEVELS * STEPS, generator=g),
              "temperature": torch.ones(2), "chords": torch.tensor([0, CHORDS - 1])}
    names = [*music.CHORDS, "N"]
    sample = {"procedure": "autoregressive", "function": "sample_step", "steps": 8, "max_steps": 64,
              "max_row_steps": 2048, "step_shape": [STEPS], "noise_shape": [c.latent + LEVELS * STEPS], "state": {},
              "x_prev_init": REST,
              "step_controls": {"chords": {"names": names, "default": "N"}}}
    return {"sample_step": (SampleStep(model), inputs, ["x"])}, {"sample": sample, "stream": sample}
