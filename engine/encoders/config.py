"""What an encoder is built from: :class:`EncoderConfig` and the registry of named encoders.

Light on purpose (no torch import): the front ends read defaults and the list of encoders from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.registry import Registry

if TYPE_CHECKING:
    import torch

DEFAULT_ENCODER = "efficientnet_lite0"


@dataclass(frozen=True)
class EncoderConfig:
    """What to build: a registered name or a timm architecture, and where its weights come from."""

    name: str = DEFAULT_ENCODER
    weights: str | None = None  # a local file; None = the encoder's packaged default (or the hub)
    device: str | None = None  # None = CUDA when available, else CPU
    batch_size: int = 32
    amp: bool = True  # mixed precision, used on CUDA only


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: its timm architecture and how to find default weights offline."""

    name: str
    architecture: str
    default_weights: Callable[[], Path] | None
    convert_state_dict: Callable[[dict[str, torch.Tensor], Any], dict[str, torch.Tensor]] | None
    description: str


ENCODERS: Registry[EncoderSpec] = Registry("encoder")


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add an encoder to the registry (names are unique)."""
    return ENCODERS.add(spec.name, spec, spec.description)


def list_encoders() -> dict[str, str]:
    """Registered encoder names and descriptions (any timm architecture works too, with local weights)."""
    return ENCODERS.describe()


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a projection head."""

    kind: str = "mlp"  # mlp | linear
    out_dim: int = 512
    hidden_dim: int = 1024
    dropout: float = 0.2
    batchnorm: bool = True


HEAD_KINDS = ("linear", "mlp")
