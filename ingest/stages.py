"""The stages of an ingest, shared by the local runner (``ingest.pipeline``) and the Ray runner
(``ingest.distributed``): the configuration, the mapper (read, hash, decode, preprocess one file), the ordered
bounded map over a thread pool, the collector and writer (upserts keyed by content hash, errors as rows), the
writer lock around a run, and the finish (index, maintenance, report). The reader is
:func:`engine.media.scan.scan_folder`.
"""

from __future__ import annotations

import logging
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from engine.catalogue.edits import Observed, ObservedChanges, add_metadata_columns, apply_observed
from engine.catalogue.metadata import MetadataTable, read_metadata_csv
from engine.core.clock import utc_now
from engine.core.faults import fault_point
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.encoders.factory import Encoder
from engine.media.decode import DEFAULT_MAX_PIXELS, DecodeError, content_id, decode_image
from engine.media.scan import LABEL_FROM, Scan, ScanSummary, SourceFile, scan
from engine.search.disk_index import check_disk_index
from engine.search.searcher import index_folder
from engine.storage.database import Database, ModelRecord
from engine.storage.index import IndexConfig, ensure_index
from engine.storage.lock import DatabaseNotWritableError, storage_failure, writer_lock
from engine.storage.maintenance import MaintenanceConfig, optimize_table
from engine.versions.coverage import Coverage, bring_in_step

logger = logging.getLogger(__name__)

class ImageHook(Protocol):
    """Replaces the encoder's preprocessing in the mapper and stores what it measured per image (e.g. masking)."""

    def preprocess_measured(self, image: Image.Image) -> tuple[torch.Tensor, dict]: ...

    def store_measured(self, db: Database, model: ModelRecord, rows: list[dict]) -> None: ...


@dataclass(frozen=True)
class IngestConfig:
    """How to ingest a folder."""

    labels_csv: Path | None = None
    label_depth: int = LABEL_FROM["top"]  # folder labels: the N-th folder below the root, or -1 for the one a file sits in
    metadata_csv: Path | None = None  # file name -> user columns, filterable in every table
    metadata_types: tuple[tuple[str, str], ...] = ()  # (column, int|float|bool|string) pairs; the rest are inferred
    split: str | None = None
    holdout: float | None = None  # fraction of each class moved to ``holdout_split``
    holdout_split: str = "val"
    seed: int = 0
    decode_workers: int = 2
    prefetch_batches: int = 2  # how far decoding may run ahead of encoding, in batches
    write_every: int = 256  # rows per upsert: fewer, larger commits
    write_every_seconds: float = 30.0  # ...but at least this often, so a kill loses at most this much encoding work
    max_pixels: int = DEFAULT_MAX_PIXELS
    index: IndexConfig = field(default_factory=IndexConfig)
    optimize: bool = True  # after an ingest that wrote rows: compact, update indices, clean up old versions
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    image_hook: ImageHook | None = None  # e.g. engine.masking.encoder.MaskedEncoder: masks images, stores foreground fractions


@dataclass
class IngestProgress:
    """Counts so far; :meth:`as_progress` is the event the progress callback gets after every batch."""

    total: int
    done: int = 0
    encoded: int = 0
    skipped: int = 0
    errors: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.elapsed if self.elapsed > 0 else 0.0

    def as_progress(self) -> Progress:
        detail = f"{self.encoded} new, {self.skipped} known, {self.errors} errors, {self.images_per_second:.1f} img/s"
        metrics = {"encoded": self.encoded, "skipped": self.skipped, "errors": self.errors, "images_per_second": self.images_per_second}
        return Progress("ingest", self.done, self.total, "files", detail, metrics)


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did."""

    model_id: str
    total: int
    encoded: int
    skipped: int
    errors: int
    seconds: float
    changes: ObservedChanges = field(default_factory=ObservedChanges)  # known images the scan relabelled, re-split or found moved
    versions: list[Coverage] = field(default_factory=list)  # every version's coverage after the ingest
    scan: ScanSummary | None = None  # how the folder's files were labelled (None when files were given, not a folder)


def scan_for(root: Path, config: IngestConfig) -> Scan:
    """The reader stage with an ingest's settings: the files under ``root`` and how they were labelled."""
    return scan(root, config.labels_csv, config.split, config.holdout, config.holdout_split, config.seed, config.label_depth)




@dataclass
class Mapped:
    """A file after the mapper: ready to encode, already known, or failed."""

    source: SourceFile
    row: dict | None = None
    tensor: torch.Tensor | None = None
    skipped: bool = False
    error: str | None = None
    image_id: str | None = None  # its content hash, once read


def storable_text(text: str) -> str:
    """Text the tables can hold: bytes of a non-UTF-8 file name (surrogate escapes) become ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def map_file(source: SourceFile, root: Path, encoder: Encoder, known: set[str], max_pixels: int, hook: ImageHook | None = None) -> Mapped:
    if source.error is not None:  # found by the reader already (an unreadable folder)
        return Mapped(source, error=source.error)
    try:
        if not stat.S_ISREG(source.path.stat().st_mode):
            # a named pipe or device with an image suffix would block the reader or never end
            return Mapped(source, error="not a regular file (pipe, socket or device)")
        data = source.path.read_bytes()
    except OSError as exc:
        return Mapped(source, error=f"cannot read file: {exc.strerror or exc}")
    image_id = content_id(data)
    if image_id in known:
        return Mapped(source, skipped=True, image_id=image_id)
    fault_point("ingest.decode")
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
        tensor, measured = hook.preprocess_measured(decoded.image) if hook else (encoder.preprocess(decoded.image), None)
    except DecodeError as exc:
        return Mapped(source, error=str(exc))
    row = {
        "id": image_id,
        "path": storable_text(str(source.path)),
        "label": storable_text(source.labels[0]) if source.labels else None,
        "labels": [storable_text(label) for label in source.labels],
        "split": source.split,
        "width": decoded.width,
        "height": decoded.height,
        "channels": decoded.channels,
        "mode": decoded.mode,
        "format": decoded.format,
        "bytes": len(data),
        "source": storable_text(str(root)),
        "ingested_at": utc_now(),
    }
    if measured:
        row["measured"] = measured  # for the hook's store; the tables' schemas leave the key out
    return Mapped(source, row=row, tensor=tensor, image_id=image_id)


def ordered_map(func: Callable[[SourceFile], Mapped], items: list[SourceFile], workers: int, window: int) -> Iterator[Mapped]:
    """``map`` over a thread pool, in input order, with at most ``window`` items in flight."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque[Future[Mapped]] = deque()
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Writer:
    """Upserts batches on one background thread, in order; at most one batch waits."""

    def __init__(self, db: Database, model: ModelRecord, hook: ImageHook | None = None) -> None:
        self._db, self._model, self._hook = db, model, hook
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._last: Future[None] | None = None

    def submit(self, rows: list[dict], vectors: np.ndarray, errors: list[dict]) -> None:
        self.wait()  # keeps memory bounded and commits ordered
        self._last = self._pool.submit(self._write, rows, vectors, errors)

    def _write(self, rows: list[dict], vectors: np.ndarray, errors: list[dict]) -> None:
        fault_point("ingest.write")
        self._db.write_embedded(self._model, rows, vectors)
        if self._hook:
            self._hook.store_measured(self._db, self._model, rows)
        fault_point("ingest.errors")
        self._db.record_errors(errors)

    def wait(self) -> None:
        if self._last is not None:
            self._last.result()
            self._last = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def run_locked(db: Database, root: Path, run: Callable[[], IngestReport]) -> IngestReport:
    """Run an ingest of ``root`` under the database's writer lock; storage failures become one clear error."""
    with writer_lock(db.uri, f"ingest {storable_text(str(root))}"):
        try:
            return run()
        except (OSError, RuntimeError) as exc:
            reason = None if isinstance(exc, DatabaseNotWritableError) else storage_failure(exc)
            if reason is None:
                raise
            raise DatabaseNotWritableError(
                f"writing to database {db.uri} failed: {reason}. Batches committed before the failure are kept; "
                f"free space or fix permissions, then run the same ingest again to resume"
            ) from exc


class Collector:
    """The writer side of an ingest, shared by the local runner and the Ray runner (ingest.distributed).

    Counts every mapped file, records errors, skips known images and in-run duplicates (the first file
    in scan order wins), and upserts encoded rows every ``write_every`` rows on the background writer.
    """

    def __init__(self, db: Database, model: ModelRecord, root: Path, config: IngestConfig, total: int, metadata: MetadataTable | None = None) -> None:
        self.model, self.root, self.config, self.metadata = model, root, config, metadata
        self.observed: list[Observed] = []  # every file read whose content is (or now will be) in the catalogue
        self.state = IngestProgress(total=total)
        self.writer = Writer(db, model, config.image_hook)
        self.pending_rows: list[dict] = []
        self.pending_vectors: list[np.ndarray] = []
        self.pending_errors: list[dict] = []
        self.seen_in_run: set[str] = set()
        self.last_flush = time.perf_counter()

    def accept(self, mapped: Mapped) -> bool:
        """Count one mapped file; True when it is new and must be encoded and written."""
        self.state.done += 1
        if mapped.error is not None:
            self.state.errors += 1
            logger.warning("skipping %s: %s", mapped.source.path, mapped.error)
            self.pending_errors.append({"path": storable_text(str(mapped.source.path)), "reason": mapped.error, "source": storable_text(str(self.root)), "when": utc_now()})
            return False
        user = self.metadata.values_for(mapped.source.path, self.root) if self.metadata else None
        self.observed.append(Observed(mapped.image_id, storable_text(str(mapped.source.path)), storable_text(str(self.root)),
                                      tuple(storable_text(label) for label in mapped.source.labels), mapped.source.split, user))
        if mapped.row is not None and user:
            mapped.row.update(user)
        if mapped.skipped or mapped.row["id"] in self.seen_in_run:
            self.state.skipped += 1  # already embedded, or a duplicate of a file earlier in this run
            return False
        self.seen_in_run.add(mapped.row["id"])
        return True

    def add_encoded(self, rows: list[dict], vectors: np.ndarray) -> None:
        self.pending_rows.extend(rows)
        self.pending_vectors.append(vectors)
        self.state.encoded += len(rows)

    def flush(self, when_full: bool = False) -> None:
        """Hand pending rows and errors to the writer (with ``when_full``, only once ``write_every`` are pending
        or ``write_every_seconds`` have passed since the last hand-over)."""
        pending = len(self.pending_rows) + len(self.pending_errors)
        due = len(self.pending_rows) and time.perf_counter() - self.last_flush >= self.config.write_every_seconds
        if pending and (not when_full or pending >= self.config.write_every or due):
            vectors = np.concatenate(self.pending_vectors) if self.pending_vectors else np.zeros((0, self.model.dim), np.float32)
            self.writer.submit(list(self.pending_rows), vectors, list(self.pending_errors))
            self.pending_rows.clear(), self.pending_vectors.clear(), self.pending_errors.clear()
            self.last_flush = time.perf_counter()


def forget_vanished_errors(db: Database, root: Path, files: list[SourceFile]) -> int:
    """Error rows of files under ``root`` that a new scan of it no longer finds (deleted or renamed) are dropped."""
    errors = db.errors_frame()
    if not errors.height:
        return 0
    scanned = {storable_text(str(f.path)) for f in files}
    source = storable_text(str(root))
    vanished = [path for path, where in zip(errors["path"], errors["source"]) if where == source and path not in scanned]
    db.clear_errors(vanished)
    if vanished:
        logger.info("forgot %d error rows of files no longer under %s", len(vanished), root)
    return len(vanished)


def maintenance_due(table) -> bool:  # noqa: ANN001 - a LanceDB table
    """Whether a table holds several small fragments that compaction would merge."""
    return table.stats()["fragment_stats"]["num_small_fragments"] > 1


def prepare(db: Database, config: IngestConfig) -> MetadataTable | None:
    """Before the first write (under the lock): the metadata CSV read and its columns added to every table."""
    if config.metadata_csv is None:
        return None
    metadata = read_metadata_csv(config.metadata_csv, dict(config.metadata_types))
    add_metadata_columns(db, metadata.fields)
    return metadata


def finish(db: Database, model: ModelRecord, config: IngestConfig, collector: Collector, progress: ProgressCallback | None,
           device: str | None = None) -> IngestReport:
    """After the last write: what the scan said of known images, the ANN index, table maintenance, every other
    version brought in step, the report."""
    state = collector.state
    report_progress(progress, state.as_progress())
    changes = apply_observed(db, collector.observed)
    fault_point("ingest.observed")
    table = db.embeddings(model)
    fault_point("ingest.index")
    if ensure_index(table, config.index):
        check_disk_index(table, index_folder(db, model))  # measures the new index and chooses its refine factor
    # after new rows, or when a run killed during maintenance left small fragments behind (its resume encodes none)
    if config.optimize and (state.encoded or maintenance_due(table)):
        for maintained in (db.images, table, db.errors):
            fault_point("ingest.optimize")
            optimize_table(maintained, config.maintenance)
    fault_point("ingest.versions")
    versions = bring_in_step(db, progress=progress, device=device)
    fault_point("ingest.done")
    report = IngestReport(model.id, state.total, state.encoded, state.skipped, state.errors, state.elapsed, changes, versions)
    logger.info("ingest done: %s", report)
    return report
