"""Regime ``finetune``: train the backbone's last blocks (or LoRA adapters) and a head on augmented images.

Images are decoded from their stored paths (``images`` table, filtered by ``catalogue_where``). The
backbone is the parent model's (a registered encoder, a timm architecture with local weights, or an earlier
fine-tuned version); timm's own layer grouping (``group_matcher``) says what its blocks are: the last
``unfreeze_blocks`` of them learn with ``backbone_lr``, everything before stays frozen (batch norms
included, whose running statistics do not move). With ``lora``, peft adapters on the linear layers of
those blocks learn instead, and are merged into the weights before publishing, so a published version is
a plain timm state dict plus head. The loop, methods, checkpoints and publishing are those of
``engine.training.loop``; afterwards the whole catalogue is re-embedded by the new version's own encoder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from timm.data import resolve_model_data_config
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine.core.clock import utc_now
from engine.core.errors import MissingFileError, TrainingError
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.encoders.factory import Encoder, resolve_device
from engine.encoders.heads import BackboneWithHead, ProjectionHead, save_finetuned
from engine.media.decode import DecodeError, content_id, decode_image
from engine.media.scan import scan_folder
from engine.search.disk_index import check_disk_index
from engine.search.searcher import index_folder
from engine.storage.database import Database, ModelRecord
from engine.storage.index import ensure_index
from engine.training.augment import Transform, create_augmentation
from engine.training.config import FinetuneConfig, TrainConfig
from engine.training.loop import Batch, LoopParts, TrainingData, TrainResult, class_targets, fit, publish_version
from engine.training.methods import Objective, create_loss
from engine.training.registry import register_regime
from engine.training.selfsupervised import consistency_loss
from engine.versions import check_fingerprint, encoder_for_model
from engine.versions.trained import finetuned_dir

logger = logging.getLogger(__name__)


# ---- which weights learn -------------------------------------------------------------------------


def backbone_blocks(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone's blocks in depth order, after the stem, by timm's own fine-grained
    layer grouping (the final norm / head convolution belongs to the last block)."""
    if not hasattr(backbone, "group_matcher"):
        raise TrainingError(f"{type(backbone).__name__} has no timm layer grouping (group_matcher): fine-tuning needs a timm backbone")
    groups = group_parameters(backbone, backbone.group_matcher(coarse=False))
    return [groups[key] for key in sorted(groups)][1:]


def _module_names(parameter_names: Iterable[str]) -> set[str]:
    return {name.rpartition(".")[0] for name in parameter_names}


def prepare_backbone(backbone: nn.Module, config: FinetuneConfig) -> tuple[nn.Module, list[nn.Parameter]]:
    """Freeze the backbone but its last ``unfreeze_blocks`` blocks (or put LoRA adapters on their linear
    layers); returns the backbone to train (peft-wrapped with LoRA) and its trainable parameters."""
    blocks = backbone_blocks(backbone)
    if not 0 <= config.unfreeze_blocks <= len(blocks):
        raise TrainingError(f"unfreeze_blocks must be between 0 and {len(blocks)} (the blocks of this backbone), got {config.unfreeze_blocks}")
    selected = {name for block in blocks[len(blocks) - config.unfreeze_blocks :] for name in block}
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    if not config.lora:
        trainable = [p for name, p in backbone.named_parameters() if name in selected]
        for parameter in trainable:
            parameter.requires_grad_(True)
        return backbone, trainable
    modules = dict(backbone.named_modules())
    targets = sorted(name for name in _module_names(selected) if isinstance(modules.get(name), nn.Linear))
    if not targets:
        raise TrainingError(f"LoRA adapts linear layers (attention and MLP of ViT backbones); the last {config.unfreeze_blocks} blocks of "
                         f"{type(backbone).__name__} have none: fine-tune its blocks without LoRA")
    from peft import LoraConfig, get_peft_model  # heavy import, only when asked for

    wrapped = get_peft_model(backbone, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=targets))
    trainable = [p for name, p in wrapped.named_parameters() if "lora_" in name]
    for parameter in wrapped.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    return wrapped, trainable


def merged_backbone(backbone: nn.Module) -> nn.Module:
    """A plain timm backbone: LoRA adapters merged into the weights they adapt."""
    return backbone.merge_and_unload() if hasattr(backbone, "merge_and_unload") else backbone


def keep_frozen_in_eval(backbone: nn.Module) -> Callable[[nn.Module], None]:
    """Train mode for the network, but eval mode for backbone modules whose own weights are all frozen, so
    that frozen batch norms use (and keep) their running statistics."""
    frozen = [m for m in backbone.modules() if (own := list(m.parameters(recurse=False))) and not any(p.requires_grad for p in own)]

    def apply(network: nn.Module) -> None:
        network.train()
        for module in frozen:
            module.eval()

    return apply


# ---- images --------------------------------------------------------------------------------------


def load_rgb(path: str) -> Image.Image:
    return decode_image(Path(path).read_bytes()).image


class ImageViews(Dataset):
    """Images decoded from paths, each as one tensor per transform, with its row index."""

    def __init__(self, paths: list[str], transforms: list[Transform]) -> None:
        self.paths, self.transforms = paths, transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        image = load_rgb(self.paths[index])
        return [transform(image) for transform in self.transforms], index


def _view_presets(objective: Objective, config: FinetuneConfig) -> list[str]:
    roles = {"train": config.augment, "weak": config.weak_augment, "strong": config.strong_augment}
    return [roles.get(view, view) for view in objective.views]


class EpochBatches:
    """A batch sampler whose batches the loop sets each epoch: the loaders (and their worker processes)
    live for the whole run, while the loop still decides every epoch's order."""

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)


class ImageData(TrainingData):
    """Regime ``finetune``: catalogue images with the objective's augmented views, unlabelled images with
    weak and strong views, and the eval preprocessing for validation.

    Decoding runs in ``workers`` processes started once per run (forked before any database write of the
    run is in flight); their augmentation seeds derive from the run's seed.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, objective: Objective, data_config: dict, config: TrainConfig,
                 device: torch.device, amp: bool, unlabelled_paths: list[str]) -> None:
        ft = config.finetune
        self.labels, self.device, self.amp, self.config = labels, device, amp, config
        _, targets = class_targets(labels)
        self.targets = torch.from_numpy(targets)
        views = [create_augmentation(name, data_config, ft.image_size) for name in _view_presets(objective, ft)]
        self.train_set = ImageViews(paths, views)
        self.eval_set = ImageViews(paths, [create_augmentation("eval", data_config)])
        pair = [create_augmentation(ft.weak_augment, data_config, ft.image_size), create_augmentation(ft.strong_augment, data_config, ft.image_size)]
        self.unlabelled_set = ImageViews(unlabelled_paths, pair) if unlabelled_paths else None
        self._train_batches = EpochBatches()
        self._loaders: dict[str, DataLoader] = {}
        self._unlabelled_stream: Iterator[list[torch.Tensor]] | None = None

    def _loader(self, role: str, dataset: Dataset, **options) -> DataLoader:
        if role not in self._loaders:
            workers = self.config.finetune.workers
            generator = torch.Generator().manual_seed(self.config.seed * 100_003 + len(self._loaders))  # seeds workers and shuffling
            self._loaders[role] = DataLoader(dataset, num_workers=workers, generator=generator, pin_memory=self.device.type == "cuda",
                                             persistent_workers=workers > 0, prefetch_factor=4 if workers else None, **options)
        return self._loaders[role]

    def _unlabelled(self, batch_size: int) -> Iterator[list[torch.Tensor]]:
        loader = self._loader("unlabelled", self.unlabelled_set, batch_size=batch_size, shuffle=True, drop_last=len(self.unlabelled_set) > batch_size)
        while True:  # as many unlabelled batches as labelled ones, reshuffled each pass
            for views, _ in loader:
                yield views

    def batches(self, order: np.ndarray, batch_size: int, epoch: int) -> Iterable[Batch]:
        self._train_batches.blocks = [block.tolist() for start in range(0, len(order), batch_size) if len(block := order[start : start + batch_size]) >= 2]
        if self.unlabelled_set is not None and self._unlabelled_stream is None:
            self._unlabelled_stream = self._unlabelled(batch_size)
        unlabelled = self._unlabelled_stream
        for views, index in self._loader("train", self.train_set, batch_sampler=self._train_batches):
            pair = None
            if unlabelled is not None:
                weak, strong = next(unlabelled)
                pair = (weak.to(self.device, non_blocking=True), strong.to(self.device, non_blocking=True))
            yield Batch([v.to(self.device, non_blocking=True) for v in views], self.targets[index].to(self.device), pair)

    def embed(self, network: nn.Module) -> np.ndarray:
        """Embeddings of the labelled rows (the ones validation uses; unlabelled rows stay zero)."""
        labelled = [i for i, label in enumerate(self.labels) if label is not None]
        out = None
        loader = self._loader("eval", self.eval_set, batch_size=self.config.finetune.embed_batch_size, sampler=labelled)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda"):
            for (images,), index in loader:
                vectors = nn.functional.normalize(network(images.to(self.device, non_blocking=True)).float(), dim=1).cpu().numpy()
                if out is None:
                    out = np.zeros((len(self.labels), vectors.shape[1]), np.float32)
                out[index.numpy()] = vectors
        return out

    def close(self) -> None:
        """End the decoding processes."""
        self._unlabelled_stream = None
        self._loaders.clear()  # persistent workers stop when their loaders' iterators are collected


# ---- re-embedding the catalogue ------------------------------------------------------------------


def _preprocessed(image_id: str, path: str, encoder: Encoder) -> torch.Tensor | str:
    """The encoder's input tensor of a stored image, or why it cannot be made."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    if content_id(data) != image_id:
        return "file content changed since it was ingested"
    try:
        return encoder.preprocess(decode_image(data).image)
    except DecodeError as exc:
        return str(exc)


def reembed_images(db: Database, model: ModelRecord, encoder: Encoder, workers: int = 2, chunk_rows: int = 256,
                   progress: ProgressCallback | None = None) -> int:
    """Embed every stored image with ``encoder`` (decoded from its path) as ``model``'s vectors.

    Images whose file is gone or changed are recorded in ``ingest_errors`` and left out; returns the
    number of vectors written.
    """
    check_fingerprint(model, encoder)
    images = db.images.search().select(["id", *db.metadata_columns()]).limit(None).to_arrow()
    written = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="reembed") as pool:
        for start in range(0, images.num_rows, chunk_rows):
            chunk = images.slice(start, chunk_rows)
            ids, paths = chunk.column("id").to_pylist(), chunk.column("path").to_pylist()
            prepared = list(pool.map(lambda item: _preprocessed(item[0], item[1], encoder), zip(ids, paths)))
            good = [i for i, item in enumerate(prepared) if isinstance(item, torch.Tensor)]
            failed = [{"path": paths[i], "reason": f"re-embedding for model {model.id}: {prepared[i]}", "source": chunk.column("source")[i].as_py(), "when": utc_now()}
                      for i in range(len(prepared)) if i not in set(good)]
            if failed:
                logger.warning("%d images could not be re-embedded, e.g. %s: %s", len(failed), failed[0]["path"], failed[0]["reason"])
                db.record_errors(failed)
            if good:
                tensors = torch.stack([prepared[i] for i in good])
                vectors = np.concatenate([encoder.encode_tensors(tensors[s : s + encoder.batch_size]) for s in range(0, len(good), encoder.batch_size)])
                kept = chunk.take(pa.array(good))
                db.write_vectors(model, kept.column("id"), kept, vectors)
                written += len(good)
            report_progress(progress, Progress("embed", min(start + chunk_rows, images.num_rows), images.num_rows, "images", f"re-embedding for {model.id}"))
    table = db.embeddings(model)
    if ensure_index(table):
        check_disk_index(table, index_folder(db, model))  # measures the new index and chooses its refine factor
    return written


# ---- the regime ----------------------------------------------------------------------------------


def _parent_backbone(db: Database, parent: ModelRecord) -> tuple[nn.Module, str]:
    """The parent's backbone (without any head it carries) and its timm architecture."""
    encoder = encoder_for_model(db, parent, "cpu")
    model = encoder.model.backbone if isinstance(encoder.model, BackboneWithHead) else encoder.model
    return model, encoder.architecture


def _unlabelled_paths(db: Database, config: FinetuneConfig) -> list[str]:
    if config.unlabelled_dir and config.unlabelled_where:
        raise TrainingError("give unlabelled images as a folder or as a filter over stored images, not both")
    if config.unlabelled_dir:
        paths = [str(f.path) for f in scan_folder(Path(config.unlabelled_dir)) if f.error is None]
    elif config.unlabelled_where:
        paths = db.images_frame(where=config.unlabelled_where, columns=["path"])["path"].to_list()
    else:
        paths = []
    source = config.unlabelled_dir or config.unlabelled_where
    if source and not paths:
        raise TrainingError(f"no unlabelled images in {source!r}")
    if paths and config.consistency_weight <= 0:
        raise TrainingError("unlabelled images are used by consistency regularisation: give a consistency weight > 0")
    if config.consistency_weight > 0 and not paths:
        raise TrainingError("consistency regularisation needs unlabelled images (a folder, or a filter over stored images)")
    return paths


def _check_files(paths: list[str]) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} of {len(paths)} training images are missing on disk, e.g. {missing[:3]}; "
                                "restore them or narrow --catalogue-where")


@register_regime("finetune", accepts_images=True, description="the last backbone blocks (or LoRA adapters) and a head, on augmented images")
def finetune(db: Database, parent: ModelRecord, config: TrainConfig = TrainConfig(regime="finetune"),
             progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Fine-tune ``parent``'s backbone and a head on the catalogue's images; publish and re-embed everything."""
    started = time.perf_counter()
    ft = config.finetune
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rows = db.images_frame(where=config.catalogue_where, columns=["id", "path", "label"])
    if rows.height == 0:
        raise TrainingError(f"no stored images match {config.catalogue_where!r}")
    paths = rows["path"].to_list()
    labels = np.asarray(rows["label"].to_list(), dtype=object)
    _check_files(paths)
    unlabelled = _unlabelled_paths(db, ft)
    _check_files(unlabelled)
    classes, _ = class_targets(labels)

    backbone, architecture = _parent_backbone(db, parent)
    data_config = dict(resolve_model_data_config(backbone))
    head = ProjectionHead(int(backbone.num_features), config.head)
    objective = create_loss(config.method, config, len(classes), config.head.out_dim)
    if objective.needs_labels and len(classes) < 2:
        raise TrainingError(f"method {config.method!r} needs at least 2 labelled classes in {config.catalogue_where!r}, found {len(classes)}; "
                         "for images without labels use simsiam or rotation")
    train_mode_backbone, backbone_params = prepare_backbone(backbone, ft)
    network = BackboneWithHead(train_mode_backbone, head).to(device)
    objective.to(device)
    groups = [{"params": list(head.parameters()), "lr": config.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": ft.backbone_lr})
    if objective_params := list(objective.parameters()):
        groups.append({"params": objective_params, "lr": config.loss_lr})
    data = ImageData(paths, labels, objective, data_config, config, device, ft.amp, unlabelled)
    parts = LoopParts(network, objective, groups, data, device, amp=ft.amp, consistency=consistency_loss if unlabelled else None,
                      consistency_weight=ft.consistency_weight, train_mode=keep_frozen_in_eval(train_mode_backbone))
    run_id = config.run_id(parent)
    logger.info("fine-tuning %s: %d images, %d classes, %d trainable backbone tensors, run %s", parent.id, len(paths), len(classes), len(backbone_params), run_id)
    try:
        state = fit(db, run_id, config, parts, started, progress, should_stop)
    finally:
        data.close()

    plain = merged_backbone(network.backbone).cpu()
    head = network.head.cpu()
    name = f"{parent.encoder}+{'lora' if ft.lora else 'ft'}-{config.method}"
    path = finetuned_dir(db) / f"{name}-{run_id}.pt"
    weights_sha = save_finetuned(architecture, plain, head, path)
    summary = {"images": len(paths), "classes": len(classes), "where": config.catalogue_where, "unlabelled": len(unlabelled),
               "trainable_backbone_parameters": int(sum(p.numel() for p in backbone_params))}

    def write_embeddings(record: ModelRecord) -> int:
        encoder = encoder_for_model(db, record, config.device)  # the encoder queries will get, rebuilt from the file
        logger.info("re-embedding the catalogue with %s", record.id)
        return reembed_images(db, record, encoder, workers=max(1, ft.workers))

    model = publish_version(db, parent, kind="finetuned", name=name, config=config, run_id=run_id, state=state, data=summary,
                            architecture=architecture, weights_path=path, weights_sha=weights_sha, dim=config.head.out_dim,
                            preprocessing=json.dumps(data_config, sort_keys=True, default=list), write_embeddings=write_embeddings)
    return TrainResult(model, run_id, state["epoch"], state["best_epoch"], state["best_map5"], state["history"], time.perf_counter() - started)
