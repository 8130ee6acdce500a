"""The epoch loop every training in Lookalike runs through: metric learning (``loop.fit``) and the masker.

A task trains one epoch at a time and says how good the network is afterwards; this loop keeps the best
weights, stops early after ``patience`` epochs without a better score, checkpoints every epoch to
``<db>/checkpoints/<run_id>.pt`` (written to a temporary file and renamed, so a kill leaves the previous
epoch's), resumes from it when the same run starts again, stops between epochs when asked, and reports one
:class:`~engine.core.progress.Progress` event per epoch.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from engine.core.errors import LookalikeError
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.storage.database import Database

logger = logging.getLogger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"
RANDOM_SEED_STRIDE = 100_003  # python-random seeds of successive epochs: replayed identically on resume


class TrainingInterrupted(LookalikeError, RuntimeError):
    """A run stopped before it finished; running it again with the same configuration resumes it."""

    def __init__(self, run_id: str, epoch: int) -> None:
        super().__init__(f"training run {run_id} stopped after epoch {epoch}; run the same command again to resume")
        self.run_id, self.epoch = run_id, epoch


@dataclass(frozen=True)
class EpochOutcome:
    """One epoch's mean loss, its validation score (higher is better; None: nothing to validate on, the
    latest weights count as the best) and the figures its progress event carries."""

    loss: float
    score: float | None
    figures: dict[str, float] = field(default_factory=dict)


class EpochTask(Protocol):
    """What a training contributes to the loop."""

    name: str  # the progress event's task
    network: nn.Module  # whose best weights are kept and restored at the end

    def run_epoch(self, epoch: int, rng: np.random.Generator) -> EpochOutcome: ...

    def state(self) -> dict[str, Any]:
        """Everything else a resumed run needs (optimiser, scheduler, scaler, objective state dicts)."""

    def load_state(self, saved: dict[str, Any]) -> None: ...

    def describe(self, record: dict[str, Any]) -> str:
        """One line for the progress event of an epoch (``record``: loss, figures, best_score, seconds)."""


@dataclass(frozen=True)
class EpochPlan:
    """How long to train, when to stop early, the seed of the epoch-level randomness."""

    epochs: int
    patience: int
    seed: int


def checkpoint_path(db: Database, run_id: str) -> Path:
    return db.local_folder(CHECKPOINTS_FOLDER) / f"{run_id}.pt"


def run_epochs(db: Database, run_id: str, plan: EpochPlan, task: EpochTask, *, device: torch.device | str = "cpu",
               progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None,
               started: float | None = None) -> dict[str, Any]:
    """Train ``task`` for ``plan.epochs`` epochs (fewer when it stops improving); returns the run's state with
    the best weights loaded into ``task.network``. Raises :class:`TrainingInterrupted` when ``should_stop``
    ends the run early (its checkpoint stays for the resume)."""
    started = time.perf_counter() if started is None else started
    checkpoint = checkpoint_path(db, run_id)
    state: dict[str, Any] = {"epoch": 0, "best_score": -float("inf"), "best_epoch": 0, "best_weights": None, "history": [], "stale": 0}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        task.network.load_state_dict(saved["network"])
        task.load_state(saved)
        state = saved["state"]
        if "best_score" not in state:  # a checkpoint written by release 0.1, which named the score best_map5
            state["best_score"] = state.pop("best_map5")
        torch.set_rng_state(saved["torch_rng"])
        logger.info("resuming run %s at epoch %d", run_id, state["epoch"])

    while state["epoch"] < plan.epochs and state["stale"] < plan.patience:
        if should_stop and should_stop():
            logger.info("run %s stopped by request at epoch %d; re-run to resume", run_id, state["epoch"])
            break
        epoch = state["epoch"] + 1
        random.seed(plan.seed * RANDOM_SEED_STRIDE + epoch)  # python-random augmentations (timm's crops) replay on resume
        rng = np.random.default_rng((plan.seed, epoch))  # each epoch's own stream: a resumed run draws what it would have
        outcome = task.run_epoch(epoch, rng)
        if outcome.score is None or outcome.score > state["best_score"]:
            best = outcome.score if outcome.score is not None else state["best_score"]
            weights = {k: v.detach().cpu().clone() for k, v in task.network.state_dict().items()}
            state.update(best_score=best, best_epoch=epoch, best_weights=weights, stale=0)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        record = {"epoch": epoch, "loss": outcome.loss, **outcome.figures, "seconds": time.perf_counter() - started}
        state["history"].append(record)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"network": task.network.state_dict(), **task.state(), "state": state, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(checkpoint)  # atomic: a kill leaves the previous epoch's checkpoint
        figures = {**record, "best_score": state["best_score"]}
        logger.info("%s run %s epoch %d/%d: %s", task.name, run_id, epoch, plan.epochs, task.describe(figures))
        report_progress(progress, Progress(task.name, epoch, plan.epochs, "epochs", task.describe(figures), figures))

    if state["epoch"] < plan.epochs and state["stale"] < plan.patience:
        raise TrainingInterrupted(run_id, state["epoch"])
    task.network.load_state_dict(state["best_weights"])
    task.network.eval()
    state["checkpoint"] = str(checkpoint)
    return state
