"""Text <-> character ids, by a model's vocabulary (the manifest's data.vocabulary).

Both adapters use it: REST and gRPC carry text as strings, the engine as int64 ids.
"""

import numpy as np

from service.engine.errors import InvalidInput


def encode(text: str, vocabulary: list[str], field: str) -> np.ndarray:
    """text -> int64 [len(text)] ids, or InvalidInput naming the field and the first unknown character."""
    index = {char: i for i, char in enumerate(vocabulary)}
    ids = [index.get(char, -1) for char in text]
    if -1 in ids:
        position = ids.index(-1)
        raise InvalidInput(f"{field}: character {text[position]!r} at position {position} is not in the "
                           "model's vocabulary (see data.vocabulary)", field=field)
    return np.array(ids, np.int64)


def decode(ids: np.ndarray, vocabulary: list[str]) -> str:
    """int64 [T] ids -> text."""
    return "".join(vocabulary[int(i)] for i in ids)
