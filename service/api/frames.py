"""Sequences of frames on the wire (state-space models: predict, encode, sample under actions).

A sequence is a list of frames, each a nested array of integer levels or a base64 PNG (service.api.codecs'
image inputs). An answer's frames are nested integer levels ("array", [T][H][W] for one channel), or one base64
animation per sequence: an animated PNG ("png", lossless) or a GIF ("gif"), FRAME_MS per frame, looping. A
request whose Accept header names image/png or image/gif gets the animation file itself (one sequence).
"""

import base64
import io
from typing import Any

import numpy as np
from fastapi import Request
from PIL import Image

from service.api import accept, codecs
from service.engine.errors import InvalidInput

FORMATS = ("array", "png", "gif")  # first: the default
FILES = {"image/png": "png", "image/gif": "gif"}  # Accept -> the animation file answered instead of JSON
FRAME_MS = 100  # the simulator's frame interval (0.1 s)


def decode_sequences(values: list[Any], spec: dict, field: str = "body.inputs") -> np.ndarray:
    """A list of sequences of frames -> int64 [B, T, *shape]; every sequence must have the same length."""
    sequences = []
    for i, sequence in enumerate(values):
        if not isinstance(sequence, list) or not sequence:
            raise InvalidInput(f"{field}[{i}]: give a non-empty list of frames", field=f"{field}[{i}]")
        sequences.append(np.stack([codecs.decode_image(frame, spec, f"{field}[{i}][{t}]")
                                   for t, frame in enumerate(sequence)]))
    lengths = {len(s) for s in sequences}
    if len(lengths) > 1:
        raise InvalidInput(f"{field}: every sequence needs the same number of frames, got {sorted(lengths)}",
                           field=field)
    return np.stack(sequences)


def output_format(fmt: str | None, field: str = "body.format") -> str:
    fmt = FORMATS[0] if fmt is None else fmt
    if fmt not in FORMATS:
        raise InvalidInput(f"{field}: frames are answered as {', '.join(repr(f) for f in FORMATS)}", field=field)
    return fmt


def wanted_file(request: Request, rows: int, field: str = "body.inputs") -> str | None:
    """The animation format an Accept header prefers to JSON as the answer itself (one sequence), else None."""
    media = accept.wanted_file(request.headers.get("accept", ""), tuple(FILES))
    fmt = FILES[media] if media is not None else None
    if fmt is not None and rows != 1:
        raise InvalidInput(f"{field}: an image file answer holds one sequence, got {rows}; ask for JSON for more",
                           field=field)
    return fmt


def animation(frames: np.ndarray, levels: int, fmt: str) -> bytes:
    """Frames [T, 1, H, W] (or [T, H, W]) levels -> an animated PNG or GIF, grayscale, FRAME_MS per frame."""
    if len(frames) == 0:
        raise InvalidInput("actions: no frame to animate; give at least one action past the observed frames, or ask "
                           "for JSON (the filtered states alone)", field="actions")
    pixels = codecs.to_pixels(frames.reshape(len(frames), *frames.shape[-2:]), levels)
    images = [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]
    out = io.BytesIO()
    images[0].save(out, format=fmt.upper(), save_all=True, append_images=images[1:], duration=FRAME_MS, loop=0)
    return out.getvalue()


def encode_sequences(x: np.ndarray, spec: dict, fmt: str) -> list:
    """[B, T, *shape] levels -> B nested arrays ([T][H][W] for one channel) or base64 animations."""
    if fmt == "array":
        squeezed = x[:, :, 0] if x.ndim == 5 and x.shape[2] == 1 else x
        return np.asarray(squeezed, np.int64).tolist()
    return [base64.b64encode(animation(frames, int(spec["levels"]), fmt)).decode("ascii") for frames in x]
