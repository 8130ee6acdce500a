"""How to calibrate the distractor threshold (:class:`CalibrationConfig`) and how to tune a query pipeline
(:class:`TuneConfig`). Light on purpose: the front ends read their defaults here."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.splits import CATALOGUE_WHERE

CALIBRATION_OBJECTIVES = ("map5", "fpr", "roc")


@dataclass(frozen=True)
class CalibrationConfig:
    """How to calibrate: the scorer, the objective, and how to simulate distractors from the catalogue."""

    scorer: str = "centroid"  # the best on MIT scenes (AUROC 0.918 vs 0.881 knn_mean, 0.843 nearest)
    objective: str = "map5"  # map5 | fpr | roc
    target_fpr: float = 0.05  # with objective fpr: the share of known queries allowed to be flagged
    holdout_class_fraction: float = 0.25  # share of classes playing distractors in each fold
    query_fraction: float = 0.2  # share of every kept class used as known queries
    folds: int = 4
    neighbours: int = 10
    seed: int = 0




# tuning objective name -> the EvaluationResult field it maximises, and the column showing it
OBJECTIVES = {"map5": "map_at_5", "p1": "p_at_1", "p5": "p_at_5", "map": "mean_ap"}
OBJECTIVE_COLUMNS = {"map5": "mAP@5", "p1": "P@1", "p5": "P@5", "map": "mAP"}


@dataclass(frozen=True)
class TuneConfig:
    """How to tune a query pipeline: what to maximise, how much of the catalogue to hold out, the time budget, the seed."""

    # full-ranking mAP: the steadiest figure on a small hold-out (it counts every relevant image, not only the first);
    # on MIT it chose the pipeline that measured best on the queries too (docs/quality.md)
    objective: str = "map"
    holdout: float = 0.15  # share of the catalogue used as probes
    budget_s: float = 15 * 60.0
    seed: int = 0
    vote_neighbours: int = 10
    catalogue_where: str = CATALOGUE_WHERE
    # heads trained (on the gallery only) on every version trained without labels, as more candidates: the four
    # methods that beat the pretrained features on MIT (README, Training: 2.6-5.6 s a head on CPU)
    head_methods: tuple[str, ...] = ("arcface", "subcenter-arcface", "multisimilarity", "triplet")
    head_seeds: tuple[int, ...] = (0, 1)  # each method trained once a seed: the ensembles draw on their spread
    ensemble_sizes: tuple[int, ...] = (2, 3)  # ensembles of the best distinct versions tried after the halving
    # class prediction: the k-NN vote blended with a classifier at each of these weights (0: the vote alone),
    # the best on the hold-out kept with the pipeline; empty: the plain vote, no classifier fitted
    fusion_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
