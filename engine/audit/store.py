"""The ``audit`` table: findings written by a run, read back, decided and undone.

A decision is a catalogue edit (:mod:`engine.catalogue.edits`: relabel, delete, move to a split), so it reaches
every model version like any other edit. It is made in three steps that survive ``kill -9``: the intent and the
values it replaces are written on the finding (still open), the edit is applied (idempotent), then the finding
is marked decided. A run killed between the steps is finished by deciding the same again; the values recorded in
the first step are kept, so an undo after it still restores what the images held before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

import schemas
from engine.audit.finders import Finding
from engine.catalogue import edits
from engine.catalogue.edits import EditReport, Selection
from engine.core.clock import utc_now
from engine.core.errors import InvalidRequestError, NotFoundError
from engine.core.faults import fault_point
from engine.core.progress import ProgressCallback
from engine.core.splits import sql_quote
from engine.storage.database import AMBIGUITY_SHOWN, Database
from engine.storage.lock import writer_lock

logger = logging.getLogger(__name__)

OPEN = schemas.AUDIT_STATUSES[0]
ACTIONS = {"keep": "kept", "relabel": "relabelled", "delete": "deleted", "move": "moved"}  # decision -> status
ID_DIGITS = 16  # hex digits of a finding id (64 bits: no collision among a catalogue's findings)


def finding_id(finding: Finding) -> str:
    """A finding's key: its kind, its images as a set and, for a label mistake, the label it questions (a split
    skew: its feature and value). The same problem found again gets the same id, so a decision about it holds."""
    text = "|".join([finding.kind, finding.label or "", finding.key, *sorted(finding.image_ids)])
    return hashlib.blake2b(text.encode(), digest_size=ID_DIGITS // 2).hexdigest()


def finding_rows(findings: Sequence[Finding], model_id: str, scope: str) -> list[dict[str, Any]]:
    now = utc_now()
    return [{"id": finding_id(f), "kind": f.kind, "model_id": model_id, "scope": scope, "image_ids": list(f.image_ids), "score": f.score,
             "label": f.label, "suggested": f.suggested, "message": f.message, "evidence": json.dumps(f.evidence, default=str),
             "status": OPEN, "decision": None, "decided_by": None, "decided_at": None, "created_at": now} for f in findings]


def write_findings(db: Database, findings: Sequence[Finding], model_id: str, scope: str, kinds: Sequence[str]) -> tuple[int, int]:
    """Store a run's findings: new ones added, open ones updated, decided ones (and ones with a decision under way)
    left as they are, open ones of the same kinds, version and scope that were not found again removed.
    Returns (findings written, decided findings found again)."""
    unique: dict[str, dict[str, Any]] = {}
    for row in finding_rows(findings, model_id, scope):
        unique.setdefault(row["id"], row)  # the first of an id wins
    rows = list(unique.values())
    table = db.audit
    earlier = pl.from_arrow(table.search().where(f"model_id = {sql_quote(model_id)} AND scope = {sql_quote(scope)}")
                            .select(["id", "kind", "status", "decision"]).limit(None).to_arrow())
    held = set(earlier.filter((pl.col("status") != OPEN) | pl.col("decision").is_not_null())["id"].to_list()) if earlier.height else set()
    fresh = [row for row in rows if row["id"] not in held]
    if fresh:
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(pa.Table.from_pylist(fresh, schema=schemas.AUDIT_SCHEMA))
    fault_point("audit.written")
    found = {row["id"] for row in rows}
    stale = earlier.filter((pl.col("status") == OPEN) & pl.col("decision").is_null() & pl.col("kind").is_in(list(kinds))
                           & ~pl.col("id").is_in(list(found))) if earlier.height else earlier
    for start in range(0, stale.height, 1024):
        table.delete("id IN (" + ", ".join(sql_quote(i) for i in stale["id"][start : start + 1024]) + ")")
    return len(fresh), len(found & held)


def audit_frame(db: Database, kind: str | None = None, status: str | None = OPEN) -> pl.DataFrame:
    """Findings, highest score first within each kind, with what the catalogue says of them now: ``present`` (how
    many of their images it still holds) and ``outdated`` (why an open finding no longer stands: images deleted
    since, or a label mistake whose image was relabelled since; None when it stands). ``status=None``: every status."""
    conditions = [*([f"kind = {sql_quote(kind)}"] if kind else []), *([f"status = {sql_quote(status)}"] if status else [])]
    query = db.audit.search().limit(None)
    if conditions:
        query = query.where(" AND ".join(conditions))
    frame = pl.from_arrow(query.to_arrow())
    if not frame.height:
        return frame.with_columns(pl.lit(0, pl.Int64).alias("present"), pl.lit(None, pl.String).alias("outdated"))
    catalogue = db.images_frame(columns=["id", "label"]).rename({"id": "image_id", "label": "current_label"})
    members = frame.select("id", pl.col("image_ids").alias("image_id")).explode("image_id")
    present = members.join(catalogue, on="image_id", how="left").group_by("id", maintain_order=True).agg(
        pl.col("current_label").is_not_null().sum().cast(pl.Int64).alias("labelled_now"),
        pl.col("image_id").is_in(catalogue["image_id"].implode()).sum().cast(pl.Int64).alias("present"),
        pl.col("current_label").first().alias("first_label"))
    frame = frame.join(present, on="id", how="left")
    gone = pl.col("image_ids").list.len() - pl.col("present")
    outdated = (pl.when(pl.col("status") != OPEN).then(None)
                .when(gone > 0).then(pl.format("{} of its images deleted since", gone))
                .when((pl.col("kind") == "label-mistake") & (pl.col("first_label") != pl.col("label")))
                .then(pl.format("relabelled {} since", pl.col("first_label"))))
    return (frame.with_columns(outdated.alias("outdated")).drop("labelled_now", "first_label")
            .sort(["kind", "score", "id"], descending=[False, True, False]))


def resolve_finding(db: Database, given: str) -> dict[str, Any]:
    """A finding by its id or a unique prefix of it."""
    wanted = given.strip()
    if not wanted:
        raise InvalidRequestError("give a finding id (lookalike audit list shows them)")
    rows = db.audit.search().where(f"id = {sql_quote(wanted)} OR starts_with(id, {sql_quote(wanted)})").limit(AMBIGUITY_SHOWN + 1).to_arrow().to_pylist()
    exact = [row for row in rows if row["id"] == wanted]
    if exact or len(rows) == 1:
        return (exact or rows)[0]
    if not rows:
        raise NotFoundError(f"no audit finding is or starts with {wanted!r} (lookalike audit list shows them)")
    raise NotFoundError(f"finding id prefix {wanted!r} is ambiguous ({', '.join(r['id'] for r in rows[:AMBIGUITY_SHOWN])}); give more of it")


@dataclass(frozen=True)
class AuditDecision:
    """What a person decided about one finding. ``images`` narrows it to some of the finding's images (default:
    the one image of a label mistake or outlier; for a near-duplicate group, every image but the first for
    ``delete``/``move`` and all of them for ``relabel``)."""

    finding: str  # id or unique prefix
    action: str  # keep | relabel | delete | move
    label: str | None = None  # relabel: the class (default: the finding's suggestion)
    split: str | None = None  # move: the split (default for a near-duplicate group: the first image's)
    images: tuple[str, ...] = ()
    decided_by: str = "unknown"


@dataclass(frozen=True)
class DecisionReport:
    finding: dict[str, Any]
    edit: EditReport | None


def _targets(row: dict[str, Any], decision: AuditDecision) -> list[str]:
    involved = list(row["image_ids"])
    if decision.images:
        chosen = [i for i in involved if any(i.startswith(given) for given in decision.images)]
        if len(chosen) != len(set(decision.images)):
            raise InvalidRequestError(f"--images must name images of this finding ({', '.join(i[:12] for i in involved[:AMBIGUITY_SHOWN])}...)")
        return chosen
    if row["kind"] == "split-skew" and decision.action in ("delete", "move", "relabel"):
        raise InvalidRequestError(f"a split skew involves {len(involved)} images; {decision.action} them with lookalike {decision.action} --where ..., "
                                  "or name some with --images; keep records that it was looked at")
    if row["kind"] == "near-duplicate" and decision.action in ("delete", "move"):
        return involved[1:]  # keep one copy where it is
    return involved


def _current(db: Database, image_ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not image_ids:
        return {}
    frame = db.images_frame("id IN (" + ", ".join(sql_quote(i) for i in image_ids) + ")", ["id", *columns])
    return {row.pop("id"): row for row in frame.to_dicts()}


def _set_row(db: Database, row: dict[str, Any]) -> None:
    with writer_lock(db.uri, "audit decision"):
        db.audit.merge_insert("id").when_matched_update_all().execute(pa.Table.from_pylist([row], schema=schemas.AUDIT_SCHEMA))


def _intent(db: Database, row: dict[str, Any], decision: AuditDecision) -> dict[str, Any]:
    """The decision to carry out, as recorded on the finding before anything changes (or as a killed run left it)."""
    if row["decision"] is not None:
        pending = json.loads(row["decision"])
        if pending["action"] != decision.action:
            raise InvalidRequestError(f"finding {row['id']} has an unfinished {pending['action']} decision (a run was cut off); decide "
                                      f"--{pending['action']} again to finish it, then undo it if it was not wanted")
        return pending
    targets = _targets(row, decision)
    intent: dict[str, Any] = {"action": decision.action, "images": targets}
    if decision.action == "relabel":
        label = decision.label or row["suggested"]
        if not label:
            raise InvalidRequestError(f"finding {row['id']} suggests no label; give one with --to CLASS")
        intent.update(label=edits.check_label(label), previous=_current(db, targets, ["label", "labels"]))
    elif decision.action == "move":
        split = decision.split or (_current(db, row["image_ids"][:1], ["split"]).get(row["image_ids"][0], {}).get("split")
                                   if row["kind"] == "near-duplicate" else None)
        if not split:
            raise InvalidRequestError(f"say which split to move to with --to SPLIT (finding {row['id']})")
        intent.update(split=edits.check_label(split, "split"), previous=_current(db, targets, ["split"]))
    elif decision.action == "delete":
        intent.update(previous=_current(db, targets, ["path", "label", "split"]))
    _set_row(db, {**row, "decision": json.dumps(intent, default=str)})
    fault_point("audit.intent")
    return intent


def decide(db: Database, decision: AuditDecision, *, progress: ProgressCallback | None = None, device: str | None = None) -> DecisionReport:
    """Carry out a decision about a finding through the catalogue's edits and record it (who, when, what it replaced)."""
    if decision.action not in ACTIONS:
        raise InvalidRequestError(f"unknown audit decision {decision.action!r}; choose one of {list(ACTIONS)}")
    row = resolve_finding(db, decision.finding)
    if row["status"] != OPEN:
        raise InvalidRequestError(f"finding {row['id']} was decided already ({row['status']} by {row['decided_by']}); undo it first to decide again")
    if row["decision"] is None and decision.action != "keep":
        outdated = audit_frame(db, row["kind"]).filter(pl.col("id") == row["id"])["outdated"].to_list()
        if outdated and outdated[0]:
            raise InvalidRequestError(f"finding {row['id']} is out of date ({outdated[0]}); run lookalike audit again, or --keep it")
    intent = _intent(db, row, decision)
    report = None
    if decision.action != "keep":
        present = sorted(_current(db, intent["images"], []))  # a run cut off after its edit finds some gone (delete)
        if not present and decision.action != "delete":
            raise NotFoundError(f"the images of finding {row['id']} are no longer in the catalogue; nothing to {decision.action}")
        selection = Selection(ids=tuple(present))
        if decision.action == "relabel":
            report = edits.relabel(db, selection, intent["label"], progress=progress, device=device)
        elif decision.action == "move":
            report = edits.move_to_split(db, selection, intent["split"], progress=progress, device=device)
        elif present:
            report = edits.delete(db, selection, progress=progress, device=device)
    fault_point("audit.applied")
    decided = {**row, "decision": json.dumps(intent, default=str), "status": ACTIONS[decision.action], "decided_by": decision.decided_by, "decided_at": utc_now()}
    _set_row(db, decided)
    logger.info("audit finding %s: %s by %s", row["id"], decided["status"], decision.decided_by)
    return DecisionReport(decided, report)


def undo(db: Database, finding: str, *, progress: ProgressCallback | None = None, device: str | None = None) -> DecisionReport:
    """Take a decision back: labels or splits restored to what the finding recorded, the finding open again. A delete
    cannot be undone (its vectors are gone): the error names the files to ingest again."""
    row = resolve_finding(db, finding)
    if row["status"] == OPEN and row["decision"] is None:
        raise InvalidRequestError(f"finding {row['id']} is open: there is no decision to undo")
    intent = json.loads(row["decision"])
    if intent["action"] == "delete" and row["status"] != OPEN:
        paths = [value["path"] for value in intent.get("previous", {}).values()]
        raise InvalidRequestError(f"finding {row['id']}: deleted images cannot be brought back by undo; ingest their files again "
                                  f"({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})")
    report = None
    previous = intent.get("previous") or {}
    if intent["action"] in ("relabel", "move") and previous:
        report = edits.restore(db, previous, progress=progress, device=device)
    fault_point("audit.restored")
    reopened = {**row, "status": OPEN, "decision": None, "decided_by": None, "decided_at": None}
    _set_row(db, reopened)
    return DecisionReport(reopened, report)
