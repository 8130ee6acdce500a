"""Commands that change the catalogue's data or keep versions in step: ``relabel``, ``split``, ``delete``, ``sync``,
``refresh`` and ``export``. Thin layer over ``console.service.data``."""

from __future__ import annotations

import argparse
from pathlib import Path

from console.cli.arguments import open_fraction
from console.cli.options import add_label_options, label_depth
from console.cli.output import print_error, progress_bar
from engine.core.errors import InvalidRequestError


def _selection(args: argparse.Namespace):  # noqa: ANN202 - engine.catalogue.edits.Selection
    from console.service.data import Selection

    if args.ids and args.where is not None:
        raise InvalidRequestError("give image ids or --where, not both")
    return Selection(ids=tuple(args.ids or ()), where=args.where)


def print_versions(versions: list) -> None:
    """One line for the versions in step, one per version that is not (with why)."""
    in_step = [c for c in versions if c.in_step]
    if in_step:
        written = sum(c.written for c in in_step)
        print(f"{len(in_step)} model versions in step with the catalogue" + (f" ({written} vectors written)" if written else ""))
    for coverage in versions:
        if not coverage.in_step:
            print_error(f"model {coverage.model_id} is {coverage.status}: {coverage.reason}")


def _print_edit(report, verb: str) -> None:  # noqa: ANN001 - engine.catalogue.edits.EditReport
    print(f"{verb} {report.images} images; the catalogue holds {report.catalogue}")
    print_versions(report.versions)


def cmd_relabel(args: argparse.Namespace) -> int:
    from console.service import data
    from engine.storage.database import Database

    db = Database(args.db)
    with progress_bar() as show:
        if args.csv:
            if args.ids or args.where is not None or args.label:
                raise InvalidRequestError("--csv gives every image its label; give no ids, --where or --to with it")
            report = data.relabel_from_csv(db, args.csv, progress=show, device=args.device)
        else:
            if not args.label:
                raise InvalidRequestError("give the new class with --to CLASS (or a CSV of image,label with --csv)")
            report = data.relabel(db, _selection(args), args.label, progress=show, device=args.device)
    _print_edit(report, "relabelled")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from console.service import data
    from engine.storage.database import Database

    db = Database(args.db)
    with progress_bar() as show:
        if args.holdout is not None:
            if args.ids:
                raise InvalidRequestError("--holdout draws from --where (default: every image); give no ids with it")
            report = data.holdout(db, args.holdout, args.to, where=args.where, seed=args.seed, progress=show, device=args.device)
        else:
            report = data.move_to_split(db, _selection(args), args.to, progress=show, device=args.device)
    _print_edit(report, f"moved to split {args.to!r}:")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from console.service import data
    from engine.storage.database import Database

    db = Database(args.db)
    with progress_bar() as show:
        report = data.delete(db, _selection(args), dry_run=not args.yes, allow_empty=args.all, progress=show, device=args.device)
    if report.dry_run:
        print(f"would delete {report.images} of {report.catalogue} images (from the catalogue and every model version); "
              "run again with --yes to delete them")
        return 0
    _print_edit(report, "deleted")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from console.service import data
    from engine.encoders.config import EncoderConfig
    from engine.storage.database import Database
    from ingest.pipeline import IngestConfig

    db = Database(args.db)
    encoder = EncoderConfig(name=args.model, weights=args.weights, device=args.device) if args.model else None
    with progress_bar() as show:
        report = data.sync(db, args.folder, IngestConfig(labels_csv=args.labels, label_depth=label_depth(args), split=args.split), encoder, keep_missing=args.keep_missing, progress=show)
    removed = f"{report.missing_kept} gone but kept" if args.keep_missing else f"{report.removed} removed (file gone or changed)"
    print(f"synced {report.folder}: {report.scanned} files, {report.new} new, {report.changed} changed, {report.moved} moved, "
          f"{report.relabelled} relabelled, {report.resplit} re-split, {report.metadata} with new metadata, {removed}, "
          f"{report.unchanged} unchanged, {report.errors} errors in {report.seconds:.1f}s")
    print_versions(report.versions)
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from console.service import data
    from engine.storage.database import Database

    db = Database(args.db)
    with progress_bar() as show:
        versions = data.refresh(db, args.models or None, device=args.device, progress=show)
    for coverage in versions:
        print(f"{coverage.model_id}: {coverage.status}, {coverage.rows} rows, {coverage.written} vectors written" + (f" ({coverage.reason})" if coverage.reason else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from console.service import data
    from engine.storage.database import Database

    db = Database(args.db, read_only=True)
    results = None
    if args.what == "results":
        from console.service.search import encode_queries, open_searcher, query_paths, search
        from engine.search.config import SearchConfig

        searcher = open_searcher(db, args.model, SearchConfig(k=args.k))
        if args.id:
            ids = db.resolve_image_ids(args.id)
            outcome = search(searcher, searcher.vectors_of(ids), where=args.where, exclude_ids=ids)
        elif args.queries:
            encoded = encode_queries(searcher, query_paths(args.queries))
            for path, reason in encoded.failures:
                print_error(f"skipped {path}: {reason}")
            outcome = search(searcher, encoded.vectors, where=args.where, query_names=encoded.paths)
        else:
            raise InvalidRequestError("--what results searches: give query image files or --id IMAGE_ID")
        results = outcome.results
    where = None if args.what == "results" else args.where
    path, rows = data.export(db, args.what, args.out, format_name=args.format, model=args.model, where=where, results=results)
    print(f"wrote {rows} rows of {args.what} to {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    selecting = argparse.ArgumentParser(add_help=False, parents=[common])
    selecting.add_argument("ids", nargs="*", help="image ids or unique prefixes of them")
    selecting.add_argument("--where", help="SQL filter choosing the images instead, e.g. \"label = 'coast'\"")
    selecting.add_argument("--device", help="where versions that re-embed images run (default: cuda when present)")

    relabel = sub.add_parser("relabel", parents=[selecting], help="give images another class, in every model version")
    relabel.add_argument("--to", dest="label", metavar="CLASS", help="the new class")
    relabel.add_argument("--csv", type=Path, help="CSV of image,label (an image id, stored path or file name per row)")
    relabel.set_defaults(func=cmd_relabel)

    split = sub.add_parser("split", parents=[selecting], help="move images to another split, or hold out a stratified fraction")
    split.add_argument("--to", required=True, metavar="SPLIT", help="the split to move them to (e.g. train, val)")
    split.add_argument("--holdout", type=open_fraction, help="move this fraction of each class (of --where, default all) to --to")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(func=cmd_split)

    delete = sub.add_parser("delete", parents=[selecting], help="remove images from the catalogue and every version (a dry run without --yes)")
    delete.add_argument("--yes", action="store_true", help="delete; without it, only say how many would go")
    delete.add_argument("--all", action="store_true", help="allow a delete that empties the catalogue")
    delete.set_defaults(func=cmd_delete)

    sync = sub.add_parser("sync", parents=[common], help="re-scan a folder: new and changed files in, moved ones re-pathed, gone ones out")
    sync.add_argument("folder", type=Path)
    add_label_options(sync)
    sync.add_argument("--split", help="split of new images")
    sync.add_argument("--keep-missing", action="store_true", help="keep images whose files are gone")
    sync.add_argument("--model", help="encoder for new images (default: the base encoder of the active model)")
    sync.add_argument("--weights", help="local weights file for --model")
    sync.add_argument("--device")
    sync.set_defaults(func=cmd_sync)

    refresh = sub.add_parser("refresh", parents=[common], help="bring model versions in step with the catalogue (any kind)")
    refresh.add_argument("models", nargs="*", help="model versions (default: all)")
    refresh.add_argument("--device")
    refresh.set_defaults(func=cmd_refresh)

    export = sub.add_parser("export", parents=[search_opts], help="write images, embeddings or search results to parquet, CSV or JSON")
    export.add_argument("--what", required=True, choices=("images", "embeddings", "results"))
    export.add_argument("--out", required=True, type=Path, help="file to write (its suffix gives the format unless --format)")
    export.add_argument("--format", choices=("parquet", "csv", "json"))
    export.add_argument("--where", help="SQL filter over the rows (or over the catalogue searched, for results)")
    export.add_argument("queries", nargs="*", help="query images, with --what results")
    export.add_argument("--id", action="append", help="search with a stored image id, with --what results (repeatable)")
    export.set_defaults(func=cmd_export)
