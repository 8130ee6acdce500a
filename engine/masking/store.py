"""Stored maskers: the ``maskers`` table, their weights beside the database, and the foreground fractions
measured at ingest (``foreground`` table)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import lancedb
import polars as pl
import pyarrow as pa
import torch

import schemas
from engine.core.checksums import file_sha256
from engine.core.clock import utc_now
from engine.core.errors import MaskingError, MissingFileError, NotFoundError
from engine.encoders.factory import resolve_device
from engine.masking.unet import Masker, MaskerConfig, unet_from_config
from engine.storage.database import Database, sql_quote

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

class MaskerNotFoundError(NotFoundError):
    """No stored masker matches the name asked for."""


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


# ---- stored maskers ------------------------------------------------------------------------------


def open_table(db: Database, name: str, schema: pa.Schema) -> lancedb.table.Table:
    table = db.table(name, schema)
    schemas.check_compatible(name, table.schema, schema)
    return table


def maskers_dir(db: Database) -> Path:
    return db.local_folder("maskers")


def store_masker(db: Database, net: torch.nn.Module, config: MaskerConfig, encoder_sha: str, val_iou: float | None,
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
    open_table(db, schemas.MASKERS_TABLE, schemas.MASKERS_SCHEMA).merge_insert("id").when_not_matched_insert_all().execute(row)
    logger.info("stored masker %s (held-out IoU %s)", masker_id, val_iou)
    return record


def maskers_frame(db: Database) -> pl.DataFrame:
    """Stored maskers, newest first."""
    frame = pl.from_arrow(open_table(db, schemas.MASKERS_TABLE, schemas.MASKERS_SCHEMA).search().limit(None).to_arrow())
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
    path = db.artifact(record.weights_path)
    if not path.is_file():
        raise MissingFileError(f"weights of masker {record.id} not found at {path}; restore the file or train the masker again")
    if file_sha256(path) != record.weights_sha256:
        raise MaskingError(f"weights of masker {record.id} at {path} changed since it was stored (checksum differs)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = MaskerConfig(**{**saved["config"], "decoder_channels": tuple(saved["config"]["decoder_channels"]),
                             "mean": tuple(saved["config"]["mean"]), "std": tuple(saved["config"]["std"])})
    net = unet_from_config(config)
    net.load_state_dict(saved["state_dict"])
    return Masker(record.id, net, config, resolve_device(device))


def foreground_frame(db: Database, model_id: str | None = None) -> pl.DataFrame:
    """Stored foreground fractions, optionally of one model version."""
    query = open_table(db, schemas.FOREGROUND_TABLE, schemas.FOREGROUND_SCHEMA).search().limit(None)
    if model_id:
        query = query.where(f"model_id = {sql_quote(model_id)}")
    return pl.from_arrow(query.to_arrow())


