"""Training methods: objectives from one registry (pytorch-metric-learning losses with their miners and samplers;
the self-supervised ones register from ``engine.training.selfsupervised``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity
from torch import nn

from engine.training.config import TrainConfig
from engine.training.registry import METHODS, register_method

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


MethodFactory = Callable[[TrainConfig, int, int], Objective]


def create_loss(method: str, config: TrainConfig, num_classes: int, embedding_dim: int) -> Objective:
    """The objective of a training method; the error names the valid choices."""
    return METHODS.get(method)(config, num_classes, embedding_dim)


@register_method("arcface", "additive angular margin softmax (ArcFace)")
def _arcface(config: TrainConfig, num_classes: int, dim: int) -> Objective:
    return MetricLoss(losses.ArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=math.degrees(config.margin), scale=config.scale))


@register_method("subcenter-arcface", "ArcFace with several sub-centres per class (robust to noisy labels)")
def _subcenter_arcface(config: TrainConfig, num_classes: int, dim: int) -> Objective:
    return MetricLoss(losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=math.degrees(config.margin), scale=config.scale, sub_centers=config.sub_centers))


@register_method("triplet", "triplet margin loss with batch-hard mining")
def _triplet(config: TrainConfig, num_classes: int, dim: int) -> Objective:
    distance = CosineSimilarity()
    return MetricLoss(losses.TripletMarginLoss(margin=config.triplet_margin, distance=distance), miners.BatchHardMiner(distance=distance), config.m_per_class)


@register_method("contrastive", "contrastive pairs with multi-similarity mining")
def _contrastive(config: TrainConfig, num_classes: int, dim: int) -> Objective:
    distance = CosineSimilarity()
    return MetricLoss(losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=distance), miners.MultiSimilarityMiner(epsilon=0.1, distance=distance), config.m_per_class)


@register_method("multisimilarity", "multi-similarity loss with multi-similarity mining")
def _multisimilarity(config: TrainConfig, num_classes: int, dim: int) -> Objective:
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
def _bce(config: TrainConfig, num_classes: int, dim: int) -> Objective:
    return MetricLoss(OneHotBCELoss(num_classes, dim))


