"""Melodies: the soprano lines of the Bach chorales that music21 ships, as one-bar piano rolls with a chord per bar.

Every Bach score in music21's corpus with at least four parts, in 4/4 throughout, is read. The piece is transposed
by the smallest interval (-5..+6 semitones) that takes the key music21 finds (Krumhansl-Schmuckler) to C major or
A minor, so that every piece shares one key signature. The first part (the soprano) becomes bars of STEPS = 16
sixteenths, each step one of PITCHES pitches LOW..LOW + PITCHES - 1 or REST (PITCHES), monophonic (the highest
note of a chord); a pickup bar is padded with rests on the left. The chord of a bar is the root and quality of the
chordified score (all four parts) at its downbeat: CHORDS[i] = root * 2 + (1 if minor or diminished); NO_CHORD
(24) for anything else. A pitch outside the range is folded by octaves into it.

An example is a pair of consecutive bars of one piece, x [2, 16] (the previous bar, all rests before the first
bar, then the bar), labelled by the bar's chord. Pieces are split, not bars: piece i (in the corpus's sorted order)
is a test piece when i % TEST_EVERY == TEST_EVERY - 1. `pieces` keeps each piece whole ([bars, 16]) for the
evaluation.

Parsing takes minutes, so the parsed corpus is cached as an .npz under CACHE, keyed by FORMAT, the music21 version
and how many pieces were read; `python -m training.data.music` parses the whole corpus again and rewrites it.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.images import Split

STEPS, LOW, PITCHES = 16, 55, 32  # sixteenths per bar; pitches G3..D6
REST, LEVELS = PITCHES, PITCHES + 1
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
CHORDS = tuple(name + quality for name in NOTE_NAMES for quality in ("", "m"))  # C, Cm, C#, C#m, ...
NO_CHORD = len(CHORDS)
IN_KEY = (0, 2, 4, 5, 7, 9, 11)  # the pitch classes of C major / A minor (natural)
TEST_EVERY = 10
TEMPO_BPM = 90  # what the served MIDI files play at
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genserve" / "music"
FORMAT = 1  # bump when parsing changes, so that stale caches are not read


@dataclass(frozen=True)
class MusicSplit(Split):
    """Pairs x [N, 2, STEPS] of (previous bar, bar) in 0..REST, labelled by the bar's chord (0..NO_CHORD);
    pieces_train / pieces_test: each piece's bars [bars, STEPS] and chords [bars]."""

    pieces_train: tuple = ()
    pieces_test: tuple = ()
    test_every: int = TEST_EVERY

    def describe(self) -> dict:
        return {"dataset": self.name, "train": len(self.x_train), "test": len(self.x_test),
                "pieces": [len(self.pieces_train), len(self.pieces_test)], "bar": f"{STEPS} sixteenths",
                "pitches": f"MIDI {LOW}..{LOW + PITCHES - 1} and a rest", "transposed": "to C major / A minor",
                "split": f"by piece: index % {self.test_every} == {self.test_every - 1} is test"}

    def data_spec(self) -> dict:
        """The manifest's `data`: a step is one bar of STEPS sixteenths, each a pitch index or REST."""
        return {"kind": "music", "shape": [STEPS], "levels": LEVELS, "pitch_low": LOW, "rest": REST,
                "steps_per_beat": STEPS // 4, "tempo_bpm": TEMPO_BPM}


def _bars(part) -> np.ndarray:
    """A part's measures -> [bars, STEPS] pitch indices (REST where nothing sounds)."""
    bars = []
    for measure in part.getElementsByClass("Measure"):
        bar = np.full(STEPS, REST, np.int64)
        pad = measure.paddingLeft
        for note in measure.notes:
            pitch = max(p.midi for p in note.pitches)
            while pitch < LOW:
                pitch += 12
            while pitch >= LOW + PITCHES:
                pitch -= 12
            start = round((note.offset + pad) * 4)
            bar[start: start + max(1, round(note.quarterLength * 4))] = pitch - LOW
        bars.append(bar)
    return np.stack(bars)


def _chords(score, bars: int) -> np.ndarray:
    """The chord index at each bar's downbeat of the chordified score [bars]."""
    chords = np.full(bars, NO_CHORD, np.int64)
    for i, measure in enumerate(score.chordify().getElementsByClass("Measure")):
        if i < bars and measure.notes:
            chord = measure.notes[0]
            if chord.quality in ("major", "minor", "diminished", "augmented"):
                chords[i] = chord.root().pitchClass * 2 + (chord.quality in ("minor", "diminished"))
    return chords


def _piece(path) -> tuple[np.ndarray, np.ndarray] | None:
    """A chorale's (bars [bars, STEPS], chords [bars]) in C major / A minor, or None when it does not fit."""
    from music21 import corpus, interval, pitch

    score = corpus.parse(path)
    meters = {ts.ratioString for ts in score.recurse().getElementsByClass("TimeSignature")}
    if len(score.parts) < 4 or meters != {"4/4"}:
        return None
    key = score.analyze("key")
    target = "C" if key.mode == "major" else "A"
    shift = (pitch.Pitch(target).pitchClass - key.tonic.pitchClass) % 12
    shift = shift - 12 if shift > 6 else shift
    score = score.transpose(interval.Interval(shift))
    bars = _bars(score.parts[0])
    return bars, _chords(score, len(bars))


def parse_corpus(limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every fitting Bach chorale of music21's corpus (the first `limit` of them), in sorted path order, as
    (bars, chords)."""
    from music21 import corpus
    from tqdm import tqdm

    pieces = []
    for path in tqdm(sorted(map(str, corpus.getComposer("bach"))), desc="chorales", leave=False):
        piece = _piece(path)
        pieces += [] if piece is None else [piece]
        if len(pieces) == limit:
            break
    return pieces


def _cache_path(limit: int | None) -> Path:
    import music21

    return CACHE / f"chorales-v{FORMAT}-music21-{music21.__version__}{'' if limit is None else f'-first{limit}'}.npz"


def _cached(limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    path = _cache_path(limit)
    if not path.exists():
        pieces = parse_corpus(limit)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, lengths=[len(b) for b, _ in pieces], bars=np.concatenate([b for b, _ in pieces]),
                            chords=np.concatenate([c for _, c in pieces]))
    data = np.load(path)
    ends = np.cumsum(data["lengths"])
    return list(zip(np.split(data["bars"], ends[:-1]), np.split(data["chords"], ends[:-1]), strict=True))


def pairs(pieces) -> tuple[np.ndarray, np.ndarray]:
    """(x [N, 2, STEPS] of (previous bar, bar), chords [N]) of every bar of every piece."""
    x, y = [], []
    for bars, chords in pieces:
        previous = np.concatenate([np.full((1, STEPS), REST, np.int64), bars[:-1]])
        x.append(np.stack([previous, bars], axis=1))
        y.append(chords)
    return np.concatenate(x), np.concatenate(y)


def chorales(pieces: int | None = None, test_every: int = TEST_EVERY) -> MusicSplit:
    """The soprano bars of the Bach chorales (the first `pieces` of them when given), split by piece."""
    every = _cached(pieces)
    test = [p for i, p in enumerate(every) if i % test_every == test_every - 1]
    train = [p for i, p in enumerate(every) if i % test_every != test_every - 1]
    (x_train, y_train), (x_test, y_test) = pairs(train), pairs(test)
    return MusicSplit("chorales" if pieces is None else f"chorales-{pieces}", x_train, y_train, x_test, y_test,
                      levels=LEVELS, num_classes=NO_CHORD + 1, pieces_train=tuple(train), pieces_test=tuple(test),
                      test_every=test_every)


def chorales_tiny() -> MusicSplit:
    """The first 6 fitting chorales: 4 train pieces, 2 test (every third)."""
    return chorales(6, test_every=3)


def notes(bars: np.ndarray) -> list[tuple[int, int, int]]:
    """A piece's bars [T, STEPS] -> its notes (MIDI pitch, start step, length in steps): a run of one pitch is one
    note (a repeated note and a held one look the same in a roll), across bar lines too."""
    flat = bars.reshape(-1)
    edges = np.flatnonzero(np.diff(flat, prepend=-1, append=-1)) # where a run starts, and the end
    return [(int(flat[a]) + LOW, int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:], strict=True)
            if flat[a] != REST]


def pitch_class_histogram(pieces) -> np.ndarray:
    """The share of notes of each pitch class (C = 0) over every note of the pieces [12]."""
    counts = np.bincount([p % 12 for bars in pieces for p, _, _ in notes(bars)], minlength=12)
    return counts / max(1, counts.sum())


def statistics(pieces, reference: np.ndarray) -> dict:
    """A set of pieces' melody statistics: the total-variation distance of its pitch-class histogram to
    `reference` (0..1), the share of its notes in the key (C major / A minor natural: IN_KEY), the share of
    empty bars (all rests), notes per bar, and the mean absolute interval between consecutive notes
    (semitones)."""
    every = [notes(bars) for bars in pieces]
    pitches = np.array([p for these in every for p, _, _ in these])
    leaps = np.concatenate([np.abs(np.diff([p for p, _, _ in these])) for these in every if len(these) > 1])
    bars = np.concatenate(list(pieces))
    return {"pieces": len(every), "bars": len(bars), "notes": len(pitches),
            "pitch_class_tv": float(0.5 * np.abs(pitch_class_histogram(pieces) - reference).sum()),
            "in_key": float(np.isin(pitches % 12, IN_KEY).mean()),
            "empty_bars": float((bars == REST).all(axis=1).mean()),
            "notes_per_bar": len(pitches) / len(bars),
            "mean_abs_interval": float(leaps.mean())}


def chord_tones(pieces, chords) -> float:
    """The share of notes, among those starting in a bar with a chord, whose pitch class is in its triad: pieces
    [T, STEPS] each with chords [T] (chord indices; NO_CHORD bars are left out)."""
    hits = total = 0
    for bars, these in zip(pieces, chords, strict=True):
        for pitch, start, _ in notes(bars):
            chord = int(these[start // STEPS])
            if chord != NO_CHORD:
                root, minor = divmod(chord, 2)
                hits += (pitch - root) % 12 in (0, 3 if minor else 4, 7)
                total += 1
    return hits / max(1, total)


def random_pitches(pieces, rng: np.random.Generator) -> list[np.ndarray]:
    """The baseline: each piece's rhythm (its notes' starts and lengths, its rests) kept, every note's pitch
    drawn uniformly from the range."""
    out = []
    for bars in pieces:
        flat = np.full(bars.size, REST, np.int64)
        for _, start, length in notes(bars):
            flat[start: start + length] = rng.integers(PITCHES)
        out.append(flat.reshape(bars.shape))
    return out


def main() -> None:
    """Parse the corpus again and rewrite the cache."""
    _cache_path(None).unlink(missing_ok=True)
    split = chorales()
    print(split.describe())


if __name__ == "__main__":
    main()
