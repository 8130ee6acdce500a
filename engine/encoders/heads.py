"""Projection heads on top of a backbone, and the files that store them.

A version trained on frozen features stores only its head (a small state dict file beside the database);
a fine-tuned version stores its whole network (backbone state dict, LoRA adapters merged, and head) in one
file. How each becomes an encoder again is the business of :mod:`engine.versions`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from engine.core.checksums import file_sha256
from engine.core.errors import EncoderError
from engine.encoders.config import HeadConfig


class ProjectionHead(nn.Module):
    """Linear or one-hidden-layer MLP head, with optional batch norm and dropout."""

    def __init__(self, in_dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.in_dim = in_dim
        self.num_features = config.out_dim
        if config.kind == "linear":
            layers: list[nn.Module] = [nn.Dropout(config.dropout), nn.Linear(in_dim, config.out_dim)]
        elif config.kind == "mlp":
            layers = [nn.Linear(in_dim, config.hidden_dim)]
            if config.batchnorm:
                layers.append(nn.BatchNorm1d(config.hidden_dim))
            layers += [nn.ReLU(inplace=True), nn.Dropout(config.dropout), nn.Linear(config.hidden_dim, config.out_dim)]
        else:
            raise EncoderError(f"unknown head kind {config.kind!r}; choose one of ['linear', 'mlp']")
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def embed_features(head: nn.Module, features: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """A head's L2-normalised outputs for stored (normalised) features, in batches."""
    head.eval()
    with torch.inference_mode():
        out = torch.cat([head(features[i : i + batch]) for i in range(0, len(features), batch)])
    return nn.functional.normalize(out, dim=1).cpu().numpy()


class BackboneWithHead(nn.Module):
    """A backbone's L2-normalised pooled features through a head: what the stored features saw."""

    def __init__(self, backbone: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.num_features = head.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the head was trained on stored vectors, which are normalised backbone features
        return self.head(nn.functional.normalize(self.backbone(images).float(), dim=1))


def encode_members(members: Sequence, images: Sequence) -> list[np.ndarray]:
    """Every member encoder's vectors of ``images``, running each distinct backbone once: heads appended to one
    parent's encoder (an ensemble of heads, the usual winner of ``lookalike tune``) share its forward pass, so the
    ensemble costs one backbone, not one per member. Other members encode on their own."""
    shared: dict[int, torch.Tensor] = {}
    parts = []
    for member in members:
        network = getattr(member, "model", None)
        if not isinstance(network, BackboneWithHead):
            parts.append(member.encode_images(images))
            continue
        key = id(network.backbone)  # the resolver builds a parent's encoder once, so its heads hold the same backbone
        if key not in shared:
            shared[key] = _backbone_features(member, network.backbone, images)
        with torch.inference_mode():
            parts.append(nn.functional.normalize(network.head(shared[key]).float(), dim=1).cpu().numpy().astype(np.float32))
    return parts


@torch.inference_mode()
def _backbone_features(member, backbone: nn.Module, images: Sequence) -> torch.Tensor:  # noqa: ANN001 - an Encoder
    """Normalised backbone features of ``images`` with ``member``'s preprocessing, batch by batch: what
    :class:`BackboneWithHead` feeds its head."""
    chunks = []
    for start in range(0, len(images), member.batch_size):
        batch = torch.stack([member.preprocess(im) for im in images[start : start + member.batch_size]]).to(member.device)
        with torch.autocast(device_type=member.device.type, enabled=member.amp and member.device.type == "cuda"):
            chunks.append(nn.functional.normalize(backbone(batch).float(), dim=1))
    return torch.cat(chunks)


def save_head(head: ProjectionHead, path: Path) -> str:
    """Write the head (config and weights) to ``path``; returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(head.config), "in_dim": head.in_dim, "state_dict": head.state_dict()}, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return file_sha256(path)


def load_head(path: Path) -> ProjectionHead:
    """A stored head, in eval mode."""
    return head_from_saved(torch.load(path, map_location="cpu", weights_only=True))


def head_from_saved(saved: dict) -> ProjectionHead:
    head = ProjectionHead(saved["in_dim"], HeadConfig(**saved["config"]))
    head.load_state_dict(saved["state_dict"])
    return head.eval()


FINETUNED_FORMAT = "lookalike.finetuned/1"


def create_backbone(architecture: str) -> nn.Module:
    """A timm architecture without its classifier (pooled features), random weights."""
    model = timm.create_model(architecture, pretrained=False)
    model.reset_classifier(0)
    return model


def load_finetuned_file(path: Path) -> dict:
    """The saved dict of a fine-tuned network file (see :func:`save_finetuned`)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") != FINETUNED_FORMAT:
        raise EncoderError(f"{path} is not a fine-tuned network file (format {saved.get('format')!r}, expected {FINETUNED_FORMAT!r})")
    return saved


def save_finetuned(architecture: str, backbone: nn.Module, head: ProjectionHead, path: Path) -> str:
    """Write a fine-tuned network (plain timm backbone state dict and head) to ``path``; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FINETUNED_FORMAT, "architecture": architecture,
                "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
                "head": {"config": asdict(head.config), "in_dim": head.in_dim, "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}}}, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return file_sha256(path)


def head_weights_sha(parent_weights_sha256: str, head_sha: str) -> str:
    """Weights identity of a headed model: its parent's weights and its own head."""
    return hashlib.sha256(json.dumps([parent_weights_sha256, head_sha]).encode()).hexdigest()
