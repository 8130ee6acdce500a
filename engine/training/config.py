"""What a training run is: :class:`TrainConfig` (and :class:`FinetuneConfig` for the ``finetune`` regime), and the
event it reports each epoch. Light on purpose (no torch import): the front ends read their defaults here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from engine.core.splits import CATALOGUE_WHERE
from engine.encoders.config import HeadConfig

if TYPE_CHECKING:
    from engine.storage.database import ModelRecord


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
    catalogue_where: str = CATALOGUE_WHERE
    seed: int = 0
    device: str | None = None
    regime: str = "head"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def run_id(self, parent: ModelRecord) -> str:
        """Deterministic id of this run: the same configuration on the same parent resumes."""
        blob = json.dumps([parent.id, asdict(self)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# epochs and batch size of each regime when not given: fine-tuning decodes images (fewer, smaller batches), and runs on CPU too
REGIME_DEFAULTS: dict[str, dict[str, int]] = {
    "head": {"epochs": TrainConfig.epochs, "batch_size": TrainConfig.batch_size},
    "finetune": {"epochs": 10, "batch_size": 32},
}


def regime_defaults(regime: str) -> dict[str, int]:
    """The TrainConfig fields a regime sets when the caller does not."""
    return dict(REGIME_DEFAULTS.get(regime, REGIME_DEFAULTS["head"]))
