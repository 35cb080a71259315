"""Draw docs/images/augmentation_grid.png: what cxr_vit.data.intensity does to a real chest film.

One row per op at both ends of its range for magnitudes 5 and 10, then two rows of random draws of the full
augmentation (2 ops per image, magnitude 5 and 10) as training sees them, labelled with the ops drawn.

    python docs/make_augmentation_grid.py [--image tests/data/00000011_000.png] [--size 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cxr_vit.data.intensity import OPS, IntensityAugment, apply_op, strength_range

REPO = Path(__file__).resolve().parents[1]
LABEL_HEIGHT = 26  # two lines of PIL's default font


def tiles(film: torch.Tensor) -> list[list[tuple[str, torch.Tensor]]]:
    """Rows of (two-line label, (1, 1, H, W) image) pairs."""
    rows = []
    for op in OPS:
        row = [("original\n", film)]
        for magnitude in (5, 10):
            low, high = strength_range(op, magnitude)
            values = (high,) if op == "noise" else (low, high)  # noise: sigma from 0 up to high
            row += [(f"{op}, m={magnitude}\n{value:.2f}", apply_op(op, film, value)) for value in values]
        rows.append(row)
    for magnitude in (5, 10):
        augment = IntensityAugment(num_ops=2, magnitude=magnitude)
        row = []
        for seed in range(5):
            # __call__ draws with the generator exactly as sample() does: the label names the ops it applied
            chosen, params = augment.sample(1, generator=torch.Generator().manual_seed(seed))
            drawn = [f"{op[:5]} {params[op].item():.2f}" for i, op in enumerate(augment.ops) if chosen[0, i]]
            row.append(
                (f"random, m={magnitude}\n{', '.join(drawn)}", augment(film, torch.Generator().manual_seed(seed)))
            )
        rows.append(row)
    return rows


def render(rows: list[list[tuple[str, torch.Tensor]]], size: int) -> Image.Image:
    columns = max(len(row) for row in rows)
    grid = Image.new("L", (columns * size, len(rows) * (size + LABEL_HEIGHT)), color=255)
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        top = r * (size + LABEL_HEIGHT)
        for c, (label, image) in enumerate(row):
            pixels = image[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
            grid.paste(Image.fromarray(pixels), (c * size, top + LABEL_HEIGHT))
            draw.text((c * size + 3, top + 1), label, fill=0)
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=REPO / "tests" / "data" / "00000011_000.png")
    parser.add_argument("--size", type=int, default=128, help="side of each tile; the film is resized to it first")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images" / "augmentation_grid.png")
    args = parser.parse_args()

    # Augment at the tile size, as training augments at the model's input size.
    image = Image.open(args.image).convert("L").resize((args.size, args.size), Image.Resampling.BICUBIC)
    film = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    render(tiles(film), args.size).save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
