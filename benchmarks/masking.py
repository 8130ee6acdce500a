"""Foreground masking on the synthetic garment composites: masker IoU, retrieval with and without masks.

Needs the set from benchmarks/tools/make_mask_set.py and a database holding a masker trained on its
``masker/`` part (lookalike train-masker). On the ``retrieval/`` part (garments of several classes on each
background, 80/20 stratified catalogue/query split) it measures, by garment class:

* the masker's IoU on its own held-out masks (stored at training) and on every retrieval composite
  (unseen garments on unseen backgrounds);
* the encoding cost of masking: plain vs masked encoding of the same 32 images, interleaved, median;
* P@1, P@5, mAP@5, full mAP and ingest images/s with no mask, with the learned mask (zero, blur, crop),
  with the true mask (same modes; images masked before ingest), and after training a head on the
  stored features of the unmasked and the masked catalogue (regime 1 of engine.training.loop).

Writes benchmarks/results/masking.csv.

    python benchmarks/masking.py --data /tmp/maskset --db /tmp/maskdb --work /tmp/maskwork
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from engine.encoders.config import EncoderConfig, HeadConfig
from engine.encoders.factory import create_encoder
from engine.evaluation.metrics import evaluate, load_split
from engine.masking.encoder import MaskedEncoder
from engine.masking.masks import read_masks
from engine.masking.modes import apply_mask, list_mask_modes
from engine.masking.store import load_masker, resolve_masker
from engine.media.decode import decode_image
from engine.media.scan import iter_image_files
from engine.storage.database import Database, ModelRecord
from engine.training.config import TrainConfig
from engine.training.head import train_head
from engine.training.masker import mask_iou
from ingest.pipeline import IngestConfig, ingest_folder


def score(db: Database, model: ModelRecord) -> dict:
    table = db.embeddings(model)
    catalogue, catalogue_labels = load_split(table, "split = 'train'")
    queries, query_labels = load_split(table, "split = 'val'")
    result = evaluate(queries, query_labels, catalogue, catalogue_labels)
    return {"P@1": result.p_at_1, "P@5": result.p_at_5, "mAP@5": result.map_at_5, "mAP": result.mean_ap,
            "queries": result.queries, "catalogue": result.catalogue}


def cross_score(db: Database, model: ModelRecord, folds: int = 5, seed: int = 0) -> dict:
    """Every labelled image a query once: stratified folds, each against the other folds (less noise than one split)."""
    vectors, labels = load_split(db.embeddings(model), "split IS NOT NULL")
    labels = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), int)
    for label in sorted(set(labels)):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold[members] = np.arange(len(members)) % folds
    results = [evaluate(vectors[fold == f], labels[fold == f], vectors[fold != f], labels[fold != f]) for f in range(folds)]
    return {f"{folds}-fold P@1": float(np.mean([r.p_at_1 for r in results])), f"{folds}-fold mAP@5": float(np.mean([r.map_at_5 for r in results])),
            f"{folds}-fold mAP": float(np.mean([r.mean_ap for r in results])), f"{folds}-fold queries": int(sum(r.queries for r in results))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="output folder of make_mask_set.py")
    parser.add_argument("--db", required=True, help="database holding the masker; the masked catalogues are added to it")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for true-mask copies and their databases")
    parser.add_argument("--masker", help="masker id (default: the newest)")
    parser.add_argument("--head-method", default="arcface")
    parser.add_argument("--head-epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--cost-images", type=int, default=32)
    parser.add_argument("--cost-repeats", type=int, default=3, help="interleaved timings of masked vs plain encoding")
    parser.add_argument("--cost-only", action="store_true", help="only the encoding cost of masking (no ingest, no training)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/masking.csv"))
    args = parser.parse_args()

    images_dir = args.data / "retrieval" / "images"
    truth = read_masks(args.data / "retrieval" / "masks.csv")
    db = Database(args.db)
    record = resolve_masker(db, args.masker)
    masker = load_masker(db, record.id)
    encoder = create_encoder(EncoderConfig())
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    # masker quality on unseen composites
    paths = sorted(iter_image_files(images_dir))
    images = [decode_image(p.read_bytes()).image for p in paths]
    started = time.perf_counter()
    predicted = masker.predict(images)
    mask_seconds = time.perf_counter() - started
    true_masks = [truth.mask(p.name) for p in paths]
    iou = mask_iou(torch.from_numpy(np.stack(predicted)), torch.from_numpy(np.stack(true_masks)))
    emit({"condition": "masker IoU, held-out masker composites", "masker": record.id, "IoU": record.val_iou, "images": record.val_images})
    emit({"condition": "masker IoU, retrieval composites (unseen)", "masker": record.id, "IoU": float(iou.mean()), "images": len(paths),
          "masker_images_per_s": len(paths) / mask_seconds})

    # encoding cost: plain vs masked on the same images, interleaved so that machine load hits both alike
    sample = images[: args.cost_images]
    # (CPU seconds of this process as well as wall seconds: on a shared machine the CPU time is the steadier measure)
    encoders = {"plain": encoder, **{mode: MaskedEncoder.wrap(encoder, masker, mode) for mode in sorted(list_mask_modes())}}
    wall: dict[str, list[float]] = {name: [] for name in encoders}
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.cost_repeats):
        for name, enc in encoders.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            enc.encode_images(sample)
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)
    plain_wall, plain_cpu = float(np.median(wall["plain"])), float(np.median(cpu["plain"]))
    for name in sorted(list_mask_modes()):
        emit({"condition": f"encode cost, learned mask {name} vs none", "images_per_s": len(sample) / float(np.median(wall[name])),
              "plain_images_per_s": len(sample) / plain_wall, "cost_ratio": float(np.median(wall[name])) / plain_wall,
              "cpu_ms_per_image": 1000 * float(np.median(cpu[name])) / len(sample), "plain_cpu_ms_per_image": 1000 * plain_cpu / len(sample),
              "cpu_cost_ratio": float(np.median(cpu[name])) / plain_cpu})
    if args.cost_only:
        write(rows, args.out.with_name(args.out.stem + "_cost.csv"))
        return

    config = IngestConfig(split="train", holdout=0.2, seed=0, optimize=False)

    def run(condition: str, target_db: Database, folder: Path, enc, hook=None) -> ModelRecord:
        report = ingest_folder(target_db, folder, replace(config, image_hook=hook), encoder=enc)
        model = target_db.resolve_model(report.model_id)
        emit({"condition": condition, "model": model.id, **score(target_db, model), **cross_score(target_db, model),
              "ingest_images_per_s": report.encoded / report.seconds if report.encoded else None,  # None: already ingested
              "encoded": report.encoded})
        return model

    plain = run("no mask", db, images_dir, encoder)
    learned = {}
    for mode in sorted(list_mask_modes()):
        masked = MaskedEncoder.wrap(encoder, masker, mode)
        learned[mode] = run(f"learned mask, {mode}", db, images_dir, masked, masked)
    for mode in sorted(list_mask_modes()):
        copy = args.work / f"true_{mode}"
        shutil.rmtree(copy, ignore_errors=True)
        for path, image, mask in zip(paths, images, true_masks):
            target = copy / path.relative_to(images_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            apply_mask(image, mask, mode).save(target)
        true_db_path = args.work / f"db_true_{mode}"
        shutil.rmtree(true_db_path, ignore_errors=True)
        run(f"true mask, {mode}", Database(true_db_path), copy, encoder)

    head = HeadConfig(kind="mlp", out_dim=256)
    for condition, parent in [("no mask", plain), *[(f"learned mask, {m}", learned[m]) for m in sorted(learned)]]:
        trained = train_head(db, parent, TrainConfig(method=args.head_method, head=head, epochs=args.head_epochs, catalogue_where="split = 'train'"))
        emit({"condition": f"{condition} + {args.head_method} head", "model": trained.model.id, **score(db, trained.model),
              "train_s": trained.seconds})

    write(rows, args.out)


def write(rows: list[dict], out: Path) -> None:
    frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.lit(platform.machine()).alias("machine"), pl.lit(torch.get_num_threads()).alias("threads"))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(out)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=220, fmt_str_lengths=60):
        print(frame.select([c for c in ["condition", "IoU", "P@1", "P@5", "mAP@5", "mAP", "5-fold P@1", "5-fold mAP", "ingest_images_per_s", "cost_ratio", "cpu_cost_ratio"] if c in frame.columns]))


if __name__ == "__main__":
    main()
