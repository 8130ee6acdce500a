"""Training a masker: Dice + BCE on images and their masks through the one epoch loop (checkpoints, resume,
early stopping: :mod:`engine.training.epochs`); the epoch with the best held-out IoU is kept and stored."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.core.errors import TrainingError
from engine.core.progress import ProgressCallback
from engine.encoders.factory import resolve_device
from engine.masking.masks import MaskSource
from engine.masking.modes import mask_image
from engine.masking.store import MaskerRecord, store_masker
from engine.masking.unet import MaskerConfig, build_unet, images_to_tensor
from engine.media.decode import decode_image
from engine.storage.database import Database
from engine.training.epochs import EpochOutcome, EpochPlan, run_epochs

logger = logging.getLogger(__name__)

FLIP_PROBABILITY = 0.5


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
    patience: int | None = None  # epochs without a better held-out IoU before stopping (None: never early)
    seed: int = 0
    device: str | None = None

    def run_id(self, image_paths: Sequence[Path], masks: MaskSource) -> str:
        """Deterministic id of this run: the same configuration on the same images and masks resumes."""
        blob = json.dumps([asdict(self), sorted(Path(p).name for p in image_paths), str(masks.location)], sort_keys=True, default=str)
        return "masker-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


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


class MaskerEpochs:
    """The epochs of a masker: shuffled batches with horizontal flips, Dice + BCE, held-out IoU."""

    name = "masker"

    def __init__(self, config: MaskerTrainConfig, net: torch.nn.Module, masker_config: MaskerConfig, images: np.ndarray, targets: np.ndarray,
                 train_index: np.ndarray, val_index: np.ndarray, device: torch.device) -> None:
        import segmentation_models_pytorch as smp

        self.config, self.network, self.masker_config, self.device = config, net, masker_config, device
        self.images, self.targets, self.train_index, self.val_index = images, targets, train_index, val_index
        self.mean = torch.tensor(masker_config.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(masker_config.std).view(1, 3, 1, 1)
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.bce = smp.losses.SoftBCEWithLogitsLoss()
        net.to(device)
        self.optimizer = torch.optim.AdamW([
            {"params": net.encoder.parameters(), "lr": config.encoder_lr},
            {"params": [p for name, p in net.named_parameters() if not name.startswith("encoder.")], "lr": config.lr},
        ])
        steps = config.epochs * max(1, -(-len(train_index) // config.batch_size))
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=[config.encoder_lr, config.lr], total_steps=max(1, steps))

    def run_epoch(self, epoch: int, rng: np.random.Generator) -> EpochOutcome:
        net, config = self.network, self.config
        net.train()
        losses = []
        shuffled = self.train_index[rng.permutation(len(self.train_index))]
        for start in range(0, len(shuffled), config.batch_size):
            index = shuffled[start : start + config.batch_size]
            batch, target = self.images[index], self.targets[index]
            flip = rng.random(len(index)) < FLIP_PROBABILITY  # garments and scenes look alike mirrored
            batch[flip], target[flip] = batch[flip, :, ::-1], target[flip, :, ::-1]
            x = images_to_tensor(batch, self.mean, self.std).to(self.device)
            y = torch.from_numpy(np.ascontiguousarray(target)).float()[:, None].to(self.device)
            logits = net(x)
            loss = self.dice(logits, y) + config.bce_weight * self.bce(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            losses.append(float(loss.detach()))
        mean_loss = float(np.mean(losses))
        val_iou = _held_out_iou(net, self.images[self.val_index], self.targets[self.val_index], self.mean, self.std,
                                self.masker_config.threshold, self.device) if len(self.val_index) else None
        # without a holdout the lowest training loss is the best epoch
        return EpochOutcome(mean_loss, val_iou if val_iou is not None else -mean_loss, {"val_iou": val_iou})

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state(self, saved: dict) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])

    def describe(self, record: dict) -> str:
        iou = "n/a" if record["val_iou"] is None else f"{record['val_iou']:.4f}"
        return f"loss {record['loss']:.4f}  held-out IoU {iou}  {record['seconds']:.1f}s"


def train_masker(
    db: Database,
    image_paths: Sequence[Path],
    masks: MaskSource,
    config: MaskerTrainConfig = MaskerTrainConfig(),
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MaskerRecord:
    """Train a U-Net on ``image_paths`` and their masks, keep the epoch with the best held-out IoU, store it.

    A run stopped or killed part-way resumes from its last epoch when started again with the same arguments.
    """
    if config.epochs < 1 or config.batch_size < 1:
        raise TrainingError(f"a masker needs at least one epoch and batch size 1, got {config.epochs} epochs, batch size {config.batch_size}")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    net, masker_config, encoder_sha = build_unet(config.masker)
    images, targets = load_training_set(image_paths, masks, masker_config.image_size)
    order = np.random.default_rng(config.seed).permutation(len(images))
    n_val = int(round(config.holdout * len(images))) if len(images) > 1 else 0
    val_index, train_index = order[:n_val], order[n_val:]
    if not len(train_index):
        raise TrainingError(f"nothing left to train on: {len(images)} masks, holdout {config.holdout}")
    task = MaskerEpochs(config, net, masker_config, images, targets, train_index, val_index, device)
    plan = EpochPlan(config.epochs, config.patience or config.epochs, config.seed)
    state = run_epochs(db, config.run_id(image_paths, masks), plan, task, device=device, progress=progress, should_stop=should_stop, started=started)
    history = [{"epoch": h["epoch"], "loss": h["loss"], "val_iou": h["val_iou"]} for h in state["history"]]
    details = {"config": asdict(config), "best_epoch": state["best_epoch"], "history": history, "masks": str(masks.location),
               "mask_format": masks.kind, "seconds": time.perf_counter() - started}
    record = store_masker(db, net.cpu(), masker_config, encoder_sha, state["best_score"] if n_val else None, len(train_index), n_val, details)
    Path(state["checkpoint"]).unlink(missing_ok=True)  # the masker is stored: its run is over
    return record


@torch.inference_mode()
def _held_out_iou(net, images, targets, mean, std, threshold, device, batch_size: int = 32) -> float:
    net.eval()
    scores = []
    for start in range(0, len(images), batch_size):
        probabilities = torch.sigmoid(net(images_to_tensor(images[start : start + batch_size], mean, std).to(device))).cpu()[:, 0]
        scores.append(mask_iou(probabilities >= threshold, torch.from_numpy(targets[start : start + batch_size])))
    return float(torch.cat(scores).mean())


