"""Training on the catalogue: one loop, methods (objectives) and regimes from registries.

A *method* (``create_loss``) is an :class:`Objective`: pytorch-metric-learning losses with their miners and
samplers, or a self-supervised objective (``engine.training.selfsupervised``). A *regime* (``train``) decides what
the loop trains and on what data:

* ``head`` (here): a projection head on *frozen* backbone features, read from the parent model's
  embeddings table (no image is decoded again); the new vectors are the head applied to stored features;
* ``finetune`` (``engine.training.finetune``): the backbone's last blocks (or LoRA adapters) and a head, on images
  decoded from their stored paths with augmentations; the catalogue is re-embedded afterwards.

The one loop (:func:`fit`) validates on a stratified split of the catalogue with mAP@5 each epoch, stops
early, checkpoints every epoch (a re-run with the same configuration resumes), and leaves publishing the
new model version (:func:`publish_version`) to the regime.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import schemas
from engine.core.clock import utc_now
from engine.core.errors import TrainingError
from engine.core.progress import ProgressCallback
from engine.encoders.heads import embed_features
from engine.encoders.identity import encoder_fingerprint, model_version_id
from engine.evaluation.metrics import evaluate
from engine.storage.database import Database, ModelRecord
from engine.storage.filters import combine_where, read_filtered
from engine.training.config import TrainConfig
from engine.training.epochs import EpochOutcome, EpochPlan, TrainingInterrupted, run_epochs  # noqa: F401 - TrainingInterrupted: part of this module's API
from engine.training.methods import Objective
from engine.versions.coverage import bring_in_step

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainResult:
    model: ModelRecord
    run_id: str
    epochs_run: int
    best_epoch: int
    val_map5: float
    history: list[dict]
    seconds: float


# ---- regimes -------------------------------------------------------------------------------------

# ---- data ----------------------------------------------------------------------------------------


def stratified_validation(labels: np.ndarray, fraction: float, min_class_size: int, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: ``fraction`` of each class with at least ``min_class_size`` images.

    Rows without a label (``None``) never validate.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for cls in sorted({label for label in labels if label is not None}):
        members = np.flatnonzero(labels == cls)
        if len(members) >= min_class_size:
            mask[rng.choice(members, size=max(1, round(len(members) * fraction)), replace=False)] = True
    return mask


def class_targets(labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The sorted classes of ``labels`` and each row's class index (-1 where a row has no label)."""
    classes = sorted({label for label in labels if label is not None})
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index.get(label, -1) for label in labels], dtype=np.int64)


def load_features(db: Database, parent: ModelRecord, where: str) -> tuple[np.ndarray, np.ndarray]:
    table = db.embeddings(parent)
    found = read_filtered(table.search().where(combine_where(table, where, "label IS NOT NULL")).select(["vector", "label"]).limit(None), where)
    column = found.column("vector").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).astype(np.float32)
    return vectors, np.asarray(found.column("label").to_pylist(), dtype=object)


def m_per_class_order(labels: np.ndarray, m: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch of indices where every consecutive ``batch_size`` block holds ``m`` images of each of
    ``batch_size / m`` classes (images drawn with replacement for classes smaller than ``m``).

    The seeded equivalent of pytorch-metric-learning's MPerClassSampler, which draws from NumPy's
    global random state.
    """
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    per_batch = max(1, batch_size // m)
    order: list[np.ndarray] = []
    total = 0
    while total < len(labels):
        for cls in rng.permutation(classes)[:per_batch]:
            pool = members[cls]
            order.append(rng.choice(pool, size=m, replace=len(pool) < m))
            total += m
    return np.concatenate(order)[: len(labels) - len(labels) % batch_size or len(labels)]


def _lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---- the loop ------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One optimisation step's inputs: the views of catalogue rows and their class indices, and for
    consistency regularisation the weak and strong views of unlabelled images."""

    views: list[torch.Tensor]
    labels: torch.Tensor | None
    unlabelled: tuple[torch.Tensor, torch.Tensor] | None = None


class TrainingData:
    """What a regime feeds the loop. ``labels`` holds the class of each catalogue row (``None`` where a row
    has none); the loop picks the validation rows and the order of training rows, the data makes batches."""

    labels: np.ndarray

    def batches(self, order: np.ndarray, batch_size: int, epoch: int) -> Iterable[Batch]:
        raise NotImplementedError

    def embed(self, network: nn.Module) -> np.ndarray:
        """L2-normalised embeddings of every catalogue row, for validation."""
        raise NotImplementedError


class FeatureData(TrainingData):
    """Regime ``head``: stored feature vectors, all on the training device."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, targets: np.ndarray, device: torch.device) -> None:
        self.labels = labels
        self.features = torch.from_numpy(vectors).to(device)
        self.targets = torch.from_numpy(targets).to(device)

    def batches(self, order: np.ndarray, batch_size: int, epoch: int) -> Iterable[Batch]:
        for start in range(0, len(order), batch_size):
            index = torch.from_numpy(order[start : start + batch_size]).to(self.features.device)
            if len(index) >= 2:
                yield Batch([self.features[index]], self.targets[index])

    def embed(self, network: nn.Module) -> np.ndarray:
        return embed_features(network, self.features)


ConsistencyFn = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LoopParts:
    """Everything :func:`fit` trains: the network that embeds, the method's objective, the optimiser's
    parameter groups (each with its own learning rate) and the data."""

    network: nn.Module
    objective: Objective
    param_groups: list[dict]
    data: TrainingData
    device: torch.device
    amp: bool = False  # mixed precision (CUDA only)
    consistency: ConsistencyFn | None = None
    consistency_weight: float = 0.0
    train_mode: Callable[[nn.Module], None] = lambda network: network.train()  # e.g. keep frozen batch norms in eval


def _amp_settings(device: torch.device, wanted: bool) -> tuple[bool, torch.dtype]:
    if not (wanted and device.type == "cuda"):
        return False, torch.float32
    return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class MetricLearningEpochs:
    """The epochs of every metric-learning regime: batches of the training rows through the method's
    objective (plus the consistency term), validation mAP@5 on a stratified share of the catalogue."""

    name = "train"

    def __init__(self, config: TrainConfig, parts: LoopParts) -> None:
        self.config, self.parts, self.network, self.objective = config, parts, parts.network, parts.objective
        labels = parts.data.labels
        self.labelled = np.array([label is not None for label in labels], bool)
        self.val_mask = stratified_validation(labels, config.val_fraction, config.min_class_size, config.seed)
        _, targets = class_targets(labels)
        self.train_rows = np.flatnonzero(~self.val_mask & (self.labelled if self.objective.needs_labels else True))
        if len(self.train_rows) < 2:
            raise TrainingError(f"training needs at least 2 catalogue rows outside validation, found {len(self.train_rows)}")
        self.train_labels = targets[self.train_rows]
        self.optimizer = torch.optim.AdamW(parts.param_groups, weight_decay=config.weight_decay)
        batch_size = config.batch_size
        if self.objective.m_per_class:
            # m images of each class per batch: a batch can hold at most m x classes images, in multiples of m
            batch_size = min(batch_size, self.objective.m_per_class * len(np.unique(self.train_labels)))
            batch_size -= batch_size % self.objective.m_per_class
        self.batch_size = batch_size
        steps_per_epoch = max(1, math.ceil(len(self.train_rows) / batch_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config.warmup_epochs * steps_per_epoch, config.epochs * steps_per_epoch))
        self.amp, self.amp_dtype = _amp_settings(parts.device, parts.amp)
        self.scaler = torch.amp.GradScaler(parts.device.type, enabled=self.amp and self.amp_dtype == torch.float16)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.parts.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return self.network(inputs).float()  # losses in float32

    def run_epoch(self, epoch: int, rng: np.random.Generator) -> EpochOutcome:
        parts, objective = self.parts, self.objective
        parts.train_mode(self.network)
        objective.train()
        if objective.m_per_class:
            order = self.train_rows[m_per_class_order(self.train_labels, objective.m_per_class, self.batch_size, rng)]
        else:
            order = self.train_rows[rng.permutation(len(self.train_rows))]
        losses = []
        for batch in parts.data.batches(order, self.batch_size, epoch):
            loss = objective(self.embed, batch.views, batch.labels if objective.needs_labels else None)
            if batch.unlabelled is not None and parts.consistency is not None and parts.consistency_weight:
                loss = loss + parts.consistency_weight * parts.consistency(self.embed, *batch.unlabelled)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            losses.append(float(loss.detach()))
        result = None
        if self.val_mask.any():
            self.network.eval()
            embedded, labels = parts.data.embed(self.network), parts.data.labels
            gallery = ~self.val_mask & self.labelled
            result = evaluate(embedded[self.val_mask], labels[self.val_mask], embedded[gallery], labels[gallery])
        figures = {"val_map5": result.map_at_5 if result else 0.0, "val_p1": result.p_at_1 if result else 0.0}
        # without validation rows (unlabelled sets) the latest weights are the best ones
        return EpochOutcome(float(np.mean(losses)) if losses else 0.0, result.map_at_5 if result else None, figures)

    def state(self) -> dict:
        return {"objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state(self, saved: dict) -> None:
        self.objective.load_state_dict(saved["objective"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])

    def describe(self, record: dict) -> str:
        best = max(record["best_score"], 0.0)
        return (f"loss {record['loss']:.4f}  val mAP@5 {record['val_map5']:.4f}  val P@1 {record['val_p1']:.4f}  "
                f"best {best:.4f}  {record['seconds']:.1f}s")


def fit(db: Database, run_id: str, config: TrainConfig, parts: LoopParts, started: float,
        progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """The one metric-learning loop of every regime and method; returns the run's state with the best weights.

    Validation rows are a stratified share of the labelled catalogue; training rows are the rest (labelled
    ones only, unless the objective needs no labels). Epochs, checkpoints, resume and early stopping are
    :func:`engine.training.epochs.run_epochs`'; raises :class:`TrainingInterrupted` when ``should_stop`` ends
    the run early.
    """
    plan = EpochPlan(config.epochs, config.patience, config.seed)
    state = run_epochs(db, run_id, plan, MetricLearningEpochs(config, parts), device=parts.device, progress=progress,
                       should_stop=should_stop, started=started)
    state["best_map5"] = max(state["best_score"], 0.0)  # the validation mAP@5 of the kept weights (0 without validation)
    return state


def publish_version(db: Database, parent: ModelRecord, *, kind: str, name: str, config: TrainConfig, run_id: str, state: dict,
                    data: dict, architecture: str, weights_path: Path, weights_sha: str, dim: int, preprocessing: str,
                    write_embeddings: Callable[[ModelRecord], int]) -> ModelRecord:
    """Publish a trained version: its weights file is already written; ``write_embeddings`` writes its
    vectors; the ``models`` row comes last (the commit point), then the run's checkpoint goes."""
    fingerprint = encoder_fingerprint(architecture, weights_sha, dim, preprocessing)
    model_id = model_version_id(name, fingerprint)
    record = ModelRecord(
        id=model_id, encoder=name, architecture=architecture, weights_source=str(weights_path), weights_sha256=weights_sha,
        dim=dim, preprocessing=preprocessing, fingerprint=fingerprint,
        embeddings_table=schemas.embeddings_table_name(model_id), created_at=utc_now(), parent=parent.id,
        kind=kind, config=json.dumps({"method": config.method, "regime": config.regime, "run_id": run_id}, sort_keys=True),
    )
    embedded = write_embeddings(record)
    notes = {"method": config.method, "regime": config.regime, "run_id": run_id, "config": asdict(config), "best_epoch": state["best_epoch"],
             "val_map5": state["best_map5"], "history": state["history"], "data": {**data, "embedded": embedded}}
    record = replace(record, notes=json.dumps(notes, default=str))
    db.add_model(record)
    bring_in_step(db, [record])  # images that joined while it trained, and its coverage record
    Path(state["checkpoint"]).unlink(missing_ok=True)
    logger.info("published model %s (parent %s)", record.id, parent.id)
    return record


