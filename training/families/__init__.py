"""One module per model family. Each exposes build(config), loss(model, x, y),
exported_functions(model, split), and sample_grid(model, generator) (images),
sample_text(model, generator) (text) or sample_audio(model, generator) (audio)
for the run's samples."""

import importlib

FAMILIES = ("pixelcnn", "pixelrnn", "charrnn", "wavenet", "vae", "hvae", "rbm", "flow", "gsn", "gan", "lagan",
            "pix2pix", "cyclegan", "dvbf", "vrnn", "stackgan", "midinet")


def family_module(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {list(FAMILIES)}")
    return importlib.import_module(f"training.families.{name}")
