"""Regenerate data/samples and data/queries from Fashion-MNIST (MIT licence).

Needs Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist). Writes the
first PER_CLASS training images of every class as PNG into data/samples/<class>/ and the first
test image of every class into data/queries/. Deterministic: the same files every run.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
SOURCE = Path("/usr/share/datasets/fashion-mnist")


def read_idx(images_gz: Path, labels_gz: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(images_gz) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_gz) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--per-class", type=int, default=12)
    args = parser.parse_args()
    train = read_idx(SOURCE / "train-images-idx3-ubyte.gz", SOURCE / "train-labels-idx1-ubyte.gz")
    test = read_idx(SOURCE / "t10k-images-idx3-ubyte.gz", SOURCE / "t10k-labels-idx1-ubyte.gz")
    for class_index, name in enumerate(CLASSES):
        folder = args.out / "samples" / name
        folder.mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(train[1] == class_index)[: args.per_class]
        for row in rows:
            Image.fromarray(train[0][row], mode="L").save(folder / f"train_{row:05d}.png", optimize=True)
        query_row = int(np.flatnonzero(test[1] == class_index)[0])
        (args.out / "queries").mkdir(parents=True, exist_ok=True)
        Image.fromarray(test[0][query_row], mode="L").save(
            args.out / "queries" / f"{name}_test_{query_row:05d}.png", optimize=True
        )


if __name__ == "__main__":
    main()
