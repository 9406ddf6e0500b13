"""Audio <-> mu-law codes, and WAV files (16-bit PCM), for models whose data.kind is "audio".

The codes follow training.distributions.mu_law (mu = 255): companding y = sign(x) ln(1 + mu|x|) / ln(1 + mu),
code q = floor((y + 1) / 2 * mu + 0.5); a code decodes to the audio value of its bin centre. Both adapters
use this module; the engine itself works in codes.
"""

import io
import struct
import wave

import numpy as np

from service.engine.errors import InvalidInput
from service.engine.validation import brief

MU = 255
PCM_SCALE = 32767  # float [-1, 1] <-> int16


def encode(audio: np.ndarray, mu: int = MU) -> np.ndarray:
    """audio [...] float in [-1, 1] -> int64 codes [...] in 0..mu."""
    x = np.clip(audio.astype(np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((y + 1) / 2 * mu + 0.5).astype(np.int64)


def decode(codes: np.ndarray, mu: int = MU) -> np.ndarray:
    """codes [...] in 0..mu -> float32 audio [...] in [-1, 1]."""
    y = 2 * codes.astype(np.float64) / mu - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def pcm16(codes: np.ndarray) -> bytes:
    """codes [channels, T] -> interleaved little-endian int16 PCM bytes (channel c of frame t at t * channels + c)."""
    samples = np.rint(decode(codes) * PCM_SCALE).astype("<i2")  # [channels, T]
    return np.ascontiguousarray(samples.T).tobytes()


def wav_header(channels: int, sample_rate: int, frames: int | None) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV file of `frames` frames, for a stream whose data follows it.

    frames None: the length is not known yet; the header claims the longest file, as streaming WAV writers
    do, and readers stop at the end of the data. (The wave module cannot write a header alone.)
    """
    block = 2 * channels  # bytes per frame
    data = _unknown_length(block) if frames is None else frames * block
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, channels, sample_rate,
                       sample_rate * block, block, 16, b"data", data)


def _unknown_length(block: int) -> int:
    """The data size a streamed WAV's header claims (the longest file of whole `block`-byte frames)."""
    return (0xFFFFFFFF - 36) // block * block


def to_wav(codes: np.ndarray, sample_rate: int) -> bytes:
    """codes [T] (mono) or [channels, T] -> a complete WAV file."""
    codes = codes.reshape(-1, codes.shape[-1])
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(len(codes))
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm16(codes))
    return out.getvalue()


def from_wav(data: bytes, sample_rate: int, field: str) -> np.ndarray:
    """A PCM WAV file (8, 16 or 32-bit; channels are averaged) at `sample_rate` -> int64 codes [T].

    A file whose data is shorter than its header declares, or ends mid-frame, is refused as truncated; a streamed
    WAV, whose header claims the longest file (wav_header(frames=None)), is read to the end of its whole frames.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except Exception as exc:  # wave.Error, EOFError, RuntimeError, struct.error...: all mean a malformed file
        raise InvalidInput(f"{field}: not a PCM WAV file ({exc or type(exc).__name__})", field=field) from exc
    if rate != sample_rate:
        raise InvalidInput(f"{field}: the WAV is {rate} Hz; this model takes {sample_rate} Hz", field=field)
    if width not in (1, 2, 4):
        raise InvalidInput(f"{field}: {8 * width}-bit WAV; give 8, 16 or 32-bit PCM", field=field)
    block, declared = channels * width, frames * channels * width  # bytes per frame, bytes of data declared
    if len(raw) % block or (len(raw) < declared and declared != _unknown_length(block)):
        raise InvalidInput(f"{field}: the WAV is truncated: {len(raw)} bytes of data where its header declares "
                           f"{declared} in frames of {block}", field=field)
    if width == 1:  # unsigned 8-bit, centred on 128
        samples = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    else:
        dtype = np.dtype(f"<i{width}")
        samples = np.frombuffer(raw, dtype).astype(np.float64) / (np.iinfo(dtype).max + 1)
    samples = samples.reshape(-1, channels).mean(axis=1)  # [T]
    if len(samples) == 0:
        raise InvalidInput(f"{field}: the WAV holds no samples", field=field)
    return encode(samples)


def length_of(seconds: float | None, length: int | None, spec: dict, field: str) -> int | None:
    """Values to generate: `length`, or for an audio model `seconds` at its sample rate (`field` names seconds)."""
    if seconds is None:
        return length
    if spec.get("kind") != "audio":
        raise InvalidInput(f"{field}: only audio models take seconds; give length", field=field)
    if length is not None:
        raise InvalidInput(f"{field}: give seconds or length, not both", field=field)
    return max(1, round(seconds * int(spec["sample_rate"])))


def voice_label(voice: int | str | None, label: int | None, spec: dict, field: str) -> int | None:
    """An audio model's voice (index or name) as its class label; without a voice, the label as given."""
    if voice is None:
        return label
    voices = spec.get("classes", []) if spec.get("kind") == "audio" else []
    if not voices:
        raise InvalidInput(f"{field}: only audio models with voices take a voice", field=field)
    if label is not None:
        raise InvalidInput(f"{field}: give a voice or a label, not both", field=field)
    if isinstance(voice, str):
        if voice not in voices:
            raise InvalidInput(f"{field}: unknown voice {brief(voice)}; known: {voices}", field=field)
        return voices.index(voice)
    if not 0 <= voice < len(voices):
        raise InvalidInput(f"{field}: voice {voice} out of range, expected 0..{len(voices) - 1}", field=field)
    return voice
