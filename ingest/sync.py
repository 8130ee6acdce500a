"""``sync``: bring the catalogue in line with a source folder as it is now.

A re-scan ingests new content, takes the classes, splits and metadata the scan gives, gives a moved file
(same content hash) its new path, and removes images whose file under the folder is gone or now holds
other content (a changed file: its new content is ingested as a new image). One writer lock, one report;
every version is brought in step once at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from engine.core.errors import DataError
from engine.core.faults import fault_point
from engine.core.progress import ProgressCallback
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, create_encoder
from engine.media.decode import content_id
from engine.storage.database import Database
from engine.versions.coverage import Coverage
from ingest.pipeline import ingest_locked
from ingest.stages import Collector, IngestConfig, forget_vanished_errors, run_locked, scan_for, storable_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncReport:
    """What a sync found and did."""

    folder: str
    scanned: int
    new: int  # images added (new files, and the new content of changed files)
    changed: int  # files at a stored path whose content changed
    moved: int
    relabelled: int
    resplit: int
    metadata: int
    removed: int  # images whose file is gone (or changed), taken out of the catalogue
    missing_kept: int  # ...kept instead, with keep_missing
    unchanged: int
    errors: int
    seconds: float
    versions: list[Coverage] = field(default_factory=list)


def _gone(path: str, image_id: str) -> bool:
    """Whether the catalogue's file is no longer at ``path`` with the content ``image_id``."""
    try:
        return content_id(Path(path).read_bytes()) != image_id
    except OSError:
        return True


def sync_folder(db: Database, root: Path | str, config: IngestConfig = IngestConfig(), encoder: Encoder | None = None,
                keep_missing: bool = False, progress: ProgressCallback | None = None) -> SyncReport:
    """Re-scan ``root`` and make the catalogue match it (see the module docstring); ``keep_missing`` keeps the
    images whose files are gone. A folder that is gone, or that holds no image files while the catalogue holds
    some from it, is refused before anything is written."""
    started = time.perf_counter()
    root = Path(root).resolve()
    files = scan_for(root, config).files
    prefix = storable_text(str(root)).rstrip("/") + "/"
    found: dict[str, int] = {}

    def stored_under_root() -> pl.DataFrame:
        return db.images_frame(columns=["id", "path"]).filter(pl.col("path").str.starts_with(prefix))

    held = 0 if any(f.error is None for f in files) else stored_under_root().height
    if held:
        raise DataError(f"found no image files under {root}, but the catalogue holds {held} images from it; if the "
                        f"folder is not mounted, mount it; if they are really gone, delete them: lookalike delete --where \"starts_with(path, '{prefix}')\"")

    def remove_gone(collector: Collector) -> None:
        observed_ids = {item.image_id for item in collector.observed}
        observed_paths = {item.path for item in collector.observed}
        stored = stored_under_root()
        candidates = stored.filter(~pl.col("id").is_in(list(observed_ids)))
        gone = [(i, p) for i, p in zip(candidates["id"], candidates["path"]) if _gone(p, i)]
        found["changed"] = sum(1 for _, path in gone if path in observed_paths)
        found["gone"] = len(gone)
        if gone and not keep_missing:
            db.delete_images([image_id for image_id, _ in gone])
            fault_point("sync.removed")
        logger.info("sync %s: %d images gone from their files (%s)", root, len(gone), "kept" if keep_missing else "removed")

    encoder = encoder or create_encoder(EncoderConfig())
    report = run_locked(db, root, lambda: ingest_locked(db, files, root, config, encoder, progress, before_finish=remove_gone))
    forget_vanished_errors(db, root, files)
    gone = found.get("gone", 0)
    changes = report.changes
    result = SyncReport(
        folder=str(root), scanned=report.total, new=report.encoded, changed=found.get("changed", 0), moved=changes.moved,
        relabelled=changes.relabelled, resplit=changes.resplit, metadata=changes.metadata,
        removed=0 if keep_missing else gone, missing_kept=gone if keep_missing else 0,
        unchanged=report.skipped - changes.images, errors=report.errors, seconds=time.perf_counter() - started, versions=report.versions,
    )
    logger.info("sync done: %s", result)
    return result
