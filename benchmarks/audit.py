"""The data audit against planted problems on real photos (MIT scenes), measured side by side in one run.

1. Planted label noise: 5% of the catalogue's labels flipped (seeded) to a plausible other class (one of the two
   class centroids nearest the photo), then the label-mistake finder: precision and recall against the flips at
   the default (cleanlab's filter), average precision and the best precision at recall >= 0.8 along the curve,
   and how many findings the unflipped labels already give (real or ambiguous labels, counted as false here).
2. Planted duplicates: resized (half size), re-encoded (JPEG quality 60), cropped (5% off each side) and mirrored
   copies of ``--copies`` photos ingested into a copy of the database; the near-duplicate finder's recall (copies
   grouped with their original) and the groups that hold photos of two different originals.
3. The near-copy groups of the unplanted catalogue, for comparison with the report's.
4. With ``--scale-rows N``: the near-duplicate search among N real-derived vectors (made from the database's MIT
   vectors) with 1,000 planted copies: time, copies grouped, and the shared search's recall@10 against exact search.

    python -m benchmarks.audit --db /tmp/mit/db   # a database of MIT photos ingested with the default encoder
    python -m benchmarks.audit --db /tmp/mit/db --scale-rows 1000000

Writes ``benchmarks/results/audit_label_noise.csv``, ``audit_duplicates.csv`` and the precision-recall curve
``audit_label_noise.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl
from PIL import Image, ImageOps
from sklearn.metrics import average_precision_score, precision_recall_curve

from benchmarks.common import write_and_show
from engine.audit.finders import (
    AuditConfig,
    AuditData,
    class_centroids,
    class_probabilities,
    duplicate_groups,
    duplicate_links,
    find_label_mistakes,
    neighbours,
    search_recall,
)
from engine.audit.run import audit_model, load_audit_data
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import create_encoder
from engine.storage.database import Database
from ingest.pipeline import IngestConfig, ingest_folder

RESULTS = Path(__file__).parent / "results"
NOISE_SHARE = 0.05
PLAUSIBLE_CLASSES = 2  # a flip goes to one of the photo's nearest other class centroids
HALF = 0.5
JPEG_QUALITY = 60
CROP_SIDE = 0.05  # each side: 10% of the width and of the height in all
DERIVED_STEP = 0.5  # a real-derived row: a real embedding plus this much of the difference of two others
TRANSFORMS = ("resized", "jpeg60", "cropped", "mirrored")


def plant_label_noise(data, seed: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001 - AuditData
    """Labels with ``NOISE_SHARE`` flipped to a plausible other class, and the flipped rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data.ids), size=round(NOISE_SHARE * len(data.ids)), replace=False)
    classes, centroids = class_centroids(data.vectors, data.labels)
    labels = data.labels.copy()
    for row in rows:
        nearest = [classes[c] for c in np.argsort(-(centroids @ data.vectors[row])) if classes[c] != labels[row]]
        labels[row] = nearest[rng.integers(PLAUSIBLE_CLASSES)]
    return labels, rows


def label_noise(db: Database, seeds: list[int], config: AuditConfig) -> tuple[pl.DataFrame, list]:
    data = load_audit_data(db, audit_model(db), "label IS NOT NULL", config)
    clean_flags = {f.image_ids[0] for f in find_label_mistakes(data, config)}
    rows, curves = [], []
    for seed in seeds:
        labels, flipped = plant_label_noise(data, seed)
        noisy = dataclasses.replace(data, labels=labels)
        started = time.perf_counter()
        flagged = {f.image_ids[0] for f in find_label_mistakes(noisy, config)}
        seconds = time.perf_counter() - started
        truth = set(data.ids[flipped])
        hits = len(flagged & truth)
        classes, probabilities = class_probabilities(noisy, config)
        column = {label: i for i, label in enumerate(classes)}
        score = 1.0 - probabilities[np.arange(len(labels)), [column[label] for label in labels]]
        is_flip = np.isin(data.ids, list(truth))
        precision, recall, _ = precision_recall_curve(is_flip, score)
        curves.append((seed, precision, recall))
        rows.append({"seed": seed, "images": len(labels), "flipped": len(truth), "flagged": len(flagged), "precision": hits / max(len(flagged), 1),
                     "recall": hits / len(truth), "average_precision": average_precision_score(is_flip, score),
                     "best_precision_at_recall_0.8": float(precision[recall >= 0.8].max()), "flags_on_clean_labels": len(clean_flags),
                     "false_flags_also_on_clean": len((flagged - truth) & clean_flags), "seconds": seconds})
    return pl.DataFrame(rows), curves


def plot_curves(curves: list, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), dpi=120)
    axes = figure.add_subplot()
    for seed, precision, recall in curves:
        axes.plot(recall, precision, label=f"seed {seed}")
    axes.axhline(0.8, color="grey", lw=0.8, ls="--")
    axes.axvline(0.8, color="grey", lw=0.8, ls="--")
    axes.set(xlabel="recall of the flipped labels", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title=f"label-mistake score, {NOISE_SHARE:.0%} planted flips (MIT)")
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path)


def make_copies(db: Database, count: int, seed: int, folder: Path) -> dict[str, str]:
    """``count`` seeded catalogue photos copied four ways into ``folder``: copy file name -> original image id."""
    frame = db.images_frame(columns=["id", "path"]).sort("id")
    chosen = frame[np.sort(np.random.default_rng(seed).choice(frame.height, size=count, replace=False)).tolist()]
    origin = {}
    for image_id, path in chosen.iter_rows():
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        copies = {
            "resized": image.resize((round(width * HALF), round(height * HALF)), Image.Resampling.BICUBIC),
            "jpeg60": image,
            "cropped": image.crop((round(width * CROP_SIDE), round(height * CROP_SIDE), round(width * (1 - CROP_SIDE)), round(height * (1 - CROP_SIDE)))),
            "mirrored": ImageOps.mirror(image),
        }
        for name, copy in copies.items():
            target = folder / f"{image_id[:12]}_{name}.jpg"
            copy.save(target, quality=JPEG_QUALITY if name == "jpeg60" else 95)
            origin[target.name] = image_id
    return origin


def duplicates(db_path: Path, count: int, seed: int, config: AuditConfig) -> pl.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        copy_path = Path(scratch) / "db"
        shutil.copytree(db_path, copy_path)
        db = Database(str(copy_path))
        real = load_audit_data(db, audit_model(db), None, config)
        real_groups = duplicate_groups(real.similarities, real.neighbours, duplicate_links(real, config))
        folder = Path(scratch) / "copies"
        folder.mkdir()
        origin = make_copies(db, count, seed, folder)
        model = audit_model(db)
        ingest_folder(db, folder, IngestConfig(split="copies"), create_encoder(EncoderConfig(name=model.encoder)))
        data = load_audit_data(db, model, None, config)
        started = time.perf_counter()
        groups = duplicate_groups(data.similarities, data.neighbours, duplicate_links(data, config))
        seconds = time.perf_counter() - started
        family = {}  # row -> the original it was made from (originals are their own)
        for row, path in enumerate(data.paths):
            name = Path(path).name
            family[row] = origin.get(name, str(data.ids[row]))
        group_of = {r: g for g, (centre, members, _) in enumerate(groups) for r in [centre, *members]}
        row_of_id = {str(i): r for r, i in enumerate(data.ids)}
        planted = set(origin.values())
        # a group mixes photos when it holds two planted originals' families, or one with any other photo (groups of
        # unplanted photos only are the catalogue's own near-copies, counted before planting)
        mixed_groups = [[c, *m] for c, m, _ in groups if len(fams := {family[r] for r in [c, *m]}) > 1 and fams & planted]
        for group in mixed_groups:
            print("a group mixing photos:", ", ".join(f"{Path(str(data.paths[r])).name} (from {family[r][:12]})" for r in group))
        # families joined by one of the catalogue's own near-copy groups found before planting are related photos
        real_group_of = {str(real.ids[r]): g for g, (c, m, _) in enumerate(real_groups) for r in [c, *m]}
        unrelated = [g for g in mixed_groups if len({real_group_of.get(family[r], family[r]) for r in g}) > 1]
        mixed = len(unrelated)
        for transform in TRANSFORMS:
            found = 0
            for name, original in origin.items():
                if not name.endswith(f"_{transform}.jpg"):
                    continue
                row = next(r for r, p in enumerate(data.paths) if Path(p).name == name)
                found += row in group_of and group_of.get(row) == group_of.get(row_of_id[original])
            rows.append({"transform": transform, "copies": count, "grouped_with_original": found, "recall": found / count})
        rows.append({"transform": "all", "copies": len(origin), "grouped_with_original": sum(r["grouped_with_original"] for r in rows),
                     "recall": sum(r["grouped_with_original"] for r in rows) / len(origin)})
        frame = pl.DataFrame(rows).with_columns(pl.lit(len(groups)).alias("groups"), pl.lit(len(mixed_groups)).alias("groups_with_two_originals"), pl.lit(mixed).alias("groups_with_unrelated_photos"),
                                               pl.lit(len(real_groups)).alias("real_groups_before"), pl.lit(seconds).alias("group_seconds"))
    return frame


def scale(rows: int, pairs: int, seed: int, config: AuditConfig, source: np.ndarray) -> pl.DataFrame:
    """Near-duplicates among ``rows`` real-derived vectors with ``pairs`` planted copies (cosine about 0.97 to
    their original): the shared neighbour search, the grouping, copies found, and the search's recall@10 against
    exact search on a seeded sample of rows. A row is a real embedding moved along the difference of two others
    (``source``: the MIT photos' vectors), so the table keeps the low-dimensional shape of image embeddings while
    rows from one photo stay apart (cosine well below the duplicate threshold)."""
    rng = np.random.default_rng(seed)
    dim = source.shape[1]
    vectors = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 100_000):  # in blocks: no float64 copy of the whole table
        stop = min(start + 100_000, rows)
        picks = rng.integers(len(source), size=(3, stop - start))
        block = source[picks[0]] + DERIVED_STEP * (source[picks[1]] - source[picks[2]])
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    originals = rng.choice(rows - pairs, size=pairs, replace=False)
    copies = np.arange(rows - pairs, rows)
    noise = rng.normal(scale=0.25 / np.sqrt(dim), size=(pairs, dim)).astype(np.float32)
    vectors[copies] = vectors[originals] + noise
    vectors[copies] /= np.linalg.norm(vectors[copies], axis=1, keepdims=True)
    planted_similarity = float(np.median(np.sum(vectors[copies] * vectors[originals], axis=1)))
    started = time.perf_counter()
    similarities, positions = neighbours(vectors, config.k + config.headroom)
    search_seconds = time.perf_counter() - started
    started = time.perf_counter()
    data = AuditData(np.arange(rows).astype(str).astype(object), np.array([""] * rows, dtype=object), np.array([None] * rows, dtype=object),
                     np.array([None] * rows, dtype=object), vectors, pl.DataFrame(), similarities, positions)
    groups = duplicate_groups(similarities, positions, duplicate_links(data, dataclasses.replace(config, pixel_threshold=None)))
    group_seconds = time.perf_counter() - started
    group_of = {r: g for g, (c, m, _) in enumerate(groups) for r in [c, *m]}
    found = sum(group_of.get(int(c), -1) == group_of.get(int(o), -2) for c, o in zip(copies, originals))
    recall = search_recall(vectors, positions)
    return pl.DataFrame([{"rows": rows, "dim": dim, "derived_step": DERIVED_STEP, "planted_pairs": pairs, "planted_cosine": planted_similarity, "pairs_grouped": int(found),
                          "groups": len(groups), "search_recall_at_10": float(recall), "search_seconds": search_seconds, "group_seconds": group_seconds}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="an MIT database (parts 1-3)")
    parser.add_argument("--scale-rows", type=int, help="instead: near-duplicates among this many synthetic vectors (e.g. 1000000)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=AuditConfig.duplicate_threshold)
    parser.add_argument("--pixel-threshold", type=float, default=AuditConfig.pixel_threshold)
    args = parser.parse_args()
    config = AuditConfig(duplicate_threshold=args.threshold, pixel_threshold=args.pixel_threshold)
    if args.db is None:
        parser.error("give --db (an MIT database; --scale-rows derives its vectors from it)")
    if args.scale_rows:
        source = load_audit_data(Database(str(args.db), read_only=True), audit_model(Database(str(args.db), read_only=True)), None, config).vectors
        write_and_show(scale(args.scale_rows, 1000, 0, config, source), RESULTS / f"audit_scale_{args.scale_rows}.csv")
        return
    db = Database(str(args.db), read_only=True)
    noise, curves = label_noise(db, [int(s) for s in args.seeds.split(",")], config)
    write_and_show(noise, RESULTS / "audit_label_noise.csv")
    plot_curves(curves, RESULTS / "audit_label_noise.png")
    write_and_show(duplicates(args.db, args.copies, 0, config), RESULTS / "audit_duplicates.csv")


if __name__ == "__main__":
    main()
