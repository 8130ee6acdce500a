"""Retrieval-quality commands: derived model versions (``whiten``, ``dba``, ``ensemble``, ``tta``)
and ``eval --compare`` (pipelines side by side). Thin layer over ``engine.versions.derived`` and
``engine.evaluation.compare``."""

from __future__ import annotations

import argparse

from console.cli.arguments import crop_fraction, non_negative_float, non_negative_int, open_fraction, positive_float, positive_int
from console.cli.options import registered
from console.cli.output import add_output_options, progress_bar, show_rows
from engine.core.errors import InvalidRequestError
from engine.core.splits import CATALOGUE_WHERE, split_where
from engine.evaluation.config import OBJECTIVES, TuneConfig


def _publish(args: argparse.Namespace, kind: str, parents: list[str | None], config) -> int:  # noqa: ANN001
    from engine.storage.database import Database
    from engine.versions.derived import publish_derived

    db = Database(args.db)
    records = [db.resolve_model(p) for p in parents]

    with progress_bar() as show:
        record = publish_derived(db, kind, records, config, progress=show, device=getattr(args, "device", None))
    print(f"{kind} version {record.id} of {[r.id for r in records]}: dim {record.dim}")
    if args.activate:
        db.activate_model(record.id)
        print(f"{record.id} is now the active model")
    return 0


def cmd_whiten(args: argparse.Namespace) -> int:
    from engine.encoders.whitening import WhiteningConfig

    config = WhiteningConfig(out_dim=args.dim or None, power=args.power, epsilon=args.epsilon, catalogue_where=args.catalogue_where)
    return _publish(args, "whiten", [args.parent], config)


def cmd_dba(args: argparse.Namespace) -> int:
    from engine.versions.derived import DBAConfig

    return _publish(args, "dba", [args.parent], DBAConfig(neighbours=args.neighbours, alpha=args.alpha, catalogue_where=args.catalogue_where))


def cmd_ensemble(args: argparse.Namespace) -> int:
    from engine.encoders.ensembles import EnsembleConfig

    weights = tuple(float(w) for w in args.weights.split(",")) if args.weights else None
    return _publish(args, "ensemble", list(args.members), EnsembleConfig(weights=weights))


def cmd_tta(args: argparse.Namespace) -> int:
    from engine.encoders.tta import TTAConfig

    scales = tuple(float(s) for s in args.scales.split(","))
    config = TTAConfig(flip=not args.no_flip, crops=args.crops, crop_fraction=args.crop_fraction, scales=scales)
    print(f"re-encoding every stored image with {config.views} views each")
    return _publish(args, "tta", [args.parent], config)


def run_compare(args: argparse.Namespace) -> int:
    """``lookalike eval --compare``: pipelines side by side on the stored query and catalogue splits."""
    from engine.evaluation.compare import compare_pipelines, parse_pipelines
    from engine.storage.database import Database

    specs = parse_pipelines(args.compare)
    if args.query_dir:
        raise InvalidRequestError("--compare evaluates the stored --query-split; it does not take --query-dir")
    with progress_bar(lines=True) as show:
        frame = compare_pipelines(Database(args.db, read_only=True), specs, args.model, catalogue_where=split_where(args.catalogue_split),
                                  query_where=split_where(args.query_split), k=args.k, progress=show)
    show_rows(args, {"pipelines": frame}, empty="no pipelines")
    return 0


def _methods(text: str) -> list[str]:
    """argparse type: comma-separated training methods ('' for none)."""
    return [registered("methods")(name.strip()) for name in text.split(",") if name.strip()]


def _encoders(text: str) -> list[str]:
    """argparse type: comma-separated registered encoders."""
    return [registered("encoders")(name.strip()) for name in text.split(",") if name.strip()]


def cmd_tune(args: argparse.Namespace) -> int:
    """``lookalike tune``: choose and store the query pipeline on a hold-out of the catalogue (``--show``: what is stored)."""
    from console.service.tuning import tune_pipeline, tuned_pipelines, tuning_candidates
    from engine.storage.database import Database

    if args.show:
        db = Database(args.db, read_only=True)
        show_rows(args, {"pipelines": tuned_pipelines(db), "candidates": tuning_candidates(db, args.models[0] if args.models else None)},
                  empty="no tuned pipeline yet: run lookalike tune")
        return 0
    config = TuneConfig(objective=args.objective, holdout=args.holdout, budget_s=60 * args.budget_minutes, seed=args.seed,
                        catalogue_where=args.catalogue_where, head_methods=tuple(args.heads), **({"fusion_weights": ()} if args.no_fusion else {}))
    db = Database(args.db)
    with progress_bar() as show:
        result = tune_pipeline(db, args.models, config, allow_leak=args.allow_leak, activate=not args.no_activate, encode=args.encode, progress=show)
    best = result.best
    print(f"tuned on {result.probes} catalogue images held out against the other {result.gallery} in {result.seconds:.0f} s: "
          f"{best.model.id} with {best.pipeline.describe()} ({config.objective} {best.pipeline.score:.4f})")
    fusion = best.pipeline.fusion
    if fusion:
        weight, scores = fusion["weight"], fusion["scores"]
        how = f"k-NN vote + classifier at weight {weight:g}" if weight else "the k-NN vote alone"
        print(f"class prediction: {how} (hold-out mAP@5 of the classes {scores[f'{weight:g}']:.4f}; the vote alone {scores.get('0', float('nan')):.4f})")
    print(f"stored with {best.model.id}" + ("" if args.no_activate else ", now the active model") + "; search, predict and eval use it "
          "unless given --reranker; every candidate: lookalike tune --show")
    return 0


def add_commands(sub: argparse._SubParsersAction, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    derived = argparse.ArgumentParser(add_help=False, parents=[common])
    derived.add_argument("--activate", action="store_true", help="make the new version the default")
    catalogue = argparse.ArgumentParser(add_help=False)
    catalogue.add_argument("--parent", help="model version to derive from (default: the active model)")
    catalogue.add_argument("--catalogue-where", default=CATALOGUE_WHERE, help="rows that are the catalogue")

    whiten = sub.add_parser("whiten", parents=[derived, catalogue], help="PCA-whitening fitted on the catalogue, as a new model version")
    whiten.add_argument("--dim", type=non_negative_int, default=256, help="principal axes kept (0: all)")
    whiten.add_argument("--power", type=non_negative_float, default=0.5, help="eigenvalue power: 0.5 full whitening, 0 rotation only")
    whiten.add_argument("--epsilon", type=positive_float, default=1e-3, help="regulariser, relative to the largest eigenvalue")
    whiten.set_defaults(func=cmd_whiten)

    dba = sub.add_parser("dba", parents=[derived, catalogue], help="database-side augmentation of the catalogue, as a new model version")
    dba.add_argument("--neighbours", type=positive_int, default=5)
    dba.add_argument("--alpha", type=non_negative_float, default=3.0)
    dba.set_defaults(func=cmd_dba)

    ensemble = sub.add_parser("ensemble", parents=[derived], help="concatenate normalised embeddings of several versions")
    ensemble.add_argument("members", nargs="+", help="model ids or encoder names (at least 2)")
    ensemble.add_argument("--weights", help="comma-separated weights, one per member (default: equal)")
    ensemble.set_defaults(func=cmd_ensemble)

    tta = sub.add_parser("tta", parents=[derived], help="re-encode every stored image with test-time augmentation, as a new version")
    tta.add_argument("--parent", help="model version whose encoder to augment (default: the active model)")
    tta.add_argument("--no-flip", action="store_true", help="no horizontal mirror")
    tta.add_argument("--crops", type=int, default=0, choices=[0, 1, 5])
    tta.add_argument("--crop-fraction", type=crop_fraction, default=0.875)
    tta.add_argument("--scales", default="1.0", help="comma-separated input scales, e.g. 1.0,1.15")
    tta.add_argument("--device", help="cpu, cuda (default: cuda when present)")
    tta.set_defaults(func=cmd_tta)

    tune = sub.add_parser("tune", parents=[common], help="choose the query pipeline (version, re-rankers) on a hold-out of the catalogue and store it")
    tune.add_argument("--models", nargs="+", help="versions to consider (default: every version)")
    tune.add_argument("--objective", choices=sorted(OBJECTIVES), default=TuneConfig.objective, help="what to maximise on the hold-out")
    tune.add_argument("--budget-minutes", type=positive_float, default=TuneConfig.budget_s / 60, help="stop scoring candidates after this long")
    tune.add_argument("--holdout", type=open_fraction, default=TuneConfig.holdout, help="share of the catalogue held out as probes")
    tune.add_argument("--seed", type=int, default=TuneConfig.seed)
    tune.add_argument("--catalogue-where", default=CATALOGUE_WHERE, help="rows that are the catalogue (the queries are never used)")
    tune.add_argument("--heads", default=list(TuneConfig.head_methods), type=_methods,
                      help="head methods trained on the gallery as more candidates, comma-separated ('' for none); a winning head is trained again on the whole catalogue")
    tune.add_argument("--allow-leak", action="store_true", help="let versions trained on the catalogue's labels win (their hold-out scores over-promise)")
    tune.add_argument("--encode", default=[], type=_encoders, metavar="ENCODERS",
                      help="comma-separated registered encoders (e.g. efficientnet_lite2) to encode the catalogue with first, as more candidates")
    tune.add_argument("--no-fusion", action="store_true", help="rank classes by the k-NN vote alone (no classifier blended in)")
    tune.add_argument("--no-activate", action="store_true", help="store the pipeline without making its version the default")
    tune.add_argument("--show", action="store_true", help="show the stored pipelines and every candidate's score; change nothing")
    add_output_options(tune)
    tune.set_defaults(func=cmd_tune)
