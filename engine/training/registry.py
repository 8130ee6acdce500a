"""The two registries of training: methods (objectives) and regimes (what the loop trains, on what data).

Light on purpose: members register from their own modules (``methods``, ``selfsupervised``, ``head``,
``finetune``); :mod:`engine.training.api` imports them all, so every lookup through it sees every member.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.core.registry import Registry

METHODS: Registry[Callable[..., Any]] = Registry("training method")
REGIMES: Registry[Callable[..., Any]] = Registry("training regime")


def register_method(name: str, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``factory(config, num_classes, embedding_dim) -> Objective`` as a training method."""
    return METHODS.register(name, description)


def register_regime(name: str, accepts_images: bool, description: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``train_fn(db, parent, config, progress=None, should_stop=None) -> TrainResult``."""
    return REGIMES.register(name, description, accepts_images=accepts_images)
