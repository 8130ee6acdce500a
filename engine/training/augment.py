"""Augmentations for fine-tuning, built from a model's own timm data config (size, mean, std, interpolation).

One registry of named presets, one factory (``create_augmentation``). ``train`` is the supervised default
(random resized crop, flip, colour jitter); ``weak`` and ``strong`` are the two views of consistency
regularisation and SimSiam; ``eval`` is the deterministic preprocessing the published encoder uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform

from engine.core.registry import Registry

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class AugmentationPreset:
    """Arguments of ``timm.data.create_transform`` beyond the model's data config."""

    is_training: bool
    options: tuple[tuple[str, Any], ...] = ()
    description: str = ""


AUGMENTATIONS: Registry[AugmentationPreset] = Registry("augmentation")


def register_augmentation(name: str, preset: AugmentationPreset) -> AugmentationPreset:
    return AUGMENTATIONS.add(name, preset, preset.description)


def list_augmentations() -> dict[str, str]:
    return AUGMENTATIONS.describe()


register_augmentation("eval", AugmentationPreset(False, description="resize and centre crop, as the encoder embeds"))
register_augmentation("weak", AugmentationPreset(True, (("scale", (0.7, 1.0)), ("hflip", 0.5), ("color_jitter", 0.0)),
                                                 "mild random resized crop and flip"))
register_augmentation("train", AugmentationPreset(True, (("scale", (0.35, 1.0)), ("hflip", 0.5), ("color_jitter", 0.3)),
                                                  "random resized crop, flip, colour jitter"))
register_augmentation("strong", AugmentationPreset(True, (("scale", (0.2, 1.0)), ("hflip", 0.5), ("color_jitter", 0.4),
                                                          ("grayscale_prob", 0.2), ("auto_augment", "rand-m9-mstd0.5")),
                                                   "aggressive crop, flip, colour jitter, grey, RandAugment"))


def create_augmentation(name: str, data_config: dict[str, Any], image_size: int | None = None) -> Transform:
    """The transform of preset ``name`` for a model with ``data_config`` (optionally at another square size).

    The error names the valid presets.
    """
    preset = AUGMENTATIONS.get(name)
    config = dict(data_config)
    if image_size:
        config["input_size"] = (3, image_size, image_size)
    arguments = {key: config[key] for key in ("input_size", "interpolation", "mean", "std") if key in config}
    if not preset.is_training:
        arguments.update({key: config[key] for key in ("crop_pct", "crop_mode") if key in config})
    return create_transform(**arguments, is_training=preset.is_training, **dict(preset.options))
