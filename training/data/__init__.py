"""Datasets that ship inside installed packages. Nothing is downloaded, ever."""

from training.data.images import Split, digits, mnist5k, mnist5k_binarized
from training.data.jets import jet_images, jet_images_tiny
from training.data.music import chorales, chorales_tiny
from training.data.pendulum import pendulum_frames, pendulum_frames_tiny
from training.data.speech import SpeechSplit, pydoc_speech, pydoc_speech_tiny
from training.data.text import TextSplit, pydoc_text

DATASETS = {"mnist5k": mnist5k, "mnist5k-binarized": mnist5k_binarized, "digits": digits, "pydoc-text": pydoc_text,
            "speech": pydoc_speech, "speech-tiny": pydoc_speech_tiny,
            "jets": jet_images, "jets-tiny": jet_images_tiny,
            "pendulum": pendulum_frames, "pendulum-tiny": pendulum_frames_tiny,
            "chorales": chorales, "chorales-tiny": chorales_tiny}

__all__ = ["DATASETS", "SpeechSplit", "Split", "TextSplit", "digits", "load", "mnist5k", "mnist5k_binarized",
           "pydoc_speech", "pydoc_speech_tiny", "pydoc_text"]


def load(name: str) -> Split:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]()
