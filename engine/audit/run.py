"""One audit run: the features of the audited images, every finder over one shared neighbour search, the findings
stored in the ``audit`` table."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from engine.audit.finders import FINDERS, AuditConfig, AuditData, neighbours, search_recall
from engine.audit.store import write_findings
from engine.core.errors import InvalidRequestError
from engine.core.progress import Progress, ProgressCallback
from engine.reports.data import load_embeddings
from engine.storage.database import Database, ModelRecord
from engine.storage.filters import check_where
from engine.storage.lock import writer_lock
from engine.versions.coverage import coverage_of
from engine.versions.resolve import base_version, lineage

logger = logging.getLogger(__name__)

RECALL_WARNING = 0.95  # below this sampled recall of the neighbour search, the audit says so
AGREEMENT_WARNING = 0.9  # below this share of labels the votes agree with, label-mistake findings are mostly confusions
IMAGE_COLUMNS = ["id", "split", "label", "width", "height", "mode", "channels", "format"]


def audit_model(db: Database, name: str | None = None) -> ModelRecord:
    """The version whose features an audit uses: ``name`` when given, else the base encoder the active version is
    built on. A head trained on the catalogue's labels has learnt its mistakes too, so it would vouch for them."""
    if name:
        return db.resolve_model(name)
    active = db.resolve_model()
    return base_version(db, active) or lineage(db, active)[-1]


@dataclass(frozen=True)
class AuditReport:
    model_id: str
    scope: str
    images: int
    counts: dict[str, int] = field(default_factory=dict)  # findings per kind
    written: int = 0
    decided_again: int = 0  # findings decided earlier and found again (left as decided)
    seconds: float = 0.0
    search_recall: float = 1.0  # recall@10 of the shared neighbour search against exact search (1.0: it was exact)
    vote_agreement: float | None = None  # share of labelled images whose out-of-sample vote is their own label


def load_audit_data(db: Database, model: ModelRecord, where: str | None, config: AuditConfig) -> AuditData:
    """The audited images' vectors (from ``model``) and rows, and each image's nearest other images."""
    rows = load_embeddings(db, model, where, labelled=False)
    images = db.images_frame(where, IMAGE_COLUMNS).sort("id")
    similarities, positions = neighbours(rows.vectors, config.k + config.headroom)
    return AuditData(rows.ids, rows.paths, rows.labels, rows.splits, rows.vectors, images, similarities, positions)


def run_audit(db: Database, model: str | None = None, where: str | None = None, config: AuditConfig = AuditConfig(),
              progress: ProgressCallback | None = None) -> AuditReport:
    """Look for label mistakes, near-duplicates, outliers and split skews among the images ``where`` selects (default:
    all), with the features of :func:`audit_model`; store the findings (decided ones stay decided)."""
    started = time.perf_counter()
    record = audit_model(db, model)
    where = check_where(where, db.images.schema.names)
    coverage = coverage_of(db, record)
    if not coverage.in_step:
        raise InvalidRequestError(f"model {record.id} is {coverage.status} ({coverage.reason}); run lookalike refresh first so the audit sees every image")
    data = load_audit_data(db, record, where, config)
    if len(data.ids) < 2:
        raise InvalidRequestError(f"the audit needs at least 2 images; {len(data.ids)} match {where!r}" if where else "the catalogue holds fewer than 2 images")
    findings, counts = [], {}
    for step, kind in enumerate(config.kinds, start=1):
        found = FINDERS.get(kind)(data, config)
        counts[kind] = len(found)
        findings.extend(found)
        if progress is not None:
            progress(Progress("audit", step, len(config.kinds), "kinds", f"{kind}: {len(found)}"))
    agreement = vote_agreement(data, config) if "label-mistake" in config.kinds else None
    if agreement is not None and agreement < AGREEMENT_WARNING:
        logger.warning("the features agree with %.0f%% of the labels: label-mistake findings are mostly look-alike classes", 100 * agreement)
    recall = search_recall(data.vectors, data.neighbours)
    if recall < RECALL_WARNING:
        logger.warning("the audit's neighbour search found %.3f of the exact 10 nearest images (sampled); findings may be missed", recall)
    scope = where or ""
    with writer_lock(db.uri, "audit"):
        written, again = write_findings(db, findings, record.id, scope, config.kinds)
    report = AuditReport(record.id, scope, len(data.ids), counts, written, again, time.perf_counter() - started, recall, agreement)
    logger.info("audit of %d images with %s: %s in %.1fs", report.images, record.id, counts, report.seconds)
    return report


def vote_agreement(data: AuditData, config: AuditConfig) -> float | None:
    """The share of labelled images whose out-of-sample k-NN vote is their own label (leave-one-out accuracy of the
    features): how far label-mistake findings can be trusted. None without two classes."""
    from engine.audit.finders import class_probabilities

    labelled = np.array([label is not None for label in data.labels])
    classes, probabilities = class_probabilities(data, config)
    if len(classes) < 2 or not labelled.any():
        return None
    voted = classes[np.argmax(probabilities[labelled], axis=1)]
    return float(np.mean(voted == data.labels[labelled]))

