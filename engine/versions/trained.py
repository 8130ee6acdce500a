"""Trained versions: a projection head on the parent's features (``head``), and a fine-tuned backbone with
its head stored as one network (``finetuned``). Both files live beside the database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from timm.data import resolve_model_data_config

from engine.core.checksums import file_sha256
from engine.core.errors import MissingFileError
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, resolve_device
from engine.encoders.heads import BackboneWithHead, create_backbone, embed_features, head_from_saved, head_weights_sha, load_finetuned_file, load_head
from engine.storage.database import Database, ModelRecord, stored_vectors
from engine.versions.kinds import BuildContext, EmbedsFiles, SingleParent, register_kind

HEADS_FOLDER = "heads"
FINETUNED_FOLDER = "finetuned"


def heads_dir(db: Database) -> Path:
    return db.local_folder(HEADS_FOLDER)


def finetuned_dir(db: Database) -> Path:
    return db.local_folder(FINETUNED_FOLDER)


def weights_file(db: Database, record: ModelRecord) -> Path:
    path = db.artifact(record.weights_source)
    if not path.is_file():
        raise MissingFileError(f"weights of model {record.id} not found at {path}; restore the file or publish the version again")
    return path


@register_kind("head")
class HeadKind(SingleParent):
    """A projection head trained on the parent's stored features; the parent's encoder with the head appended."""

    def build(self, context: BuildContext, record: ModelRecord) -> Encoder:
        path = weights_file(context.db, record)
        parent = context.db.resolve_model(record.parent)
        base = context.encoder_of(parent)
        return base.derive(name=record.encoder, model=BackboneWithHead(base.model, load_head(path)), weights_source=str(path),
                           weights_sha256=head_weights_sha(parent.weights_sha256, file_sha256(path)))

    def embed_rows(self, context: BuildContext, record: ModelRecord, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """The head applied to the parent's stored vectors of the rows (no image is decoded)."""
        parent = context.db.resolve_model(record.parent)
        ids = rows.column("image_id").to_pylist()
        stored = stored_vectors(context.db, parent, ids)
        kept = [i for i, image_id in enumerate(ids) if image_id in stored]
        if not kept:
            return rows.slice(0, 0), np.zeros((0, record.dim), np.float32)
        features = torch.from_numpy(np.stack([stored[ids[i]] for i in kept]))
        return rows.take(pa.array(kept, pa.int64())), embed_features(load_head(weights_file(context.db, record)), features)


@register_kind("finetuned")
class FinetunedKind(EmbedsFiles, SingleParent):
    """A backbone fine-tuned with a head, stored whole (LoRA adapters merged)."""

    def build(self, context: BuildContext, record: ModelRecord) -> Encoder:
        path = weights_file(context.db, record)
        saved = load_finetuned_file(path)
        backbone = create_backbone(saved["architecture"])
        backbone.load_state_dict(saved["backbone"], strict=True)
        defaults = EncoderConfig()
        return Encoder(
            name=record.encoder, architecture=saved["architecture"], model=BackboneWithHead(backbone, head_from_saved(saved["head"])),
            weights_source=str(path), weights_sha256=file_sha256(path), data_config=dict(resolve_model_data_config(backbone)),
            device=resolve_device(context.device), batch_size=defaults.batch_size, amp=defaults.amp,
        )
