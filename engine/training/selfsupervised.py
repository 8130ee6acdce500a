"""Learning without labels: self-supervised methods (SimSiam, rotation prediction) for the method registry,
and the consistency term of semi-supervised training (weak vs strong views of unlabelled images).

pytorch-metric-learning has no SimSiam loss; the small predictor + stop-gradient negative cosine below is
the method of Chen & He (2021). Both methods transform pixels, so they train in the ``finetune`` regime.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from engine.core.errors import TrainingError
from engine.training.config import TrainConfig
from engine.training.methods import Objective, register_method

Embed = Callable[[torch.Tensor], torch.Tensor]


class SimSiam(Objective):
    """Two strong views of each image; a predictor maps one view's embedding onto the other's, whose
    gradient is stopped (the stop-gradient is what keeps the embeddings from collapsing)."""

    views = ("strong", "strong")
    needs_labels = False
    needs_images = True

    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or max(8, dim // 4)
        self.predictor = nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))

    def forward(self, embed: Embed, views: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        z1, z2 = embed(views[0]), embed(views[1])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=1).mean() + F.cosine_similarity(p2, z1.detach(), dim=1).mean())


def rotate_batch(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each square image (N, C, H, H) by its number of quarter turns (0-3)."""
    if images.shape[-1] != images.shape[-2]:
        raise TrainingError(f"rotation prediction needs square crops, got {tuple(images.shape[-2:])}")
    rotated = images.clone()
    for turns in range(1, 4):
        chosen = quarter_turns == turns
        if chosen.any():
            rotated[chosen] = torch.rot90(images[chosen], turns, dims=(-2, -1))
    return rotated


class RotationPrediction(Objective):
    """Each image turned by 0, 90, 180 or 270 degrees; a linear classifier on the embedding predicts which
    (Gidaris et al., 2018). The turns come from torch's seeded generator."""

    views = ("train",)
    needs_labels = False
    needs_images = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, 4)

    def forward(self, embed: Embed, views: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        images = views[0]
        turns = torch.randint(0, 4, (len(images),)).to(images.device)
        return F.cross_entropy(self.classifier(embed(rotate_batch(images, turns))), turns)


@register_method("simsiam", "self-supervised: SimSiam, two augmented views, predictor + stop-gradient (no labels; finetune regime)")
def _simsiam(config: TrainConfig, num_classes: int, dim: int) -> Objective:
    return SimSiam(dim)


@register_method("rotation", "self-supervised: predict the rotation of each image (no labels; finetune regime)")
def _rotation(config: TrainConfig, num_classes: int, dim: int) -> Objective:
    return RotationPrediction(dim)


def consistency_loss(embed: Embed, weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance from the strong view's embedding to the weak view's, whose gradient is stopped
    (the weak view is the target, as in FixMatch-style consistency); zero when both views embed alike."""
    with torch.no_grad():
        target = embed(weak)
    return (1.0 - F.cosine_similarity(embed(strong), target, dim=1)).mean()
