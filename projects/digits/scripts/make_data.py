"""Write the UCI optical-recognition digits (1,797 8x8 images, as scikit-learn ships them) as PNG
files with a held-out split:

    data/images/{train,test}/<digit>/<index>.png   (pixel = value * 255 / 16, grayscale)
    data/labels.csv                                (path, label, split)

Run from the project folder: `python scripts/make_data.py` (needs `pip install scikit-learn`).
The split is stratified, 25% held out, random_state=0, so the files are reproducible.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, test = train_test_split(indices, test_size=0.25, random_state=0, stratify=digits.target)
    split_of = {int(i): "train" for i in train} | {int(i): "test" for i in test}
    rows = []
    for index in indices:
        label = int(digits.target[index])
        split = split_of[int(index)]
        relative = Path("data/images") / split / str(label) / f"{index:04d}.png"
        (ROOT / relative).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.round(digits.images[index] * 255.0 / 16.0).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(ROOT / relative, optimize=True)
        rows.append((relative.as_posix(), label, split))
    with open(ROOT / "data/labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} images ({len(train)} train, {len(test)} test)")


if __name__ == "__main__":
    main()
