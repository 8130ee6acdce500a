"""Training metric-learning heads on the catalogue: one loop, losses/miners composed from a registry.

Regime implemented here: a projection head on *frozen* backbone features, read from the parent model's
embeddings table (no image is decoded again). The loop takes a loss, an optional miner and a sampler
from ``create_loss`` (pytorch-metric-learning objects), validates on a stratified split of the catalogue
with mAP@5 each epoch, stops early, checkpoints every epoch (a re-run with the same configuration
resumes), and finally writes a new model version whose vectors are the head applied to stored features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity
from torch import nn

import schemas
from engine.encoders import encoder_fingerprint, resolve_device
from engine.evaluation import evaluate
from engine.heads import HeadConfig, ProjectionHead, head_weights_sha, heads_dir, save_head
from engine.store import Database, ModelRecord, utc_now

logger = logging.getLogger(__name__)


# ---- methods: loss + miner + sampler, from one registry ------------------------------------------


@dataclass
class LossBundle:
    """What one method contributes to the loop."""

    loss: nn.Module
    miner: nn.Module | None = None
    m_per_class: int | None = None  # sample batches with m images of each class (needed by pair/triplet losses)


MethodFactory = Callable[["TrainConfig", int, int], LossBundle]
_METHODS: dict[str, tuple[MethodFactory, str]] = {}


def register_method(name: str, description: str) -> Callable[[MethodFactory], MethodFactory]:
    def decorate(factory: MethodFactory) -> MethodFactory:
        if name in _METHODS:
            raise ValueError(f"training method {name!r} is already registered")
        _METHODS[name] = (factory, description)
        return factory

    return decorate


def list_methods() -> dict[str, str]:
    return {name: description for name, (_, description) in sorted(_METHODS.items())}


def create_loss(method: str, config: "TrainConfig", num_classes: int, embedding_dim: int) -> LossBundle:
    """The loss (and miner, sampler) of a training method; the error names the valid choices."""
    try:
        factory = _METHODS[method][0]
    except KeyError:
        raise ValueError(f"unknown training method {method!r}; choose one of {sorted(_METHODS)}") from None
    return factory(config, num_classes, embedding_dim)


@register_method("arcface", "additive angular margin softmax (ArcFace)")
def _arcface(config: "TrainConfig", num_classes: int, dim: int) -> LossBundle:
    return LossBundle(losses.ArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=math.degrees(config.margin), scale=config.scale))


@register_method("subcenter-arcface", "ArcFace with several sub-centres per class (robust to noisy labels)")
def _subcenter_arcface(config: "TrainConfig", num_classes: int, dim: int) -> LossBundle:
    return LossBundle(losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=math.degrees(config.margin), scale=config.scale, sub_centers=config.sub_centers))


@register_method("triplet", "triplet margin loss with batch-hard mining")
def _triplet(config: "TrainConfig", num_classes: int, dim: int) -> LossBundle:
    distance = CosineSimilarity()
    return LossBundle(losses.TripletMarginLoss(margin=config.triplet_margin, distance=distance), miners.BatchHardMiner(distance=distance), config.m_per_class)


@register_method("contrastive", "contrastive pairs with multi-similarity mining")
def _contrastive(config: "TrainConfig", num_classes: int, dim: int) -> LossBundle:
    distance = CosineSimilarity()
    return LossBundle(losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=distance), miners.MultiSimilarityMiner(epsilon=0.1, distance=distance), config.m_per_class)


@register_method("multisimilarity", "multi-similarity loss with multi-similarity mining")
def _multisimilarity(config: "TrainConfig", num_classes: int, dim: int) -> LossBundle:
    return LossBundle(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1), config.m_per_class)


class OneHotBCELoss(nn.Module):
    """Multi-label BCE through a linear classifier: the baseline the reports compare ArcFace with."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None) -> torch.Tensor:
        targets = nn.functional.one_hot(labels, self.num_classes).float()
        return nn.functional.binary_cross_entropy_with_logits(self.classifier(embeddings), targets)


@register_method("bce", "one-vs-all binary cross-entropy through a linear classifier")
def _bce(config: "TrainConfig", num_classes: int, dim: int) -> LossBundle:
    return LossBundle(OneHotBCELoss(num_classes, dim))


# ---- configuration and events --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """A training run: method, head, optimisation and data."""

    method: str = "arcface"
    head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    loss_lr: float = 1e-2  # for losses with parameters (class centres of ArcFace, BCE's classifier)
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    patience: int = 8  # epochs without a better validation mAP@5 before stopping
    val_fraction: float = 0.15
    min_class_size: int = 3  # classes smaller than this stay out of validation
    margin: float = 0.15  # ArcFace margin, radians
    scale: float = 30.0  # ArcFace scale
    sub_centers: int = 3
    triplet_margin: float = 0.1
    m_per_class: int = 4
    catalogue_where: str = "split = 'train'"
    seed: int = 0
    device: str | None = None

    def run_id(self, parent: ModelRecord) -> str:
        """Deterministic id of this run: the same configuration on the same parent resumes."""
        blob = json.dumps([parent.id, asdict(self)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainEvent:
    """Progress of a run, after every epoch."""

    epoch: int
    epochs: int
    loss: float
    val_map5: float
    val_p1: float
    best_map5: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    model: ModelRecord
    run_id: str
    epochs_run: int
    best_epoch: int
    val_map5: float
    history: list[dict]
    seconds: float


# ---- data ----------------------------------------------------------------------------------------


def stratified_validation(labels: np.ndarray, fraction: float, min_class_size: int, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: ``fraction`` of each class with at least ``min_class_size`` images."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) >= min_class_size:
            mask[rng.choice(members, size=max(1, round(len(members) * fraction)), replace=False)] = True
    return mask


def _load_features(db: Database, parent: ModelRecord, where: str) -> tuple[np.ndarray, np.ndarray]:
    found = db.embeddings(parent).search().where(f"({where}) AND label IS NOT NULL").select(["vector", "label"]).limit(None).to_arrow()
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


def _embed(head: nn.Module, features: torch.Tensor, batch: int = 4096) -> np.ndarray:
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


def train_head(
    db: Database,
    parent: ModelRecord,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a head on ``parent``'s stored features and write it as a new model version with embeddings."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    vectors, labels = _load_features(db, parent, config.catalogue_where)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"training needs at least 2 labelled classes in {config.catalogue_where!r}, found {len(classes)}")
    class_index = {c: i for i, c in enumerate(classes)}
    targets = np.array([class_index[c] for c in labels])
    val_mask = stratified_validation(labels, config.val_fraction, config.min_class_size, config.seed)
    train_x = torch.from_numpy(vectors[~val_mask]).to(device)
    train_y = torch.from_numpy(targets[~val_mask]).to(device)
    all_x = torch.from_numpy(vectors).to(device)

    head = ProjectionHead(parent.dim, config.head).to(device)
    bundle = create_loss(config.method, config, len(classes), config.head.out_dim)
    bundle.loss.to(device)
    groups = [{"params": head.parameters(), "lr": config.lr}]
    loss_params = list(bundle.loss.parameters())
    if loss_params:
        groups.append({"params": loss_params, "lr": config.loss_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    train_labels_np = targets[~val_mask]
    batch_size = config.batch_size
    if bundle.m_per_class:
        # m images of each class per batch: a batch can hold at most m x classes images, in multiples of m
        batch_size = min(batch_size, bundle.m_per_class * len(np.unique(train_labels_np)))
        batch_size -= batch_size % bundle.m_per_class
    steps_per_epoch = max(1, math.ceil(len(train_y) / batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_epochs * steps_per_epoch, config.epochs * steps_per_epoch))

    run_id = config.run_id(parent)
    checkpoint = Path(db.uri) / "checkpoints" / f"{run_id}.pt"
    state = {"epoch": 0, "best_map5": -1.0, "best_epoch": 0, "best_head": None, "history": [], "stale": 0}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        head.load_state_dict(saved["head"])
        bundle.loss.load_state_dict(saved["loss"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        logger.info("resuming run %s at epoch %d", run_id, state["epoch"])

    generator = np.random.default_rng(config.seed + state["epoch"])
    while state["epoch"] < config.epochs and state["stale"] < config.patience:
        if should_stop and should_stop():
            logger.info("run %s stopped by request at epoch %d; re-run to resume", run_id, state["epoch"])
            break
        epoch = state["epoch"] + 1
        head.train()
        bundle.loss.train()
        if bundle.m_per_class:
            order = m_per_class_order(train_labels_np, bundle.m_per_class, batch_size, generator)
        else:
            order = generator.permutation(len(train_y))
        epoch_losses = []
        for start in range(0, len(order), batch_size):
            index = torch.from_numpy(order[start : start + batch_size]).to(device)
            if len(index) < 2:
                continue
            embeddings = head(train_x[index])
            batch_labels = train_y[index]
            pairs = bundle.miner(embeddings, batch_labels) if bundle.miner is not None else None
            loss = bundle.loss(embeddings, batch_labels, pairs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_losses.append(float(loss.detach()))
        embedded = _embed(head, all_x)
        result = evaluate(embedded[val_mask], labels[val_mask], embedded[~val_mask], labels[~val_mask]) if val_mask.any() else None
        val_map5 = result.map_at_5 if result else 0.0
        if val_map5 > state["best_map5"]:
            state.update(best_map5=val_map5, best_epoch=epoch, best_head={k: v.detach().cpu().clone() for k, v in head.state_dict().items()}, stale=0)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        record = {"epoch": epoch, "loss": float(np.mean(epoch_losses)) if epoch_losses else 0.0, "val_map5": val_map5, "val_p1": result.p_at_1 if result else 0.0}
        state["history"].append(record)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"head": head.state_dict(), "loss": bundle.loss.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(checkpoint)  # atomic: a kill leaves the previous epoch's checkpoint
        event = TrainEvent(epoch, config.epochs, record["loss"], val_map5, record["val_p1"], state["best_map5"], time.perf_counter() - started)
        logger.info("epoch %d/%d loss %.4f val mAP@5 %.4f", epoch, config.epochs, record["loss"], val_map5)
        if progress:
            progress(event)

    finished = state["epoch"] >= config.epochs or state["stale"] >= config.patience
    if not finished:
        raise TrainingInterrupted(run_id, state["epoch"])
    head.load_state_dict(state["best_head"])
    model = _publish(db, parent, head.cpu(), config, run_id, state, len(labels), classes)
    checkpoint.unlink(missing_ok=True)
    return TrainResult(model, run_id, state["epoch"], state["best_epoch"], state["best_map5"], state["history"], time.perf_counter() - started)


class TrainingInterrupted(RuntimeError):
    """A run stopped before it finished; running it again with the same configuration resumes it."""

    def __init__(self, run_id: str, epoch: int) -> None:
        super().__init__(f"training run {run_id} stopped after epoch {epoch}; run the same command again to resume")
        self.run_id, self.epoch = run_id, epoch


def _publish(db: Database, parent: ModelRecord, head: ProjectionHead, config: TrainConfig, run_id: str, state: dict, n_images: int, classes: list[str]) -> ModelRecord:
    """Write the head, the new version's embeddings, and last the ``models`` row (the commit point)."""
    name = f"{parent.encoder}+{config.method}"
    path = heads_dir(db) / f"{name}-{run_id}.pt"
    head_sha = save_head(head, path)
    weights_sha = head_weights_sha(parent, head_sha)
    fingerprint = encoder_fingerprint(parent.architecture, weights_sha, config.head.out_dim, parent.preprocessing)
    model_id = f"{name}-{fingerprint[:8]}"
    notes = {"method": config.method, "run_id": run_id, "config": asdict(config), "best_epoch": state["best_epoch"],
             "val_map5": state["best_map5"], "history": state["history"], "data": {"images": n_images, "classes": len(classes), "where": config.catalogue_where}}
    record = ModelRecord(
        id=model_id, encoder=name, architecture=parent.architecture, weights_source=str(path), weights_sha256=weights_sha,
        dim=config.head.out_dim, preprocessing=parent.preprocessing, fingerprint=fingerprint,
        embeddings_table=schemas.embeddings_table_name(model_id), created_at=utc_now(), parent=parent.id,
        notes=json.dumps(notes, default=str),
    )
    reembed(db, parent, record, head)
    db.add_model(record)
    logger.info("published model %s (parent %s)", record.id, parent.id)
    return record


def reembed(db: Database, parent: ModelRecord, model: ModelRecord, head: ProjectionHead, batch_rows: int = 8192) -> int:
    """Apply ``head`` to every stored vector of ``parent`` and write them as ``model``'s embeddings."""
    source = db.embeddings(parent)
    columns = ["image_id", "vector", *schemas.IMAGE_METADATA_COLUMNS]
    table = source.search().select(columns).limit(None).to_arrow()
    head.eval()
    written = 0
    for start in range(0, table.num_rows, batch_rows):
        chunk = table.slice(start, batch_rows)
        vector_column = chunk.column("vector").combine_chunks()
        features = torch.from_numpy(vector_column.flatten().to_numpy(zero_copy_only=False).reshape(-1, parent.dim).astype(np.float32))
        vectors = _embed(head, features)
        db.write_vectors(model, chunk.column("image_id"), chunk, vectors)
        written += chunk.num_rows
    return written
