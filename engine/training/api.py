"""The training API: every method and regime registered (importing this module imports them all)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engine.core.progress import ProgressCallback
from engine.storage.database import Database, ModelRecord
from engine.training import finetune, head, masker, selfsupervised  # noqa: F401  (each registers regimes or methods)
from engine.training.config import TrainConfig
from engine.training.loop import TrainResult
from engine.training.methods import create_loss
from engine.training.registry import METHODS, REGIMES


def list_regimes() -> dict[str, str]:
    return REGIMES.describe()


def list_methods(regime: str | None = None) -> dict[str, str]:
    """Registered methods (those a regime can train when ``regime`` is given)."""
    methods = METHODS.describe()
    if regime is None:
        return methods
    accepts_images = REGIMES.entry(regime).info["accepts_images"]
    return {name: description for name, description in methods.items()
            if accepts_images or not create_loss(name, TrainConfig(), 2, 8).needs_images}


def train(db: Database, parent: ModelRecord, config: TrainConfig = TrainConfig(),
          progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Run ``config.regime`` on ``parent`` and publish the new model version (on a database without splits the
    default catalogue is every labelled image)."""
    config = dataclasses.replace(config, catalogue_where=db.catalogue_where(config.catalogue_where))
    return REGIMES.get(config.regime)(db, parent, config, progress=progress, should_stop=should_stop)
