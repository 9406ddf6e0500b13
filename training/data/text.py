"""Character text: the pydoc topics that ship with every CPython (`pydoc_data.topics`).

The vocabulary is fixed, never read off the data: "\\n" then printable ASCII
32..126 (96 characters; id 0 is "\\n", id 1 is " ", ..., id 95 is "~"). Every
other character (tabs, curly quotes, dashes, "…", ...) becomes REPLACEMENT "?".

The split is fixed, by topic: topics in sorted key order, every 10th one
(index % 10 == 9) is test. Each side's topics are joined with "\\n\\n" and cut
into non-overlapping chunks of `seq_len` characters (the tail shorter than
`seq_len` is dropped). With Python 3.11.7's pydoc_data (79 topics, 464,970
characters): 72 train topics, 454,219 characters joined -> 3,548 sequences of
128 (454,144 characters); 7 test topics ("binary", "class", "dynamic-features",
"id-classes", "nonlocal", "shifting", "typesfunctions"), 10,905 characters
joined -> 85 sequences of 128 (10,880 characters). 575 characters (0.12%) are
replaced. Other Python versions ship other topics, so these counts (not the rule)
vary with the interpreter; `describe()` records them.
"""

from dataclasses import dataclass

import numpy as np

from training.data.images import Split

VOCABULARY = "\n" + "".join(chr(i) for i in range(32, 127))
REPLACEMENT = "?"
SEPARATOR = "\n\n"
TEST_EVERY = 10

_INDEX = {ch: i for i, ch in enumerate(VOCABULARY)}
_REPLACEMENT_ID = _INDEX[REPLACEMENT]


def encode(text: str) -> np.ndarray:
    """str -> int64 ids [len(text)]; characters outside VOCABULARY become REPLACEMENT."""
    return np.array([_INDEX.get(ch, _REPLACEMENT_ID) for ch in text], dtype=np.int64)


def decode(ids) -> str:
    """Ids (any int sequence or array) in 0..len(VOCABULARY)-1 -> str."""
    return "".join(VOCABULARY[int(i)] for i in np.asarray(ids).reshape(-1))


def topic_split() -> tuple[list[str], list[str]]:
    """(train topic keys, test topic keys): sorted keys, index % 10 == 9 is test."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    test = [k for i, k in enumerate(keys) if i % TEST_EVERY == TEST_EVERY - 1]
    train = [k for i, k in enumerate(keys) if i % TEST_EVERY != TEST_EVERY - 1]
    return train, test


def _chunks(keys: list[str], seq_len: int) -> np.ndarray:
    """The topics' text joined and cut into [N, seq_len] uint8 ids."""
    from pydoc_data.topics import topics

    ids = encode(SEPARATOR.join(topics[k] for k in keys))
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len).astype(np.uint8)


@dataclass(frozen=True)
class TextSplit(Split):
    """A Split of [N, T] character ids (levels = vocabulary size, no classes)."""

    vocabulary: str = VOCABULARY

    def describe(self) -> dict:
        train, test = topic_split()
        return {
            "dataset": self.name,
            "train": len(self.x_train),
            "test": len(self.x_test),
            "seq_len": int(self.x_train.shape[1]),
            "split": f"by topic: sorted pydoc_data topics, index % {TEST_EVERY} == {TEST_EVERY - 1} is test",
            "train_topics": len(train),
            "test_topics": len(test),
            "train_chars": int(self.x_train.size),
            "test_chars": int(self.x_test.size),
        }


def pydoc_text(seq_len: int = 128) -> TextSplit:
    """pydoc topics as [N, seq_len] uint8 character ids, the fixed topic split (see the module docstring)."""
    train, test = topic_split()
    x_train, x_test = _chunks(train, seq_len), _chunks(test, seq_len)
    return TextSplit(
        "pydoc-text", x_train, np.zeros(len(x_train), np.int64), x_test, np.zeros(len(x_test), np.int64),
        levels=len(VOCABULARY), num_classes=0,
    )
