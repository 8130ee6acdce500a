"""Training: one loop (checkpoints, resume, early stopping) for every method and regime (heads on stored
features, fine-tuning, self-supervised) and for the masker, augmentations, publication of trained versions.
Imports ``engine.evaluation`` and below.

The package itself is light (``engine.training.config`` is read by the front ends for their defaults); the
names below come from :mod:`engine.training.api`, whose import registers every method and regime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_API = {
    "train": "engine.training.api", "list_methods": "engine.training.api", "list_regimes": "engine.training.api",
    "TrainConfig": "engine.training.config", "FinetuneConfig": "engine.training.config",
    "TrainResult": "engine.training.loop", "TrainingInterrupted": "engine.training.loop",
}
__all__ = sorted(_API)

if TYPE_CHECKING:
    from engine.training.api import list_methods, list_regimes, train
    from engine.training.config import FinetuneConfig, TrainConfig
    from engine.training.loop import TrainingInterrupted, TrainResult


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'engine.training' has no attribute {name!r}")
    importlib.import_module("engine.training.api")  # every method and regime registered before any is used
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
