"""Regime ``head``: a projection head trained on the parent's stored features (no image decoded again); the new
version's vectors are the head applied to the stored vectors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from engine.core.errors import TrainingError
from engine.core.progress import ProgressCallback
from engine.encoders.factory import resolve_device
from engine.encoders.heads import ProjectionHead, embed_features, head_weights_sha, save_head
from engine.storage.database import Database, ModelRecord
from engine.training.config import TrainConfig
from engine.training.loop import FeatureData, LoopParts, TrainResult, class_targets, fit, load_features, publish_version
from engine.training.methods import create_loss
from engine.training.registry import METHODS, register_regime
from engine.versions.trained import heads_dir

logger = logging.getLogger(__name__)


@register_regime("head", accepts_images=False, description="a projection head on the parent's stored features (fast)")
def train_head(
    db: Database,
    parent: ModelRecord,
    config: TrainConfig = TrainConfig(),
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a head on ``parent``'s stored features and write it as a new model version with embeddings."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    vectors, labels = load_features(db, parent, config.catalogue_where)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TrainingError(f"training needs at least 2 labelled classes in {config.catalogue_where!r}, found {len(classes)}")
    if config.finetune.consistency_weight and (config.finetune.unlabelled_dir or config.finetune.unlabelled_where):
        raise TrainingError("consistency regularisation needs augmented images: use the 'finetune' regime")
    _, targets = class_targets(labels)

    head = ProjectionHead(parent.dim, config.head).to(device)
    objective = create_loss(config.method, config, len(classes), config.head.out_dim)
    if objective.needs_images:
        raise TrainingError(f"method {config.method!r} transforms images; the 'head' regime trains on stored features: "
                         f"use the 'finetune' regime, or one of {[m for m in METHODS.names() if not create_loss(m, config, 2, 8).needs_images]}")
    objective.to(device)
    groups = [{"params": list(head.parameters()), "lr": config.lr}]
    objective_params = list(objective.parameters())
    if objective_params:
        groups.append({"params": objective_params, "lr": config.loss_lr})
    parts = LoopParts(head, objective, groups, FeatureData(vectors, labels, targets, device), device)
    run_id = config.run_id(parent)
    state = fit(db, run_id, config, parts, started, progress, should_stop)

    name = f"{parent.encoder}+{config.method}"
    path = heads_dir(db) / f"{name}-{run_id}.pt"
    head = head.cpu()
    weights_sha = head_weights_sha(parent.weights_sha256, save_head(head, path))
    data = {"images": len(labels), "classes": len(classes), "where": config.catalogue_where}
    model = publish_version(db, parent, kind="head", name=name, config=config, run_id=run_id, state=state, data=data,
                            architecture=parent.architecture, weights_path=path, weights_sha=weights_sha,
                            dim=config.head.out_dim, preprocessing=parent.preprocessing,
                            write_embeddings=lambda record: reembed(db, parent, record, head))
    return TrainResult(model, run_id, state["epoch"], state["best_epoch"], state["best_map5"], state["history"], time.perf_counter() - started)


def reembed(db: Database, parent: ModelRecord, model: ModelRecord, head: ProjectionHead, batch_rows: int = 8192) -> int:
    """Apply ``head`` to every stored vector of ``parent`` and write them as ``model``'s embeddings."""
    source = db.embeddings(parent)
    columns = ["image_id", "vector", *db.metadata_columns()]
    table = source.search().select(columns).limit(None).to_arrow()
    head.eval()
    written = 0
    for start in range(0, table.num_rows, batch_rows):
        chunk = table.slice(start, batch_rows)
        vector_column = chunk.column("vector").combine_chunks()
        features = torch.from_numpy(vector_column.flatten().to_numpy(zero_copy_only=False).reshape(-1, parent.dim).astype(np.float32))
        vectors = embed_features(head, features)
        db.write_vectors(model, chunk.column("image_id"), chunk, vectors)
        written += chunk.num_rows
    return written
