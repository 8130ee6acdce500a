"""Table maintenance: compaction of small fragments, index updates and cleanup of old versions.

Every upsert adds a fragment and a table version; LanceDB's ``optimize`` merges small fragments,
adds new rows to existing ANN indices and deletes the files of versions older than ``keep_versions``.
Ingest runs it after each ingest that wrote rows (``IngestConfig.optimize``); ``lookalike optimize``
runs it on demand, e.g. from a scheduler after many small ingests, locally or on object storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from engine.core.errors import InvalidRequestError, NotFoundError
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.storage.database import Database

logger = logging.getLogger(__name__)

# LanceDB's own default: readers holding a version younger than this keep working while it is cleaned up.
DEFAULT_KEEP_VERSIONS = timedelta(days=7)


@dataclass(frozen=True)
class MaintenanceConfig:
    """What ``optimize`` may delete: files of versions older than ``keep_versions`` (never the latest)."""

    keep_versions: timedelta = DEFAULT_KEEP_VERSIONS


def optimize_table(table, config: MaintenanceConfig = MaintenanceConfig()) -> None:
    """Compact, update indices and clean up old versions of one table."""
    if config.keep_versions < timedelta(0):
        raise InvalidRequestError(f"keep_versions must not be negative, not {config.keep_versions}")
    table.optimize(cleanup_older_than=config.keep_versions)


def _shape(table) -> tuple[int, int, int]:
    fragments = table.stats()["fragment_stats"]
    return fragments["num_fragments"], fragments["num_small_fragments"], len(table.list_versions())


def optimize_database(
    db: Database,
    config: MaintenanceConfig = MaintenanceConfig(),
    tables: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> pl.DataFrame:
    """Optimize every table (or the named ones); one row per table with fragments and versions before and after."""
    names = list(tables) if tables else db.table_names()
    unknown = sorted(set(names) - set(db.table_names()))
    if unknown:
        raise NotFoundError(f"no tables {unknown} in database {db.uri}; tables here: {db.table_names()}")
    rows = []
    for position, name in enumerate(names):
        report_progress(progress, Progress("optimize", position, len(names), "tables", name))
        table = db.connection.open_table(name)
        before = _shape(table)
        started = time.perf_counter()
        optimize_table(table, config)
        after = _shape(table)
        rows.append((name, *before, *after, time.perf_counter() - started))
        logger.info("optimized %s: fragments %d -> %d, versions %d -> %d", name, before[0], after[0], before[2], after[2])
    return pl.DataFrame(
        rows,
        schema={"table": pl.String, "fragments_before": pl.Int64, "small_before": pl.Int64, "versions_before": pl.Int64,
                "fragments_after": pl.Int64, "small_after": pl.Int64, "versions_after": pl.Int64, "seconds": pl.Float64},
        orient="row",
    )
