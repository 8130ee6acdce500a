"""Every training method's head on frozen features vs the pretrained parent, on one labelled database.

Trains one head per method on the catalogue split (validation for early stopping is carved from it),
then evaluates parent and heads on the query split: P@1, P@5, mAP@5, full mAP, training seconds.
Writes benchmarks/results/train_heads.csv.

    python benchmarks/train_heads.py --db /tmp/mit
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import polars as pl
import torch

from engine.encoders.config import HeadConfig
from engine.evaluation.metrics import evaluate, load_split
from engine.storage.database import Database
from engine.training.api import list_methods
from engine.training.config import TrainConfig
from engine.training.head import train_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--parent")
    parser.add_argument("--methods", default=",".join(list_methods("head")))
    parser.add_argument("--head", default="mlp")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--catalogue-split", default="train")
    parser.add_argument("--query-split", default="val")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_heads.csv"))
    args = parser.parse_args()

    db = Database(args.db)
    parent = db.resolve_model(args.parent)

    def score(model, method: str, seconds: float, seed: int) -> dict:
        table = db.embeddings(model)
        catalogue, catalogue_labels = load_split(table, f"split = '{args.catalogue_split}'")
        queries, query_labels = load_split(table, f"split = '{args.query_split}'")
        result = evaluate(queries, query_labels, catalogue, catalogue_labels)
        return {"method": method, "seed": seed, "model": model.id, "P@1": result.p_at_1, "P@5": result.p_at_5,
                "mAP@5": result.map_at_5, "mAP": result.mean_ap, "train_s": seconds}

    rows = [score(parent, "pretrained (no head)", 0.0, 0)]
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in args.methods.split(","):
            config = TrainConfig(method=method, head=HeadConfig(kind=args.head, out_dim=args.dim), epochs=args.epochs,
                                 catalogue_where=f"split = '{args.catalogue_split}'", seed=seed)
            result = train_head(db, parent, config)
            rows.append(score(result.model, method, result.seconds, seed))
            print(json.dumps(rows[-1]), flush=True)
    frame = pl.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.with_columns(pl.lit(platform.machine()).alias("machine"), pl.lit(torch.get_num_threads()).alias("threads"),
                       pl.lit(torch.__version__).alias("torch")).write_csv(args.out)
    summary = frame.group_by("method", maintain_order=True).agg(
        *[pl.col(c).mean().round(4) for c in ("P@1", "P@5", "mAP@5", "mAP")], pl.col("train_s").median().round(1), pl.len().alias("runs"))
    with pl.Config(tbl_rows=30, tbl_cols=-1, tbl_width_chars=200):
        print(f"parent {parent.id}, head {args.head} {args.dim}-d, on {args.db}")
        print(summary)


if __name__ == "__main__":
    main()
