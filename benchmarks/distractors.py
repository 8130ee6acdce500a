"""Distractor detection on a real labelled database, the protocol of the distractor issue.

For each of several seeded choices of 2 held-out classes: the catalogue is the catalogue split of the
other classes; the threshold is calibrated on that catalogue alone; the queries are the query split of
the known classes plus every image of the 2 held-out classes. Prints AUROC and MAP@5 with -1 using the
calibrated threshold, no threshold, and the best threshold in hindsight, per scorer and objective, as
mean and standard deviation over the repeats; writes benchmarks/results/distractors.csv.

    python benchmarks/distractors.py --db /tmp/mit --repeats 6
"""

from __future__ import annotations

import argparse
import itertools
import platform
from pathlib import Path

import numpy as np
import polars as pl

from engine.evaluation.config import CalibrationConfig
from engine.evaluation.distractors import DISTRACTOR_LABEL, calibrate, evaluate_distractors, list_scorers, neighbourhood
from engine.evaluation.metrics import load_split
from engine.storage.database import Database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--model")
    parser.add_argument("--catalogue-split", default="train")
    parser.add_argument("--query-split", default="val")
    parser.add_argument("--held-out", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--scorers", default=",".join(list_scorers()))
    parser.add_argument("--objectives", default="map5,roc,fpr")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/distractors.csv"))
    args = parser.parse_args()

    db = Database(args.db)
    model = db.resolve_model(args.model)
    table = db.embeddings(model)
    cat_vectors, cat_labels = load_split(table, f"split = '{args.catalogue_split}'")
    query_vectors, query_labels = load_split(table, f"split = '{args.query_split}'")
    cat_labels, query_labels = np.array(cat_labels, dtype=object), np.array(query_labels, dtype=object)
    classes = sorted(set(cat_labels))
    rng = np.random.default_rng(0)
    all_pairs = list(itertools.combinations(classes, args.held_out))
    choices = [all_pairs[i] for i in rng.choice(len(all_pairs), size=min(args.repeats, len(all_pairs)), replace=False)]

    rows = []
    for held in choices:
        known_cat = ~np.isin(cat_labels, held)
        catalogue, catalogue_labels = cat_vectors[known_cat], cat_labels[known_cat]
        queries = np.concatenate([query_vectors[~np.isin(query_labels, held)], cat_vectors[~known_cat], query_vectors[np.isin(query_labels, held)]])
        truth = np.concatenate([query_labels[~np.isin(query_labels, held)], np.full((~known_cat).sum() + np.isin(query_labels, held).sum(), DISTRACTOR_LABEL, dtype=object)])
        hood = neighbourhood(queries, catalogue, catalogue_labels)
        for scorer in args.scorers.split(","):
            for objective in args.objectives.split(","):
                calibration = calibrate(catalogue, catalogue_labels, CalibrationConfig(scorer=scorer, objective=objective))
                result = evaluate_distractors(hood, truth, calibration)
                rows.append({"held_out": "+".join(held), "scorer": scorer, "objective": objective, "threshold": calibration.threshold,
                             "hindsight_threshold": result.hindsight_threshold, "auroc": result.auroc, "fpr_at_95": result.fpr_at_95_recall,
                             "map5_calibrated": result.map5_calibrated, "map5_no_threshold": result.map5_no_threshold,
                             "map5_hindsight": result.map5_hindsight, "flag_precision": result.flag_precision, "flag_recall": result.flag_recall,
                             "queries": len(truth), "distractors": int((truth == DISTRACTOR_LABEL).sum())})
    frame = pl.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.with_columns(pl.lit(model.id).alias("model"), pl.lit(platform.processor() or platform.machine()).alias("machine")).write_csv(args.out)
    summary = frame.group_by("scorer", "objective").agg(
        *[pl.col(c).mean().round(4).alias(c) for c in ("auroc", "fpr_at_95", "map5_no_threshold", "map5_calibrated", "map5_hindsight")],
        (pl.col("map5_hindsight") - pl.col("map5_calibrated")).mean().round(4).alias("gap"),
        pl.col("map5_calibrated").std().round(4).alias("map5_cal_std"),
        pl.col("auroc").std().round(4).alias("auroc_std"),
    ).sort("gap")
    with pl.Config(tbl_rows=50, tbl_cols=-1, tbl_width_chars=200):
        print(f"model {model.id}; {len(choices)} choices of {args.held_out} held-out classes: {[ '+'.join(c) for c in choices]}")
        print(summary)


if __name__ == "__main__":
    main()
