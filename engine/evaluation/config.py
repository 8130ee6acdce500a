"""How to calibrate the distractor threshold: :class:`CalibrationConfig`. Light on purpose: the front ends read
their defaults here."""

from __future__ import annotations

from dataclasses import dataclass

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


