"""Images on the wire <-> integer level arrays.

A request carries each input either as a nested JSON array of integers or as a
base64 PNG. The engine only sees int64 arrays of the model's data shape, with
values in 0..levels-1. Every problem raises `InvalidInput` naming the field, so
the REST layer answers 422 and never 500.

Levels and PNG pixels map linearly: level v <-> pixel round(v * 255 / (levels - 1)).
For levels=2 that is pixel >= 128 -> 1. The round trip array -> PNG -> array is
exact for every levels <= 256.
"""

import base64
import binascii
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from service.engine import audio, midi, text
from service.engine.errors import InvalidInput
from service.engine.validation import check_finite_outputs, check_no_mask

_DATA_URL_PREFIX = "data:image/png;base64,"
_MAX_PNG_LEVELS = 256


def _shape(spec: dict) -> tuple[int, ...]:
    return tuple(int(d) for d in spec["shape"])


def _levels(spec: dict) -> int | None:
    levels = spec.get("levels")
    return int(levels) if levels is not None else None


def accepted_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The data shape itself, plus the shape without a leading channel of 1 ([1,H,W] -> [H,W])."""
    shapes = [shape]
    if len(shape) > 1 and shape[0] == 1:
        shapes.append(shape[1:])
    return shapes


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# --- PNG ---------------------------------------------------------------------------------------------------------


def png_layout(shape: tuple[int, ...]) -> str | None:
    """The PIL mode a data shape maps to: [H,W] or [1,H,W] -> "L", [3,H,W] -> "RGB"; else None."""
    if len(shape) == 2 or (len(shape) == 3 and shape[0] == 1):
        return "L"
    if len(shape) == 3 and shape[0] == 3:
        return "RGB"
    return None


def to_pixels(levels_array: np.ndarray, levels: int) -> np.ndarray:
    """Levels 0..levels-1 -> uint8 pixels 0..255."""
    scale = 255.0 / max(levels - 1, 1)
    return np.clip(np.rint(levels_array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def to_levels(pixels: np.ndarray, levels: int) -> np.ndarray:
    """uint8 pixels 0..255 -> int64 levels 0..levels-1 (for levels=2: pixel >= 128 -> 1)."""
    return np.rint(pixels.astype(np.float64) * (levels - 1) / 255.0).astype(np.int64)


def array_to_png(x: np.ndarray, levels: int) -> bytes:
    """x: [H,W], [1,H,W] or [3,H,W] integer levels -> PNG bytes (grayscale or RGB)."""
    mode = png_layout(tuple(x.shape))
    if mode is None:
        raise ValueError(f"cannot write shape {_fmt_shape(tuple(x.shape))} as PNG")
    pixels = to_pixels(x, levels)
    if x.ndim == 3:
        pixels = pixels[0] if mode == "L" else np.transpose(pixels, (1, 2, 0))  # [H,W] or [H,W,3]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG")
    return out.getvalue()


def png_to_array(data: bytes, shape: tuple[int, ...], levels: int, field: str = "input") -> np.ndarray:
    """PNG bytes -> int64 levels of exactly `shape`. Any colour PNG is converted to the model's mode."""
    mode = png_layout(shape)
    if mode is None:
        raise InvalidInput(f"{field}: PNG input is not supported for data of shape {_fmt_shape(shape)}", field=field)
    height, width = shape[-2], shape[-1]
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Exception as exc:  # PIL raises several types for garbage; all are the client's fault
        raise InvalidInput(f"{field}: base64 data is not a PNG image", field=field) from exc
    if image.size != (width, height):  # checked before decoding pixels: no decompression bombs
        w, h = image.size
        raise InvalidInput(f"{field}: PNG is {w}x{h} (WxH), the model expects {width}x{height}", field=field)
    try:
        pixels = np.asarray(image.convert(mode), dtype=np.uint8)  # [H,W] or [H,W,3]
    except Exception as exc:
        raise InvalidInput(f"{field}: PNG image data is corrupt", field=field) from exc
    pixels = pixels[None] if mode == "L" else np.transpose(pixels, (2, 0, 1))  # [C,H,W]
    return to_levels(pixels, levels).reshape(shape)


def encode_png_b64(x: np.ndarray, levels: int) -> str:
    return base64.b64encode(array_to_png(x, levels)).decode("ascii")


def decode_png_b64(text: str, shape: tuple[int, ...], levels: int, field: str) -> np.ndarray:
    if text.startswith(_DATA_URL_PREFIX):
        text = text[len(_DATA_URL_PREFIX) :]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field}: string is not valid base64", field=field) from exc
    return png_to_array(data, shape, levels, field)


# --- nested arrays -----------------------------------------------------------------------------------------------


def _holds_boolean(value: Any) -> bool:
    """Whether a nested list holds a JSON true or false anywhere (numpy reads one among integers as 1 or 0). A walk
    with a stack, not recursion: JSON nests up to 1,024 lists, deeper than Python's recursion limit allows."""
    lists = [value]
    while lists:
        value = lists.pop()
        if not isinstance(value, list):
            if isinstance(value, bool):
                return True
            continue
        types = set(map(type, value))  # in C: a row of 28 pixels costs about a microsecond
        if bool in types:
            return True
        if list in types:
            lists.extend(item for item in value if isinstance(item, list))
    return False


def nested_to_array(value: Any, shape: tuple[int, ...], field: str) -> np.ndarray:
    """A nested JSON list of integers of an accepted shape -> int64 array of `shape`."""
    if _holds_boolean(value):
        raise InvalidInput(f"{field}: values must be integers, not true or false", field=field)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"{field}: must be a rectangular nested array of integers", field=field) from exc
    accepted = accepted_shapes(shape)
    if arr.shape not in accepted:
        wanted = " or ".join(_fmt_shape(s) for s in accepted)
        raise InvalidInput(f"{field}: wrong shape {_fmt_shape(arr.shape)}, expected {wanted}", field=field)
    if arr.dtype.kind not in "iu":
        raise InvalidInput(f"{field}: values must be integers", field=field)
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidInput(f"{field}: values out of range", field=field)
    return arr.astype(np.int64).reshape(shape)


def check_range(x: np.ndarray, high: int, field: str) -> None:
    """All values of x in 0..high-1."""
    if x.size and (x.min() < 0 or x.max() >= high):
        bad = int(x.min()) if x.min() < 0 else int(x.max())
        raise InvalidInput(f"{field}: value {bad} out of range, expected 0..{high - 1}", field=field)


def decode_image(value: Any, spec: dict, field: str) -> np.ndarray:
    """One input (base64 PNG or nested ints) -> int64 [*shape] with values in 0..levels-1."""
    shape, levels = _shape(spec), _levels(spec)
    if isinstance(value, str):
        if levels is None or levels > _MAX_PNG_LEVELS:
            raise InvalidInput(f"{field}: this model takes nested arrays, not PNG", field=field)
        return decode_png_b64(value, shape, levels, field)
    if not isinstance(value, list):
        raise InvalidInput(f"{field}: must be a base64 PNG string or a nested array of integers", field=field)
    x = nested_to_array(value, shape, field)
    if levels is not None:
        check_range(x, levels, field)
    return x


def decode_text(value: Any, spec: dict, field: str) -> np.ndarray:
    """One text input -> int64 [len] character ids of the model's vocabulary."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field}: must be a non-empty string of text", field=field)
    return text.encode(value, spec["vocabulary"], field)


def decode_audio(value: Any, spec: dict, field: str) -> np.ndarray:
    """One audio input (base64 WAV at the model's sample rate, or a list of mu-law codes) -> int64 codes [T]."""
    if isinstance(value, str):
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{field}: string is not valid base64", field=field) from exc
        return audio.from_wav(data, int(spec["sample_rate"]), field)
    if not isinstance(value, list) or not value or not all(type(v) is int for v in value):  # no JSON true/false
        raise InvalidInput(f"{field}: must be a base64 WAV string or a non-empty list of integer codes", field=field)
    x = np.array(value)
    check_range(x, int(spec["levels"]), field)
    return x.astype(np.int64)


def decode_inputs(values: list[Any], spec: dict, field: str = "body.inputs") -> np.ndarray | list[np.ndarray]:
    """A list of inputs -> int64 [B, *shape]; for text and audio, B arrays of their own lengths."""
    if not values:
        raise InvalidInput(f"{field}: at least one input is required", field=field)
    decoder = {"text": decode_text, "audio": decode_audio}.get(spec.get("kind"))
    if decoder is not None:
        return [decoder(v, spec, f"{field}[{i}]") for i, v in enumerate(values)]
    return np.stack([decode_image(v, spec, f"{field}[{i}]") for i, v in enumerate(values)])


def decode_prompt(prompt: str | None, spec: dict, field: str = "body.prompt") -> np.ndarray | str | None:
    """A text model's prompt -> int64 ids; another model's stays text, a caption that the engine encodes by the
    words its sample capability declares, or refuses (service/engine/captions.py)."""
    if prompt is None or spec.get("kind") != "text":
        return prompt
    return text.encode(prompt, spec["vocabulary"], field)


def _decode_mask_one(value: Any, spec: dict, field: str) -> np.ndarray:
    if isinstance(value, str):
        return decode_png_b64(value, _shape(spec), 2, field)
    if not isinstance(value, list):
        raise InvalidInput(f"{field}: must be a base64 PNG string or a nested array of 0/1", field=field)
    mask = nested_to_array(value, _shape(spec), field)
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise InvalidInput(f"{field}: mask values must be 0 (missing) or 1 (observed)", field=field)
    return mask


def _is_single(value: Any, shape: tuple[int, ...]) -> bool:
    """Whether a mask value is one mask (shared by every input) rather than a list of per-input masks."""
    if not isinstance(value, list):
        return True  # a PNG string, or garbage that _decode_mask_one refuses with the right message
    if value and all(isinstance(v, str) for v in value):
        return False  # one PNG per input
    try:
        return np.shape(value) in accepted_shapes(shape)
    except (ValueError, TypeError, RecursionError):
        return False


def decode_mask(value: Any, spec: dict, batch: int, field: str = "body.mask") -> np.ndarray | None:
    """One mask for every input, or one per input -> int64 [B, *shape] of 0/1 (1 = observed).

    Text and audio models continue each input and take none (None).
    """
    if spec.get("kind") in ("text", "audio"):
        check_no_mask(spec["kind"], value is not None, field)
        return None
    if value is None:
        raise InvalidInput(f"{field}: required for image models (1 = observed, 0 = fill in)", field=field)
    shape = _shape(spec)
    if _is_single(value, shape):
        return np.broadcast_to(_decode_mask_one(value, spec, field), (batch, *shape)).copy()
    if len(value) != batch:
        wanted = " or ".join(_fmt_shape(s) for s in accepted_shapes(shape))
        raise InvalidInput(
            f"{field}: must be one mask of shape {wanted} or a list of {batch} masks (one per input), "
            f"got a list of {len(value)}",
            field=field,
        )
    return np.stack([_decode_mask_one(v, spec, f"{field}[{i}]") for i, v in enumerate(value)])


# --- outputs -----------------------------------------------------------------------------------------------------


FORMATS = {"image": ("array", "png"), "text": ("text", "array"), "audio": ("wav", "array"),
           "music": ("midi", "array", "png")}  # first: default


def output_format(fmt: str | None, spec: dict, field: str = "body.format") -> str:
    """The requested output format (absent: the data kind's default), refused before any work if it cannot apply."""
    kind = spec.get("kind", "image")
    allowed = FORMATS.get(kind, ("array",))
    fmt = allowed[0] if fmt is None else fmt
    if fmt not in allowed:
        raise InvalidInput(f"{field}: {kind} models answer in {' or '.join(repr(f) for f in allowed)}", field=field)
    if fmt == "png" and kind != "music":  # music: a piano roll
        levels = _levels(spec)
        if png_layout(_shape(spec)) is None:
            raise InvalidInput(f"{field}: 'png' needs image data of shape [H,W], [1,H,W] or [3,H,W]", field=field)
        if levels is None or levels > _MAX_PNG_LEVELS:
            raise InvalidInput(f"{field}: 'png' needs at most {_MAX_PNG_LEVELS} levels", field=field)
    return fmt


def encode_sample(x: np.ndarray, spec: dict, fmt: str) -> str | list:
    """One sample [*shape] -> base64 PNG, text, base64 WAV, base64 MIDI, or nested ints ([H][W] when the data shape
    is [1,H,W]). A music sample [bars, *shape] is a MIDI file, a piano-roll PNG or its bars."""
    if fmt == "midi":
        return base64.b64encode(midi.to_midi(x, spec)).decode("ascii")
    if fmt == "png" and spec.get("kind") == "music":
        return base64.b64encode(midi.to_pianoroll_png(x, spec)).decode("ascii")
    if fmt == "png":
        return encode_png_b64(x, _levels(spec) or 2)
    if fmt == "text":
        return text.decode(x, spec["vocabulary"])
    if fmt == "wav":
        return base64.b64encode(audio.to_wav(x, int(spec["sample_rate"]))).decode("ascii")
    if _has_single_channel(x, spec):
        x = x[0]
    return np.asarray(x, dtype=np.int64).tolist()


def _has_single_channel(x: np.ndarray, spec: dict) -> bool:
    """Whether x is one image of the data shape [1,H,W], whose channel an array answer drops. Only the data spec
    tells a channel from another leading axis of length 1 (a music sample's one bar: [1, 16] stays [1][16])."""
    shape = _shape(spec)
    return x.shape == shape and len(accepted_shapes(shape)) > 1


def encode_samples(xs: np.ndarray, spec: dict, fmt: str) -> list:
    """[n, *shape] -> list of n encoded samples."""
    return [encode_sample(x, spec, fmt) for x in xs]


def stream_encoder(spec: dict, fmt: str, n: int) -> Callable[[np.ndarray], list]:
    """A stream's chunk [n, *step_shape] -> n encoded samples, as encode_samples; but a music stream's MIDI files
    hold each sample's melody so far (a held note stays one note; the last chunk's are /sample's files)."""
    if fmt != "midi":
        return lambda xs: encode_samples(xs, spec, fmt)
    melodies = midi.Melodies(spec, n)
    return lambda bars: [base64.b64encode(file).decode("ascii") for file in melodies.add(bars)]


def encode_images(xs: np.ndarray, spec: dict, fmt: str, field: str = "body.z",
                  array: bool = False) -> list | np.ndarray:
    """Expected images [n, *shape], floats in level units -> n nested float lists [*shape] (the data shape,
    channel kept), or base64 PNGs (each value scaled to the nearest of 0..255). With `array`, the floats stay
    one float32 array [n, *shape] for a writer that takes numpy arrays (service.api.responses).

    Images that are not finite (latents far outside the prior) are refused naming `field`, the request field
    they came from: an answer never holds NaN, infinity or the null that JSON would make of them."""
    check_finite_outputs({"images": xs}, field)
    if fmt == "png":
        return [encode_png_b64(x, _levels(spec) or 2) for x in xs]
    images = np.ascontiguousarray(xs, dtype=np.float32)
    return images if array else images.tolist()


def encode_levels(xs: np.ndarray, spec: dict, fmt: str) -> list | np.ndarray:
    """Images [n, *shape] of integer levels (translate's answers) -> one int64 array [n, *shape] (the data shape,
    channel kept: gRPC's tensor, which orjson writes as nested ints), or n base64 PNGs (levels scaled to 0..255)."""
    if fmt == "png":
        return [encode_png_b64(x, _levels(spec) or 2) for x in xs]
    return np.ascontiguousarray(xs, dtype=np.int64)


def decode_latents(value: list, field: str = "body.z") -> np.ndarray:
    """A rectangular [B, D] list of finite numbers -> float32 [B, D]."""
    try:
        z = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{field}: must be a rectangular [B, D] array of numbers", field=field) from exc
    if z.ndim != 2:
        raise InvalidInput(f"{field}: must be a rectangular [B, D] array of numbers", field=field)
    if not (np.isfinite(z).all() and (np.abs(z) <= np.finfo(np.float32).max).all()):
        raise InvalidInput(f"{field}: values must be finite float32 numbers", field=field)
    return z.astype(np.float32)
