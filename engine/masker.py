"""Foreground masking: a trainable U-Net that keeps the background out of the embedding.

* **Masks in the forms users have**: a CSV of run-length-encoded masks as the iMaterialist fashion set
  ships them (``ImageId, EncodedPixels, Height, Width, ClassId``; the union of an image's rows is its
  foreground; column-major, 1-indexed ``start length`` pairs as on Kaggle), or a folder of mask images
  named like the images (non-zero = foreground). Readers come from one registry (:func:`read_masks`).
* **The masker**: a segmentation-models-pytorch U-Net whose encoder is timm's ``tf_efficientnet_lite0``
  (smp's ``tu-`` timm-universal encoder) started from the offline EfficientNet-Lite0 weights that
  :func:`engine.encoders.create_encoder` loads, one output channel, Dice + BCE loss, IoU metric.
  Trained versions are stored in the ``maskers`` table, their weights beside the database.
* **Apply modes** (``zero``, ``blur``, ``crop``) from one registry (:func:`apply_mask`).
* **Masked encoding**: :class:`MaskedEncoder` masks every image before the encoder's own preprocessing.
  The masker and mode are part of its preprocessing record, hence of its fingerprint: a masked
  catalogue is a model version of its own, and a query encoder with another masker (or none) is
  refused like any other mismatched encoder. Ingest stores each image's foreground fraction.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
import torch
from PIL import Image, ImageDraw, ImageFilter

import schemas
from engine.encoders import Encoder, EncoderConfig, create_encoder, file_sha256, model_version_id, resolve_device
from engine.heads import BackboneWithHead, encoder_for_model, head_weights_sha, load_head
from engine.store import Database, EncoderMismatchError, ModelRecord, sql_quote, utc_now
from ingest.decode import decode_image
from ingest.scan import iter_image_files

logger = logging.getLogger(__name__)

MASK_KEY = "mask"  # key of the masking record inside a model's preprocessing JSON


class MaskerNotFoundError(LookupError):
    """No stored masker matches the name asked for."""


# ---- run-length encoding (Kaggle / iMaterialist convention) --------------------------------------


def rle_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """``start length`` pairs (1-indexed, pixels numbered down each column, then across) to a bool mask."""
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    try:
        values = np.asarray(str(encoded or "").split(), dtype=np.int64)
    except (ValueError, OverflowError) as exc:  # OverflowError: a number beyond int64 (found by fuzzing)
        raise ValueError(f"run-length encoding holds a non-integer or a number too large: {exc}") from exc
    if len(values) % 2:
        raise ValueError(f"run-length encoding needs start/length pairs, got {len(values)} numbers")
    starts, lengths = values[0::2] - 1, values[1::2]
    pixels = height * width
    # each bound alone first: starts + lengths of two huge int64 values would wrap around
    if len(values) and (starts.min() < 0 or lengths.min() < 0 or starts.max() > pixels or lengths.max() > pixels
                        or (starts + lengths).max() > pixels):
        raise ValueError(f"run-length encoding runs outside a {height}x{width} mask")
    # +1 at each run's start, -1 after its end: the running sum is > 0 inside any run (overlaps allowed)
    edges = np.zeros(pixels + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    return (np.cumsum(edges[:-1]) > 0).reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """A 2-D mask to ``start length`` pairs in the convention of :func:`rle_decode`."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    changes[1::2] -= changes[0::2]
    return " ".join(str(v) for v in changes)


def foreground_fraction(mask: np.ndarray) -> float:
    """Share of the image's pixels that are foreground."""
    return float(np.asarray(mask, dtype=bool).mean()) if np.size(mask) else 0.0


# ---- mask sources: one registry of readers -------------------------------------------------------


@dataclass(frozen=True)
class MaskSource:
    """Masks by image name, decoded only when asked for (a mask set can be far larger than memory)."""

    kind: str
    location: Path
    loaders: dict[str, Callable[[], np.ndarray]] = field(repr=False)

    def names(self) -> list[str]:
        return sorted(self.loaders)

    def mask(self, name: str) -> np.ndarray:
        """The bool mask of an image, looked up by file name, else by name without extension."""
        loader = self.loaders.get(name) or self.loaders.get(Path(name).stem)
        if loader is None:
            raise KeyError(f"no mask for {name!r} in {self.location}")
        return loader()

    def has(self, name: str) -> bool:
        return name in self.loaders or Path(name).stem in self.loaders


@dataclass(frozen=True)
class MaskReader:
    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], MaskSource]
    description: str


_READERS: dict[str, MaskReader] = {}


def register_mask_reader(reader: MaskReader) -> MaskReader:
    if reader.name in _READERS:
        raise ValueError(f"mask reader {reader.name!r} is already registered")
    _READERS[reader.name] = reader
    return reader


def list_mask_readers() -> dict[str, str]:
    return {name: reader.description for name, reader in sorted(_READERS.items())}


def read_masks(location: Path | str, kind: str = "auto") -> MaskSource:
    """Open a mask set; ``auto`` picks the first reader that recognises ``location``."""
    location = Path(location)
    if not location.exists():
        raise FileNotFoundError(f"mask set not found: {location}")
    if kind == "auto":
        for reader in _READERS.values():
            if reader.detect(location):
                return reader.read(location)
        raise ValueError(f"cannot tell what kind of mask set {location} is; give one of {sorted(_READERS)}")
    if kind not in _READERS:
        raise ValueError(f"unknown mask format {kind!r}; choose one of {['auto', *sorted(_READERS)]}")
    return _READERS[kind].read(location)


RLE_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width")


def _union_of_runs(name: str, runs: list[tuple[str, int, int]]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        sizes = {(h, w) for _, h, w in runs}
        if len(sizes) > 1:
            raise ValueError(f"masks of {name!r} disagree on the image size: {sorted(sizes)}")
        height, width = sizes.pop()
        union = np.zeros((height, width), dtype=bool)
        for encoded, _, _ in runs:
            union |= rle_decode(encoded, height, width)
        return union

    return load


def read_rle_csv(path: Path) -> MaskSource:
    """An iMaterialist-style CSV: one row per mask; an image's foreground is the union of its rows."""
    runs: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in RLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}; an RLE mask CSV has {list(RLE_COLUMNS)} (and ClassId)")
        for line, row in enumerate(reader, start=2):
            try:
                height, width = int(row["Height"]), int(row["Width"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path} line {line}: Height/Width must be integers ({exc})") from exc
            runs[row["ImageId"]].append((row["EncodedPixels"], height, width))
    if not runs:
        raise ValueError(f"{path} holds no masks")
    return MaskSource("rle-csv", path, {name: _union_of_runs(name, r) for name, r in runs.items()})


def load_mask_image(path: Path) -> np.ndarray:
    """A mask image to a bool mask: any non-zero channel is foreground (alpha ignored)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "LA"):
            array = np.asarray(image.convert("RGB"))
            return array.any(axis=2)
        return np.asarray(image) > 0


def read_mask_folder(path: Path) -> MaskSource:
    """A folder of mask images named like the images they belong to (by stem)."""
    files = list(iter_image_files(path))
    if not files:
        raise ValueError(f"{path} holds no mask images")
    stems = defaultdict(list)
    for file in files:
        stems[file.stem].append(file)
    clashes = {s: [f.name for f in fs] for s, fs in stems.items() if len(fs) > 1}
    if clashes:
        raise ValueError(f"several masks share a name in {path}: {dict(list(clashes.items())[:5])}")
    return MaskSource("png-folder", path, {stem: (lambda f=fs[0]: load_mask_image(f)) for stem, fs in stems.items()})


register_mask_reader(MaskReader("rle-csv", lambda p: p.is_file() and p.suffix.lower() == ".csv", read_rle_csv,
                                "CSV of run-length-encoded masks: ImageId, EncodedPixels, Height, Width, ClassId"))
register_mask_reader(MaskReader("png-folder", lambda p: p.is_dir(), read_mask_folder,
                                "folder of mask images named like the images (non-zero = foreground)"))


def pair_images_with_masks(images: Path | str, masks: MaskSource) -> list[Path]:
    """Image files under ``images`` that have a mask in ``masks`` (the others are logged and skipped)."""
    images = Path(images)
    files = list(iter_image_files(images))
    paired = [f for f in files if masks.has(f.name)]
    if not paired:
        raise ValueError(
            f"no image under {images} has a mask in {masks.location} (mask names look like {masks.names()[:3]}, "
            f"image names like {[f.name for f in files[:3]]})"
        )
    if len(paired) < len(files):
        logger.warning("%d of %d images under %s have no mask and are skipped", len(files) - len(paired), len(files), images)
    return paired


# ---- apply modes: one registry -------------------------------------------------------------------

MaskMode = Callable[[Image.Image, np.ndarray], Image.Image]
_MODES: dict[str, tuple[MaskMode, str]] = {}


def register_mask_mode(name: str, description: str) -> Callable[[MaskMode], MaskMode]:
    def decorate(func: MaskMode) -> MaskMode:
        if name in _MODES:
            raise ValueError(f"mask mode {name!r} is already registered")
        _MODES[name] = (func, description)
        return func

    return decorate


def list_mask_modes() -> dict[str, str]:
    return {name: description for name, (_, description) in sorted(_MODES.items())}


def check_mask_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {sorted(_MODES)}")
    return mode


def apply_mask(image: Image.Image, mask: np.ndarray, mode: str) -> Image.Image:
    """``image`` (RGB) with its background (``mask`` False) treated by ``mode``."""
    check_mask_mode(mode)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.width}x{image.height}")
    return _MODES[mode][0](image.convert("RGB"), mask)


def _mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


@register_mask_mode("zero", "background pixels set to black")
def _zero(image: Image.Image, mask: np.ndarray) -> Image.Image:
    return Image.composite(image, Image.new("RGB", image.size), _mask_image(mask))


@register_mask_mode("blur", "background blurred away (strong Gaussian blur), foreground kept sharp")
def _blur(image: Image.Image, mask: np.ndarray) -> Image.Image:
    radius = max(2.0, 0.06 * min(image.size))
    return Image.composite(image, image.filter(ImageFilter.GaussianBlur(radius)), _mask_image(mask))


@register_mask_mode("crop", "cropped to the foreground's bounding box (plus a 10% margin); no foreground = whole image")
def _crop(image: Image.Image, mask: np.ndarray) -> Image.Image:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return image
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    margin_y, margin_x = int(0.1 * (bottom - top)), int(0.1 * (right - left))
    return image.crop((max(0, left - margin_x), max(0, top - margin_y), min(image.width, right + margin_x), min(image.height, bottom + margin_y)))


def mask_preview(image: Image.Image, mask: np.ndarray, mode: str | None = None, colour: tuple[int, int, int] = (255, 40, 40)) -> Image.Image:
    """The image with the mask overlaid (foreground tinted, outlined); with ``mode``, the masked image beside it."""
    image = image.convert("RGB")
    mask = np.asarray(mask, dtype=bool)
    tinted = Image.blend(image, Image.new("RGB", image.size, colour), 0.45)
    overlay = Image.composite(tinted, Image.blend(image, Image.new("RGB", image.size), 0.35), _mask_image(mask))
    outline = _mask_image(mask).filter(ImageFilter.FIND_EDGES)
    overlay.paste(colour, mask=outline)
    if mode is None:
        return overlay
    applied = apply_mask(image, mask, mode)
    sheet = Image.new("RGB", (image.width + applied.width + 4, max(image.height, applied.height)), (255, 255, 255))
    sheet.paste(overlay, (0, 0))
    sheet.paste(applied, (image.width + 4, 0))
    ImageDraw.Draw(sheet).text((image.width + 8, 2), mode, fill=colour)
    return sheet


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


def _unet(config: MaskerConfig) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    if config.image_size % 32:
        raise ValueError(f"masker image size must be a multiple of 32, got {config.image_size}")
    # encoder_weights=None: smp would download them; the offline weights are loaded below instead
    return smp.Unet(f"tu-{config.architecture}", encoder_weights=None, classes=1, decoder_channels=tuple(config.decoder_channels))


def build_unet(config: MaskerConfig) -> tuple[torch.nn.Module, MaskerConfig, str]:
    """A U-Net whose encoder starts from the offline weights of ``config.encoder``; returns (net, config, weights sha)."""
    backbone = create_encoder(EncoderConfig(name=config.encoder, weights=config.encoder_weights, device="cpu"))
    config = replace(config, architecture=backbone.architecture, mean=tuple(backbone.data_config["mean"]), std=tuple(backbone.data_config["std"]))
    net = _unet(config)
    loaded = net.encoder.model.load_state_dict(backbone.model.state_dict(), strict=False)
    if loaded.missing_keys:
        raise ValueError(f"the weights of {config.encoder} do not fit the U-Net encoder: missing {loaded.missing_keys[:5]}")
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


# ---- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskerTrainConfig:
    """How to train a masker."""

    masker: MaskerConfig = field(default_factory=MaskerConfig)
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    encoder_lr: float = 3e-4  # the pretrained encoder moves slower than the fresh decoder
    bce_weight: float = 1.0  # loss = Dice + bce_weight x BCE
    holdout: float = 0.2  # share of the masks held out for the IoU each epoch
    seed: int = 0
    device: str | None = None


@dataclass(frozen=True)
class MaskerEvent:
    epoch: int
    epochs: int
    loss: float
    val_iou: float | None
    seconds: float


@dataclass(frozen=True)
class MaskerRecord:
    """One row of the ``maskers`` table."""

    id: str
    architecture: str
    encoder: str
    encoder_weights_sha256: str
    weights_path: str
    weights_sha256: str
    image_size: int
    threshold: float
    val_iou: float | None
    train_images: int
    val_images: int
    details: str
    created_at: datetime


def load_training_set(image_paths: Sequence[Path], masks: MaskSource, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and masks (bool NHW) resized to ``side``; a mask of the wrong size is an error."""
    images = np.zeros((len(image_paths), side, side, 3), np.uint8)
    targets = np.zeros((len(image_paths), side, side), bool)
    for i, path in enumerate(image_paths):
        image = decode_image(Path(path).read_bytes()).image
        mask = masks.mask(Path(path).name)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"the mask of {path} is {mask.shape[1]}x{mask.shape[0]}, the image is {image.width}x{image.height}")
        images[i] = np.asarray(image.resize((side, side), Image.BILINEAR))
        targets[i] = np.asarray(_mask_image(mask).resize((side, side), Image.NEAREST)) > 0
    return images, targets


def mask_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of bool masks (N x H x W) through smp.metrics; an empty-vs-empty pair scores 1."""
    import segmentation_models_pytorch as smp

    tp, fp, fn, tn = smp.metrics.get_stats(predicted.long()[:, None], target.long()[:, None], mode="binary")
    union = (tp + fp + fn).squeeze(1)
    return torch.where(union > 0, smp.metrics.iou_score(tp, fp, fn, tn, reduction="none").squeeze(1), torch.ones_like(union, dtype=torch.float32))


def train_masker(
    db: Database,
    image_paths: Sequence[Path],
    masks: MaskSource,
    config: MaskerTrainConfig = MaskerTrainConfig(),
    progress: Callable[[MaskerEvent], None] | None = None,
) -> MaskerRecord:
    """Train a U-Net on ``image_paths`` and their masks, keep the epoch with the best held-out IoU, store it."""
    import segmentation_models_pytorch as smp

    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError(f"a masker needs at least one epoch and batch size 1, got {config.epochs} epochs, batch size {config.batch_size}")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    net, masker_config, encoder_sha = build_unet(config.masker)
    images, targets = load_training_set(image_paths, masks, masker_config.image_size)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(images))
    n_val = int(round(config.holdout * len(images))) if len(images) > 1 else 0
    val_index, train_index = order[:n_val], order[n_val:]
    if not len(train_index):
        raise ValueError(f"nothing left to train on: {len(images)} masks, holdout {config.holdout}")
    mean, std = torch.tensor(masker_config.mean).view(1, 3, 1, 1), torch.tensor(masker_config.std).view(1, 3, 1, 1)
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    bce = smp.losses.SoftBCEWithLogitsLoss()
    net.to(device)
    optimizer = torch.optim.AdamW([
        {"params": net.encoder.parameters(), "lr": config.encoder_lr},
        {"params": [p for name, p in net.named_parameters() if not name.startswith("encoder.")], "lr": config.lr},
    ])
    steps = config.epochs * max(1, -(-len(train_index) // config.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[config.encoder_lr, config.lr], total_steps=max(1, steps))
    best = {"score": -float("inf"), "epoch": 0, "state": None}  # held-out IoU, or minus the loss without a holdout
    history = []
    for epoch in range(1, config.epochs + 1):
        net.train()
        losses = []
        shuffled = train_index[rng.permutation(len(train_index))]
        for start in range(0, len(shuffled), config.batch_size):
            index = shuffled[start : start + config.batch_size]
            batch, target = images[index], targets[index]
            flip = rng.random(len(index)) < 0.5  # horizontal flips: garments and scenes look alike mirrored
            batch[flip], target[flip] = batch[flip, :, ::-1], target[flip, :, ::-1]
            x = images_to_tensor(batch, mean, std).to(device)
            y = torch.from_numpy(np.ascontiguousarray(target)).float()[:, None].to(device)
            logits = net(x)
            loss = dice(logits, y) + config.bce_weight * bce(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        val_iou = _held_out_iou(net, images[val_index], targets[val_index], mean, std, masker_config.threshold, device) if n_val else None
        score = val_iou if val_iou is not None else -float(np.mean(losses))
        if score > best["score"]:
            best = {"score": score, "epoch": epoch, "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_iou": val_iou}
        history.append(record)
        logger.info("masker epoch %d/%d loss %.4f val IoU %s", epoch, config.epochs, record["loss"], val_iou)
        if progress:
            progress(MaskerEvent(epoch, config.epochs, record["loss"], val_iou, time.perf_counter() - started))
    net.load_state_dict(best["state"])
    details = {"config": asdict(config), "best_epoch": best["epoch"], "history": history, "masks": str(masks.location),
               "mask_format": masks.kind, "seconds": time.perf_counter() - started}
    return _store_masker(db, net.cpu(), masker_config, encoder_sha, best["score"] if n_val else None, len(train_index), n_val, details)


@torch.inference_mode()
def _held_out_iou(net, images, targets, mean, std, threshold, device, batch_size: int = 32) -> float:
    net.eval()
    scores = []
    for start in range(0, len(images), batch_size):
        probabilities = torch.sigmoid(net(images_to_tensor(images[start : start + batch_size], mean, std).to(device))).cpu()[:, 0]
        scores.append(mask_iou(probabilities >= threshold, torch.from_numpy(targets[start : start + batch_size])))
    return float(torch.cat(scores).mean())


# ---- stored maskers ------------------------------------------------------------------------------


def _open(db: Database, name: str, schema: pa.Schema) -> lancedb.table.Table:
    table = db.connection.create_table(name, schema=schema, exist_ok=True)
    schemas.check_compatible(name, table.schema, schema)
    return table


def maskers_dir(db: Database) -> Path:
    return db.local_folder("maskers")


def _store_masker(db: Database, net: torch.nn.Module, config: MaskerConfig, encoder_sha: str, val_iou: float | None,
                  n_train: int, n_val: int, details: dict) -> MaskerRecord:
    """Write the weights (atomically), then the ``maskers`` row (the commit point)."""
    folder = maskers_dir(db)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"masker-{time.time_ns()}.tmp"
    torch.save({"config": asdict(config), "state_dict": net.state_dict()}, tmp)
    sha = file_sha256(tmp)
    masker_id = f"unet-{config.encoder}-{sha[:8]}"
    path = folder / f"{masker_id}.pt"
    tmp.replace(path)
    record = MaskerRecord(
        id=masker_id, architecture="Unet", encoder=config.encoder, encoder_weights_sha256=encoder_sha, weights_path=str(path),
        weights_sha256=sha, image_size=config.image_size, threshold=config.threshold, val_iou=val_iou, train_images=n_train,
        val_images=n_val, details=json.dumps(details, default=str), created_at=utc_now(),
    )
    row = pa.Table.from_pylist([asdict(record)], schema=schemas.MASKERS_SCHEMA)
    _open(db, schemas.MASKERS_TABLE, schemas.MASKERS_SCHEMA).merge_insert("id").when_not_matched_insert_all().execute(row)
    logger.info("stored masker %s (held-out IoU %s)", masker_id, val_iou)
    return record


def maskers_frame(db: Database) -> pl.DataFrame:
    """Stored maskers, newest first."""
    frame = pl.from_arrow(_open(db, schemas.MASKERS_TABLE, schemas.MASKERS_SCHEMA).search().limit(None).to_arrow())
    return frame.sort("created_at", descending=True) if frame.height else frame


def resolve_masker(db: Database, name: str | None = None) -> MaskerRecord:
    """A stored masker by id (or unique id prefix); with no name, the newest."""
    frame = maskers_frame(db)
    known = frame["id"].to_list() if frame.height else []
    if name is None:
        matches = known[:1]
    else:
        matches = [name] if name in known else [k for k in known if k.startswith(name)]
    if len(matches) != 1:
        what = f"masker {name!r} is ambiguous ({matches})" if matches else f"no masker {name!r}" if name else "no masker"
        raise MaskerNotFoundError(f"{what} in database {db.uri}; maskers here: {known or 'none (run lookalike train-masker first)'}")
    return MaskerRecord(**frame.filter(pl.col("id") == matches[0]).row(0, named=True))


def load_masker(db: Database, name: str | None = None, device: str | None = None) -> Masker:
    """A stored masker, ready to predict; its weights file must match the recorded checksum."""
    record = resolve_masker(db, name)
    path = Path(record.weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights of masker {record.id} not found at {path}")
    if file_sha256(path) != record.weights_sha256:
        raise ValueError(f"weights of masker {record.id} at {path} changed since it was stored (checksum differs)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = MaskerConfig(**{**saved["config"], "decoder_channels": tuple(saved["config"]["decoder_channels"]),
                             "mean": tuple(saved["config"]["mean"]), "std": tuple(saved["config"]["std"])})
    net = _unet(config)
    net.load_state_dict(saved["state_dict"])
    return Masker(record.id, net, config, resolve_device(device))


# ---- masked encoding -----------------------------------------------------------------------------


@dataclass
class MaskedEncoder(Encoder):
    """An encoder that masks each image (a stored masker, one apply mode) before its own preprocessing.

    It is also the ingest pipeline's image hook: :meth:`preprocess_measured` returns each image's
    foreground fraction, which :meth:`store_measured` writes to the ``foreground`` table.
    """

    masker: Masker | None = None
    mask_mode: str = "zero"

    def __post_init__(self) -> None:
        if self.masker is None:
            raise ValueError("a masked encoder needs a masker")
        check_mask_mode(self.mask_mode)
        super().__post_init__()

    @classmethod
    def wrap(cls, encoder: Encoder, masker: Masker, mode: str) -> "MaskedEncoder":
        """``encoder`` with masking in front."""
        return cls(name=encoder.name, architecture=encoder.architecture, model=encoder.model, weights_source=encoder.weights_source,
                   weights_sha256=encoder.weights_sha256, data_config=encoder.data_config, device=encoder.device,
                   batch_size=encoder.batch_size, amp=encoder.amp, masker=masker, mask_mode=mode)

    @property
    def masking(self) -> dict[str, str]:
        return {"masker": self.masker.id, "mode": self.mask_mode}

    @property
    def preprocessing(self) -> str:
        # the masking is part of the preprocessing, hence of the fingerprint and the model id
        return json.dumps({**self.data_config, MASK_KEY: self.masking}, sort_keys=True, default=list)

    @property
    def model_id(self) -> str:
        return model_version_id(f"{self.name}+mask", self.fingerprint)

    def preprocess_measured(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        """The masked image's input tensor, and its foreground fraction."""
        mask = self.masker.predict([image])[0]
        return self.transform(apply_mask(image, mask, self.mask_mode)), {"foreground": foreground_fraction(mask)}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess_measured(image)[0]

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Masks predicted a batch at a time, then encoded as :class:`Encoder` does."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            masks = self.masker.predict(chunk)
            chunks.append(self.encode_tensors(torch.stack([self.transform(apply_mask(im, m, self.mask_mode)) for im, m in zip(chunk, masks)])))
        return np.concatenate(chunks)

    def store_measured(self, db: Database, model: ModelRecord, rows: Iterable[dict]) -> None:
        """Write the foreground fraction of freshly ingested rows (each carrying ``measured``)."""
        now = utc_now()
        records = [{"image_id": r["id"], "model_id": model.id, "masker_id": self.masker.id, "mode": self.mask_mode,
                    "fraction": float(r["measured"]["foreground"]), "created_at": now} for r in rows if r.get("measured")]
        if records:
            table = pa.Table.from_pylist(records, schema=schemas.FOREGROUND_SCHEMA)
            _open(db, schemas.FOREGROUND_TABLE, schemas.FOREGROUND_SCHEMA).merge_insert(["image_id", "model_id"]).when_matched_update_all().when_not_matched_insert_all().execute(table)


def foreground_frame(db: Database, model_id: str | None = None) -> pl.DataFrame:
    """Stored foreground fractions, optionally of one model version."""
    query = _open(db, schemas.FOREGROUND_TABLE, schemas.FOREGROUND_SCHEMA).search().limit(None)
    if model_id:
        query = query.where(f"model_id = {sql_quote(model_id)}")
    return pl.from_arrow(query.to_arrow())


def masking_of(model: ModelRecord) -> dict[str, str] | None:
    """The masker and mode a model version's vectors were made with (None for unmasked versions)."""
    try:
        recorded = json.loads(model.preprocessing or "{}")
    except json.JSONDecodeError:
        return None
    return recorded.get(MASK_KEY) if isinstance(recorded, dict) else None


def masked_encoder(encoder: Encoder, db: Database, masker: str, mode: str, device: str | None = None) -> MaskedEncoder:
    """``encoder`` masking with a stored masker in ``mode``."""
    return MaskedEncoder.wrap(encoder, load_masker(db, masker, device or str(encoder.device)), check_mask_mode(mode))


def encoder_for_masked_model(db: Database, model: ModelRecord, device: str | None = None) -> Encoder:
    """The encoder that made a model version's vectors, masking included (heads over masked parents too)."""
    masking = masking_of(model)
    if masking is None:
        return encoder_for_model(db, model, device)
    if model.parent is None:
        weights = model.weights_source if Path(model.weights_source).is_file() else None
        base = create_encoder(EncoderConfig(name=model.encoder, weights=weights, device=device))
        encoder: Encoder = masked_encoder(base, db, masking["masker"], masking["mode"], device)
    else:
        parent = db.resolve_model(model.parent)
        base = encoder_for_masked_model(db, parent, device)
        head_path = Path(model.weights_source)
        if not head_path.is_file():
            raise FileNotFoundError(f"head weights of model {model.id} not found at {head_path}")
        headed = Encoder(name=model.encoder, architecture=base.architecture, model=BackboneWithHead(base.model, load_head(head_path)),
                         weights_source=str(head_path), weights_sha256=head_weights_sha(parent, file_sha256(head_path)),
                         data_config=base.data_config, device=base.device, batch_size=base.batch_size, amp=base.amp)
        encoder = MaskedEncoder.wrap(headed, base.masker, base.mask_mode)
    if encoder.fingerprint != model.fingerprint:
        raise EncoderMismatchError(f"the encoder rebuilt for model {model.id} has fingerprint {encoder.fingerprint}, the table records {model.fingerprint}")
    return encoder


def query_encoder(db: Database, model: ModelRecord, mask: str | None = None, mode: str | None = None, device: str | None = None) -> Encoder | None:
    """The encoder for queries of ``model``: masked as its catalogue was.

    Without ``mask``, a masked model's own masking is used (None = nothing special, the searcher
    builds its encoder). With ``mask``, the queries are masked with it and the searcher refuses them
    unless it is the catalogue's masking.
    """
    if mask is None and mode is None:
        return encoder_for_masked_model(db, model, device) if masking_of(model) else None
    recorded = masking_of(model) or {}
    mask = mask or recorded.get("masker")
    if mask is None:
        raise EncoderMismatchError(f"model {model.id} was made without a mask; a --mask-mode alone cannot apply")
    resolved = resolve_masker(db, mask).id
    if resolved != recorded.get("masker") or (mode or recorded.get("mode")) != recorded.get("mode"):
        raise EncoderMismatchError(
            f"queries masked with {resolved} ({mode or recorded.get('mode', 'zero')}) cannot search model {model.id}, whose catalogue was "
            + (f"masked with {recorded['masker']} ({recorded['mode']})" if recorded else "not masked")
            + ": vectors made under different masking are not comparable"
        )
    return encoder_for_masked_model(db, model, device)

