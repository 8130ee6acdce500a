"""CLI for scale-out: ``lookalike optimize`` (compaction, index updates, cleanup of old table versions)."""

from __future__ import annotations

import argparse

from console.cli.arguments import non_negative_float
from engine.core.errors import InvalidRequestError


def cmd_optimize(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from console.cli.output import print_table
    from engine.storage.database import Database
    from engine.storage.maintenance import MaintenanceConfig, optimize_database

    if args.keep_versions_hours < 0:
        raise InvalidRequestError(f"--keep-versions-hours must not be negative, not {args.keep_versions_hours}")
    db = Database(args.db)
    config = MaintenanceConfig(keep_versions=timedelta(hours=args.keep_versions_hours))
    tables = [t for t in (args.tables or "").split(",") if t]
    frame = optimize_database(db, config, tables or None)
    print_table(frame)
    print(f"optimized {frame.height} tables of database {db.uri}; versions older than {args.keep_versions_hours} h removed")
    return 0


def add_commands(sub, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    optimize = sub.add_parser(
        "optimize", parents=[common],
        help="compact small fragments, update ANN indices and remove old table versions (ingest does it after each run)",
    )
    optimize.add_argument("--keep-versions-hours", type=non_negative_float, default=24 * 7,
                          help="keep versions younger than this for readers still using them (default: 7 days; 0 keeps only the latest)")
    optimize.add_argument("--tables", help="comma-separated table names (default: all)")
    optimize.set_defaults(func=cmd_optimize)
