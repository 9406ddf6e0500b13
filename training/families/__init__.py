"""One module per model family. Each exposes build(config), loss(model, x, y),
sample_grid(model, generator) and exported_functions(model, split)."""

import importlib

FAMILIES = ("pixelcnn", "pixelrnn")


def family_module(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {list(FAMILIES)}")
    return importlib.import_module(f"training.families.{name}")
