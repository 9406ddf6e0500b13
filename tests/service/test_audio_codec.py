"""Audio on the wire: mu-law codes <-> 16-bit PCM WAV files, as the service reads and writes them."""

import base64
import io
import wave

import numpy as np
import pytest

from service.engine import audio
from service.engine.errors import InvalidInput

RATE = 16000


def test_every_code_survives_the_wav_round_trip():
    codes = np.arange(256)
    np.testing.assert_array_equal(audio.from_wav(audio.to_wav(codes, RATE), RATE, "x"), codes)


def test_mu_law_matches_the_companding_formula_and_is_monotone():
    x = np.linspace(-1, 1, 2001)
    codes = audio.encode(x)
    assert codes.min() == 0 and codes.max() == 255 and (np.diff(codes) >= 0).all()
    y = np.sign(x) * np.log1p(255 * np.abs(x)) / np.log1p(255)
    np.testing.assert_array_equal(codes, np.floor((y + 1) / 2 * 255 + 0.5))
    assert np.abs(audio.decode(codes) - x).max() < 0.035  # the widest bin, at full scale, is 2 * 0.0316 wide


def test_wav_files_in_other_layouts_are_read():
    tone = 0.5 * np.sin(np.arange(800) / 10)

    def wav(samples: np.ndarray, width: int, channels: int, rate: int = RATE) -> bytes:
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(width)
            w.setframerate(rate)
            w.writeframes(samples.tobytes())
        return out.getvalue()

    expected = audio.encode(tone)
    pcm16 = np.rint(tone * 32767).astype("<i2")
    stereo = np.stack([pcm16, pcm16], axis=1)
    eight_bit = np.rint(tone * 127 + 128).astype(np.uint8)
    for data in (wav(pcm16, 2, 1), wav(stereo, 2, 2)):
        assert np.abs(audio.from_wav(data, RATE, "x") - expected).max() <= 1
    # 8-bit PCM is coarser than mu-law near 0: compare the audio, to within the 8-bit step and the mu-law bin
    assert np.abs(audio.decode(audio.from_wav(wav(eight_bit, 1, 1), RATE, "x")) - tone).max() < 1 / 128 + 0.02
    with pytest.raises(InvalidInput, match="x: the WAV is 8000 Hz; this model takes 16000 Hz"):
        audio.from_wav(wav(pcm16, 2, 1, rate=8000), RATE, "x")
    with pytest.raises(InvalidInput, match="x: not a PCM WAV file"):
        audio.from_wav(b"RIFF nonsense", RATE, "x")
    with pytest.raises(InvalidInput, match="x: the WAV holds no samples"):
        audio.from_wav(wav(pcm16[:0], 2, 1), RATE, "x")


def test_a_streamed_wav_is_a_header_then_pcm_chunks_with_one_channel_per_sample():
    codes = np.random.default_rng(0).integers(0, 256, size=(2, 300))
    stream = audio.wav_header(2, RATE, frames=None) + audio.pcm16(codes[:, :100]) + audio.pcm16(codes[:, 100:])
    with wave.open(io.BytesIO(stream), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)  # stops at the data's end
    np.testing.assert_array_equal(audio.encode(frames.T / 32767), codes)


def test_the_stream_header_of_a_known_length_equals_the_wave_modules():
    codes = np.random.default_rng(1).integers(0, 256, size=(3, 50))
    whole = audio.to_wav(codes, RATE)
    assert audio.wav_header(3, RATE, frames=50) + audio.pcm16(codes) == whole


def test_a_truncated_or_malformed_wav_is_refused_naming_the_field():
    whole = audio.to_wav(np.arange(256), RATE)  # 512 bytes of 16-bit PCM after a 44-byte header
    issue_15 = base64.b64decode("UklGRuwAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YcgAAAAAAAA=")  # 3 of 200 bytes
    for data in (issue_15, whole[:-1], whole[:-2]):  # ends mid-frame; ends early on a frame boundary
        with pytest.raises(InvalidInput, match=r"^x: the WAV is truncated"):
            audio.from_wav(data, RATE, "x")
    fmt_too_long = whole[:16] + (195).to_bytes(4, "little") + whole[20:]  # a chunk claiming past the file's end
    with pytest.raises(InvalidInput, match=r"^x: not a PCM WAV file"):
        audio.from_wav(fmt_too_long, RATE, "x")


def test_a_streamed_wav_is_read_to_the_end_of_its_whole_frames():
    codes = np.random.default_rng(2).integers(0, 256, size=300)
    streamed = audio.wav_header(1, RATE, frames=None) + audio.pcm16(codes[None])  # claims the longest file
    np.testing.assert_array_equal(audio.from_wav(streamed, RATE, "x"), codes)
    with pytest.raises(InvalidInput, match=r"^x: the WAV is truncated"):
        audio.from_wav(streamed[:-1], RATE, "x")  # cut mid-frame
