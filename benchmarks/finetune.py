"""Fine-tuned backbone vs a head on frozen features vs the pretrained parent, on one labelled database.

Trains on the catalogue split only (validation for early stopping is carved from it; the query split is
never trained on), then evaluates every version on the query split: P@1, P@5, mAP@5, full mAP, wall-clock
training seconds (fine-tuning includes re-embedding the whole catalogue). Writes
benchmarks/results/finetune.csv.

    python benchmarks/finetune.py --db /tmp/ft/db --epochs 3 --unfreeze-blocks 2 --image-size 160
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import polars as pl
import torch

from engine.encoders.config import HeadConfig
from engine.evaluation.metrics import evaluate, load_split
from engine.storage.database import Database
from engine.training.api import train
from engine.training.config import FinetuneConfig, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--parent")
    parser.add_argument("--methods", default="arcface")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--head-epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size")
    parser.add_argument("--unfreeze-blocks", type=int, default=2)
    parser.add_argument("--backbone-lr", type=float, default=FinetuneConfig.backbone_lr)
    parser.add_argument("--image-size", type=int, help="fine-tuning crop size (embedding keeps the model's)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--skip-head", action="store_true", help="only the fine-tuned versions")
    parser.add_argument("--catalogue-split", default="train")
    parser.add_argument("--query-split", default="val")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune.csv"))
    args = parser.parse_args()

    db = Database(args.db)
    parent = db.resolve_model(args.parent)
    where = f"split = '{args.catalogue_split}'"

    def score(model, regime: str, method: str, seconds: float, seed: int, epochs: int) -> dict:
        table = db.embeddings(model)
        catalogue, catalogue_labels = load_split(table, where)
        queries, query_labels = load_split(table, f"split = '{args.query_split}'")
        result = evaluate(queries, query_labels, catalogue, catalogue_labels)
        return {"regime": regime, "method": method, "seed": seed, "epochs": epochs, "model": model.id, "P@1": result.p_at_1,
                "P@5": result.p_at_5, "mAP@5": result.map_at_5, "mAP": result.mean_ap, "train_s": round(seconds, 1)}

    rows = [score(parent, "pretrained", "-", 0.0, 0, 0)]
    print(json.dumps(rows[-1]), flush=True)
    finetune = FinetuneConfig(unfreeze_blocks=args.unfreeze_blocks, backbone_lr=args.backbone_lr, image_size=args.image_size, workers=args.workers)
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in args.methods.split(","):
            head = HeadConfig(out_dim=args.dim)
            runs = [] if args.skip_head else [("head", TrainConfig(method=method, head=head, epochs=args.head_epochs, catalogue_where=where, seed=seed))]
            runs.append(("finetune", TrainConfig(method=method, head=head, epochs=args.epochs, batch_size=args.batch_size, catalogue_where=where,
                                                 seed=seed, regime="finetune", warmup_epochs=1, finetune=finetune)))
            for regime, config in runs:
                started = time.perf_counter()
                result = train(db, parent, config, progress=lambda e, regime=regime: print(f"  {regime} {e.task} {e.done}/{e.total} {e.detail}", flush=True))
                rows.append(score(result.model, regime, method, time.perf_counter() - started, seed, result.epochs_run))
                print(json.dumps(rows[-1]), flush=True)
    frame = pl.DataFrame(rows).with_columns(
        pl.lit(f"unfreeze {args.unfreeze_blocks}, crop {args.image_size or 'model'}, batch {args.batch_size}, backbone lr {args.backbone_lr}").alias("finetune_setup"),
        pl.lit(platform.machine()).alias("machine"), pl.lit(os.cpu_count()).alias("cpus"), pl.lit(torch.get_num_threads()).alias("threads"),
        pl.lit("cuda" if torch.cuda.is_available() else "cpu").alias("device"), pl.lit(torch.__version__).alias("torch"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # several set-ups accumulate in one file
        frame = pl.concat([pl.read_csv(args.out, schema_overrides=frame.schema), frame], how="vertical_relaxed")
    frame.write_csv(args.out)
    with pl.Config(tbl_rows=40, tbl_cols=-1, tbl_width_chars=220):
        print(f"parent {parent.id} on {args.db}")
        print(frame.select("regime", "method", "seed", "epochs", "P@1", "P@5", "mAP@5", "mAP", "train_s", "finetune_setup"))


if __name__ == "__main__":
    main()
