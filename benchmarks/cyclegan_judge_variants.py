"""Can b's judge (cyclegan's a -> b class survival) read digits drawn b's way better? Variants of the chosen judge
(`training.families.cyclegan.JUDGE`), scored as `choose_judge` scores its candidates, without any translation: trained
on b's first 1,318 framed train images and 4 augmented copies of each, then read on b's last 300 train images (held
out) and on mnist5k's 4,500 train digits drawn as b's (`optdigits`, upscaled and framed: the ideal translations).

- re-rendered: each augmented copy drawn again b's way (`optdigits`), so it is an image of b's kind;
- elastic: a smooth random displacement field (Simard et al. 2003: uniform noise blurred by a Gaussian of sigma 4
  pixels, scaled to at most 2 or 3 pixels) before the chosen augmentation;
- 32 channels: the classifier twice as wide (16 -> 32 and 32 -> 64 channels).

    .venv/bin/python benchmarks/cyclegan_judge_variants.py [--seeds 0] [--json out.json]
"""

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from training import quality
from training.data import mnist5k
from training.families import cyclegan as cg

HELD_OUT = 300


def elastic(x: np.ndarray, pixels: float, rng: np.random.Generator, sigma: float = 4.0) -> np.ndarray:
    """Images [N, 1, 28, 28] levels -> as many, each warped by its own smooth displacement field of at most
    `pixels` pixels."""
    image, n = torch.from_numpy(x).float(), len(x)
    field = torch.from_numpy(rng.uniform(-1, 1, (2 * n, 1, cg.SIDE, cg.SIDE))).float()
    r = torch.arange(-3 * int(sigma), 3 * int(sigma) + 1).float()
    kernel = torch.exp(-r.square() / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    field = F.conv2d(field, kernel[None, None, :, None], padding=(len(r) // 2, 0))
    field = F.conv2d(field, kernel[None, None, None, :], padding=(0, len(r) // 2)).reshape(n, 2, cg.SIDE, cg.SIDE)
    field = field / field.abs().amax((1, 2, 3), keepdim=True) * pixels * 2 / cg.SIDE  # [N, 2, 28, 28], grid units
    grid = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), list(image.shape), align_corners=False)
    warped = F.grid_sample(image, grid + field.permute(0, 2, 3, 1), align_corners=False)
    return torch.clamp(torch.round(warped), 0, cg.LEVELS - 1).numpy().astype(np.uint8)


def train(x: np.ndarray, y: np.ndarray, seed: int, rerender: bool = False, warp: float = 0.0,
          channels: int = 16) -> quality.Classifier:
    """The chosen judge's recipe (`cg.train_judge`) with one variant changed."""
    rng, settings = np.random.default_rng(seed), cg.JUDGE
    copies = [cg.augment(elastic(x, warp, rng) if warp else x, settings, rng) for _ in range(settings.copies)]
    if rerender:
        copies = [cg.upscale(cg.optdigits(copy), border=4) for copy in copies]
    return cg.judge_on(x, y, copies, seed=seed, config=quality.ClassifierConfig(channels=channels))


VARIANTS = {"chosen (wide affine, thickness, blur)": {}, "re-rendered": {"rerender": True},
            "elastic 2 pixels": {"warp": 2.0}, "elastic 3 pixels": {"warp": 3.0}, "32 channels": {"channels": 32}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated (default: 0)")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    b, a = cg.digits28(mnist_frame=True), mnist5k()
    rendered = cg.upscale(cg.optdigits(a.x_train), border=4)  # [4500, 1, 28, 28]
    n = len(b.x_train) - HELD_OUT
    report = {}
    for name, variant in VARIANTS.items():
        scores = np.array([[quality.accuracy(judge, b.x_train[n:], b.y_train[n:], cg.LEVELS),
                            quality.accuracy(judge, rendered, a.y_train, cg.LEVELS)]
                           for judge in (train(b.x_train[:n], b.y_train[:n], int(seed), **variant)
                                         for seed in args.seeds.split(","))])  # [seeds, 2]
        report[name] = {"b_held_out": scores[:, 0].tolist(), "rendered_mnist5k_train": scores[:, 1].tolist()}
        print(name, report[name], file=sys.stderr, flush=True)
    print("| b's judge, trained on b's first 1,318 train images | b's held-out 300 "
          "| mnist5k train digits drawn as b's |")
    print("|---|---|---|")
    for name, row in report.items():
        print(f"| {name} | {np.mean(row['b_held_out']):.3f} | {np.mean(row['rendered_mnist5k_train']):.3f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"seeds": args.seeds, "variants": report}, out, indent=2)


if __name__ == "__main__":
    main()
