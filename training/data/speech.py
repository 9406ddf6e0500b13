"""Speech: pydoc sentences read aloud by espeak-ng voices, 16 kHz, mu-law 8-bit.

Sentences come from the pydoc topics of training.data.text, split the same way (by topic: a test
sentence is from a test topic). A sentence is a paragraph's sentence of plain prose: 40..200
characters, at least 6 words, letters, digits, spaces and ,;:'()- only, ending in . ? or !; indented
paragraphs (code) are skipped. The corpus takes `n` of them spread evenly over the topics in order
(every one when n is None), and sentence i is read by voice i % len(voices), so each voice reads
different text.

espeak-ng writes 22,050 Hz; each utterance is resampled to SAMPLE_RATE (scipy's polyphase
resampler), trimmed of its leading and trailing samples below SILENCE in absolute value, and followed
by GAP seconds of silence. One voice's utterances are joined in order, cut into non-overlapping
segments of `segment` samples (the tail is dropped) and mu-law encoded (256 levels, 128 is silence).
The label of a segment is its voice's index in `voices`.

With Python 3.11.7's pydoc_data and espeak-ng 1.51: 563 sentences in train topics, 38 in test topics.
`speech` reads 200 of the former and all of the latter with 4 voices: 2,055 train segments of 0.5 s
(1,027.5 s) and 344 test segments (172 s). `speech-tiny` reads 6 and 2 with voices en and en+f3:
259 and 50 segments of 0.125 s.

Synthesis takes a minute or so, so a corpus is cached as an .npz under CACHE, keyed by its parameters.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data.images import Split
from training.data.text import TEST_EVERY, topic_split
from training.distributions import mu_law

SAMPLE_RATE = 16000
VOICES = ("en", "en-us", "en+f3", "en+m3")
SILENCE = 0.01  # |amplitude| below which an utterance's leading and trailing samples are trimmed
GAP = 0.1  # seconds of silence after each utterance
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genserve" / "speech"
FORMAT = 1  # bump when synthesis changes, so that stale caches are not read
TRAIN_SENTENCES = 200  # of the 563 with Python 3.11.7; sized for ~20 minutes of training on one thread

_PROSE = re.compile(r"[A-Za-z][A-Za-z0-9 ,;:'()\-]*[.?!]")


@dataclass(frozen=True)
class SpeechSplit(Split):
    """A Split of [N, T] mu-law codes (levels 256), labelled by voice (num_classes = len(voices))."""

    sample_rate: int = SAMPLE_RATE
    voices: tuple[str, ...] = ()
    sentences: tuple[int, int] = (0, 0)  # (train, test) sentences read
    synthesizer: str = ""

    def describe(self) -> dict:
        return {
            "dataset": self.name,
            "train": len(self.x_train),
            "test": len(self.x_test),
            "segment": int(self.x_train.shape[1]),
            "sample_rate": self.sample_rate,
            "voices": list(self.voices),
            "split": f"by topic: sentences of sorted pydoc_data topics, index % {TEST_EVERY} == {TEST_EVERY - 1} "
                     "is test",
            "train_sentences": self.sentences[0],
            "test_sentences": self.sentences[1],
            "train_seconds": self.x_train.size / self.sample_rate,
            "test_seconds": self.x_test.size / self.sample_rate,
            "synthesizer": self.synthesizer,
        }


def sentences(keys: list[str], n: int | None = None) -> list[str]:
    """The prose sentences of these topics in order, or `n` of them spread evenly (see the module docstring)."""
    from pydoc_data.topics import topics

    found = []
    for key in keys:
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            if paragraph.startswith(" "):
                continue
            for s in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
                if _PROSE.fullmatch(s) and 40 <= len(s) <= 200 and len(s.split()) >= 6:
                    found.append(s)
    if n is None or n >= len(found):
        return found
    return [found[i] for i in np.linspace(0, len(found) - 1, n).round().astype(int)]


def espeak() -> str:
    """The espeak-ng binary, or a clear error."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("the speech datasets are synthesized with espeak-ng, which is not installed: "
                           "apt-get install espeak-ng")
    return path


def synthesize(text: str, voice: str) -> np.ndarray:
    """One utterance: float32 [samples] at SAMPLE_RATE in [-1, 1], leading and trailing silence trimmed."""
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        run = subprocess.run([espeak(), "-v", voice, "-w", str(path), "--stdin"], input=text.encode(),
                             capture_output=True)
        if run.returncode != 0 or not path.exists():
            raise RuntimeError(f"espeak-ng -v {voice} failed: {run.stderr.decode().strip()}")
        with wave.open(str(path)) as w:
            rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    g = gcd(SAMPLE_RATE, rate)
    audio = resample_poly(pcm / 32768.0, SAMPLE_RATE // g, rate // g)
    loud = np.flatnonzero(np.abs(audio) >= SILENCE)
    return audio[loud[0]: loud[-1] + 1].astype(np.float32) if len(loud) else audio[:0].astype(np.float32)


def _segments(texts: list[str], voices: tuple[str, ...], segment: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """texts read round-robin by voices -> (codes uint8 [N, segment], voice ids int64 [N])."""
    gap = np.zeros(round(GAP * SAMPLE_RATE), np.float32)
    by_voice: list[list[np.ndarray]] = [[] for _ in voices]
    for i, text in enumerate(tqdm(texts, desc=desc)):
        by_voice[i % len(voices)] += [synthesize(text, voices[i % len(voices)]), gap]
    x, y = [], []
    for v, pieces in enumerate(by_voice):
        audio = np.concatenate(pieces) if pieces else gap[:0]
        n = len(audio) // segment
        x.append(mu_law.encode(torch.from_numpy(audio[: n * segment].reshape(n, segment))).numpy().astype(np.uint8))
        y.append(np.full(n, v, np.int64))
    return np.concatenate(x), np.concatenate(y)


def corpus(name: str, voices: tuple[str, ...], train: int | None, test: int | None,
           segment: int) -> SpeechSplit:
    """A speech corpus of `train` and `test` sentences (None: all) read by `voices`, cached under CACHE."""
    params = {"format": FORMAT, "voices": voices, "train": train, "test": test, "segment": segment,
              "sample_rate": SAMPLE_RATE, "silence": SILENCE, "gap": GAP}
    path = CACHE / f"{name}-{hashlib.sha256(json.dumps(params).encode()).hexdigest()[:12]}.npz"
    if not path.exists():
        version = subprocess.run([espeak(), "--version"], capture_output=True, text=True).stdout.split("Data at")[0]
        train_keys, test_keys = topic_split()
        texts = sentences(train_keys, train), sentences(test_keys, test)
        x_train, y_train = _segments(texts[0], voices, segment, f"{name}: synthesizing train")
        x_test, y_test = _segments(texts[1], voices, segment, f"{name}: synthesizing test")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.npz")  # then renamed: a concurrent reader never sees half a file
        np.savez_compressed(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                            sentences=np.array([len(t) for t in texts]), synthesizer=np.array(version.strip()))
        tmp.rename(path)
    with np.load(path) as data:
        return SpeechSplit(name, data["x_train"], data["y_train"], data["x_test"], data["y_test"], levels=256,
                           num_classes=len(voices), voices=voices, sentences=tuple(data["sentences"].tolist()),
                           synthesizer=str(data["synthesizer"]))


def pydoc_speech() -> SpeechSplit:
    """The shipped corpus: 4 voices, 0.5 s segments (see the module docstring)."""
    return corpus("speech", VOICES, train=TRAIN_SENTENCES, test=None, segment=8000)


def pydoc_speech_tiny() -> SpeechSplit:
    """A few seconds of speech for tests: 2 voices, 6 + 2 sentences, 0.125 s segments."""
    return corpus("speech-tiny", VOICES[::2], train=6, test=2, segment=2000)


def write_wav(path: Path, codes: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Mu-law codes [N, T] -> one 16-bit mono WAV of the N clips, GAP seconds of silence after each."""
    audio = mu_law.decode(torch.as_tensor(np.asarray(codes, np.int64))).numpy()  # [N, T]
    gap = np.zeros((len(audio), round(GAP * sample_rate)), np.float32)
    pcm = (np.concatenate([audio, gap], axis=1).reshape(-1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
