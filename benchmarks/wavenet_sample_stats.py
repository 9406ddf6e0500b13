"""Loudness and noisiness of WaveNet samples beside held-out speech: RMS and zero-crossing rate per sample.

Reads a WAV of samples (default docs/wavenet-samples.wav, written by training) and the first 100 test
segments of the `speech` dataset (synthesized by espeak-ng on first use, then cached).

    .venv/bin/python benchmarks/wavenet_sample_stats.py [--wav docs/wavenet-samples.wav]
"""

import argparse
import wave

import numpy as np
from common import markdown_table

from service.engine import audio
from training.data import load


def stats(x: np.ndarray) -> tuple[float, float]:
    """x [N, T] audio in [-1, 1] -> (RMS, fraction of consecutive samples that change sign)."""
    return float(np.sqrt((x ** 2).mean())), float((np.diff(np.sign(x), axis=-1) != 0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wav", default="docs/wavenet-samples.wav")
    args = parser.parse_args()
    with wave.open(args.wav) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")[None] / 32768.0
    held_out = audio.decode(load("speech").x_test[:100].astype(np.int64))
    rows = [[name, f"{rms:.3f}", f"{zcr:.2f}"] for name, (rms, zcr) in
            ((args.wav, stats(samples)), ("speech test split, 100 segments", stats(held_out)))]
    print(markdown_table(["audio", "RMS", "zero-crossing rate"], rows))


if __name__ == "__main__":
    main()
