"""``lookalike report`` and ``lookalike plot``: the visual reports of ``engine.reports`` from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from console.cli.arguments import non_negative_int, positive_int, similarity
from console.cli.output import print_table
from engine.core.splits import CATALOGUE_WHERE, QUERY_WHERE

PLOT_NAMES = ("eda", "umap", "gallery", "pr", "curves", "distractors")  # the registered plots, for --help only


def add_commands(sub, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    options = argparse.ArgumentParser(add_help=False, parents=[common])
    options.add_argument("--model", help="model id or encoder name (default: the active model)")
    options.add_argument("--catalogue-where", default=CATALOGUE_WHERE, help="which rows are the catalogue")
    options.add_argument("--query-where", default=QUERY_WHERE, help="which rows are the queries")
    options.add_argument("-k", type=positive_int, default=5, help="results per query in the galleries")
    options.add_argument("--gallery", type=non_negative_int, default=8, help="sample queries in the gallery")
    options.add_argument("--worst", type=non_negative_int, default=8, help="worst queries (lowest AP) in the error gallery")
    options.add_argument("--max-queries", type=positive_int, default=2000, help="analyse a seeded sample of at most this many queries")
    options.add_argument("--map-method", default="umap", help="embedding map projection: umap, tsne or pca")
    options.add_argument("--map-sample", type=positive_int, default=2000, help="catalogue images on the map (seeded sample)")
    options.add_argument("--map-models", help="model versions to map, comma-separated, or 'all' (default: the model and its parent)")
    options.add_argument("--duplicate-threshold", type=similarity, default=0.95, help="cosine similarity above which images are near-duplicates")
    options.add_argument("--seed", type=int, default=0)

    report = sub.add_parser("report", parents=[options], help="every figure as PNG plus one self-contained HTML page")
    report.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: ./report)")
    report.set_defaults(func=cmd_report)

    plot = sub.add_parser("plot", parents=[options], help=f"one figure set: {', '.join(PLOT_NAMES)}")
    plot.add_argument("name", help=f"one of {', '.join(PLOT_NAMES)}")
    plot.add_argument("--out", type=Path, default=Path("plots"), help="output folder for the PNGs (default: ./plots)")
    plot.set_defaults(func=cmd_plot)


def _config(args: argparse.Namespace):
    from engine.reports import MapConfig, ReportConfig

    map_models = tuple(m.strip() for m in args.map_models.split(",") if m.strip()) if args.map_models else ()
    return ReportConfig(
        catalogue_where=args.catalogue_where, query_where=args.query_where, k=args.k, gallery_queries=args.gallery,
        worst_queries=args.worst, max_queries=args.max_queries, map_models=map_models, duplicate_threshold=args.duplicate_threshold,
        map=MapConfig(method=args.map_method, catalogue_sample=args.map_sample, seed=args.seed), seed=args.seed,
    )


def _print_section(section, tables: bool = True) -> None:  # noqa: ANN001 - engine.reports.Section
    """A section's title, warnings and notes (and with ``tables`` its tables) on stdout."""

    print(f"== {section.title}")
    for warning in section.warnings:
        print(f"WARNING [{warning.kind}] {warning.message}")
    for note in section.notes:
        print(note)
    for caption, frame in section.tables if tables else ():
        print_table(frame, title=caption)


def cmd_report(args: argparse.Namespace) -> int:
    from engine import Database
    from engine.reports import build_report, create_projector, write_report

    config = _config(args)
    create_projector(config.map.method)  # a bad name fails before any work
    db = Database(args.db)
    started = time.perf_counter()
    report = build_report(db, args.model, config, progress=lambda name: print(f"drawing {name} ...", file=sys.stderr, flush=True))
    files = write_report(report, args.out, subtitle=f"database {db.uri}; catalogue {config.catalogue_where}; queries {config.query_where}")
    for section in report.sections:  # the tables are on the page: here, what to look at
        _print_section(section, tables=False)
    print(f"wrote {len(files) - 1} figures and {files[-1]} ({len(report.warnings)} warnings) in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from engine import Database
    from engine.reports import Report, ReportContext, build_section, create_plot, create_projector, write_report

    create_plot(args.name)
    config = _config(args)
    create_projector(config.map.method)
    db = Database(args.db)
    context = ReportContext(db, db.resolve_model(args.model), config)
    section = build_section(context, args.name)
    _print_section(section)
    files = write_report(Report(section.title, context.model.id, [section]), args.out, page=False)
    for path in files:
        print(f"wrote {path}")
    return 0
