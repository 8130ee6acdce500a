"""The ``lookalike`` command line: a thin layer over the ``engine`` and ``ingest`` APIs."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from console.arguments import non_negative_float, non_negative_int, open_fraction, positive_float, positive_int, unit_fraction
from engine import Database, EncoderConfig, SearchConfig, Searcher, create_encoder, evaluate, list_encoders, list_rerankers
from engine.detect import (
    DEFAULT_CATALOGUE_WHERE,
    Decision,
    DistractorDetector,
    calibrate_model,
    calibrations_frame,
    decide,
    enqueue_for_review,
    review_frame,
    write_submission,
)
from engine.distractors import CalibrationConfig, list_scorers
from engine.evaluation import load_split
from engine.heads import HeadConfig
from engine.training import FinetuneConfig, TrainConfig, TrainEvent, list_methods, list_regimes, train
from engine.store import default_db_path
from ingest import IngestConfig, IngestProgress, ingest_folder, scan_folder
from ingest.decode import content_id
from ingest.pipeline import add_to_catalogue
from ingest.distributed import INSTALL_HINT as RAY_INSTALL_HINT, RayConfig
from ingest.engines import IngestJob, list_ingest_engines, run_ingest
from console.cli_masking import add_mask_options
from engine.masker import MaskedEncoder, masked_encoder, query_encoder

console = Console(stderr=True)

# Feature areas keep their sub-commands in their own module (``console/cli_<feature>.py``), each exposing
# ``add_commands(sub, *, common, search_opts)``; heavy imports stay inside the command functions so that
# ``lookalike --help`` stays fast.
FEATURE_COMMAND_MODULES: tuple[str, ...] = ("console.cli_console", "console.cli_masking", "console.cli_reports", "console.cli_quality", "console.cli_scale")


def _print_frame(frame: pl.DataFrame) -> None:
    with pl.Config(tbl_rows=max(frame.height, 1), tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
        print(frame)


def cmd_ingest(args: argparse.Namespace) -> int:
    db = Database(args.db)
    encoder_config = EncoderConfig(name=args.model, weights=args.weights, device=args.device, batch_size=args.batch_size)
    encoder = create_encoder(encoder_config)
    if args.mask_mode and not args.mask:
        raise ValueError("--mask-mode needs --mask MASKER (see lookalike maskers)")
    if args.mask:  # masked before encoding; the masking becomes part of the model version
        encoder = masked_encoder(encoder, db, args.mask, args.mask_mode or "zero", args.device)
    config = IngestConfig(
        labels_csv=args.labels, split=args.split, holdout=args.holdout, holdout_split=args.holdout_split,
        seed=args.seed, decode_workers=args.workers, image_hook=encoder if isinstance(encoder, MaskedEncoder) else None,
    )
    with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("ingest", total=None, detail="")

        def show(state: IngestProgress) -> None:
            detail = f"{state.encoded} new, {state.skipped} known, {state.errors} errors, {state.images_per_second:.1f} img/s"
            bar.update(task, total=state.total, completed=state.done, detail=detail)

        ray_config = RayConfig(address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
        report = run_ingest(args.engine, IngestJob(db, args.folder, config, encoder_config, encoder, ray_config, show))
    print(
        f"ingested {args.folder}: {report.total} files, {report.encoded} encoded, {report.skipped} already known, "
        f"{report.errors} errors in {report.seconds:.1f}s -> model {report.model_id}, database {db.uri}"
    )
    if report.errors:
        print("see the errors with: lookalike errors" + (f" --db {args.db}" if args.db else ""))
    return 0


def _searcher(args: argparse.Namespace) -> Searcher:
    config = SearchConfig(k=args.k, reranker=args.reranker)
    db = Database(args.db)
    model = db.resolve_model(args.model)
    # queries are masked as the catalogue was; another --mask is refused
    encoder = query_encoder(db, model, getattr(args, "mask", None), getattr(args, "mask_mode", None))
    return Searcher(db, model, config, encoder=encoder)


def _query_paths(queries: Sequence[str]) -> list[Path]:
    """Query image files: files as given, folders scanned (sorted, recursive)."""
    paths = [f.path for q in queries for f in (scan_folder(Path(q)) if Path(q).is_dir() else [None]) if f] + [
        Path(q) for q in queries if not Path(q).is_dir()
    ]
    if not paths:
        raise ValueError("no query images: give image files or folders")
    return paths


def cmd_search(args: argparse.Namespace) -> int:
    searcher = _searcher(args)
    columns = [c for c in (args.columns or "").split(",") if c]
    if args.id:
        vectors = searcher.vectors_of(args.id)
        results = searcher.search_vectors(vectors, where=args.where, columns=columns)
    else:
        if not args.queries:
            raise ValueError("give query image files or --id IMAGE_ID")
        paths = _query_paths(args.queries)
        vectors = searcher.encode_files(paths)
        results = searcher.search_vectors(vectors, where=args.where, columns=columns)
        results = results.with_columns(pl.Series("query_path", [str(paths[q]) for q in results["query"]], pl.String))
    detector = DistractorDetector.for_searcher(searcher)
    if detector is not None:
        results = detector.annotate(results, vectors)
    _print_frame(results)
    if args.predict:
        _print_frame(searcher.predict(vectors, where=args.where))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    db = Database(args.db)
    model = db.resolve_model(args.model)
    config = CalibrationConfig(scorer=args.scorer, objective=args.objective, target_fpr=args.target_fpr, folds=args.folds, seed=args.seed)
    stored = calibrate_model(db, model, config, catalogue_where=args.catalogue_where)
    folds = stored.details["data"]["folds"]
    print(
        f"calibrated model {model.id}: scorer {stored.scorer}, objective {stored.objective}, threshold {stored.threshold:.4f}\n"
        f"on {stored.details['data']['catalogue_images']} catalogue images of {stored.details['data']['classes']} classes, "
        f"{len(folds)} folds holding out {[f['held_out_classes'] for f in folds]}\n"
        f"simulated AUROC {stored.auroc:.3f}, MAP@5 with -1 {stored.map5:.3f} (calibration {stored.id}, now active)"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    searcher = _searcher(args)
    detector = DistractorDetector.for_searcher(searcher)
    if detector is None:
        raise LookupError(f"model {searcher.model.id} has no distractor calibration: run lookalike calibrate first")
    paths = _query_paths([args.queries])
    vectors = searcher.encode_files(paths)
    predictions = detector.predict(vectors)
    write_submission(Path(args.out), [p.name for p in paths], predictions)
    queued = 0
    if not args.no_review:
        ids = [content_id(p.read_bytes()) for p in paths]
        queued = enqueue_for_review(searcher.db, searcher.model, ids, [str(p.resolve()) for p in paths], predictions, detector.calibration.threshold)
    flagged = int(predictions["is_distractor"].sum())
    print(f"{len(paths)} queries, {flagged} flagged as distractors (threshold {detector.calibration.threshold:.4f}); wrote {args.out}; {queued} queued for review")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    db = Database(args.db)
    if args.review_id is None:
        frame = review_frame(db, None if args.status == "all" else args.status)
        _print_frame(frame.select("id", "path", "score", "suggested", "status", "label", "decided_by", "decided_at") if frame.height else frame)
        return 0
    if not (args.confirm or args.assign or args.add):
        raise ValueError("to decide a review item give --confirm, --assign CLASS or --add CLASS")
    status, label = ("distractor", None) if args.confirm else ("assigned", args.assign) if args.assign else ("added", args.add)
    searcher = Searcher(db, args.model)
    join = lambda path, name: add_to_catalogue(db, path, name, searcher.encoder)  # noqa: E731
    row = decide(db, Decision(args.review_id, status, label, args.by), join_catalogue=join)
    print(f"review {row['id']}: {row['status']}" + (f" as {row['label']}, joined the catalogue" if row["label"] else ""))
    return 0


def cmd_calibrations(args: argparse.Namespace) -> int:
    _print_frame(calibrations_frame(Database(args.db)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.compare:
        return importlib.import_module("console.cli_quality").run_compare(args)
    searcher = _searcher(args)
    catalogue, catalogue_labels = load_split(searcher.table, f"split = '{args.catalogue_split}'")
    if args.query_dir:
        files = [f for f in scan_folder(Path(args.query_dir)) if f.labels]
        queries, query_labels = searcher.encode_files([f.path for f in files]), [f.labels[0] for f in files]
    else:
        queries, query_labels = load_split(searcher.table, f"split = '{args.query_split}'")
    result = evaluate(queries, query_labels, catalogue, catalogue_labels, vote_neighbours=searcher.config.vote_neighbours)
    print(f"model {searcher.model.id}: {result.queries} queries against {result.catalogue} catalogue images")
    _print_frame(result.as_frame())
    if args.per_class:
        _print_frame(result.per_class)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    db = Database(args.db)
    parent = db.resolve_model(args.parent)
    head = HeadConfig(kind=args.head, out_dim=args.dim, hidden_dim=args.hidden, dropout=args.dropout)
    finetune = FinetuneConfig(unfreeze_blocks=args.unfreeze_blocks, backbone_lr=args.backbone_lr, lora=args.lora, lora_rank=args.lora_rank,
                              image_size=args.image_size, unlabelled_dir=args.unlabelled, unlabelled_where=args.unlabelled_where,
                              consistency_weight=args.consistency_weight, workers=args.workers)
    epochs, batch_size = _REGIME_DEFAULTS.get(args.regime, (TrainConfig.epochs, TrainConfig.batch_size))
    config = TrainConfig(method=args.method, head=head, epochs=args.epochs or epochs, batch_size=args.batch_size or batch_size, lr=args.lr,
                         patience=args.patience, catalogue_where=args.catalogue_where, seed=args.seed, device=args.device,
                         regime=args.regime, finetune=finetune)

    def show(event: TrainEvent) -> None:
        print(f"epoch {event.epoch:3d}/{event.epochs}  loss {event.loss:.4f}  val mAP@5 {event.val_map5:.4f}  "
              f"val P@1 {event.val_p1:.4f}  best {event.best_map5:.4f}  {event.seconds:.1f}s", flush=True)

    result = train(db, parent, config, progress=show)
    print(f"trained {result.model.id} from {parent.id}: {result.epochs_run} epochs, best val mAP@5 {result.val_map5:.4f} "
          f"at epoch {result.best_epoch}, {result.seconds:.1f}s")
    if args.activate:
        db.activate_model(result.model.id)
        print(f"{result.model.id} is now the active model")
    return 0


# epochs and batch size of each regime when not given: fine-tuning decodes images, and runs on CPU too
_REGIME_DEFAULTS = {"head": (TrainConfig.epochs, TrainConfig.batch_size), "finetune": (10, 32)}


def cmd_models(args: argparse.Namespace) -> int:
    db = Database(args.db)
    if args.activate:
        print(f"{db.activate_model(args.activate).id} is now the active model")
        return 0
    frame = db.models_frame()
    if not frame.height:
        print("no models yet: run lookalike ingest")
        return 0
    active = db.active_model_id() or frame["id"][0]
    val = [json.loads(n).get("val_map5") if n else None for n in frame["notes"]]
    _print_frame(frame.with_columns(pl.Series("val_map5", val, pl.Float64), (pl.col("id") == active).alias("active"))
                 .select("id", "active", "parent", "architecture", "dim", "val_map5", "created_at"))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    db = Database(args.db)
    print(f"database {db.uri}")
    _print_frame(db.summary())
    models = db.models_frame()
    if models.height:
        _print_frame(models.select("id", "encoder", "architecture", "dim", "weights_sha256", "created_at"))
    images = db.images_frame(columns=["split", "label"])
    if images.height:
        _print_frame(images.group_by("split", "label").len().sort("split", "label"))
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    _print_frame(Database(args.db).errors_frame())
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    print("\n".join(list_encoders()))
    return 0


def _reranker_name(name: str) -> str:
    """argparse type: a reranker or a chain such as ``qe+k-reciprocal`` (the error names the choices)."""
    from engine.rerank import create_reranker

    try:
        create_reranker(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="Embedded image-retrieval database.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, help=f"database folder or object-store URI, e.g. s3://bucket/path (default: $LOOKALIKE_DB or {default_db_path()})")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", parents=[common], help="scan a folder and add its images")
    ingest.add_argument("folder", type=Path)
    ingest.add_argument("--labels", type=Path, help="CSV: image file name, space-separated class ids")
    ingest.add_argument("--model", default="efficientnet_lite0", help=f"encoder: one of {list_encoders()} or any timm architecture")
    ingest.add_argument("--weights", help="local weights file for the encoder")
    ingest.add_argument("--split", help="split name for these images (e.g. train)")
    ingest.add_argument("--holdout", type=open_fraction, help="move this fraction of each class to --holdout-split (stratified)")
    ingest.add_argument("--holdout-split", default="val")
    ingest.add_argument("--seed", type=int, default=0)
    ingest.add_argument("--batch-size", type=positive_int, default=32)
    ingest.add_argument("--workers", type=positive_int, default=2, help="decode threads (local engine) or encoder actors (--engine ray)")
    ingest.add_argument("--engine", default="local", choices=list_ingest_engines(), help=f"where the stages run; ray needs {RAY_INSTALL_HINT}")
    ingest.add_argument("--address", help="Ray cluster address with --engine ray (default: the local machine)")
    ingest.add_argument("--gpus-per-worker", type=non_negative_float, help="GPUs per Ray encoder actor (default: 1 when the cluster has GPUs)")
    ingest.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    add_mask_options(ingest, "mask images with this stored masker before encoding (see lookalike maskers)")
    ingest.set_defaults(func=cmd_ingest)

    search_opts = argparse.ArgumentParser(add_help=False, parents=[common])
    search_opts.add_argument("--model", help="model id or encoder name (default: the newest model)")
    search_opts.add_argument("-k", type=positive_int, default=10)
    search_opts.add_argument("--reranker", default="faiss", type=_reranker_name,
                             help=f"one of {', '.join(list_rerankers())}, or quality stages chained with '+' (e.g. qe+k-reciprocal)")

    search = sub.add_parser("search", parents=[search_opts], help="find the catalogue images nearest to query images")
    search.add_argument("queries", nargs="*", help="query image files or folders")
    search.add_argument("--id", action="append", help="search with a stored image id (repeatable)")
    search.add_argument("--where", help="SQL filter over image metadata, e.g. \"label = 'coast' AND width >= 256\"")
    search.add_argument("--columns", help="extra columns to show, comma-separated (e.g. split,width)")
    search.add_argument("--predict", action="store_true", help="also print the top-5 classes by k-NN voting")
    add_mask_options(search, "mask queries with this masker (default: as the model's catalogue was masked); another masking is refused")
    search.set_defaults(func=cmd_search)

    evaluation = sub.add_parser("eval", parents=[search_opts], help="P@1, P@5, mAP@5 and mAP of a model")
    evaluation.add_argument("--catalogue-split", default="train")
    evaluation.add_argument("--query-split", default="val")
    evaluation.add_argument("--query-dir", help="labelled query folder instead of --query-split")
    evaluation.add_argument("--per-class", action="store_true")
    evaluation.add_argument("--compare", metavar="PIPELINES", help="pipelines side by side, RERANKER[@MODEL] comma-separated, e.g. base,qe,dba,k-reciprocal,qe+k-reciprocal@MODEL")
    evaluation.set_defaults(func=cmd_eval)

    calibrate = sub.add_parser("calibrate", parents=[common], help="calibrate the distractor threshold on the catalogue")
    calibrate.add_argument("--model", help="model id or encoder name (default: the newest model)")
    calibrate.add_argument("--scorer", default=CalibrationConfig.scorer, choices=list(list_scorers()))
    calibrate.add_argument("--objective", default=CalibrationConfig.objective, choices=["map5", "fpr", "roc"],
                           help="map5: best MAP@5 with -1; fpr: flag at most --target-fpr of known images; roc: nearest the top-left corner")
    calibrate.add_argument("--target-fpr", type=open_fraction, default=CalibrationConfig.target_fpr)
    calibrate.add_argument("--folds", type=positive_int, default=CalibrationConfig.folds)
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--catalogue-where", default=DEFAULT_CATALOGUE_WHERE, help="which rows are the catalogue")
    calibrate.set_defaults(func=cmd_calibrate)
    sub.add_parser("calibrations", parents=[common], help="stored calibrations, newest first").set_defaults(func=cmd_calibrations)

    predict = sub.add_parser("predict", parents=[search_opts], help="top-5 classes with -1 for distractors, as a Kaggle CSV")
    predict.add_argument("queries", help="query folder (or one image)")
    predict.add_argument("--out", default="submission.csv")
    predict.add_argument("--no-review", action="store_true", help="do not queue flagged queries for review")
    predict.set_defaults(func=cmd_predict)

    review = sub.add_parser("review", parents=[common], help="the distractor review queue; with an id, decide it")
    review.add_argument("review_id", nargs="?")
    review.add_argument("--status", default="pending", help="pending, distractor, assigned, added or all")
    review.add_argument("--model", help="model whose encoder adds images to the catalogue")
    decision = review.add_mutually_exclusive_group()
    decision.add_argument("--confirm", action="store_true", help="confirm it is a distractor")
    decision.add_argument("--assign", metavar="CLASS", help="it belongs to this known class (joins the catalogue)")
    decision.add_argument("--add", metavar="CLASS", help="it is a new class (joins the catalogue)")
    review.add_argument("--by", default=os.environ.get("USER", "unknown"), help="who decides")
    review.set_defaults(func=cmd_review)

    train = sub.add_parser("train", parents=[common], help="train a head on stored features, or fine-tune the backbone on the images")
    train.add_argument("--regime", default="head", choices=list_regimes(),
                       help="head: a head on the parent's stored features (fast); finetune: last backbone blocks (or LoRA) and a head on augmented images")
    train.add_argument("--method", default="arcface", choices=list(list_methods()), help="simsiam and rotation need no labels (finetune regime)")
    train.add_argument("--parent", help="model whose features to train on (default: the active model)")
    train.add_argument("--head", default="mlp", choices=["mlp", "linear"])
    train.add_argument("--dim", type=positive_int, default=512)
    train.add_argument("--hidden", type=positive_int, default=1024)
    train.add_argument("--dropout", type=unit_fraction, default=0.2)
    train.add_argument("--epochs", type=positive_int, help="default: 40 (head), 10 (finetune)")
    train.add_argument("--batch-size", type=positive_int, help="default: 128 (head), 32 (finetune)")
    train.add_argument("--lr", type=positive_float, default=TrainConfig.lr)
    train.add_argument("--patience", type=positive_int, default=TrainConfig.patience)
    train.add_argument("--catalogue-where", default=TrainConfig.catalogue_where)
    train.add_argument("--seed", type=int, default=0)
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
    tuning.add_argument("--consistency-weight", type=non_negative_float, default=0.0, help="weight of the weak/strong consistency term")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", parents=[common], help="model versions; --activate ID picks the default")
    models.add_argument("--activate", metavar="MODEL_ID")
    models.set_defaults(func=cmd_models)

    sub.add_parser("info", parents=[common], help="tables, models and label counts").set_defaults(func=cmd_info)
    sub.add_parser("errors", parents=[common], help="files that could not be ingested").set_defaults(func=cmd_errors)
    sub.add_parser("encoders", help="registered encoders").set_defaults(func=cmd_encoders)
    for module_name in FEATURE_COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub, common=common, search_opts=search_opts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, LookupError, OSError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
