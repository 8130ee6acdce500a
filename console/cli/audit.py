"""``lookalike audit``: find label mistakes, near-duplicates, outliers and split skews, then list, show, decide and
undo the findings. Thin layer over ``console.service.audit``."""

from __future__ import annotations

import argparse
import os

from console.cli.data import print_versions
from console.cli.output import print_table, progress_bar
from engine.core.errors import InvalidRequestError

AUDIT_ACTIONS = ("run", "list", "show", "decide", "undo")
SHORT_ID = 12  # characters of an id shown in tables (any unique prefix is accepted back)
LIST_FORMATS = ("table", "csv", "json")


def _run(args: argparse.Namespace) -> int:
    from console.service.audit import AuditConfig, run_audit
    from engine.audit.finders import EXACT_SEARCH_ROWS as EXACT_ROWS
    from engine.audit.run import AGREEMENT_WARNING
    from engine.storage.database import Database

    defaults = AuditConfig()
    config = AuditConfig(kinds=tuple(args.kinds.split(",")) if args.kinds else defaults.kinds, k=args.k or defaults.k,
                         duplicate_threshold=args.duplicate_threshold or defaults.duplicate_threshold,
                         pixel_threshold=None if args.no_pixel_check else defaults.pixel_threshold)
    db = Database(args.db)
    with progress_bar() as show:
        report = run_audit(db, args.model, args.where, config, progress=show)
    found = ", ".join(f"{count} {kind}" for kind, count in report.counts.items())
    print(f"audited {report.images} images with model {report.model_id}" + (f" (where {report.scope})" if report.scope else "")
          + f" in {report.seconds:.1f}s: {found}")
    if report.vote_agreement is not None:
        print(f"the features' k-NN vote agrees with {report.vote_agreement:.1%} of the labels (leave-one-out)"
              + (": with features this weak most label-mistake findings are look-alike classes, not mistakes; audit with a stronger "
                 "version (--model) or read them as confusions" if report.vote_agreement < AGREEMENT_WARNING else ""))
    if report.search_recall < 1.0:
        print(f"neighbour search: approximate above {EXACT_ROWS:,} images, recall@10 {report.search_recall:.3f} against exact search (sampled)")
    if report.decided_again:
        print(f"{report.decided_again} findings were decided before and stay decided")
    print("lookalike audit list shows them; lookalike audit show ID, then decide ID --relabel|--keep|--delete|--move SPLIT")
    return 0


def _list(args: argparse.Namespace) -> int:
    import polars as pl

    from console.service.audit import list_findings
    from engine.storage.database import Database

    frame = list_findings(Database(args.db, read_only=True), args.kind, args.status)
    if args.format == "csv":
        print(frame.write_csv(), end="")
    elif args.format == "json":
        print(frame.write_json())
    elif not frame.height:
        print(f"no {'' if args.status == 'all' else args.status + ' '}findings" + (f" of kind {args.kind}" if args.kind else "")
              + " (lookalike audit runs the audit)")
    else:
        shown = frame.with_columns(pl.col("id").str.slice(0, SHORT_ID), pl.col("score").round(3))
        print_table(shown, title=f"{frame.height} findings")
    return 0


def _show(args: argparse.Namespace) -> int:
    from console.service.audit import show_finding
    from engine.storage.database import Database

    view = show_finding(Database(args.db, read_only=True), args.finding)
    row = view.row
    print(f"finding {row['id']} ({row['kind']}, score {row['score']:.3f}, {row['status']}" + (f" by {row['decided_by']}" if row["decided_by"] else "") + ")")
    print(row["message"])
    if row["suggested"]:
        print(f"suggested label: {row['suggested']}")
    if view.images.height:
        print_table(view.images.with_columns(view.images["id"].str.slice(0, SHORT_ID)), title="images (first: the centre of a group)")
    if view.outdated:
        print(f"out of date: {view.outdated} (run lookalike audit again, or --keep it)")
    for name in ("votes", "neighbours", "flags"):
        if view.evidence.get(name):
            print(f"{name}: {view.evidence[name]}")
    if view.decision:
        print(f"decision: {view.decision['action']} " + ", ".join(f"{k}={v}" for k, v in view.decision.items() if k in ("label", "split")))
    return 0


def _decide(args: argparse.Namespace) -> int:
    from console.service.audit import AuditDecision, decide
    from engine.storage.database import Database

    chosen = [name for name in ("relabel", "keep", "delete", "move") if getattr(args, name) not in (None, False)]
    if len(chosen) != 1:
        raise InvalidRequestError("decide with one of --relabel [CLASS], --keep, --delete or --move [SPLIT]")
    action = chosen[0]
    value = getattr(args, action)
    decision = AuditDecision(args.finding, action, label=value if action == "relabel" and isinstance(value, str) else None,
                             split=value if action == "move" and isinstance(value, str) else None, images=tuple(args.images or ()), decided_by=args.by)
    with progress_bar() as show:
        report = decide(Database(args.db), decision, progress=show, device=args.device)
    print(f"finding {report.finding['id']}: {report.finding['status']} by {report.finding['decided_by']}")
    if report.edit is not None:
        print(f"{report.edit.action}: {report.edit.images} images; the catalogue holds {report.edit.catalogue}")
        print_versions(report.edit.versions)
    return 0


def _undo(args: argparse.Namespace) -> int:
    from console.service.audit import undo
    from engine.storage.database import Database

    with progress_bar() as show:
        report = undo(Database(args.db), args.finding, progress=show, device=args.device)
    print(f"finding {report.finding['id']} is open again" + (f"; {report.edit.images} images restored" if report.edit else ""))
    if report.edit is not None:
        print_versions(report.edit.versions)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    if args.action in ("show", "decide", "undo") and not args.finding:
        raise InvalidRequestError(f"lookalike audit {args.action} needs a finding id (lookalike audit list shows them)")
    if args.action in ("run", "list") and args.finding:
        raise InvalidRequestError(f"lookalike audit {args.action} takes no finding id; did you mean audit show {args.finding}?")
    return {"run": _run, "list": _list, "show": _show, "decide": _decide, "undo": _undo}[args.action](args)


def add_commands(sub: argparse._SubParsersAction, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", parents=[common], help="find label mistakes, near-duplicates, outliers and split skews; list, show, decide, undo",
                           description="lookalike audit [run] finds; audit list | show ID | decide ID --relabel|--keep|--delete|--move | undo ID")
    audit.add_argument("action", nargs="?", default="run", choices=AUDIT_ACTIONS)
    audit.add_argument("finding", nargs="?", help="a finding id or unique prefix (show, decide, undo)")
    running = audit.add_argument_group("run")
    running.add_argument("--model", help="version whose features to use (default: the base encoder of the active model: a trained head vouches for "
                                         "the labels it learnt)")
    running.add_argument("--where", help="audit only these images, e.g. \"split = 'train'\"")
    running.add_argument("--kinds", help="comma-separated: label-mistake,near-duplicate,outlier,split-skew (default: all)")
    running.add_argument("-k", type=int, help="neighbours that vote for an image's class")
    running.add_argument("--duplicate-threshold", type=float, help="cosine similarity at which images are near-duplicates on features alone")
    running.add_argument("--no-pixel-check", action="store_true", help="no thumbnail check of near-duplicate candidates (reads no files)")
    listing = audit.add_argument_group("list")
    listing.add_argument("--kind", help="only findings of this kind")
    listing.add_argument("--status", default="open", help="open, kept, relabelled, deleted, moved or all")
    listing.add_argument("--format", default="table", choices=LIST_FORMATS)
    deciding = audit.add_argument_group("decide")
    deciding.add_argument("--relabel", nargs="?", const=True, metavar="CLASS", help="relabel to CLASS (default: the suggested label)")
    deciding.add_argument("--keep", action="store_true", help="nothing is wrong: keep as it is (not raised again)")
    deciding.add_argument("--delete", action="store_true", help="delete the image (of a near-duplicate group: every copy but the first)")
    deciding.add_argument("--move", nargs="?", const=True, metavar="SPLIT", help="move to SPLIT (a near-duplicate group: to the first image's split)")
    deciding.add_argument("--images", nargs="+", metavar="ID", help="only these of the finding's images (ids or prefixes)")
    deciding.add_argument("--by", default=os.environ.get("USER", "unknown"), help="who decides")
    deciding.add_argument("--device", help="where versions that re-embed images run")
    audit.set_defaults(func=cmd_audit)



