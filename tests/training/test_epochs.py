"""The one epoch loop: best weights kept, early stopping, checkpoints that a stopped run resumes from exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.storage.database import Database
from engine.training.epochs import EpochOutcome, EpochPlan, TrainingInterrupted, checkpoint_path, run_epochs


class LineFit:
    """A toy task: fit y = 3x with one weight; the score is minus the error, or a scripted sequence."""

    name = "toy"

    def __init__(self, scores: list[float] | None = None) -> None:
        torch.manual_seed(0)
        self.network = torch.nn.Linear(1, 1, bias=False)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1)
        self.scores = scores
        self.epochs_run: list[int] = []

    def run_epoch(self, epoch: int, rng: np.random.Generator) -> EpochOutcome:
        self.epochs_run.append(epoch)
        x = torch.from_numpy(rng.normal(size=(32, 1)).astype(np.float32))
        loss = torch.nn.functional.mse_loss(self.network(x), 3 * x)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        score = self.scores[epoch - 1] if self.scores else -abs(float(self.network.weight) - 3)
        return EpochOutcome(float(loss), score, {"weight": float(self.network.weight)})

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state(self, saved: dict) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])

    def describe(self, record: dict) -> str:
        return f"loss {record['loss']:.3f}"


def test_the_best_epoch_is_kept_and_patience_stops_early(tmp_path):
    db = Database(tmp_path / "db")
    task = LineFit(scores=[0.1, 0.5, 0.4, 0.3, 0.2, 0.9])
    events = []
    state = run_epochs(db, "run-a", EpochPlan(epochs=6, patience=3, seed=0), task, progress=events.append)
    assert task.epochs_run == [1, 2, 3, 4, 5] and state["best_epoch"] == 2 and state["best_score"] == 0.5
    assert float(task.network.weight) == pytest.approx(state["history"][1]["weight"])  # epoch 2's weights restored
    assert [(e.task, e.done, e.total, e.unit) for e in events] == [("toy", n, 6, "epochs") for n in range(1, 6)]


def test_a_stopped_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    plan = EpochPlan(epochs=5, patience=5, seed=1)
    whole = LineFit()
    run_epochs(Database(tmp_path / "a"), "run", plan, whole)

    db = Database(tmp_path / "b")
    first = LineFit()
    with pytest.raises(TrainingInterrupted, match="stopped after epoch 2"):
        run_epochs(db, "run", plan, first, should_stop=lambda: len(first.epochs_run) >= 2)
    assert checkpoint_path(db, "run").is_file()
    second = LineFit()
    state = run_epochs(db, "run", plan, second)
    assert second.epochs_run == [3, 4, 5] and [h["epoch"] for h in state["history"]] == [1, 2, 3, 4, 5]
    assert float(second.network.weight) == float(whole.network.weight)
