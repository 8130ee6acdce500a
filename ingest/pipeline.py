"""Ingest runner: reader -> mapper -> encoder -> writer, streamed with bounded memory.

* reader: :func:`engine.media.scan.scan` lists files in a deterministic order;
* the stages themselves live in :mod:`ingest.stages`, which the Ray runner shares;
* mapper: a thread pool reads, hashes, decodes and preprocesses files (Pillow and the tensor
  transforms release the GIL), running ahead of the encoder by a bounded window;
* encoder: batches of preprocessed tensors go through the model on the main thread;
* writer: one background thread upserts finished batches, keyed by content hash.

Files whose content already has a vector from the model are skipped after hashing, so re-running
an ingest is cheap and an interrupted one resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch

from engine.core.faults import fault_point
from engine.core.progress import ProgressCallback
from engine.core.progress import report as report_progress
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, create_encoder
from engine.media.decode import DecodeError, content_id
from engine.media.scan import SourceFile
from engine.storage.database import Database
from ingest.stages import (  # noqa: F401 - IngestProgress: part of this module's API
    Collector,
    IngestConfig,
    IngestProgress,
    IngestReport,
    Mapped,
    finish,
    forget_vanished_errors,
    map_file,
    ordered_map,
    prepare,
    run_locked,
    scan_for,
)

logger = logging.getLogger(__name__)


def ingest_folder(
    db: Database,
    root: Path | str,
    config: IngestConfig = IngestConfig(),
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest every image under ``root`` into ``db`` with ``encoder`` (default: the default encoder)."""
    root = Path(root).resolve()
    found = scan_for(root, config)
    files = found.files
    report = ingest_files(db, files, root, config, encoder, progress)
    forget_vanished_errors(db, root, files)
    return dataclasses.replace(report, scan=found.summary)


def ingest_files(
    db: Database,
    files: list[SourceFile],
    root: Path | str,
    config: IngestConfig = IngestConfig(),
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest the given files (in the given order); ``root`` is recorded as their source folder."""
    root = Path(root).resolve()
    encoder = encoder or create_encoder(EncoderConfig())
    return run_locked(db, root, lambda: ingest_locked(db, files, root, config, encoder, progress))


def ingest_locked(db: Database, files: list[SourceFile], root: Path, config: IngestConfig, encoder: Encoder, progress: ProgressCallback | None,
                   before_finish: Callable[[Collector], None] | None = None) -> IngestReport:
    """The ingest itself (the caller holds the lock); ``before_finish`` sees the collector after the last write."""
    metadata = prepare(db, config)
    model = db.register_model(encoder)
    known = db.known_image_ids(model)
    collector = Collector(db, model, root, config, len(files), metadata)
    batch: list[Mapped] = []

    def encode_batch() -> None:
        if batch:
            fault_point("ingest.encode")
            vectors = encoder.encode_tensors(torch.stack([item.tensor for item in batch]))
            collector.add_encoded([item.row for item in batch], vectors)
            batch.clear()

    mapper = lambda source: map_file(source, root, encoder, known, config.max_pixels, config.image_hook)  # noqa: E731
    window = max(1, config.prefetch_batches) * encoder.batch_size
    try:
        for mapped in ordered_map(mapper, files, config.decode_workers, window):
            if collector.accept(mapped):
                batch.append(mapped)
                if len(batch) >= encoder.batch_size:
                    encode_batch()
                    report_progress(progress, collector.state.as_progress())
            collector.flush(when_full=True)
        encode_batch()
        collector.flush()
    finally:
        collector.writer.close()
    if before_finish is not None:
        before_finish(collector)
    return finish(db, model, config, collector, progress, str(encoder.device))


def add_to_catalogue(db: Database, path: Path | str, label: str, encoder: Encoder, split: str = "train") -> str:
    """Add one image to the catalogue with ``label`` (relabelling it if it is already stored: a scan that names a
    class gives it), embedded by ``encoder`` and then by every other version; returns its id."""
    path = Path(path).resolve()
    report = ingest_files(db, [SourceFile(path, (label,), split)], path.parent, IngestConfig(optimize=False), encoder)
    if report.errors:
        raise DecodeError(f"{path} could not join the catalogue: {db.errors_frame().filter(pl.col('path') == str(path))['reason'].to_list()}")
    return content_id(path.read_bytes())
