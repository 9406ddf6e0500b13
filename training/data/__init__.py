"""Datasets that ship inside installed packages. Nothing is downloaded, ever."""

from training.data.images import Split, digits, mnist5k, mnist5k_binarized
from training.data.text import TextSplit, pydoc_text

DATASETS = {"mnist5k": mnist5k, "mnist5k-binarized": mnist5k_binarized, "digits": digits, "pydoc-text": pydoc_text}

__all__ = ["DATASETS", "Split", "TextSplit", "digits", "load", "mnist5k", "mnist5k_binarized", "pydoc_text"]


def load(name: str) -> Split:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]()
