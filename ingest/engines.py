"""Ingest engines: where the pipeline's stages run (``local`` threads, or a ``ray`` cluster), by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.encoders import Encoder, EncoderConfig, create_encoder
from engine.store import Database
from ingest.distributed import RayConfig, ingest_folder_ray
from ingest.pipeline import IngestConfig, IngestReport, ProgressCallback, ingest_folder


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
_ENGINES: dict[str, IngestEngine] = {}


def register_ingest_engine(name: str, engine: IngestEngine) -> None:
    _ENGINES[name] = engine


def list_ingest_engines() -> list[str]:
    return sorted(_ENGINES)


def run_ingest(engine: str, job: IngestJob) -> IngestReport:
    """Run ``job`` on the named engine."""
    if engine not in _ENGINES:
        raise ValueError(f"unknown ingest engine {engine!r}; choose one of {list_ingest_engines()}")
    return _ENGINES[engine](job)


def _local(job: IngestJob) -> IngestReport:
    return ingest_folder(job.db, job.root, job.config, job.encoder or create_encoder(job.encoder_config), job.progress)


def _ray(job: IngestJob) -> IngestReport:
    return ingest_folder_ray(job.db, job.root, job.config, job.encoder_config, job.ray, job.progress)


register_ingest_engine("local", _local)
register_ingest_engine("ray", _ray)
