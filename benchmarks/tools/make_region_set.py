"""Build a composite region set: several Fashion-MNIST garments of different classes pasted onto each real photo,
with exact boxes (COCO JSON) and masks, split into a catalogue and queries by background.

``<out>/catalogue/*.png`` and ``<out>/queries/*.png``: one background photo each (disjoint photos between the two),
``--garments`` garments of distinct classes pasted without overlapping (the extended masking-set generator:
``make_mask_set.paste_garment``, tinted and shaded); ``<out>/annotations.json``: COCO boxes with the garment
classes as categories, file names relative to ``<out>``; ``<out>/masks/<name>.png``: each image's foreground
(the union of its garments), for the masker and mask-set sources. Garments of the catalogue come from
Fashion-MNIST's train split, those of the queries from its test split. Deterministic for a seed.

    python benchmarks/tools/make_region_set.py --backgrounds ../shared/datasets/mit_scenes/train --out /tmp/regionset
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.tools.make_fashion_samples import CLASSES, SOURCE, read_idx  # noqa: E402
from benchmarks.tools.make_mask_set import background_crop  # noqa: E402
from engine.media.scan import iter_image_files  # noqa: E402

PLACEMENT_TRIES = 200  # random positions tried for a garment before the image is drawn again


def paste_at(canvas: np.ndarray, garment: np.ndarray, size: int, left: int, top: int, rng: np.random.Generator) -> np.ndarray:
    """The garment tinted and shaded (as make_mask_set pastes it), scaled to ``size``, pasted at (left, top); its mask."""
    colour = rng.uniform(0.25, 1.0, 3)
    intensity = np.asarray(Image.fromarray(garment).resize((size, size), Image.BILINEAR), np.float32) / 255.0
    mask = np.asarray(Image.fromarray((garment > 0).astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    rgb = (colour[None, None, :] * (0.35 + 0.65 * intensity[..., None]) * 255).astype(np.uint8)
    region = canvas[top : top + size, left : left + size]
    region[mask] = rgb[mask]
    full = np.zeros(canvas.shape[:2], bool)
    full[top : top + size, left : left + size] = mask
    return full


def composite(background: Image.Image, garments: list[np.ndarray], rng: np.random.Generator, share: tuple[float, float]) -> tuple[Image.Image, list[tuple[int, int, int, int]], np.ndarray]:
    """Garments pasted at non-overlapping places; returns the image, each garment's tight box (x, y, w, h) and the foreground."""
    side = background.width
    for _ in range(PLACEMENT_TRIES):
        sizes = [int(side * rng.uniform(*share)) for _ in garments]
        places: list[tuple[int, int, int]] = []
        for size in sizes:
            for _ in range(PLACEMENT_TRIES):
                left, top = int(rng.integers(0, side - size + 1)), int(rng.integers(0, side - size + 1))
                if all(left + size <= l2 or l2 + s2 <= left or top + size <= t2 or t2 + s2 <= top for l2, t2, s2 in places):
                    places.append((left, top, size))
                    break
        if len(places) == len(garments):
            break
    else:
        raise SystemExit("could not place the garments without overlap: give smaller --share or fewer --garments")
    canvas = np.asarray(background).copy()
    boxes, foreground = [], np.zeros((side, side), bool)
    for garment, (left, top, size) in zip(garments, places):
        mask = paste_at(canvas, garment, size, left, top, rng)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes.append((int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)))
        foreground |= mask
    return Image.fromarray(canvas), boxes, foreground


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backgrounds", type=Path, required=True, help="folder of background photos (searched recursively)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=192, help="side of every composite image, pixels")
    parser.add_argument("--catalogue", type=int, default=300, help="catalogue images (one background photo each)")
    parser.add_argument("--queries", type=int, default=60, help="query images (other background photos)")
    parser.add_argument("--garments", type=int, default=3, help="garments of distinct classes on each image")
    parser.add_argument("--share", type=float, nargs=2, default=(0.28, 0.42), help="a garment's side as a share of the image's, min max")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    photos = sorted(iter_image_files(args.backgrounds))
    if len(photos) < args.catalogue + args.queries:
        raise SystemExit(f"{args.backgrounds} has {len(photos)} photos; {args.catalogue + args.queries} are needed")
    photos = [photos[i] for i in rng.permutation(len(photos))]
    sources = {"catalogue": read_idx(SOURCE / "train-images-idx3-ubyte.gz", SOURCE / "train-labels-idx1-ubyte.gz"),
               "queries": read_idx(SOURCE / "t10k-images-idx3-ubyte.gz", SOURCE / "t10k-labels-idx1-ubyte.gz")}
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": name} for c, name in enumerate(CLASSES)]}
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    used = np.zeros(len(CLASSES), int)
    start = 0
    for part, count in (("catalogue", args.catalogue), ("queries", args.queries)):
        garments, labels = sources[part]
        by_class = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(len(CLASSES))}
        (args.out / part).mkdir(parents=True, exist_ok=True)
        for n, photo in enumerate(photos[start : start + count]):
            chosen = np.lexsort((rng.random(len(CLASSES)), used))[: args.garments].tolist()  # the least used classes: balanced
            used[chosen] += 1
            image, boxes, foreground = composite(background_crop(photo, args.size, rng), [garments[by_class[c].pop()] for c in chosen], rng, tuple(args.share))
            name = f"{part}/{part[0]}{n:04d}.png"
            image.save(args.out / name)
            Image.fromarray(foreground.astype(np.uint8) * 255).save(args.out / "masks" / Path(name).name)
            image_id = len(coco["images"])
            coco["images"].append({"id": image_id, "file_name": name, "width": args.size, "height": args.size})
            for c, box in zip(chosen, boxes):
                coco["annotations"].append({"id": len(coco["annotations"]), "image_id": image_id, "category_id": int(c), "bbox": list(box), "area": box[2] * box[3]})
        start += count
    (args.out / "annotations.json").write_text(json.dumps(coco))
    print(f"wrote {args.catalogue} catalogue and {args.queries} query images, {len(coco['annotations'])} garments, to {args.out}")
    return args.out


if __name__ == "__main__":
    main()
