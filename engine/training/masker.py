"""Training a masker: Dice + BCE on images and their masks, the epoch with the best held-out IoU kept and stored."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.core.errors import TrainingError
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.encoders.factory import resolve_device
from engine.masking.masks import MaskSource
from engine.masking.modes import mask_image
from engine.masking.store import MaskerRecord, store_masker
from engine.masking.unet import MaskerConfig, build_unet, images_to_tensor
from engine.media.decode import decode_image
from engine.storage.database import Database

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

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


def load_training_set(image_paths: Sequence[Path], masks: MaskSource, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and masks (bool NHW) resized to ``side``; a mask of the wrong size is an error."""
    images = np.zeros((len(image_paths), side, side, 3), np.uint8)
    targets = np.zeros((len(image_paths), side, side), bool)
    for i, path in enumerate(image_paths):
        image = decode_image(Path(path).read_bytes()).image
        mask = masks.mask(Path(path).name)
        if mask.shape != (image.height, image.width):
            raise TrainingError(f"the mask of {path} is {mask.shape[1]}x{mask.shape[0]}, the image is {image.width}x{image.height}")
        images[i] = np.asarray(image.resize((side, side), Image.BILINEAR))
        targets[i] = np.asarray(mask_image(mask).resize((side, side), Image.NEAREST)) > 0
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
    progress: ProgressCallback | None = None,
) -> MaskerRecord:
    """Train a U-Net on ``image_paths`` and their masks, keep the epoch with the best held-out IoU, store it."""
    import segmentation_models_pytorch as smp

    if config.epochs < 1 or config.batch_size < 1:
        raise TrainingError(f"a masker needs at least one epoch and batch size 1, got {config.epochs} epochs, batch size {config.batch_size}")
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
        raise TrainingError(f"nothing left to train on: {len(images)} masks, holdout {config.holdout}")
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
        figures = {**record, "seconds": time.perf_counter() - started}
        iou = "n/a" if val_iou is None else f"{val_iou:.4f}"
        report_progress(progress, Progress("masker", epoch, config.epochs, "epochs", f"loss {record['loss']:.4f}  val IoU {iou}  {figures['seconds']:.1f}s", figures))
    net.load_state_dict(best["state"])
    details = {"config": asdict(config), "best_epoch": best["epoch"], "history": history, "masks": str(masks.location),
               "mask_format": masks.kind, "seconds": time.perf_counter() - started}
    return store_masker(db, net.cpu(), masker_config, encoder_sha, best["score"] if n_val else None, len(train_index), n_val, details)


@torch.inference_mode()
def _held_out_iou(net, images, targets, mean, std, threshold, device, batch_size: int = 32) -> float:
    net.eval()
    scores = []
    for start in range(0, len(images), batch_size):
        probabilities = torch.sigmoid(net(images_to_tensor(images[start : start + batch_size], mean, std).to(device))).cpu()[:, 0]
        scores.append(mask_iou(probabilities >= threshold, torch.from_numpy(targets[start : start + batch_size])))
    return float(torch.cat(scores).mean())


