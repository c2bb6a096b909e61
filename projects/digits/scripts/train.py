"""Train the digits CNN on the train split of data/images and save weights/digits_cnn.safetensors.

Reads the PNG files exactly as sqlinfer's `digits_predict` does (grayscale, /255, mean 0.5,
std 0.5), with a fixed seed; prints the accuracy on the held-out test split.
Run from anywhere: `python projects/digits/scripts/train.py`.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from digits_net import DigitsCNN  # noqa: E402


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    with open(ROOT / "data/labels.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    pixels = np.stack([np.asarray(Image.open(ROOT / r["path"]).convert("L")) for r in rows])
    x = (torch.from_numpy(pixels).float().div(255).unsqueeze(1) - 0.5) / 0.5
    return x, torch.tensor([int(r["label"]) for r in rows])


def main() -> None:
    torch.manual_seed(0)
    x_train, y_train = load("train")
    x_test, y_test = load("test")
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _epoch in range(30):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    (ROOT / "weights").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ROOT / "weights/digits_cnn.safetensors")
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} test images (trained on {len(y_train)})")


if __name__ == "__main__":
    main()
