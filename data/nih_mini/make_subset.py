"""How the bundled mini dataset was made (kept for provenance; users never need to run it).

Source: the project's shared copy of real NIH ChestX-ray14 data: 1,000 images (264 whole patients, all 15
labels) that a third party downsampled to 64x64 RGB PNG, and the 2020 ``Data_Entry_2017_v2020.csv``.
The three channels of every image are equal, so they are stored losslessly as 8-bit grayscale (mode L), the
format of real NIH PNGs. The labels are written twice, in both real CSV formats:

* ``sample_labels.csv``: the Kaggle sample's format (ages like ``060Y``, ``OriginalImagePixelSpacing_x``);
* ``Data_Entry_2017_v2020.csv``: the full release's rows for the same images, unchanged.

Usage: python data/nih_mini/make_subset.py /path/to/shared/data/nih
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

KAGGLE_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImageWidth",
    "OriginalImageHeight",
    "OriginalImagePixelSpacing_x",
    "OriginalImagePixelSpacing_y",
]


def main(source: Path, target: Path) -> None:
    names = sorted(p.name for p in (source / "images_64px").glob("*.png"))
    full = pd.read_csv(source / "Data_Entry_2017_v2020.csv.gz", dtype=str, keep_default_na=False)
    rows = full[full["Image Index"].isin(set(names))].sort_values("Image Index")
    assert len(rows) == len(names), "every image must have a label row"
    (target / "images").mkdir(parents=True, exist_ok=True)
    for name in names:
        rgb = np.asarray(Image.open(source / "images_64px" / name).convert("RGB"))
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all(), name
        Image.fromarray(rgb[..., 0], mode="L").save(target / "images" / name, optimize=True)
    rows.to_csv(target / "Data_Entry_2017_v2020.csv", index=False)
    kaggle = pd.DataFrame(
        {
            **{c: rows[c] for c in KAGGLE_COLUMNS[:4]},
            "Patient Age": [f"{int(a):03d}Y" for a in rows["Patient Age"]],
            "Patient Gender": rows["Patient Gender"],
            "View Position": rows["View Position"],
            "OriginalImageWidth": rows["OriginalImage[Width"],
            "OriginalImageHeight": rows["Height]"],
            "OriginalImagePixelSpacing_x": rows["OriginalImagePixelSpacing[x"].astype(float).round(3),
            "OriginalImagePixelSpacing_y": rows["y]"].astype(float).round(3),
        }
    )
    kaggle[KAGGLE_COLUMNS].to_csv(target / "sample_labels.csv", index=False)
    print(f"wrote {len(names)} images of {rows['Patient ID'].nunique()} patients to {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
