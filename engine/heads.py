"""Projection heads on top of a backbone, and the encoders of model versions that carry one.

A trained model version stores only its head (a small state dict file beside the database); its
encoder is the parent's encoder with the head appended, so queries are embedded exactly as the
catalogue was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from engine.encoders import Encoder, EncoderConfig, create_encoder, file_sha256
from engine.store import Database, EncoderMismatchError, ModelRecord


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a projection head."""

    kind: str = "mlp"  # mlp | linear
    out_dim: int = 512
    hidden_dim: int = 1024
    dropout: float = 0.2
    batchnorm: bool = True


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
            raise ValueError(f"unknown head kind {config.kind!r}; choose one of ['linear', 'mlp']")
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class BackboneWithHead(nn.Module):
    """A backbone's L2-normalised pooled features through a head: what the stored features saw."""

    def __init__(self, backbone: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.num_features = head.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the head was trained on stored vectors, which are normalised backbone features
        return self.head(nn.functional.normalize(self.backbone(images).float(), dim=1))


def save_head(head: ProjectionHead, path: Path) -> str:
    """Write the head (config and weights) to ``path``; returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(head.config), "in_dim": head.in_dim, "state_dict": head.state_dict()}, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return file_sha256(path)


def load_head(path: Path) -> ProjectionHead:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    head = ProjectionHead(saved["in_dim"], HeadConfig(**saved["config"]))
    head.load_state_dict(saved["state_dict"])
    return head.eval()


def head_weights_sha(parent: ModelRecord, head_sha: str) -> str:
    """Weights identity of a headed model: its parent's weights and its own head."""
    return hashlib.sha256(json.dumps([parent.weights_sha256, head_sha]).encode()).hexdigest()


def heads_dir(db: Database) -> Path:
    return Path(db.uri) / "heads"


def encoder_for_model(db: Database, model: ModelRecord, device: str | None = None) -> Encoder:
    """The encoder that made ``model``'s vectors: a registered/timm encoder, or a parent plus head."""
    if model.parent is None:
        weights = model.weights_source if Path(model.weights_source).is_file() else None
        encoder = create_encoder(EncoderConfig(name=model.encoder, weights=weights, device=device))
    else:
        parent = db.resolve_model(model.parent)
        base = encoder_for_model(db, parent, device)
        head_path = Path(model.weights_source)
        if not head_path.is_file():
            raise FileNotFoundError(f"head weights of model {model.id} not found at {head_path}")
        head = load_head(head_path)
        encoder = Encoder(
            name=model.encoder, architecture=base.architecture, model=BackboneWithHead(base.model, head),
            weights_source=str(head_path), weights_sha256=head_weights_sha(parent, file_sha256(head_path)),
            data_config=base.data_config, device=base.device, batch_size=base.batch_size, amp=base.amp,
        )
    if encoder.fingerprint != model.fingerprint:
        raise EncoderMismatchError(f"the encoder rebuilt for model {model.id} has fingerprint {encoder.fingerprint}, the table records {model.fingerprint}")
    return encoder
