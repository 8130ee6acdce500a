"""The ``lookalike`` command line: each command opens the database and calls one use case.

Building the parser imports no engine module that loads torch, timm or LanceDB (``--help`` is instant);
each command imports what it needs when it runs. Defaults come from the engine's typed configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from console.cli.arguments import non_negative_float, non_negative_int, open_fraction, positive_float, positive_int, unit_fraction
from console.cli.options import REGISTRIES, add_label_options, label_depth, registered, registry_names
from console.cli.output import add_output_options, print_error, progress_bar, show_rows
from engine.core.errors import InvalidRequestError, LookalikeError
from engine.core.splits import CATALOGUE_SPLIT, CATALOGUE_WHERE, QUERY_SPLIT, split_where
from engine.encoders.config import DEFAULT_ENCODER, HEAD_KINDS, EncoderConfig, HeadConfig
from engine.evaluation.config import CALIBRATION_OBJECTIVES, CalibrationConfig
from engine.search.config import SearchConfig
from engine.training.config import FinetuneConfig, TrainConfig

PROGRAM = "lookalike"
EXIT_USER_ERROR = 2  # a LookalikeError: one line, the cause and the fix
EXIT_BUG = 1  # anything else: a traceback
STACKING_KINDS = ("head", "finetuned")  # a parent of these kinds gets a head on top of its own
EXIT_SOME_FAILED = 3
MIN_QUERY_CHARS = 24  # of a query's path in its table's title, however long the verdict beside it  # the command did its work, but some of the files given could not be used (named on stderr)

# Feature areas keep their sub-commands in their own module, each exposing ``add_commands(sub, *, common, search_opts)``.
FEATURE_COMMAND_MODULES: tuple[str, ...] = ("console.cli.tui_command", "console.cli.masking", "console.cli.reports", "console.cli.quality", "console.cli.scale",
                                             "console.cli.data", "console.cli.audit", "console.cli.regions")

# ---- catalogue ---------------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from console.service.catalogue import IngestRequest, ingest
    from console.service.data import catalogue_encoder_config
    from engine.catalogue.metadata import parse_types
    from engine.encoders.factory import create_encoder
    from engine.storage.database import Database, default_db_path
    from ingest.distributed import RayConfig
    from ingest.pipeline import IngestConfig
    from ingest.stages import scan_for

    config = IngestConfig(labels_csv=args.labels, label_depth=label_depth(args), metadata_csv=args.metadata, metadata_types=tuple(parse_types(args.metadata_types).items()),
                          split=args.split, holdout=args.holdout, holdout_split=args.holdout_split, seed=args.seed, decode_workers=args.workers)
    named = EncoderConfig(name=args.model, weights=args.weights) if args.model else None
    built = None
    if not Path(args.db or default_db_path()).exists() and not args.mask:
        # a new database: a bad folder, label CSV or encoder fails before the database is created
        scan_for(args.folder.resolve(), config)
        built = create_encoder(dataclasses.replace(named or EncoderConfig(name=DEFAULT_ENCODER), device=args.device, batch_size=args.batch_size))
    db = Database(args.db)
    encoder = dataclasses.replace(catalogue_encoder_config(db, named), device=args.device, batch_size=args.batch_size)
    request = IngestRequest(
        args.folder, config, encoder,
        mask=args.mask, mask_mode=args.mask_mode, engine=args.engine,
        ray=RayConfig(address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker),
    )
    with progress_bar() as show:
        report = ingest(db, request, encoder=built, progress=show)
    print(
        f"ingested {args.folder}: {report.total} files, {report.encoded} encoded, {report.skipped} already known, "
        f"{report.errors} errors in {report.seconds:.1f}s -> model {report.model_id}, database {db.uri}"
    )
    for line in report.scan.lines() if report.scan else ():
        print(line)
    changes = report.changes
    if changes.images:
        print(f"known images updated from the scan: {changes.relabelled} relabelled, {changes.resplit} re-split, "
              f"{changes.moved} moved, {changes.metadata} with new metadata")
    importlib.import_module("console.cli.data").print_versions(report.versions)
    if report.errors:
        print("see the errors with: lookalike errors" + (f" --db {args.db}" if args.db else ""))
    return 0


def _searcher(args: argparse.Namespace, *, read_only: bool = True):  # noqa: ANN202 - engine.search.searcher.Searcher
    from console.service.search import open_searcher, version_warning
    from engine.storage.database import Database

    named = args.reranker is not None
    config = SearchConfig(k=args.k, reranker=args.reranker) if named else SearchConfig(k=args.k)
    db = Database(args.db, read_only=read_only)
    searcher = open_searcher(db, args.model, config, getattr(args, "mask", None), getattr(args, "mask_mode", None), reranker_named=named)
    warning = version_warning(searcher)
    if warning:
        print_error(warning, prefix="warning")
    return searcher


def cmd_search(args: argparse.Namespace) -> int:
    if args.regions:
        return importlib.import_module("console.cli.regions").run_region_search(args)
    from console.service.search import encode_queries, query_paths, search

    searcher = _searcher(args)
    columns = [c for c in (args.columns or "").split(",") if c]
    failures: list = []
    if args.id:
        ids = searcher.db.resolve_image_ids(args.id)  # full ids or unique prefixes
        outcome = search(searcher, searcher.vectors_of(ids), where=args.where, columns=columns, exclude_ids=None if args.include_self else ids,
                         query_names=ids)
    else:
        if not args.queries:
            raise InvalidRequestError("give query image files or --id IMAGE_ID")
        encoded = encode_queries(searcher, query_paths(args.queries))
        failures = encoded.failures
        report_skipped(failures)
        if not encoded.paths:
            raise InvalidRequestError(f"none of the {len(failures)} query files could be used (see above)")
        outcome = search(searcher, encoded.vectors, where=args.where, columns=columns, query_names=encoded.paths)
    show_search(args, outcome)
    return EXIT_SOME_FAILED if failures else 0


def show_search(args: argparse.Namespace, outcome) -> None:  # noqa: ANN001 - console.service.search.SearchOutcome
    """Search results: one table per query for reading (its verdict and classes in the title), every column for scripts."""
    from rich.console import Console

    from console.cli.output import cell_text, output_format, print_table, shorten_start

    frames = {"results": outcome.results} | ({"predictions": outcome.predictions} if args.predict else {})
    if outcome.index_warning:
        print_error(f"warning: {outcome.index_warning}")
    if output_format(args) != "table":
        show_rows(args, frames, empty="")
        return
    results = outcome.results
    if not results.height:
        print("no results" + (f": no catalogue image matches --where {args.where!r}" if args.where else ""))
    hidden = {"query", "query_path", "distractor_score", "is_distractor"}
    for query, rows in results.group_by("query", maintain_order=True):
        first = rows.row(0, named=True)
        verdict = ""
        if first.get("distractor_score") is not None:
            verdict = f": distractor score {first['distractor_score']:.3f}, " + ("flagged as a distractor" if first["is_distractor"] else "a known class")
        name = shorten_start(cell_text("query_path", first["query_path"]), max(MIN_QUERY_CHARS, Console().width - len("query ") - len(verdict)))
        title = f"query {name}{verdict}"
        print_table(rows.select([c for c in ("rank", "path", "label", "distance") if c in rows.columns]
                                + [c for c in rows.columns if c not in hidden | {"rank", "path", "label", "distance", "image_id"}] + ["image_id"]),
                    title=title)
        if args.predict:
            classes = outcome.predictions.filter(outcome.predictions["query"] == query[0])
            voted = ", ".join(f"{label} {score:.3f}" for label, score in zip(classes["label"], classes["score"]))
            print(f"classes: {voted or 'none (no labelled neighbours)'}")
            if args.where:
                print("  (voted by the whole catalogue: --where filters the results only)")
        print()


def report_skipped(failures: list) -> None:
    """Query files that could not be used, one line each on stderr."""
    for path, reason in failures:
        print_error(f"skipped {path}: {reason}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from console.service.training import label_trained_versions
    from engine.evaluation.detect import calibrate_model
    from engine.storage.database import Database

    db = Database(args.db)
    model = db.resolve_model(args.model)
    leaky = label_trained_versions(db, model)
    if leaky and not args.allow_leak:
        from engine.versions.resolve import base_version

        base = base_version(db, model)
        raise InvalidRequestError(
            f"model {model.id} was trained on the labels of every catalogue class ({', '.join(leaky)}), so the classes a fold holds out "
            f"are not unseen to it and the simulated AUROC over-promises; calibrate a version trained without labels "
            f"(--model {base.id if base else 'BASE'}), or give --allow-leak to calibrate anyway (the calibration records it)")
    config = CalibrationConfig(scorer=args.scorer, objective=args.objective, target_fpr=args.target_fpr, folds=args.folds, seed=args.seed)
    stored = calibrate_model(db, model, config, catalogue_where=args.catalogue_where, label_trained=leaky)
    data = stored.details["data"]
    folds = data["folds"]
    spread = lambda key: f"{data[key]:.0%} (folds {min(f[key] for f in folds):.0%} to {max(f[key] for f in folds):.0%})"  # noqa: E731
    print(
        f"calibrated model {model.id}: scorer {stored.scorer}, objective {stored.objective}, threshold {stored.threshold:.4f}\n"
        f"on {data['catalogue_images']} catalogue images of {data['classes']} classes, "
        f"{len(folds)} folds holding out {[f['held_out_classes'] for f in folds]}\n"
        f"simulated AUROC {stored.auroc:.3f}, FPR at 95% of distractors caught {data.get('fpr_at_95_recall', float('nan')):.3f}, "
        f"MAP@5 with -1 {stored.map5:.3f} (calibration {stored.id}, now active)\n"
        f"expected at this threshold: {spread('known_flagged')} of queries of known classes flagged, "
        f"{spread('distractors_caught')} of distractors caught; new images unlike the catalogue's may fare worse"
    )
    if leaky:
        print_error(f"{', '.join(leaky)} trained on every class: these figures over-promise (--allow-leak)", prefix="warning")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from console.service.search import predict_folder, query_paths

    searcher = _searcher(args, read_only=args.no_review)  # flagged queries join the review queue: a write
    outcome = predict_folder(searcher, query_paths([args.queries]), Path(args.out), queue_for_review=not args.no_review,
                             root=Path(args.queries), with_scores=args.scores)
    report_skipped(outcome.failures)
    print(f"{outcome.queries} queries, {outcome.flagged} flagged as distractors (threshold {outcome.threshold:.4f}); "
          f"wrote {outcome.out}; {outcome.queued} queued for review" + (f"; {len(outcome.failures)} files skipped" if outcome.failures else ""))
    return EXIT_SOME_FAILED if outcome.failures else 0


def cmd_review(args: argparse.Namespace) -> int:
    from console.service.catalogue import decide_review
    from engine.evaluation.detect import Decision, review_frame
    from engine.storage.database import Database

    db = Database(args.db, read_only=args.review_id is None)
    if args.review_id is None:
        frame = review_frame(db, None if args.status == "all" else args.status)
        show_rows(args, {"review": frame.select("id", "path", "score", "suggested", "status", "label", "decided_by", "decided_at")},
                  empty=f"no {'' if args.status == 'all' else args.status + ' '}review items (lookalike predict queues flagged queries)")
        return 0
    if not (args.confirm or args.assign or args.add):
        raise InvalidRequestError("to decide a review item give --confirm, --assign CLASS or --add CLASS")
    status, label = ("distractor", None) if args.confirm else ("assigned", args.assign) if args.assign else ("added", args.add)
    row = decide_review(db, Decision(args.review_id, status, label, args.by), model=args.model)
    print(f"review {row['id']}: {row['status']}" + (f" as {row['label']}, joined the catalogue" if row["label"] else ""))
    return 0


def cmd_calibrations(args: argparse.Namespace) -> int:
    from engine.evaluation.detect import calibrations_frame
    from engine.storage.database import Database

    show_rows(args, {"calibrations": calibrations_frame(Database(args.db, read_only=True))}, empty="no calibrations yet: run lookalike calibrate")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.compare:
        return importlib.import_module("console.cli.quality").run_compare(args)
    if args.regions:
        return importlib.import_module("console.cli.regions").run_region_eval(args)
    from engine.evaluation.compare import evaluate_reranked
    from engine.evaluation.metrics import evaluate, evaluate_leave_one_out, load_split
    from engine.media.scan import scan_folder
    from engine.search.config import DEFAULT_RERANKER

    searcher = _searcher(args)
    catalogue_where = searcher.db.catalogue_where(split_where(args.catalogue_split))
    catalogue, catalogue_labels = load_split(searcher.table, catalogue_where)
    vote = searcher.config.vote_neighbours
    if args.leave_one_out:
        if args.query_dir:
            raise InvalidRequestError("--leave-one-out queries with the catalogue itself; it does not take --query-dir")
        result = evaluate_leave_one_out(catalogue, catalogue_labels, vote_neighbours=vote)
        print(f"model {searcher.model.id}: leave-one-out, each of {result.queries} catalogue images against the other {result.catalogue}")
    else:
        if args.query_dir:
            files = [f for f in scan_folder(Path(args.query_dir)) if f.labels]
            queries, query_labels = searcher.encode_files([f.path for f in files]), [f.labels[0] for f in files]
        else:
            queries, query_labels = load_split(searcher.table, split_where(args.query_split))
            if not len(queries):
                raise InvalidRequestError(f"no labelled images in the query split {args.query_split!r}: hold some out (lookalike split --holdout 0.2 "
                                          f"--to {args.query_split}), give --query-dir DIR, or evaluate with --leave-one-out")
        if searcher.config.reranker == DEFAULT_RERANKER and searcher.config.class_fusion is None:
            result = evaluate(queries, query_labels, catalogue, catalogue_labels, vote_neighbours=vote)
        else:  # a named re-ranker or the version's tuned pipeline: measured as searches and predictions answer
            result = evaluate_reranked(queries, query_labels, catalogue, catalogue_labels, searcher.config, searcher.fusion_classifier())
        fusion = searcher.config.class_fusion
        print(f"model {searcher.model.id} ({searcher.config.reranker}{f', classes: vote + classifier at weight {fusion.weight:g}' if fusion else ''}): "
              f"{result.queries} queries against {result.catalogue} catalogue images")
    show_rows(args, {"metrics": result.as_frame()} | ({"per_class": result.per_class} if args.per_class else {}), empty="no queries")
    return 0


# ---- model versions ----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from console.service.training import config_for_regime, default_parent, train_version
    from engine.storage.database import Database

    db = Database(args.db)
    head = HeadConfig(kind=args.head, out_dim=args.dim, hidden_dim=args.hidden, dropout=args.dropout)
    finetune = FinetuneConfig(unfreeze_blocks=args.unfreeze_blocks, backbone_lr=args.backbone_lr, lora=args.lora, lora_rank=args.lora_rank,
                              image_size=args.image_size, unlabelled_dir=args.unlabelled, unlabelled_where=args.unlabelled_where,
                              consistency_weight=args.consistency_weight, workers=args.workers)
    config = config_for_regime(args.regime, method=args.method, head=head, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               patience=args.patience, catalogue_where=args.catalogue_where, seed=args.seed, device=args.device, finetune=finetune)
    parent = db.resolve_model(args.parent) if args.parent else default_parent(db)
    if args.parent is None and parent.id != db.resolve_model().id:
        why = f" (the base encoder of the active model {db.resolve_model().id}; --parent names another)"
    elif parent.kind in STACKING_KINDS:
        why = " (itself a trained version: the new head goes on top of it)"
    else:
        why = ""
    print(f"training {config.method} ({config.regime}) on {parent.id}{why}", flush=True)
    with progress_bar(lines=True) as show:
        result = train_version(db, parent.id, config, activate=args.activate, progress=show)
    print(f"trained {result.model.id} from {parent.id}: {result.epochs_run} epochs, best val mAP@5 {result.val_map5:.4f} "
          f"at epoch {result.best_epoch}, {result.seconds:.1f}s")
    if args.activate:
        print(f"{result.model.id} is now the active model")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from console.service.training import model_versions
    from engine.storage.database import Database

    db = Database(args.db, read_only=not (args.activate or args.drop))
    if args.activate and args.drop:
        raise InvalidRequestError("give --activate or --drop, not both")
    if args.activate:
        print(f"{db.activate_model(args.activate).id} is now the active model")
        return 0
    if args.drop:
        from console.service.data import drop_versions

        dropped = drop_versions(db, args.drop)
        print(f"dropped {', '.join(m.id for m in dropped)}; the active model is {db.active_model_id()}")
        return 0
    from console.service.data import index_recall_frame

    frame = model_versions(db).join(index_recall_frame(db).rename({"model_id": "id"}), on="id", how="left")
    show_rows(args, {"models": frame.select("id", "active", "kind", "parent", "method", "pipeline", "dim", "val_map5", "status", "rows", "missing", "index_recall",
                                            "created_at")},
              empty="no models yet: run lookalike ingest", views={"models": models_view}, titles={"models": "model versions (* the active one)"})
    return 0


def models_view(frame):  # noqa: ANN001, ANN201 - polars frames
    """What a reader needs of each version in 80 columns: the active one starred, method beside kind, gaps in the status."""
    import polars as pl

    return frame.select(
        (pl.col("id") + pl.when(pl.col("active")).then(pl.lit(" *")).otherwise(pl.lit(""))).alias("id"),
        (pl.col("kind") + pl.when(pl.col("method").is_not_null()).then(pl.lit("/") + pl.col("method")).otherwise(pl.lit(""))).alias("kind"),
        "parent", "pipeline", "dim", "val_map5",
        (pl.col("status") + pl.when(pl.col("missing") > 0).then(pl.format(" ({} missing)", "missing")).otherwise(pl.lit(""))).alias("status"),
        pl.col("index_recall").alias("recall"),  # the index's own check (lookalike info: which index, which setting)
    )


def cmd_info(args: argparse.Namespace) -> int:
    from console.service.data import coverage_frame, index_checks_frame
    from engine.storage.database import Database

    db = Database(args.db, read_only=True)
    models = db.models_frame()
    frames = {"tables": db.summary()}
    if models.height:
        frames |= {"models": models.select("id", "kind", "architecture", "dim", "created_at", "encoder", "weights_sha256"),
                   "coverage": coverage_frame(db).select("model_id", "status", "catalogue_rows", "rows", "missing", "extra", "changed", "reason")}
        checks = index_checks_frame(db)
        if checks.height:
            frames["indexes"] = checks
    images = db.images_frame(columns=["split", "label"])
    frames["labels"] = images.group_by("split", "label").len().sort("split", "label")
    if args.format == "table" and args.out is None:
        print(f"database {db.uri}")
    show_rows(args, frames, empty="an empty database: run lookalike ingest FOLDER",
              views={"models": ("id", "kind", "architecture", "dim", "created_at"), "coverage": ("model_id", "status", "rows", "missing", "extra", "changed", "reason"),
                     "indexes": ("model_id", "index", "rows", "recall", "setting", "ok")})
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    from engine.storage.database import Database

    show_rows(args, {"errors": Database(args.db, read_only=True).errors_frame()}, empty="no ingest errors")
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    print("\n".join(registry_names("encoders")))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for name, description in registry_names(args.family).items():
        print(f"{name:20s} {description}")
    return 0


# ---- the parser ----------------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{PROGRAM} {version(PROGRAM)}"
    except PackageNotFoundError:
        return f"{PROGRAM} (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Embedded image-retrieval database.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug); errors with their traceback")
    parser.add_argument("--version", action="version", version=_version())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, help="database folder or object-store URI, e.g. s3://bucket/path (default: $LOOKALIKE_DB or data/lookalike.lancedb)")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", parents=[common], help="scan a folder and add its images")
    ingest.add_argument("folder", type=Path)
    add_label_options(ingest)
    ingest.add_argument("--metadata", type=Path, help="CSV: a file-name column and any others (price, site, ...), which become filterable columns")
    ingest.add_argument("--metadata-types", help="types of --metadata columns where inference is not wanted, e.g. price=float,site=string")
    ingest.add_argument("--model", help=f"encoder: a registered one (lookalike list encoders) or any timm architecture with --weights "
                        f"(default: the base encoder of the active model, else {DEFAULT_ENCODER})")
    ingest.add_argument("--weights", help="local weights file for the encoder")
    ingest.add_argument("--split", help="split name for these images (e.g. train)")
    ingest.add_argument("--holdout", type=open_fraction, help="move this fraction of each class to --holdout-split (stratified)")
    ingest.add_argument("--holdout-split", default=QUERY_SPLIT)
    ingest.add_argument("--seed", type=int, default=0)
    ingest.add_argument("--batch-size", type=positive_int, default=EncoderConfig.batch_size)
    ingest.add_argument("--workers", type=positive_int, default=2, help="decode threads (local engine) or encoder actors (--engine ray)")
    ingest.add_argument("--engine", default="local", type=registered("ingest-engines"), help="where the stages run: local or ray (lookalike list ingest-engines)")
    ingest.add_argument("--address", help="Ray cluster address with --engine ray (default: the local machine)")
    ingest.add_argument("--gpus-per-worker", type=non_negative_float, help="GPUs per Ray encoder actor (default: 1 when the cluster has GPUs)")
    ingest.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    importlib.import_module("console.cli.masking").add_mask_options(ingest, "mask images with this stored masker before encoding (see lookalike maskers)")
    ingest.set_defaults(func=cmd_ingest)

    search_opts = argparse.ArgumentParser(add_help=False, parents=[common])
    search_opts.add_argument("--model", help="model id or encoder name (default: the active model)")
    search_opts.add_argument("-k", type=positive_int, default=SearchConfig.k)
    search_opts.add_argument("--reranker", type=registered("rerankers", chains=True),
                             help="a re-ranker (lookalike list rerankers), or quality stages chained with '+' (e.g. qe+k-reciprocal); "
                                  "default: the pipeline 'lookalike tune' stored with the version, else exact k-NN")

    search = sub.add_parser("search", parents=[search_opts], help="find the catalogue images nearest to query images")
    search.add_argument("queries", nargs="*", help="query image files or folders")
    search.add_argument("--id", action="append", help="search with a stored image id or a unique prefix of one (repeatable)")
    search.add_argument("--include-self", action="store_true", help="with --id, keep the image itself in its results (rank 1)")
    search.add_argument("--where", help="SQL filter over image metadata, e.g. \"label = 'coast' AND width >= 256\"")
    search.add_argument("--columns", help="extra columns to show, comma-separated (e.g. split,width)")
    search.add_argument("--predict", action="store_true", help="also print the classes the nearest catalogue images vote for (up to 5; the whole catalogue votes, whatever --where)")
    importlib.import_module("console.cli.masking").add_mask_options(search, "mask queries with this masker (default: as the model's catalogue was masked); another masking is refused")
    importlib.import_module("console.cli.regions").add_search_options(search)
    add_output_options(search)
    search.set_defaults(func=cmd_search)

    evaluation = sub.add_parser("eval", parents=[search_opts], help="P@1, P@5, mAP@5 and mAP of a model")
    evaluation.add_argument("--catalogue-split", default=CATALOGUE_SPLIT, help=f"(default {CATALOGUE_SPLIT}; every labelled image when no image has a split)")
    evaluation.add_argument("--query-split", default=QUERY_SPLIT)
    evaluation.add_argument("--query-dir", help="labelled query folder instead of --query-split")
    evaluation.add_argument("--per-class", action="store_true")
    evaluation.add_argument("--leave-one-out", action="store_true", help="each catalogue image queries all the others (for catalogues without a query split)")
    evaluation.add_argument("--regions", action="store_true", help="measure the stored regions (lookalike regions): by object label, and images by their regions as sets")
    evaluation.add_argument("--region-source", type=registered("region-sources"), help="with --regions: only regions from this source")
    evaluation.add_argument("--compare", metavar="PIPELINES", help="pipelines side by side, RERANKER[@MODEL] comma-separated, e.g. base,qe,dba,k-reciprocal,qe+k-reciprocal@MODEL")
    add_output_options(evaluation)
    evaluation.set_defaults(func=cmd_eval)

    calibrate = sub.add_parser("calibrate", parents=[common], help="calibrate the distractor threshold on the catalogue")
    calibrate.add_argument("--model", help="model id or encoder name (default: the active model)")
    calibrate.add_argument("--scorer", default=CalibrationConfig.scorer, type=registered("scorers"), help="distractor scorer (lookalike list scorers)")
    calibrate.add_argument("--objective", default=CalibrationConfig.objective, choices=CALIBRATION_OBJECTIVES,
                           help="map5: best MAP@5 with -1; fpr: flag at most --target-fpr of known images; roc: nearest the top-left corner")
    calibrate.add_argument("--target-fpr", type=open_fraction, default=CalibrationConfig.target_fpr)
    calibrate.add_argument("--folds", type=positive_int, default=CalibrationConfig.folds)
    calibrate.add_argument("--seed", type=int, default=CalibrationConfig.seed)
    calibrate.add_argument("--catalogue-where", default=CATALOGUE_WHERE, help="which rows are the catalogue")
    calibrate.add_argument("--allow-leak", action="store_true", help="calibrate a version trained on the catalogue's labels anyway (its figures over-promise)")
    calibrate.set_defaults(func=cmd_calibrate)
    calibrations = sub.add_parser("calibrations", parents=[common], help="stored calibrations, newest first")
    add_output_options(calibrations)
    calibrations.set_defaults(func=cmd_calibrations)

    predict = sub.add_parser("predict", parents=[search_opts], help="top-5 classes with -1 for distractors, as a Kaggle CSV")
    predict.add_argument("queries", help="query folder (or one image)")
    predict.add_argument("--out", default="submission.csv")
    predict.add_argument("--no-review", action="store_true", help="do not queue flagged queries for review")
    predict.add_argument("--scores", action="store_true", help="add each query's distractor score as a third column")
    predict.set_defaults(func=cmd_predict)

    review = sub.add_parser("review", parents=[common], help="the distractor review queue; with an id, decide it")
    review.add_argument("review_id", nargs="?")
    review.add_argument("--status", default="pending", help="pending, distractor, assigned, added or all")
    review.add_argument("--model", help="model whose encoder adds images to the catalogue (default: the one that flagged it)")
    decision = review.add_mutually_exclusive_group()
    decision.add_argument("--confirm", action="store_true", help="confirm it is a distractor")
    decision.add_argument("--assign", metavar="CLASS", help="it belongs to this known class (joins the catalogue)")
    decision.add_argument("--add", metavar="CLASS", help="it is a new class (joins the catalogue)")
    review.add_argument("--by", default=os.environ.get("USER", "unknown"), help="who decides")
    add_output_options(review)
    review.set_defaults(func=cmd_review)

    train = sub.add_parser("train", parents=[common], help="train a head on stored features, or fine-tune the backbone on the images")
    train.add_argument("--regime", default=TrainConfig.regime, type=registered("regimes"),
                       help="head: a head on the parent's stored features (fast); finetune: last backbone blocks (or LoRA) and a head on augmented images")
    train.add_argument("--method", default=TrainConfig.method, type=registered("methods"), help="lookalike list methods; simsiam and rotation need no labels (finetune regime)")
    train.add_argument("--parent", help="model whose features to train on (default: the base encoder of the active model; a trained one gets a head on top)")
    train.add_argument("--head", default=HeadConfig.kind, choices=HEAD_KINDS)
    train.add_argument("--dim", type=positive_int, default=HeadConfig.out_dim)
    train.add_argument("--hidden", type=positive_int, default=HeadConfig.hidden_dim)
    train.add_argument("--dropout", type=unit_fraction, default=HeadConfig.dropout)
    train.add_argument("--epochs", type=positive_int, help="default: the regime's")
    train.add_argument("--batch-size", type=positive_int, help="default: the regime's")
    train.add_argument("--lr", type=positive_float, default=TrainConfig.lr)
    train.add_argument("--patience", type=positive_int, default=TrainConfig.patience)
    train.add_argument("--catalogue-where", default=TrainConfig.catalogue_where)
    train.add_argument("--seed", type=int, default=TrainConfig.seed)
    train.add_argument("--device")
    train.add_argument("--activate", action="store_true", help="make the new model the default")
    tuning = train.add_argument_group("fine-tuning (--regime finetune)")
    tuning.add_argument("--unfreeze-blocks", type=non_negative_int, default=FinetuneConfig.unfreeze_blocks, help="the last N blocks of the backbone learn (0: head only)")
    tuning.add_argument("--backbone-lr", type=positive_float, default=FinetuneConfig.backbone_lr)
    tuning.add_argument("--lora", action="store_true", help="LoRA adapters on the linear layers of those blocks instead (ViT backbones)")
    tuning.add_argument("--lora-rank", type=positive_int, default=FinetuneConfig.lora_rank)
    tuning.add_argument("--image-size", type=positive_int, help="training crop size (default: the model's; embedding keeps the model's)")
    tuning.add_argument("--workers", type=non_negative_int, default=FinetuneConfig.workers, help="image decoding processes")
    unlabelled = tuning.add_mutually_exclusive_group()
    unlabelled.add_argument("--unlabelled", metavar="DIR", help="unlabelled images for consistency regularisation")
    unlabelled.add_argument("--unlabelled-where", metavar="SQL", help="stored images to use unlabelled, e.g. \"split = 'new'\"")
    tuning.add_argument("--consistency-weight", type=non_negative_float, default=FinetuneConfig.consistency_weight, help="weight of the weak/strong consistency term")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", parents=[common], help="model versions; --activate ID picks the default")
    models.add_argument("--activate", metavar="MODEL_ID")
    models.add_argument("--drop", nargs="+", metavar="MODEL_ID", help="drop versions (table, row, coverage); never the last one")
    add_output_options(models)
    models.set_defaults(func=cmd_models)
    for name, function, text in (("info", cmd_info, "tables, models and label counts"), ("errors", cmd_errors, "files that could not be ingested")):
        command = sub.add_parser(name, parents=[common], help=text)
        add_output_options(command)
        command.set_defaults(func=function)
    sub.add_parser("encoders", help="registered encoders").set_defaults(func=cmd_encoders)
    listing = sub.add_parser("list", help="what a registry holds: encoders, methods, rerankers, kinds, ...")
    listing.add_argument("family", choices=sorted(REGISTRIES))
    listing.set_defaults(func=cmd_list)
    for module_name in FEATURE_COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub, common=common, search_opts=search_opts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except LookalikeError as exc:
        if args.verbose:
            traceback.print_exc()
        print_error(str(exc))
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the storage failing is the user's to fix; anything else is a bug
        from engine.storage.lock import storage_failure

        reason = storage_failure(exc) if isinstance(exc, (OSError, RuntimeError)) else None
        if reason is not None:  # a full disk or a read-only mount, in any command: one line, not LanceDB's text
            if args.verbose:
                traceback.print_exc()
            where = getattr(args, "db", None) or "the database"
            print_error(f"the storage of {where} failed: {reason}; free space or fix permissions, then run the command again")
            return EXIT_USER_ERROR
        traceback.print_exc()
        print_error(f"{type(exc).__name__}: {exc} (this is a bug in Lookalike; please report it with the traceback above)")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
