"""Distributed ingest: the local pipeline's stages, spread over a Ray cluster by Ray Data.

The stages are the local pipeline's own code, only placed differently:

* reader: :func:`engine.media.scan.scan` on the driver; the file list becomes a Ray dataset
  (``ray.data.from_items``);
* mapper + encoder: ``map_batches`` over a pool of encoder actors (``ActorPoolStrategy``, one GPU each
  when the cluster has GPUs); each actor runs :func:`ingest.pipeline.map_file` (read, hash, skip known,
  decode, preprocess) on its decode threads and encodes the batch with its own copy of the encoder;
* writer: the driver consumes the results in scan order and hands them to the local pipeline's
  collector and writer (merge_insert keyed by content hash, the errors table, in-run duplicates), then
  runs the same index and maintenance step.

So ids, error rows, idempotence and resumption are those of the local pipeline. The files must be
readable at the same path on every node (a shared file system); the database is best on object storage
(``s3://...``) when the driver is not on a node with a local disk that others can see.
Ray is an optional extra: ``pip install 'lookalike[distributed]'``.

Limit: the ids already embedded go to every actor (a Python set, roughly 100 bytes per image) so that
known files are skipped before decoding; that is fine to a few million images per database.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.core.errors import EncoderMismatchError, IngestError, LookalikeError
from engine.core.progress import ProgressCallback
from engine.core.progress import report as report_progress
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, create_encoder
from engine.media.scan import SourceFile
from engine.storage.database import Database
from ingest.stages import Collector, IngestConfig, IngestReport, finish, forget_vanished_errors, map_file, ordered_map, prepare, run_locked, scan_for

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lookalike[distributed]'"


class RayNotInstalledError(LookalikeError, RuntimeError):
    """``--engine ray`` without Ray installed; the message says how to install it."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide to run a distributed ingest."""

    address: str | None = None  # a running cluster ("auto", "ray://head:10001"); None: the current or a new local one
    workers: int = 2  # encoder actors
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU actors)
    cpus_per_worker: float = 1.0  # also the actor's torch and decode threads


def import_ray():
    """The ``ray`` module, or :class:`RayNotInstalledError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library comes with the ray[data] extra)
    except ImportError as exc:
        raise RayNotInstalledError(f"distributed ingest needs Ray Data, which is not installed: {INSTALL_HINT}") from exc
    return ray


class EncodeFiles:
    """A Ray Data actor: the local mapper and the encoder, on one worker, for batches of files."""

    def __init__(self, encoder_config: EncoderConfig, root: Path, known: set[str], max_pixels: int, threads: int) -> None:
        torch.set_num_threads(threads)  # the actor's CPU slots: no oversubscription
        self.encoder = create_encoder(encoder_config)
        self.root, self.known, self.max_pixels, self.decode_workers = root, known, max_pixels, threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources: list[SourceFile] = [pickle.loads(item) for item in batch["source"]]
        mapper = lambda source: map_file(source, self.root, self.encoder, self.known, self.max_pixels)  # noqa: E731
        mapped = list(ordered_map(mapper, sources, self.decode_workers, len(sources)))
        vectors = np.zeros((len(mapped), self.encoder.dim), np.float32)
        ready = [i for i, item in enumerate(mapped) if item.tensor is not None]
        if ready:
            vectors[ready] = self.encoder.encode_tensors(torch.stack([mapped[i].tensor for i in ready]))
        for item in mapped:
            item.tensor = None  # the tensors stay on the worker; rows and vectors travel
        return {
            "index": batch["index"],
            "mapped": np.array([pickle.dumps(item) for item in mapped], dtype=object),
            "vector": vectors,
            "model_id": np.array([self.encoder.model_id] * len(mapped), dtype=object),
        }


def ingest_folder_ray(
    db: Database,
    root: Path | str,
    config: IngestConfig = IngestConfig(),
    encoder_config: EncoderConfig = EncoderConfig(),
    ray_config: RayConfig = RayConfig(),
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest every image under ``root`` into ``db`` on a Ray cluster; the same rows as :func:`ingest.ingest_folder`."""
    root = Path(root).resolve()
    found = scan_for(root, config)
    files = found.files
    report = ingest_files_ray(db, files, root, config, encoder_config, ray_config, progress)
    forget_vanished_errors(db, root, files)
    return dataclasses.replace(report, scan=found.summary)


def ingest_files_ray(
    db: Database,
    files: list[SourceFile],
    root: Path | str,
    config: IngestConfig = IngestConfig(),
    encoder_config: EncoderConfig = EncoderConfig(),
    ray_config: RayConfig = RayConfig(),
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest the given files (in the given order) on a Ray cluster; ``root`` is recorded as their source."""
    ray = import_ray()
    if config.image_hook is not None:
        raise IngestError("masked ingest (--mask) runs on the local engine only; drop --engine ray or --mask")
    if ray_config.workers < 1:
        raise IngestError(f"--workers must be at least 1, not {ray_config.workers}")
    root = Path(root).resolve()
    encoder = create_encoder(replace(encoder_config, device="cpu"))  # on the driver only for the model's identity
    return run_locked(db, root, lambda: _ingest_on_ray(ray, db, files, root, config, encoder_config, encoder, ray_config, progress))


@contextmanager
def _connected(ray, address: str | None) -> Iterator[None]:
    """Use the running Ray session, else connect to ``address`` (or start a local one) for the block."""
    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _ordered_quiet(ray) -> Iterator[None]:
    """Ray Data in input order (the first of duplicate files wins, as locally), without its progress bars."""
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order, context.enable_progress_bars = True, False
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def _ingest_on_ray(ray, db: Database, files: list[SourceFile], root: Path, config: IngestConfig, encoder_config: EncoderConfig,
                   encoder: Encoder, ray_config: RayConfig, progress: ProgressCallback | None) -> IngestReport:
    metadata = prepare(db, config)
    model = db.register_model(encoder)
    known = db.known_image_ids(model)
    collector = Collector(db, model, root, config, len(files), metadata)
    with _connected(ray, ray_config.address), _ordered_quiet(ray):
        gpus = ray_config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        actor_encoder = replace(encoder_config, device="cuda" if gpus > 0 else "cpu")
        logger.info("ray ingest: %d files, %d workers, %s GPU and %s CPU each", len(files), ray_config.workers, gpus, ray_config.cpus_per_worker)
        try:
            if files:
                items = [{"index": i, "source": pickle.dumps(source)} for i, source in enumerate(files)]
                encoded = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / encoder_config.batch_size))).map_batches(
                    EncodeFiles,
                    fn_constructor_kwargs={
                        "encoder_config": actor_encoder, "root": root, "known": known, "max_pixels": config.max_pixels,
                        "threads": max(1, int(ray_config.cpus_per_worker)),
                    },
                    batch_size=encoder_config.batch_size,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=ray_config.workers),
                    num_cpus=ray_config.cpus_per_worker,
                    num_gpus=gpus,
                )
                for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
                    _collect(collector, batch, model.id)
                    report_progress(progress, collector.state.as_progress())
            collector.flush()
        finally:
            collector.writer.close()
    return finish(db, model, config, collector, progress, str(encoder.device))


def _collect(collector: Collector, batch: dict[str, np.ndarray], model_id: str) -> None:
    """Hand one batch of actor results to the local pipeline's collector, in scan order."""
    strangers = set(batch["model_id"]) - {model_id}
    if strangers:
        raise EncoderMismatchError(f"workers encoded with {sorted(strangers)}, not {model_id}: install the same encoder weights on every node")
    for mapped_bytes, vector in zip(batch["mapped"], batch["vector"]):
        mapped = pickle.loads(mapped_bytes)
        if collector.accept(mapped):
            collector.add_encoded([mapped.row], vector[None, :])
        collector.flush(when_full=True)
