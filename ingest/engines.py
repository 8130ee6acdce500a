"""Ingest engines: where the pipeline's stages run (``local`` threads, or a ``ray`` cluster), by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.progress import ProgressCallback
from engine.core.registry import Registry
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, create_encoder
from engine.storage.database import Database
from ingest.distributed import RayConfig, ingest_folder_ray
from ingest.pipeline import IngestConfig, IngestReport, ingest_folder


@dataclass(frozen=True)
class IngestJob:
    """One folder to ingest, and everything an engine may need to do it."""

    db: Database
    root: Path
    config: IngestConfig = field(default_factory=IngestConfig)
    encoder_config: EncoderConfig = field(default_factory=EncoderConfig)
    encoder: Encoder | None = None  # built already (e.g. a masked encoder); the local engine uses it as is
    ray: RayConfig = field(default_factory=RayConfig)
    progress: ProgressCallback | None = None


IngestEngine = Callable[[IngestJob], IngestReport]
INGEST_ENGINES: Registry[IngestEngine] = Registry("ingest engine")


def register_ingest_engine(name: str, engine: IngestEngine, description: str = "") -> IngestEngine:
    return INGEST_ENGINES.add(name, engine, description)


def list_ingest_engines() -> dict[str, str]:
    return INGEST_ENGINES.describe()


def run_ingest(engine: str, job: IngestJob) -> IngestReport:
    """Run ``job`` on the named engine; the error names the valid ones."""
    return INGEST_ENGINES.get(engine)(job)


def _local(job: IngestJob) -> IngestReport:
    return ingest_folder(job.db, job.root, job.config, job.encoder or create_encoder(job.encoder_config), job.progress)


def _ray(job: IngestJob) -> IngestReport:
    return ingest_folder_ray(job.db, job.root, job.config, job.encoder_config, job.ray, job.progress)


register_ingest_engine("local", _local, "decode threads and one encoder in this process")
register_ingest_engine("ray", _ray, "decode and encode on a Ray cluster (pip install 'lookalike[distributed]')")
