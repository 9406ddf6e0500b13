"""A sample capability's `prompt`: free text -> word ids, by the words the manifest declares.

A model that draws from a caption (a text-to-image GAN) declares in capabilities.sample.prompt the tensor input
that takes the caption ("input"), its vocabulary (word 0 pads), the most words ("max_words") and how text splits
into words ("lowercase", "separators"); such a capability needs a prompt in every request. The engine turns a
request's prompt into int64 [rows, max_words] ids under that input's name; it never knows the family.
"""

import re

import numpy as np

from service.engine.errors import InvalidInput
from service.engine.validation import brief


def words(text: str, spec: dict) -> list[str]:
    """Text -> its words: lowercased if the spec says so, split at whitespace and the spec's separators."""
    text = text.lower() if spec.get("lowercase", True) else text
    return [w for w in re.split(f"[\\s{re.escape(spec.get('separators', ''))}]+", text) if w]


def encode(text: str, spec: dict, field: str = "prompt") -> np.ndarray:
    """Text -> int64 [max_words] word ids padded with 0, or InvalidInput naming the field: too many words (counted
    first, so a long prompt is refused in one line), or the unknown words (quoted through validation.brief)."""
    if not isinstance(text, str):
        raise InvalidInput(f"{field}: must be text", field=field)
    found = words(text, spec)
    index = {w: i for i, w in enumerate(spec["vocabulary"]) if i > 0}
    if not found:
        raise InvalidInput(f"{field}: has no words", field=field)
    if len(found) > spec["max_words"]:
        raise InvalidInput(f"{field}: {len(found)} words, over the model's {spec['max_words']}", field=field)
    unknown = list(dict.fromkeys(w for w in found if w not in index))
    if unknown:
        raise InvalidInput(f"{field}: unknown words {brief(unknown)}; the model knows {sorted(index)}", field=field)
    ids = np.zeros(spec["max_words"], np.int64)
    ids[: len(found)] = [index[w] for w in found]
    return ids


def condition(cap: dict, prompt: str | None, rows: int, model: str) -> dict[str, np.ndarray]:
    """The capability's prompt input for every row, {input: int64 [rows, max_words]}; {} when it declares none
    (and then a prompt is refused)."""
    spec = cap.get("prompt")
    if spec is None:
        if prompt is not None:
            raise InvalidInput(f"prompt: model {model!r} takes no prompt", field="prompt")
        return {}
    if prompt is None:
        raise InvalidInput(f"prompt: required: model {model!r} draws from a caption", field="prompt")
    ids = encode(prompt, spec)
    return {spec["input"]: np.broadcast_to(ids, (rows, len(ids))).copy()}
