"""Image encoders: the factory ``create_encoder`` over the registry in :mod:`engine.encoders.config`.

An encoder is a timm backbone without its classifier, its preprocessing taken from the model's own
data config, and L2-normalised output. Every encoder knows its *fingerprint*: a hash over the
architecture, the weights checksum and the preprocessing, which is stored with the vectors it made
so that a table is never queried with vectors from another encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from engine.core.checksums import file_sha256
from engine.core.errors import EncoderError, MissingFileError
from engine.encoders.config import ENCODERS, EncoderConfig
from engine.encoders.identity import encoder_fingerprint, model_version_id
from engine.media.decode import DEFAULT_MAX_PIXELS, DecodeError

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIDE = 224  # timm's default input size, for data configs that lack one
# The most pixels the model's resize may produce: twice the decoder's bomb limit (~0.5 GB of RGB), so a
# 30000x20 panorama (98 Mpx once resized) passes and a 20000x1 strip (1.3 Gpx, 3.4 GB peak) does not.
MAX_RESIZED_PIXELS = 2 * DEFAULT_MAX_PIXELS


@dataclass
class Encoder:
    """A ready-to-run image encoder: PIL images in, L2-normalised float32 vectors out."""

    name: str
    architecture: str
    model: torch.nn.Module
    weights_source: str
    weights_sha256: str
    data_config: dict[str, Any]
    device: torch.device
    batch_size: int = 32
    amp: bool = True
    transform: Callable[[Image.Image], torch.Tensor] = field(init=False, repr=False)
    dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.model.eval().to(self.device)
        self.transform = SizeGuard(create_transform(**self.data_config, is_training=False), resize_short_side(self.data_config))
        self.dim = int(self.model.num_features)

    @property
    def preprocessing(self) -> str:
        """The preprocessing as canonical JSON (stored with the model)."""
        return json.dumps(self.data_config, sort_keys=True, default=list)

    @property
    def fingerprint(self) -> str:
        """Identity of the vectors this encoder makes: same fingerprint, comparable vectors."""
        return encoder_fingerprint(self.architecture, self.weights_sha256, self.dim, self.preprocessing)

    @property
    def model_id(self) -> str:
        """Model-version id: the encoder name and a short fingerprint."""
        return model_version_id(self.name, self.fingerprint)

    # What made the vectors, stored on the version's ``models`` row (see ``engine.versions``): a plain
    # encoder is rebuilt from its registered name and weights file.
    version_kind = "encoder"

    @property
    def version_config(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights_source}

    def derive(self, **changes: Any) -> Encoder:
        """This encoder with some fields changed (another network, name or weights identity).

        The one path by which an encoder is transformed (a head appended, a whitening or TTA wrapped
        around the network): the subclass and everything not changed (device, preprocessing, masking)
        are kept, and the transform and dim are computed again.
        """
        return dataclasses.replace(self, **changes)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image to the model's input tensor (CHW float)."""
        return self.transform(image)

    @torch.inference_mode()
    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """A preprocessed batch (NCHW) to L2-normalised vectors (N x dim, float32)."""
        batch = batch.to(self.device, non_blocking=True)
        use_amp = self.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, enabled=use_amp):
            features = self.model(batch)
        features = torch.nn.functional.normalize(features.float(), dim=1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images to L2-normalised vectors, in batches of ``batch_size``."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            tensors = torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            chunks.append(self.encode_tensors(tensors))
        return np.concatenate(chunks)


def resize_short_side(data_config: dict[str, Any]) -> int:
    """The short side an image is resized to before the centre crop (timm's eval transform)."""
    side = max(data_config.get("input_size", (3, DEFAULT_INPUT_SIDE, DEFAULT_INPUT_SIDE))[1:])
    return int(math.floor(side / (data_config.get("crop_pct") or 1.0)))


class SizeGuard:
    """The model's transform, refusing images whose resize would allocate more than ``max_pixels``.

    The decoder bounds the pixels of a file (a decompression bomb), but the resize scales the short side up
    to the model's: a 200000x1 PNG of 666 bytes would become 51 million x 256 pixels (gigabytes). Such an
    image is a :class:`~engine.media.decode.DecodeError` (an error row at ingest), not an allocation.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], short_side: int, max_pixels: int = MAX_RESIZED_PIXELS) -> None:
        self.transform, self.short_side, self.max_pixels = transform, short_side, max_pixels

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        scale = self.short_side / max(1, min(width, height))
        resized = (math.ceil(width * scale), math.ceil(height * scale))
        if resized[0] * resized[1] > self.max_pixels:
            raise DecodeError(
                f"aspect ratio too extreme: {width}x{height} would be resized to {resized[0]}x{resized[1]} "
                f"({resized[0] * resized[1]:,} pixels) for the model's {self.short_side}-pixel short side; the limit is {self.max_pixels:,}"
            )
        return self.transform(image)


def resolve_device(requested: str | None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when present, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and key in loaded and isinstance(loaded[key], dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise EncoderError(f"{path} does not hold a state dict; give a file saved with torch.save(model.state_dict())")
    return loaded


def create_encoder(config: EncoderConfig | str = EncoderConfig()) -> Encoder:
    """Build an encoder by registered name or timm architecture, with offline weights.

    Registered names load their packaged weights (no network). Any other timm architecture needs
    ``weights`` (a local file); without it timm's hub download is tried, which fails offline.
    """
    if isinstance(config, str):
        config = EncoderConfig(name=config)
    spec = ENCODERS.get(config.name) if config.name in ENCODERS else None
    architecture = spec.architecture if spec else config.name
    if spec is None and architecture not in timm.list_models():
        raise EncoderError(
            f"unknown encoder {config.name!r}: registered encoders are {ENCODERS.names()}, "
            "or give any timm architecture name (see timm.list_models()) with --weights FILE"
        )
    model = timm.create_model(architecture, pretrained=False)
    weights_path: Path | None = Path(config.weights) if config.weights else None
    if weights_path is None and spec is not None and spec.default_weights is not None:
        weights_path = spec.default_weights()
    if weights_path is not None:
        if not weights_path.is_file():
            raise MissingFileError(f"weights file not found: {weights_path}; give an existing file with --weights")
        state = _load_state_dict(weights_path)
        if spec is not None and spec.convert_state_dict is not None and _needs_conversion(state, model):
            state = spec.convert_state_dict(state, model)
        model.load_state_dict(state, strict=True)
        weights_source, weights_sha = str(weights_path), file_sha256(weights_path)
    else:
        logger.info("no local weights for %s: trying the timm hub", architecture)
        try:
            model = timm.create_model(architecture, pretrained=True)
        except (OSError, RuntimeError, ValueError) as exc:  # offline, no such hub entry, or no pretrained weights at all
            logger.debug("hub weights for %s failed: %s", architecture, exc)
            raise EncoderError(
                f"no weights for {config.name!r} here: it has no bundled weights and the model hub could not provide them "
                f"({type(exc).__name__}); give a local state-dict file with --weights FILE, or use a bundled encoder "
                f"({', '.join(n for n in ENCODERS.names() if ENCODERS.get(n).default_weights is not None)})"
            ) from None
        weights_source = f"hub:{model.pretrained_cfg.get('hf_hub_id') or architecture}"
        weights_sha = hashlib.sha256(
            b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values())
        ).hexdigest()
    model.reset_classifier(0)  # pooled features, no ImageNet logits
    data_config = resolve_model_data_config(model)
    logger.info("encoder %s (%s) weights %s", config.name, architecture, weights_source)
    return Encoder(
        name=config.name,
        architecture=architecture,
        model=model,
        weights_source=weights_source,
        weights_sha256=weights_sha,
        data_config=dict(data_config),
        device=resolve_device(config.device),
        batch_size=config.batch_size,
        amp=config.amp,
    )


def _needs_conversion(state: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return set(state) != set(model.state_dict())



