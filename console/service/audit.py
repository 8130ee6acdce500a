"""Use cases of the data audit: run it, list and show findings, decide and undo. Thin over ``engine.audit``; the CLI
and the console's Audit screen call these."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from engine.audit import ACTIONS, AuditConfig, AuditDecision, AuditReport, DecisionReport, audit_frame, decide, resolve_finding, run_audit, undo
from engine.core.splits import sql_quote
from engine.storage.database import Database

__all__ = ["ACTIONS", "AuditConfig", "AuditDecision", "AuditReport", "DecisionReport", "FindingView", "audit_frame", "decide", "list_findings",
           "run_audit", "show_finding", "undo"]

LIST_COLUMNS = ["id", "kind", "score", "status", "images", "message"]


def list_findings(db: Database, kind: str | None = None, status: str | None = "open") -> pl.DataFrame:
    """Findings as a person reads them: id, kind, score, status, images involved (and how many are gone), the message."""
    frame = audit_frame(db, kind, None if status == "all" else status)
    if not frame.height:
        return pl.DataFrame(schema={"id": pl.String, "kind": pl.String, "score": pl.Float64, "status": pl.String, "images": pl.String, "message": pl.String})
    count = pl.col("image_ids").list.len().cast(pl.String)
    message = pl.when(pl.col("outdated").is_not_null()).then(pl.format("[out of date: {}] {}", pl.col("outdated"), pl.col("message"))).otherwise(pl.col("message"))
    return frame.with_columns(count.alias("images"), message.alias("message")).select(LIST_COLUMNS)


@dataclass(frozen=True)
class FindingView:
    """One finding with its evidence decoded and the rows of its images (in the finding's order)."""

    row: dict[str, Any]
    evidence: dict[str, Any]
    decision: dict[str, Any] | None
    images: pl.DataFrame  # id, path, label, split of the images still in the catalogue
    outdated: str | None = None  # why an open finding no longer stands (see engine.audit.audit_frame)


def show_finding(db: Database, finding: str) -> FindingView:
    row = resolve_finding(db, finding)
    ids = list(row["image_ids"])
    images = db.images_frame("id IN (" + ", ".join(sql_quote(i) for i in ids) + ")", ["id", "path", "label", "split"]) if ids else pl.DataFrame()
    if images.height:
        order = {image_id: position for position, image_id in enumerate(ids)}
        images = images.with_columns(pl.col("id").replace_strict(order, return_dtype=pl.Int64).alias("order")).sort("order").drop("order")
    outdated = audit_frame(db, row["kind"], None).filter(pl.col("id") == row["id"])["outdated"].to_list()
    return FindingView(row, json.loads(row["evidence"]), json.loads(row["decision"]) if row["decision"] else None, images, outdated[0] if outdated else None)
