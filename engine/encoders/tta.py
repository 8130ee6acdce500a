"""Test-time augmentation: each image embedded as the mean of several views (flip, crops, scales).

The views are made from the model's own preprocessed input tensor, so a TTA encoder preprocesses
exactly like its base encoder and runs at ingest and at query time alike; only the forward pass
changes (one forward per view: query and ingest time grow with the number of views).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.core.errors import EncoderError


@dataclass(frozen=True)
class TTAConfig:
    """Which views to average. The plain view is always one of them."""

    flip: bool = True  # add the horizontal mirror of every view
    crops: int = 0  # 0, 1 (centre) or 5 (four corners and centre) crops, resized back to the input size
    crop_fraction: float = 0.875  # side of a crop relative to the input
    scales: tuple[float, ...] = (1.0,)  # input resized by these factors (global pooling takes any size)

    def __post_init__(self) -> None:
        if self.crops not in (0, 1, 5):
            raise EncoderError(f"crops must be 0, 1 or 5, got {self.crops}")
        if not 0.1 <= self.crop_fraction <= 1.0:
            raise EncoderError(f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise EncoderError(f"scales must be positive, got {self.scales}")

    @property
    def views(self) -> int:
        """Forward passes per image."""
        return (1 + self.crops) * (2 if self.flip else 1) * len(self.scales)


def crop_boxes(height: int, width: int, crops: int, fraction: float) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the crops: centre first, then the four corners."""
    h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
    centre = ((height - h) // 2, (width - w) // 2, h, w)
    corners = [(0, 0, h, w), (0, width - w, h, w), (height - h, 0, h, w), (height - h, width - w, h, w)]
    return [centre, *corners][:crops]


def augmented_views(images: torch.Tensor, config: TTAConfig) -> list[torch.Tensor]:
    """The views of a preprocessed batch (NCHW), as batches; views of one size share a batch."""
    height, width = images.shape[-2:]
    same_size = [images]
    for top, left, h, w in crop_boxes(height, width, config.crops, config.crop_fraction):
        crop = images[..., top : top + h, left : left + w]
        same_size.append(nn.functional.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True))
    if config.flip:
        same_size += [torch.flip(view, dims=[-1]) for view in same_size]
    base = torch.cat(same_size)
    views = []
    for scale in config.scales:
        if scale == 1.0:
            views.append(base)
        else:
            size = (max(8, round(height * scale)), max(8, round(width * scale)))
            views.append(nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0))
    return views


class TTAModel(nn.Module):
    """A model whose output is the mean of its L2-normalised outputs over the views of each image."""

    def __init__(self, base: nn.Module, config: TTAConfig) -> None:
        super().__init__()
        self.base, self.config = base, config
        self.num_features = base.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        total = None
        for batch in augmented_views(images, self.config):
            features = nn.functional.normalize(self.base(batch).float(), dim=1)
            summed = features.reshape(-1, n, features.shape[1]).sum(dim=0)
            total = summed if total is None else total + summed
        return total / self.config.views
