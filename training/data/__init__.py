"""Datasets that ship inside installed packages. Nothing is downloaded, ever."""

from training.data.images import Split, digits, load, mnist5k, mnist5k_binarized

__all__ = ["Split", "digits", "load", "mnist5k", "mnist5k_binarized"]
