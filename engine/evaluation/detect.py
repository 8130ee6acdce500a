"""Distractor detection on a database: calibrate and store, flag live queries, predict with -1, review.

The array-level pieces (scorers, calibration, metrics) are in :mod:`engine.evaluation.distractors`; this module
connects them to the tables: a calibration is stored per model version and used by search and predict
until the next one, and flagged queries go to the ``review`` table for a person to decide.
"""

from __future__ import annotations

import csv
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

import schemas
from engine.core.clock import utc_now
from engine.core.errors import EvaluationError, UnknownIdError
from engine.core.splits import CATALOGUE_WHERE
from engine.evaluation.config import CalibrationConfig
from engine.evaluation.distractors import (
    DISTRACTOR_LABEL,
    Calibration,
    Neighbourhood,
    calibrate,
    class_centroids,
    create_scorer,
    insert_distractor,
    voted_classes,
)
from engine.evaluation.metrics import load_split
from engine.media.scan import class_name
from engine.search.searcher import Searcher
from engine.storage.database import Database, ModelRecord, sql_quote

logger = logging.getLogger(__name__)

DEFAULT_CATALOGUE_WHERE = CATALOGUE_WHERE


@dataclass(frozen=True)
class StoredCalibration:
    """A calibration as stored for a model version, with what scoring needs at query time."""

    id: str
    model_id: str
    scorer: str
    objective: str
    threshold: float
    catalogue_where: str
    neighbours: int
    auroc: float
    map5: float
    details: dict
    classes: np.ndarray
    centroids: np.ndarray
    created_at: datetime


def calibrate_model(
    db: Database,
    model: ModelRecord,
    config: CalibrationConfig = CalibrationConfig(),
    catalogue_where: str = DEFAULT_CATALOGUE_WHERE,
    label_trained: Sequence[str] = (),
) -> StoredCalibration:
    """Calibrate the distractor threshold of ``model`` on its catalogue and store it as the active one.

    ``label_trained`` names the versions in ``model``'s chain trained on the catalogue's labels: their features
    saw the classes a fold holds out, so the simulation over-promises; the stored calibration says so."""
    catalogue_where = db.catalogue_where(catalogue_where)
    vectors, labels = load_split(db.embeddings(model), catalogue_where)
    if len(vectors) == 0:
        raise EvaluationError(f"no labelled catalogue images match {catalogue_where!r} for model {model.id}")
    calibration: Calibration = calibrate(vectors, labels, config)
    classes, centroids = class_centroids(vectors, labels)
    data = calibration.data | {"label_trained": list(label_trained)}
    details = {"config": calibration.config, "data": data, "curve": calibration.curve, "reference": calibration.reference}
    row = {
        "id": uuid.uuid4().hex[:12], "model_id": model.id, "scorer": calibration.scorer, "objective": calibration.objective,
        "threshold": calibration.threshold, "catalogue_where": catalogue_where, "neighbours": config.neighbours,
        "auroc": calibration.auroc, "map5": calibration.map5, "details": json.dumps(details),
        "classes": classes.tolist(), "centroids": centroids.tolist(), "created_at": utc_now(),
    }
    db.calibrations.add(pa.Table.from_pylist([row], schema=schemas.CALIBRATIONS_SCHEMA))
    return _stored(row)


def _stored(row: dict) -> StoredCalibration:
    return StoredCalibration(
        **{**row, "details": json.loads(row["details"]), "classes": np.array(row["classes"], dtype=object),
           "centroids": np.array(row["centroids"], dtype=np.float32)}
    )


def latest_calibration(db: Database, model: ModelRecord) -> StoredCalibration | None:
    """The calibration search and predict use for ``model``: the newest, or None."""
    table = db.calibrations
    if not table.count_rows():
        return None
    rows = table.search().where(f"model_id = {sql_quote(model.id)}").limit(None).to_arrow().to_pylist()
    return _stored(max(rows, key=lambda r: r["created_at"])) if rows else None


def calibrations_frame(db: Database) -> pl.DataFrame:
    frame = pl.from_arrow(db.calibrations.search().select(["id", "model_id", "scorer", "objective", "threshold", "auroc", "map5", "catalogue_where", "created_at"]).limit(None).to_arrow())
    return frame.sort("created_at", descending=True) if frame.height else frame


class DistractorDetector:
    """Scores and flags queries of one model with its stored calibration."""

    def __init__(self, searcher: Searcher, calibration: StoredCalibration) -> None:
        if calibration.model_id != searcher.model.id:
            raise EvaluationError(f"calibration {calibration.id} is for model {calibration.model_id}, not {searcher.model.id}")
        self.searcher = searcher
        self.calibration = calibration
        self._scorer = create_scorer(calibration.scorer)

    @classmethod
    def for_searcher(cls, searcher: Searcher) -> DistractorDetector | None:
        calibration = latest_calibration(searcher.db, searcher.model)
        return cls(searcher, calibration) if calibration else None

    def neighbourhood(self, vectors: np.ndarray) -> Neighbourhood:
        """The queries' neighbourhood in the calibrated catalogue, through the normal search path."""
        vectors = np.atleast_2d(vectors)
        k = self.calibration.neighbours
        found = self.searcher.search_vectors(vectors, k=k, where=self.calibration.catalogue_where)
        distances = np.full((len(vectors), k), np.inf)
        labels = np.full((len(vectors), k), None, dtype=object)
        for (query,), group in found.group_by(["query"], maintain_order=True):
            n = group.height
            distances[query, :n] = group["distance"].to_numpy()
            labels[query, :n] = group["label"].to_list()
        distances = np.where(np.isinf(distances), np.nanmax(np.where(np.isinf(distances), np.nan, distances), initial=1.0), distances)
        centroid_distances = 1.0 - vectors @ self.calibration.centroids.T
        return Neighbourhood(distances, labels, centroid_distances, self.calibration.classes, vectors, self.calibration.centroids,
                             self.calibration.details.get("reference"))

    def score(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distractor scores, flags) of query vectors."""
        scores = self._scorer(self.neighbourhood(vectors))
        return scores, scores > self.calibration.threshold

    def predict(self, vectors: np.ndarray, top: int = 5) -> pl.DataFrame:
        """Per query: the top classes with ``-1`` in its place, the score and the flag."""
        vectors = np.atleast_2d(vectors)
        hood = self.neighbourhood(vectors)
        scores = self._scorer(hood)
        flagged = scores > self.calibration.threshold
        classifier, fusion = self.searcher.fusion_classifier(), self.searcher.config.class_fusion
        blend = classifier.blend(vectors, fusion.weight) if classifier else None
        classes = voted_classes(hood, top, blend)
        return pl.DataFrame(
            {
                "query": np.arange(len(scores), dtype=np.int32),
                "classes": [insert_distractor(c, f, top) for c, f in zip(classes, flagged)],
                "suggested": classes,
                "distractor_score": scores,
                "is_distractor": flagged,
            }
        )

    def annotate(self, results: pl.DataFrame, vectors: np.ndarray) -> pl.DataFrame:
        """Search results with each query's ``distractor_score`` and ``is_distractor`` columns."""
        scores, flagged = self.score(vectors)
        per_query = pl.DataFrame({"query": np.arange(len(scores), dtype=np.int32), "distractor_score": scores, "is_distractor": flagged})
        return results.join(per_query, on="query", how="left")


def write_submission(path: Path, image_names: Sequence[str], predictions: pl.DataFrame, header: tuple[str, str] = ("Image", "Id"),
                     with_scores: bool = False) -> None:
    """Kaggle format: image name, space-separated class ids (``-1`` included); with ``with_scores`` a third
    column holds each query's distractor score.

    A class name with whitespace would split into several classes when read back, and two queries under one
    name would collide: both are refused before anything is written.
    """
    ordered = predictions.sort("query")
    rows = list(zip(image_names, ordered["classes"].to_list()))
    repeated = sorted({name for name in image_names if list(image_names).count(name) > 1})
    if repeated:
        raise EvaluationError(f"query names {repeated[:5]!r} repeat: their rows would collide in the CSV; give names that tell them apart")
    ambiguous = sorted({c for _, classes in rows for c in classes if any(ch.isspace() for ch in str(c))})
    if ambiguous:
        raise EvaluationError(f"class names {ambiguous!r} contain whitespace, which the space-separated Id column cannot hold; "
                              "rename them (lookalike stores new folder names with '_' for spaces)")
    scores = ordered["distractor_score"].to_list() if with_scores else [None] * len(rows)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, *(["DistractorScore"] if with_scores else [])])
        for (name, classes), score in zip(rows, scores):
            writer.writerow([name, " ".join(classes), *([f"{score:.6f}"] if with_scores else [])])


# ---- review queue --------------------------------------------------------------------------------


def enqueue_for_review(db: Database, model: ModelRecord, image_ids: Sequence[str], paths: Sequence[str], predictions: pl.DataFrame, threshold: float) -> int:
    """Put the flagged queries of ``predictions`` in the review queue (once per image and model)."""
    rows = [
        {"id": image_id, "model_id": model.id, "path": str(path), "score": float(p["distractor_score"]), "threshold": threshold,
         "suggested": list(p["suggested"]), "status": "pending", "label": None, "decided_by": None, "decided_at": None, "created_at": utc_now()}
        for image_id, path, p in zip(image_ids, paths, predictions.sort("query").iter_rows(named=True))
        if p["is_distractor"]
    ]
    if rows:
        table = pa.Table.from_pylist(rows, schema=schemas.REVIEW_SCHEMA)
        db.review.merge_insert(["id", "model_id"]).when_not_matched_insert_all().execute(table)
    return len(rows)


def review_frame(db: Database, status: str | None = None) -> pl.DataFrame:
    """The review queue, oldest first, optionally by status."""
    query = db.review.search().limit(None)
    if status:
        query = query.where(f"status = {sql_quote(status)}")
    frame = pl.from_arrow(query.to_arrow())
    return frame.sort("created_at") if frame.height else frame


@dataclass(frozen=True)
class Decision:
    """What a reviewer decided about one flagged query."""

    review_id: str
    status: str  # distractor | assigned | added
    label: str | None
    decided_by: str


def decide(db: Database, decision: Decision, join_catalogue: Callable[[Path, str], None] | None = None) -> dict:
    """Store a review decision atomically; an image given a class joins the catalogue.

    ``join_catalogue(path, label)`` adds the image to the catalogue (the front end passes one that runs
    ingest with the model's encoder). ``assigned`` needs a class the catalogue knows; ``added`` a new one.
    """
    if decision.status not in schemas.REVIEW_STATUSES[1:]:
        raise EvaluationError(f"unknown decision {decision.status!r}; choose one of {list(schemas.REVIEW_STATUSES[1:])}")
    row = review_row(db, decision.review_id)
    if decision.status in ("assigned", "added"):
        if not decision.label or decision.label == DISTRACTOR_LABEL:
            raise EvaluationError(f"decision {decision.status!r} needs a class label")
        if any(ch.isspace() for ch in decision.label):
            raise EvaluationError(f"class name {decision.label!r} contains whitespace, which Kaggle CSVs and label lists read as "
                                  f"several classes; use {class_name(decision.label)!r}")
        # This image's own row is left out: a decision cut off after the image joined the catalogue
        # (crash, kill) must be possible to make again, and its label then already exists through it.
        known = set(db.images_frame(where=f"label IS NOT NULL AND id != {sql_quote(row['id'])}", columns=["label"])["label"].unique())
        if decision.status == "assigned" and decision.label not in known:
            raise EvaluationError(f"class {decision.label!r} is not in the catalogue; decide 'added' (--add) to create it (known: {sorted(known)[:20]})")
        if decision.status == "added" and decision.label in known:
            raise EvaluationError(f"class {decision.label!r} already exists; decide 'assigned' (--assign)")
        if join_catalogue is not None:
            join_catalogue(Path(row["path"]), decision.label)
    row.update(status=decision.status, label=decision.label if decision.status != "distractor" else None,
               decided_by=decision.decided_by, decided_at=utc_now())
    write_review_row(db, row)
    return row


def review_row(db: Database, review_id: str) -> dict:
    """One review item as stored."""
    rows = db.review.search().where(f"id = {sql_quote(review_id)}").limit(None).to_arrow().to_pylist()
    if not rows:
        raise UnknownIdError(f"no review item {review_id!r}")
    return rows[0]


def write_review_row(db: Database, row: dict) -> None:
    """Store ``row`` over the review item of the same id and model (a decision, or an earlier state given back)."""
    table = pa.Table.from_pylist([row], schema=schemas.REVIEW_SCHEMA)
    db.review.merge_insert(["id", "model_id"]).when_matched_update_all().execute(table)
