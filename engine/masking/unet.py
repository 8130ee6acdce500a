"""The masker: a segmentation-models-pytorch U-Net whose encoder is timm's ``tf_efficientnet_lite0``
(smp's ``tu-`` timm-universal encoder) started from the offline EfficientNet-Lite0 weights that
:func:`engine.encoders.factory.create_encoder` loads, one output channel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from engine.core.errors import MaskingError
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import create_encoder

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

# ---- the masker: a U-Net on an offline-initialised timm encoder ----------------------------------


@dataclass(frozen=True)
class MaskerConfig:
    """Shape of a masker network and its input."""

    encoder: str = "efficientnet_lite0"  # encoder registry name or timm architecture (its weights start the U-Net)
    encoder_weights: str | None = None  # local weights file; None = the registered encoder's packaged weights
    architecture: str = ""  # timm architecture; filled from the encoder when the masker is built
    image_size: int = 128  # the masker sees images resized to a square of this side (multiple of 32)
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16, 8)  # light: trains on a CPU
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    threshold: float = 0.5


def unet_from_config(config: MaskerConfig) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    if config.image_size % 32:
        raise MaskingError(f"masker image size must be a multiple of 32, got {config.image_size}")
    # encoder_weights=None: smp would download them; the offline weights are loaded below instead
    return smp.Unet(f"tu-{config.architecture}", encoder_weights=None, classes=1, decoder_channels=tuple(config.decoder_channels))


def build_unet(config: MaskerConfig) -> tuple[torch.nn.Module, MaskerConfig, str]:
    """A U-Net whose encoder starts from the offline weights of ``config.encoder``; returns (net, config, weights sha)."""
    backbone = create_encoder(EncoderConfig(name=config.encoder, weights=config.encoder_weights, device="cpu"))
    config = replace(config, architecture=backbone.architecture, mean=tuple(backbone.data_config["mean"]), std=tuple(backbone.data_config["std"]))
    net = unet_from_config(config)
    loaded = net.encoder.model.load_state_dict(backbone.model.state_dict(), strict=False)
    if loaded.missing_keys:
        raise MaskingError(f"the weights of {config.encoder} do not fit the U-Net encoder: missing {loaded.missing_keys[:5]}")
    logger.info("U-Net encoder %s initialised from %s (head layers not used: %d)", config.architecture, backbone.weights_source, len(loaded.unexpected_keys))
    return net, config, backbone.weights_sha256


@dataclass
class Masker:
    """A trained masker: RGB images in, bool foreground masks (at the images' own size) out."""

    id: str
    net: torch.nn.Module
    config: MaskerConfig
    device: torch.device
    batch_size: int = 16

    def __post_init__(self) -> None:
        self.net.eval().to(self.device)
        self._mean = torch.tensor(self.config.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.config.std).view(1, 3, 1, 1)

    def to_input(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images to the normalised square batch the network sees."""
        side = self.config.image_size
        arrays = [np.asarray(im.convert("RGB").resize((side, side), Image.BILINEAR)) for im in images]
        return images_to_tensor(np.stack(arrays), self._mean, self._std)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Foreground probability of every pixel, at each image's own size."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            logits = self.net(self.to_input(chunk).to(self.device)).float().cpu()
            for image, logit in zip(chunk, logits):
                resized = torch.nn.functional.interpolate(logit[None], size=(image.height, image.width), mode="bilinear", align_corners=False)
                out.append(torch.sigmoid(resized)[0, 0].numpy())
        return out

    def predict(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Bool foreground masks, at each image's own size."""
        return [p >= self.config.threshold for p in self.probabilities(images)]


def images_to_tensor(batch: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC to normalised float NCHW."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    return (tensor - mean) / std

