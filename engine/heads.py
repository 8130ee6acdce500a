"""Projection heads on top of a backbone, and the encoders of model versions that carry one.

A version trained on frozen features stores only its head (a small state dict file beside the database);
its encoder is the parent's encoder with the head appended. A fine-tuned version stores its whole network
(backbone state dict, LoRA adapters merged, and head) in one file under ``<db>/finetuned``. Either way
queries are embedded exactly as the catalogue was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from engine.encoders import Encoder, EncoderConfig, create_encoder, file_sha256, resolve_device
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
    return _head_from_saved(torch.load(path, map_location="cpu", weights_only=True))


def _head_from_saved(saved: dict) -> ProjectionHead:
    head = ProjectionHead(saved["in_dim"], HeadConfig(**saved["config"]))
    head.load_state_dict(saved["state_dict"])
    return head.eval()


FINETUNED_FORMAT = "lookalike.finetuned/1"


def finetuned_dir(db: Database) -> Path:
    return db.local_folder("finetuned")


def create_backbone(architecture: str) -> nn.Module:
    """A timm architecture without its classifier (pooled features), random weights."""
    model = timm.create_model(architecture, pretrained=False)
    model.reset_classifier(0)
    return model


def save_finetuned(architecture: str, backbone: nn.Module, head: ProjectionHead, path: Path) -> str:
    """Write a fine-tuned network (plain timm backbone state dict and head) to ``path``; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FINETUNED_FORMAT, "architecture": architecture,
                "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
                "head": {"config": asdict(head.config), "in_dim": head.in_dim, "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}}}, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return file_sha256(path)


def _finetuned_encoder(model: ModelRecord, saved: dict, path: Path, device: str | None) -> Encoder:
    backbone = create_backbone(saved["architecture"])
    backbone.load_state_dict(saved["backbone"], strict=True)
    defaults = EncoderConfig()
    return Encoder(
        name=model.encoder, architecture=saved["architecture"], model=BackboneWithHead(backbone, _head_from_saved(saved["head"])),
        weights_source=str(path), weights_sha256=file_sha256(path), data_config=dict(resolve_model_data_config(backbone)),
        device=resolve_device(device), batch_size=defaults.batch_size, amp=defaults.amp,
    )


def head_weights_sha(parent: ModelRecord, head_sha: str) -> str:
    """Weights identity of a headed model: its parent's weights and its own head."""
    return hashlib.sha256(json.dumps([parent.weights_sha256, head_sha]).encode()).hexdigest()


def heads_dir(db: Database) -> Path:
    return db.local_folder("heads")


def encoder_for_model(db: Database, model: ModelRecord, device: str | None = None) -> Encoder:
    """The encoder that made ``model``'s vectors: a registered/timm encoder, or a parent plus head."""
    from engine.derived import derived_encoder, is_derived  # late: derived versions build on this function

    if is_derived(model):  # whitening, DBA, ensembles, TTA: their parents' encoders plus a transform
        return derived_encoder(db, model, device)
    from engine.masker import encoder_for_masked_model, masking_of  # late: the masker builds on this module

    if masking_of(model) is not None:  # masked catalogues (and heads over them): queries are masked alike
        return encoder_for_masked_model(db, model, device)
    if model.parent is None:
        weights = model.weights_source if Path(model.weights_source).is_file() else None
        encoder = create_encoder(EncoderConfig(name=model.encoder, weights=weights, device=device))
    else:
        head_path = Path(model.weights_source)
        if not head_path.is_file():
            raise FileNotFoundError(f"weights of model {model.id} not found at {head_path}")
        saved = torch.load(head_path, map_location="cpu", weights_only=True)
        if saved.get("format") == FINETUNED_FORMAT:
            encoder = _finetuned_encoder(model, saved, head_path, device)
        else:
            encoder = _headed_encoder(db, model, _head_from_saved(saved), head_path, device)
    if encoder.fingerprint != model.fingerprint:
        raise EncoderMismatchError(f"the encoder rebuilt for model {model.id} has fingerprint {encoder.fingerprint}, the table records {model.fingerprint}")
    return encoder


def _headed_encoder(db: Database, model: ModelRecord, head: ProjectionHead, head_path: Path, device: str | None) -> Encoder:
    """The parent's encoder with a head appended."""
    parent = db.resolve_model(model.parent)
    base = encoder_for_model(db, parent, device)
    return Encoder(
        name=model.encoder, architecture=base.architecture, model=BackboneWithHead(base.model, head),
        weights_source=str(head_path), weights_sha256=head_weights_sha(parent, file_sha256(head_path)),
        data_config=base.data_config, device=base.device, batch_size=base.batch_size, amp=base.amp,
    )
