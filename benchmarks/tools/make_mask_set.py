"""Build a synthetic foreground-mask set: Fashion-MNIST garments pasted onto crops of real photos.

Each garment (28x28, its non-zero pixels give an exact mask) is tinted with a random colour, upscaled
and pasted at a random position and scale onto a random crop of a background photo. Two sets are
written, built from disjoint garments (Fashion-MNIST train vs test) and disjoint backgrounds:

``<out>/masker/``     images/*.png, masks.csv (iMaterialist RLE), masks/*.png: to train a masker.
``<out>/retrieval/``  images/<class>/*.png, masks.csv, masks/*.png: to measure retrieval. Every
                      background crop carries garments of several *different* classes, so a query
                      shares its background with catalogue images of other classes: the trap that
                      background-driven similarity falls into.

In masks.csv each garment is split into two rows (upper and lower part, as iMaterialist lists a
garment and its parts); the union of an image's rows is its foreground. Deterministic for a seed.
Needs Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist).

    python benchmarks/tools/make_mask_set.py --backgrounds /work/shared/datasets/mit_scenes/train --out /tmp/maskset
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.tools.make_fashion_samples import CLASSES, SOURCE, read_idx  # noqa: E402
from engine.masking.masks import rle_encode  # noqa: E402
from engine.media.scan import iter_image_files  # noqa: E402


def background_crop(path: Path, side: int, rng: np.random.Generator) -> Image.Image:
    """A random square crop (50-100% of the short side) of a photo, resized to ``side``."""
    with Image.open(path) as photo:
        photo = photo.convert("RGB")
    short = min(photo.size)
    crop = int(short * rng.uniform(0.5, 1.0))
    left, top = int(rng.integers(0, photo.width - crop + 1)), int(rng.integers(0, photo.height - crop + 1))
    return photo.crop((left, top, left + crop, top + crop)).resize((side, side), Image.BILINEAR)


def paste_garment(background: Image.Image, garment: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """The garment tinted, scaled to 45-85% of the side, pasted at a random place; returns (image, exact mask)."""
    side = background.width
    size = int(side * rng.uniform(0.45, 0.85))
    colour = rng.uniform(0.25, 1.0, 3)
    intensity = np.asarray(Image.fromarray(garment).resize((size, size), Image.BILINEAR), np.float32) / 255.0
    mask = np.asarray(Image.fromarray((garment > 0).astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    # shading from the garment's own intensity, so texture and folds stay visible
    rgb = (colour[None, None, :] * (0.35 + 0.65 * intensity[..., None]) * 255).astype(np.uint8)
    top, left = int(rng.integers(0, side - size + 1)), int(rng.integers(0, side - size + 1))
    canvas = np.asarray(background).copy()
    region = canvas[top : top + size, left : left + size]
    region[mask] = rgb[mask]
    full = np.zeros((side, side), bool)
    full[top : top + size, left : left + size] = mask
    return Image.fromarray(canvas), full


def write_set(out: Path, items: list[tuple[str, str, Image.Image, np.ndarray, int]]) -> None:
    """items: (file name, class folder or '', image, mask, class index)."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    with open(out / "masks.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width", "ClassId"])
        for name, folder, image, mask, class_index in items:
            target = out / "images" / folder if folder else out / "images"
            target.mkdir(parents=True, exist_ok=True)
            image.save(target / name)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / name)
            rows = np.flatnonzero(mask.any(axis=1))
            cut = int(rows[len(rows) // 2]) if len(rows) else 0
            upper, lower = mask.copy(), mask.copy()
            upper[cut:], lower[:cut] = False, False
            for part in (upper, lower):
                if part.any():
                    writer.writerow([name, rle_encode(part), mask.shape[0], mask.shape[1], class_index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backgrounds", type=Path, required=True, help="folder of background photos (searched recursively)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--masker-images", type=int, default=600)
    parser.add_argument("--retrieval-backgrounds", type=int, default=60)
    parser.add_argument("--classes-per-background", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    photos = sorted(iter_image_files(args.backgrounds))
    if len(photos) < args.masker_images // 4 + args.retrieval_backgrounds:
        raise SystemExit(f"{args.backgrounds} has {len(photos)} photos, too few")
    photos = [photos[i] for i in rng.permutation(len(photos))]
    retrieval_photos, masker_photos = photos[: args.retrieval_backgrounds], photos[args.retrieval_backgrounds :]
    train_images, train_labels = read_idx(SOURCE / "train-images-idx3-ubyte.gz", SOURCE / "train-labels-idx1-ubyte.gz")
    test_images, test_labels = read_idx(SOURCE / "t10k-images-idx3-ubyte.gz", SOURCE / "t10k-labels-idx1-ubyte.gz")

    masker_items = []
    for i in range(args.masker_images):
        g = int(rng.integers(len(train_images)))
        image, mask = paste_garment(background_crop(masker_photos[i % len(masker_photos)], args.size, rng), train_images[g], rng)
        masker_items.append((f"m{i:05d}.png", "", image, mask, int(train_labels[g])))
    write_set(args.out / "masker", masker_items)

    retrieval_items = []
    by_class = {c: rng.permutation(np.flatnonzero(test_labels == c)).tolist() for c in range(len(CLASSES))}
    used = np.zeros(len(CLASSES), int)
    for b, photo in enumerate(retrieval_photos):
        background = background_crop(photo, args.size, rng)
        # distinct classes on one background: the least used so far (random tie-break) keeps classes balanced
        chosen = np.lexsort((rng.random(len(CLASSES)), used))[: args.classes_per_background]
        for c in chosen.tolist():
            used[c] += 1
            image, mask = paste_garment(background, test_images[by_class[c].pop()], rng)
            retrieval_items.append((f"r{b:03d}_{CLASSES[c]}.png", CLASSES[c], image, mask, c))
    write_set(args.out / "retrieval", retrieval_items)
    print(f"wrote {len(masker_items)} masker images and {len(retrieval_items)} retrieval images "
          f"({args.retrieval_backgrounds} backgrounds x {args.classes_per_background} classes) to {args.out}")


if __name__ == "__main__":
    main()
