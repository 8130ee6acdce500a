"""Training on the catalogue: one loop, methods (objectives) and regimes from registries.

A *method* (``create_loss``) is an :class:`Objective`: pytorch-metric-learning losses with their miners and
samplers, or a self-supervised objective (``engine.selfsupervised``). A *regime* (``train``) decides what
the loop trains and on what data:

* ``head`` (here): a projection head on *frozen* backbone features, read from the parent model's
  embeddings table (no image is decoded again); the new vectors are the head applied to stored features;
* ``finetune`` (``engine.finetune``): the backbone's last blocks (or LoRA adapters) and a head, on images
  decoded from their stored paths with augmentations; the catalogue is re-embedded afterwards.

The one loop (:func:`fit`) validates on a stratified split of the catalogue with mAP@5 each epoch, stops
early, checkpoints every epoch (a re-run with the same configuration resumes), and leaves publishing the
new model version (:func:`publish_version`) to the regime.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity
from torch import nn

import schemas
from engine.encoders import encoder_fingerprint, model_version_id, resolve_device
from engine.evaluation import evaluate
from engine.filters import combine_where, read_filtered
from engine.heads import HeadConfig, ProjectionHead, head_weights_sha, heads_dir, save_head
from engine.store import Database, ModelRecord, utc_now

logger = logging.getLogger(__name__)


# ---- methods: objectives from one registry ------------------------------------------------------


class Objective(nn.Module):
    """What one method contributes to the loop: the loss of a batch, and what the batch must hold.

    ``forward(embed, views, labels)`` gets ``embed`` (inputs to embeddings through the network being
    trained, under mixed precision where enabled), one input tensor per entry of ``views`` (augmentation
    preset names; regime ``head`` has one view, the stored features) and the class indices of the batch
    (``None`` for methods that need no labels).
    """

    views: tuple[str, ...] = ("train",)
    needs_labels: bool = True
    needs_images: bool = False  # only methods that transform pixels (rotation, two augmented views)
    m_per_class: int | None = None  # sample batches with m images of each class (pair/triplet losses)

    def forward(self, embed: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class MetricLoss(Objective):
    """A pytorch-metric-learning loss, with an optional miner, on the embeddings of one view."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, m_per_class: int | None = None) -> None:
        super().__init__()
        self.loss, self.miner, self.m_per_class = loss, miner, m_per_class

    def forward(self, embed, views, labels):
        embeddings = embed(views[0])
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)


LossBundle = MetricLoss  # the name regime 1 introduced

MethodFactory = Callable[["TrainConfig", int, int], Objective]
_METHODS: dict[str, tuple[MethodFactory, str]] = {}
# Modules that register further methods and regimes when imported (they import this module, so they are
# loaded on first use rather than at import time).
PLUGIN_MODULES: tuple[str, ...] = ("engine.selfsupervised", "engine.finetune")


def _load_plugins() -> None:
    for module_name in PLUGIN_MODULES:
        importlib.import_module(module_name)


def register_method(name: str, description: str) -> Callable[[MethodFactory], MethodFactory]:
    def decorate(factory: MethodFactory) -> MethodFactory:
        if name in _METHODS:
            raise ValueError(f"training method {name!r} is already registered")
        _METHODS[name] = (factory, description)
        return factory

    return decorate


def list_methods(regime: str | None = None) -> dict[str, str]:
    """Registered methods (those a regime can train when ``regime`` is given)."""
    _load_plugins()
    methods = {name: description for name, (_, description) in sorted(_METHODS.items())}
    if regime is None:
        return methods
    if regime not in list_regimes():
        raise ValueError(f"unknown training regime {regime!r}; choose one of {sorted(list_regimes())}")
    _, accepts_images = _REGIMES[regime]
    return {name: description for name, description in methods.items()
            if accepts_images or not create_loss(name, TrainConfig(), 2, 8).needs_images}


def create_loss(method: str, config: "TrainConfig", num_classes: int, embedding_dim: int) -> Objective:
    """The objective of a training method; the error names the valid choices."""
    _load_plugins()
    try:
        factory = _METHODS[method][0]
    except KeyError:
        raise ValueError(f"unknown training method {method!r}; choose one of {sorted(_METHODS)}") from None
    return factory(config, num_classes, embedding_dim)


@register_method("arcface", "additive angular margin softmax (ArcFace)")
def _arcface(config: "TrainConfig", num_classes: int, dim: int) -> Objective:
    return MetricLoss(losses.ArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=math.degrees(config.margin), scale=config.scale))


@register_method("subcenter-arcface", "ArcFace with several sub-centres per class (robust to noisy labels)")
def _subcenter_arcface(config: "TrainConfig", num_classes: int, dim: int) -> Objective:
    return MetricLoss(losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=math.degrees(config.margin), scale=config.scale, sub_centers=config.sub_centers))


@register_method("triplet", "triplet margin loss with batch-hard mining")
def _triplet(config: "TrainConfig", num_classes: int, dim: int) -> Objective:
    distance = CosineSimilarity()
    return MetricLoss(losses.TripletMarginLoss(margin=config.triplet_margin, distance=distance), miners.BatchHardMiner(distance=distance), config.m_per_class)


@register_method("contrastive", "contrastive pairs with multi-similarity mining")
def _contrastive(config: "TrainConfig", num_classes: int, dim: int) -> Objective:
    distance = CosineSimilarity()
    return MetricLoss(losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=distance), miners.MultiSimilarityMiner(epsilon=0.1, distance=distance), config.m_per_class)


@register_method("multisimilarity", "multi-similarity loss with multi-similarity mining")
def _multisimilarity(config: "TrainConfig", num_classes: int, dim: int) -> Objective:
    return MetricLoss(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1), config.m_per_class)


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
def _bce(config: "TrainConfig", num_classes: int, dim: int) -> Objective:
    return MetricLoss(OneHotBCELoss(num_classes, dim))


# ---- configuration and events --------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneConfig:
    """Regime ``finetune``: which backbone weights learn, on which images, with which augmentations."""

    unfreeze_blocks: int = 2  # the last N blocks of timm's layer grouping (and the final norm/conv) learn
    backbone_lr: float = 1e-4
    lora: bool = False  # LoRA adapters on the linear layers of those blocks instead (ViT backbones)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    image_size: int | None = None  # training crops at this size (None: the model's own); embedding keeps the model's
    augment: str = "train"  # augmentation preset of supervised views
    weak_augment: str = "weak"  # the two views of consistency regularisation
    strong_augment: str = "strong"
    unlabelled_dir: str | None = None  # unlabelled images for consistency regularisation: a folder...
    unlabelled_where: str | None = None  # ...or stored images matching this filter
    consistency_weight: float = 0.0
    workers: int = 2  # decoding processes (0: in the training process)
    amp: bool = True  # mixed precision, on CUDA only
    embed_batch_size: int = 64


@dataclass(frozen=True)
class TrainConfig:
    """A training run: regime, method, head, optimisation and data."""

    method: str = "arcface"
    head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    loss_lr: float = 1e-2  # for objectives with parameters (class centres of ArcFace, BCE's classifier, predictors)
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
    regime: str = "head"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

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


class TrainingInterrupted(RuntimeError):
    """A run stopped before it finished; running it again with the same configuration resumes it."""

    def __init__(self, run_id: str, epoch: int) -> None:
        super().__init__(f"training run {run_id} stopped after epoch {epoch}; run the same command again to resume")
        self.run_id, self.epoch = run_id, epoch


# ---- regimes -------------------------------------------------------------------------------------

Regime = Callable[..., TrainResult]
_REGIMES: dict[str, tuple[Regime, bool]] = {}


def register_regime(name: str, accepts_images: bool) -> Callable[[Regime], Regime]:
    """Register ``train_fn(db, parent, config, progress=None, should_stop=None) -> TrainResult``."""

    def decorate(train_fn: Regime) -> Regime:
        if name in _REGIMES:
            raise ValueError(f"training regime {name!r} is already registered")
        _REGIMES[name] = (train_fn, accepts_images)
        return train_fn

    return decorate


def list_regimes() -> list[str]:
    _load_plugins()
    return sorted(_REGIMES)


def train(db: Database, parent: ModelRecord, config: TrainConfig = TrainConfig(),
          progress: Callable[[TrainEvent], None] | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Run ``config.regime`` on ``parent`` and publish the new model version."""
    _load_plugins()
    try:
        train_fn = _REGIMES[config.regime][0]
    except KeyError:
        raise ValueError(f"unknown training regime {config.regime!r}; choose one of {sorted(_REGIMES)}") from None
    return train_fn(db, parent, config, progress=progress, should_stop=should_stop)


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


def _load_features(db: Database, parent: ModelRecord, where: str) -> tuple[np.ndarray, np.ndarray]:
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
        return _embed(network, self.features)


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
        progress: Callable[[TrainEvent], None] | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
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
        raise ValueError(f"training needs at least 2 catalogue rows outside validation, found {len(train_rows)}")
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
        event = TrainEvent(epoch, config.epochs, record["loss"], val_map5, record["val_p1"], state["best_map5"], time.perf_counter() - started)
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


def publish_version(db: Database, parent: ModelRecord, *, name: str, config: TrainConfig, run_id: str, state: dict,
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
    )
    embedded = write_embeddings(record)
    notes = {"method": config.method, "regime": config.regime, "run_id": run_id, "config": asdict(config), "best_epoch": state["best_epoch"],
             "val_map5": state["best_map5"], "history": state["history"], "data": {**data, "embedded": embedded}}
    record = replace(record, notes=json.dumps(notes, default=str))
    db.add_model(record)
    Path(state["checkpoint"]).unlink(missing_ok=True)
    logger.info("published model %s (parent %s)", record.id, parent.id)
    return record


# ---- regime ``head`` -----------------------------------------------------------------------------


@register_regime("head", accepts_images=False)
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
    if config.finetune.consistency_weight and (config.finetune.unlabelled_dir or config.finetune.unlabelled_where):
        raise ValueError("consistency regularisation needs augmented images: use the 'finetune' regime")
    _, targets = class_targets(labels)

    head = ProjectionHead(parent.dim, config.head).to(device)
    objective = create_loss(config.method, config, len(classes), config.head.out_dim)
    if objective.needs_images:
        raise ValueError(f"method {config.method!r} transforms images; the 'head' regime trains on stored features: "
                         f"use the 'finetune' regime, or one of {sorted(list_methods('head'))}")
    objective.to(device)
    groups = [{"params": list(head.parameters()), "lr": config.lr}]
    objective_params = list(objective.parameters())
    if objective_params:
        groups.append({"params": objective_params, "lr": config.loss_lr})
    parts = LoopParts(head, objective, groups, FeatureData(vectors, labels, targets, device), device)
    run_id = config.run_id(parent)
    state = fit(db, run_id, config, parts, started, progress, should_stop)

    name = f"{parent.encoder}+{config.method}"
    path = heads_dir(db) / f"{name}-{run_id}.pt"
    head = head.cpu()
    weights_sha = head_weights_sha(parent, save_head(head, path))
    data = {"images": len(labels), "classes": len(classes), "where": config.catalogue_where}
    model = publish_version(db, parent, name=name, config=config, run_id=run_id, state=state, data=data,
                            architecture=parent.architecture, weights_path=path, weights_sha=weights_sha,
                            dim=config.head.out_dim, preprocessing=parent.preprocessing,
                            write_embeddings=lambda record: reembed(db, parent, record, head))
    return TrainResult(model, run_id, state["epoch"], state["best_epoch"], state["best_map5"], state["history"], time.perf_counter() - started)


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
