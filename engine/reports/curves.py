"""Curves of a model version: its training history and its distractor calibration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from engine.evaluation.config import CalibrationConfig
from engine.evaluation.detect import StoredCalibration
from engine.evaluation.distractors import create_scorer, simulated_folds
from engine.reports.common import ReportDataMissing, class_colours, new_figure
from engine.storage.database import ModelRecord


@dataclass(frozen=True)
class TrainingHistory:
    """Per-epoch loss and validation metrics of a trained model version (from its ``models`` row)."""

    model_id: str
    method: str
    best_epoch: int
    epochs: np.ndarray
    loss: np.ndarray
    val_map5: np.ndarray
    val_p1: np.ndarray


def training_history(model: ModelRecord) -> TrainingHistory:
    """The history ``lookalike train`` stored in the model's notes; ReportDataMissing for untrained versions."""
    notes = json.loads(model.notes) if model.notes else {}
    history = notes.get("history") if isinstance(notes, dict) else None
    if not history:
        raise ReportDataMissing(f"model {model.id} has no training history (only versions made by `lookalike train` have one)")
    column = lambda name: np.asarray([row.get(name, np.nan) for row in history], dtype=np.float64)  # noqa: E731
    return TrainingHistory(model.id, str(notes.get("method", "?")), int(notes.get("best_epoch", 0)),
                           column("epoch"), column("loss"), column("val_map5"), column("val_p1"))


def training_curves_figure(histories: Sequence[TrainingHistory]) -> Figure:
    """Loss and validation mAP@5 / P@1 per epoch; one line per version, best epochs marked."""
    if not histories:
        raise ReportDataMissing("no trained model versions to draw")
    # one colour per method, one line style per version of the same method
    colours = class_colours([h.method for h in histories])
    styles, seen = ["-", "--", ":", "-."], {}
    figure = new_figure(14, 5.2)
    loss_axis, metric_axis = figure.subplots(1, 2)
    for history in histories:
        colour = colours[history.method]
        runs_before = seen.get(history.method, 0)
        seen[history.method] = runs_before + 1
        style = styles[runs_before % len(styles)]
        name = f"{history.model_id} (best epoch {history.best_epoch})"
        loss_axis.plot(history.epochs, history.loss, color=colour, linestyle=style, linewidth=1.6, label=name)
        metric_axis.plot(history.epochs, history.val_map5, color=colour, linestyle=style, linewidth=1.8, label=f"{history.model_id} mAP@5")
        if len(histories) == 1:
            metric_axis.plot(history.epochs, history.val_p1, color=colour, linestyle="--", linewidth=1.4, label="val P@1")
        best = history.epochs == history.best_epoch
        metric_axis.scatter(history.epochs[best], history.val_map5[best], color=colour, s=45, edgecolors="black", zorder=3)
    if len(histories) > 1 and all(np.nanmin(h.loss) > 0 for h in histories):
        loss_axis.set_yscale("log")  # losses of different methods differ by orders of magnitude
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss")
    loss_axis.set_title("training loss (scales differ between losses)" if len(histories) > 1 else "training loss")
    loss_axis.grid(alpha=0.3)
    metric_axis.set_xlabel("epoch")
    metric_axis.set_ylabel("validation metric")
    metric_axis.set_title("validation mAP@5 (dot: best epoch, the one published)")
    metric_axis.grid(alpha=0.3)
    (loss_axis if len(histories) > 1 else metric_axis).legend(fontsize=7, loc="best")
    if len(histories) == 1:
        figure.suptitle(f"{histories[0].model_id} ({histories[0].method})")
    return figure


# ---- distractor calibration ----------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationScores:
    """Scores of the simulated queries a calibration was fitted on: known queries and held-out classes."""

    scores: np.ndarray
    is_distractor: np.ndarray


def calibration_scores(vectors: np.ndarray, labels: Sequence[str], calibration: StoredCalibration) -> CalibrationScores:
    """Recompute the pooled fold scores of a stored calibration from its configuration and catalogue.

    The calibration stores its curve but not the raw scores; the folds are seeded, so running them
    again on the same catalogue gives the scores the threshold was chosen on.
    """
    config = CalibrationConfig(**calibration.details["config"])
    scorer = create_scorer(config.scorer)
    folds, _ = simulated_folds(vectors, labels, config)
    return CalibrationScores(np.concatenate([scorer(f.hood) for f in folds]), np.concatenate([f.is_distractor for f in folds]))


def distractor_figure(calibration: StoredCalibration, scores: CalibrationScores) -> Figure:
    """Score histograms of known queries vs held-out-class distractors with the threshold, ROC and MAP@5 curves."""
    threshold = calibration.threshold
    known, distractors = scores.scores[~scores.is_distractor], scores.scores[scores.is_distractor]
    figure = new_figure(16, 4.8)
    hist_axis, roc_axis, map_axis = figure.subplots(1, 3, width_ratios=[1.6, 1, 1])
    bins = np.linspace(scores.scores.min(), scores.scores.max(), 50)
    hist_axis.hist(known, bins=bins, alpha=0.6, density=True, color="tab:blue", label=f"known classes ({len(known)})")
    hist_axis.hist(distractors, bins=bins, alpha=0.6, density=True, color="tab:red", label=f"held-out classes = distractors ({len(distractors)})")
    flagged_known, flagged_distractors = float((known > threshold).mean()), float((distractors > threshold).mean())
    hist_axis.axvline(threshold, color="black", linestyle="--", linewidth=1.5,
                      label=f"threshold {threshold:.3f}: flags {flagged_distractors:.0%} of distractors, {flagged_known:.0%} of known")
    hist_axis.set_xlabel(f"distractor score ({calibration.scorer})")
    hist_axis.set_ylabel("density")
    hist_axis.set_title(f"{calibration.model_id}: calibration {calibration.id} ({calibration.objective})", fontsize=10)
    hist_axis.legend(fontsize=8, loc="upper left", framealpha=0.9)
    hist_axis.set_ylim(0, hist_axis.get_ylim()[1] * 1.3)  # room for the legend above the bars

    curve = calibration.details.get("curve", {})
    fpr, tpr = np.asarray(curve.get("fpr", [])), np.asarray(curve.get("tpr", []))
    order = np.lexsort((tpr, fpr))
    roc_axis.plot(fpr[order], tpr[order], color="tab:purple", linewidth=2)
    roc_axis.plot([0, 1], [0, 1], color="0.6", linestyle=":")
    roc_axis.scatter([flagged_known], [flagged_distractors], color="black", zorder=3, label="calibrated threshold")
    roc_axis.set_xlabel("false positive rate (known flagged)")
    roc_axis.set_ylabel("true positive rate (distractors flagged)")
    roc_axis.set_title(f"ROC (AUROC {calibration.auroc:.3f})", fontsize=10)
    roc_axis.legend(fontsize=8, loc="lower right")

    candidates, map5 = np.asarray(curve.get("map5_thresholds", [])), np.asarray(curve.get("map5", []))
    if len(candidates):
        order = np.argsort(candidates)
        map_axis.plot(candidates[order], map5[order], color="tab:green", linewidth=2)
    map_axis.axvline(threshold, color="black", linestyle="--", linewidth=1.5)
    map_axis.set_xlabel("threshold")
    map_axis.set_ylabel("MAP@5 with -1")
    map_axis.set_title(f"MAP@5 with -1 vs threshold ({calibration.map5:.3f} at the threshold)", fontsize=10)
    for axis in (roc_axis, map_axis):
        axis.grid(alpha=0.3)
    return figure
