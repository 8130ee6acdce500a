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
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import schemas
from engine.core.clock import utc_now
from engine.core.errors import LookalikeError, TrainingError
from engine.core.progress import Progress, ProgressCallback
from engine.encoders.identity import encoder_fingerprint, model_version_id
from engine.evaluation.metrics import evaluate
from engine.storage.database import Database, ModelRecord
from engine.storage.filters import combine_where, read_filtered
from engine.training.config import TrainConfig
from engine.training.methods import Objective

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


class TrainingInterrupted(LookalikeError, RuntimeError):
    """A run stopped before it finished; running it again with the same configuration resumes it."""

    def __init__(self, run_id: str, epoch: int) -> None:
        super().__init__(f"training run {run_id} stopped after epoch {epoch}; run the same command again to resume")
        self.run_id, self.epoch = run_id, epoch


def epoch_progress(epoch: int, epochs: int, figures: dict) -> Progress:
    """The progress event of a finished epoch; ``figures`` holds loss, val_map5, val_p1, best_map5, seconds."""
    detail = (f"loss {figures['loss']:.4f}  val mAP@5 {figures['val_map5']:.4f}  val P@1 {figures['val_p1']:.4f}  "
              f"best {figures['best_map5']:.4f}  {figures['seconds']:.1f}s")
    return Progress("train", epoch, epochs, "epochs", detail, dict(figures))


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


def embed_features(head: nn.Module, features: torch.Tensor, batch: int = 4096) -> np.ndarray:
    head.eval()
    with torch.inference_mode():
        out = torch.cat([head(features[i : i + batch]) for i in range(0, len(features), batch)])
    return nn.functional.normalize(out, dim=1).cpu().numpy()


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


def fit(db: Database, run_id: str, config: TrainConfig, parts: LoopParts, started: float,
        progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """The one training loop of every regime and method; returns the run's state with the best weights.

    Validation rows are a stratified share of the labelled catalogue; training rows are the rest (labelled
    ones only, unless the objective needs no labels). Checkpoints every epoch to ``<db>/checkpoints/<run_id>.pt``
    and resumes from it; raises :class:`TrainingInterrupted` when ``should_stop`` ends the run early.
    """
    network, objective, data, device = parts.network, parts.objective, parts.data, parts.device
    labels = data.labels
    labelled = np.array([label is not None for label in labels], bool)
    val_mask = stratified_validation(labels, config.val_fraction, config.min_class_size, config.seed)
    _, targets = class_targets(labels)
    train_rows = np.flatnonzero(~val_mask & (labelled if objective.needs_labels else True))
    if len(train_rows) < 2:
        raise TrainingError(f"training needs at least 2 catalogue rows outside validation, found {len(train_rows)}")
    train_labels = targets[train_rows]

    optimizer = torch.optim.AdamW(parts.param_groups, weight_decay=config.weight_decay)
    batch_size = config.batch_size
    if objective.m_per_class:
        # m images of each class per batch: a batch can hold at most m x classes images, in multiples of m
        batch_size = min(batch_size, objective.m_per_class * len(np.unique(train_labels)))
        batch_size -= batch_size % objective.m_per_class
    steps_per_epoch = max(1, math.ceil(len(train_rows) / batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_epochs * steps_per_epoch, config.epochs * steps_per_epoch))
    amp, amp_dtype = _amp_settings(device, parts.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)

    def embed(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            return network(inputs).float()  # losses in float32

    checkpoint = db.local_folder("checkpoints") / f"{run_id}.pt"
    state = {"epoch": 0, "best_map5": -1.0, "best_epoch": 0, "best_weights": None, "history": [], "stale": 0}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        network.load_state_dict(saved["network"])
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        logger.info("resuming run %s at epoch %d", run_id, state["epoch"])

    generator = np.random.default_rng(config.seed + state["epoch"])
    while state["epoch"] < config.epochs and state["stale"] < config.patience:
        if should_stop and should_stop():
            logger.info("run %s stopped by request at epoch %d; re-run to resume", run_id, state["epoch"])
            break
        epoch = state["epoch"] + 1
        random.seed(config.seed * 100_003 + epoch)  # python-random augmentations (timm's crops) replay on resume
        parts.train_mode(network)
        objective.train()
        if objective.m_per_class:
            order = train_rows[m_per_class_order(train_labels, objective.m_per_class, batch_size, generator)]
        else:
            order = train_rows[generator.permutation(len(train_rows))]
        epoch_losses = []
        for batch in data.batches(order, batch_size, epoch):
            loss = objective(embed, batch.views, batch.labels if objective.needs_labels else None)
            if batch.unlabelled is not None and parts.consistency is not None and parts.consistency_weight:
                loss = loss + parts.consistency_weight * parts.consistency(embed, *batch.unlabelled)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            epoch_losses.append(float(loss.detach()))
        result = None
        if val_mask.any():
            network.eval()
            embedded = data.embed(network)
            gallery = ~val_mask & labelled
            result = evaluate(embedded[val_mask], labels[val_mask], embedded[gallery], labels[gallery])
        val_map5 = result.map_at_5 if result else 0.0
        # without validation rows (unlabelled sets) the latest weights are the best ones
        if result is None or val_map5 > state["best_map5"]:
            state.update(best_map5=val_map5, best_epoch=epoch, best_weights={k: v.detach().cpu().clone() for k, v in network.state_dict().items()}, stale=0)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        record = {"epoch": epoch, "loss": float(np.mean(epoch_losses)) if epoch_losses else 0.0, "val_map5": val_map5, "val_p1": result.p_at_1 if result else 0.0,
                  "seconds": time.perf_counter() - started}
        state["history"].append(record)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"network": network.state_dict(), "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(checkpoint)  # atomic: a kill leaves the previous epoch's checkpoint
        event = epoch_progress(epoch, config.epochs, {**record, "best_map5": state["best_map5"]})
        logger.info("epoch %d/%d loss %.4f val mAP@5 %.4f", epoch, config.epochs, record["loss"], val_map5)
        if progress:
            progress(event)

    finished = state["epoch"] >= config.epochs or state["stale"] >= config.patience
    if not finished:
        raise TrainingInterrupted(run_id, state["epoch"])
    network.load_state_dict(state["best_weights"])
    network.eval()
    state["checkpoint"] = str(checkpoint)
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
    Path(state["checkpoint"]).unlink(missing_ok=True)
    logger.info("published model %s (parent %s)", record.id, parent.id)
    return record


