"""Use cases that read: open a searcher on a model version, search (with the distractor verdict and the
voted classes), predict a query folder as a Kaggle CSV (queueing flagged queries for review)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from engine.core.errors import InvalidRequestError, MissingFileError, NotFoundError
from engine.evaluation.detect import DistractorDetector, enqueue_for_review, write_submission
from engine.media.decode import DecodeError, content_id, decode_image
from engine.media.scan import scan_folder
from engine.search.config import SearchConfig
from engine.search.pipeline import search_config_for
from engine.search.searcher import Searcher
from engine.storage.database import Database
from engine.versions import query_encoder

IMAGE_ID_PREFIX = re.compile(r"^[0-9a-f]{4,32}$")  # an image id (the BLAKE2b-128 hash of its bytes) or a unique prefix of one


def open_searcher(db: Database, model: str | None = None, config: SearchConfig = SearchConfig(),
                  mask: str | None = None, mask_mode: str | None = None, reranker_named: bool = False) -> Searcher:
    """A searcher on a model version (default: the active one); queries are masked as its catalogue was. It uses
    the query pipeline stored with the version (``lookalike tune``) unless the caller named a re-ranker."""
    record = db.resolve_model(model)
    return Searcher(db, record, search_config_for(db, record, config, reranker_named), encoder=query_encoder(db, record, mask, mask_mode))


def version_warning(searcher: Searcher) -> str | None:
    """A line to show when the searched version is not in step with the catalogue (its results may lack images or
    hold deleted ones), naming the fix; None when it is in step. Reads only."""
    from engine.versions.coverage import coverage_of

    coverage = coverage_of(searcher.db, searcher.model)
    if coverage.in_step:
        return None
    return f"model {searcher.model.id} is {coverage.status} ({coverage.reason}); results may miss or hold stale images"


def query_paths(queries: Sequence[str | Path]) -> list[Path]:
    """Query image files: files as given, folders scanned (sorted, recursive)."""
    paths: list[Path] = []
    for query in queries:
        query = Path(query).expanduser()
        paths.extend(f.path for f in scan_folder(query) if f.error is None) if query.is_dir() else paths.append(query)
    if not paths:
        raise InvalidRequestError("no query images: give image files or folders")
    return paths


def query_vectors(searcher: Searcher, query: str) -> np.ndarray:
    """The vector of one query: an image file is encoded, a catalogue image id is looked up."""
    path = Path(query).expanduser()
    if path.is_file():
        return searcher.encode_files([path])
    if IMAGE_ID_PREFIX.match(query):
        (image_id,) = searcher.db.resolve_image_ids([query])
        try:
            return searcher.vectors_of([image_id])
        except KeyError:
            raise NotFoundError(f"no catalogue image with id {image_id} in model {searcher.model.id}") from None
    raise MissingFileError(f"{query!r} is neither an image file nor a catalogue image id")


@dataclass(frozen=True)
class EncodedQueries:
    """Query files as vectors; the files that could not be used, with the reason, are left out."""

    vectors: np.ndarray
    paths: list[Path]
    failures: list[tuple[Path, str]]


def encode_queries(searcher: Searcher, paths: Sequence[Path]) -> EncodedQueries:
    """Decode and encode query files as ingest does; a bad file is skipped with its reason instead of stopping
    the others (any encoder: a single network, a masked one, an ensemble)."""
    images, kept, failures = [], [], []
    for path in paths:
        try:
            images.append(decode_image(Path(path).read_bytes()).image)
            kept.append(Path(path))
        except OSError as exc:
            failures.append((Path(path), f"cannot read file: {exc.strerror or exc}"))
        except DecodeError as exc:
            failures.append((Path(path), str(exc)))
    encoder = searcher.encoder
    try:
        vectors = encoder.encode_images(images) if images else np.zeros((0, searcher.model.dim), np.float32)
    except DecodeError:  # the model's preprocessing refused one (an extreme aspect ratio): find which, keep the rest
        encoded = []
        for path, image in zip(list(kept), images):
            try:
                encoded.append(encoder.encode_images([image]))
            except DecodeError as exc:
                failures.append((path, str(exc)))
                kept.remove(path)
        vectors = np.concatenate(encoded) if encoded else np.zeros((0, searcher.model.dim), np.float32)
    return EncodedQueries(vectors, kept, failures)


@dataclass(frozen=True)
class SearchOutcome:
    """What one search found: the ranked results (with the distractor columns when the version is
    calibrated), the voted classes per query, and the distractor verdict per query."""

    model_id: str
    results: pl.DataFrame
    predictions: pl.DataFrame
    verdicts: pl.DataFrame | None  # query, distractor_score, is_distractor, threshold; None without a calibration
    index_warning: str | None = None  # the in-memory index's self-check found recall below the target


def search(searcher: Searcher, vectors: np.ndarray, *, k: int | None = None, where: str | None = None,
           columns: Sequence[str] = (), query_names: Sequence[str] | None = None, exclude_ids: Sequence[str] | None = None) -> SearchOutcome:
    """Search, vote and score the queries ``vectors``: the sequence every front end shows. ``where`` filters the
    results only; the voted classes and the distractor verdict are those of the whole catalogue.

    ``exclude_ids`` (one per query) leaves each query's own catalogue image out of its results: a stored
    image searched by id would otherwise find itself first.
    """
    k = searcher.config.k if k is None else k
    if exclude_ids is None:
        results = searcher.search_vectors(vectors, k=k, where=where, columns=columns)
    else:
        found = searcher.search_vectors(vectors, k=k + 1, where=where, columns=columns)
        own = pl.DataFrame({"query": np.arange(len(exclude_ids), dtype=np.int32), "own_id": list(exclude_ids)})
        results = (found.join(own, on="query").filter(pl.col("image_id") != pl.col("own_id")).drop("own_id")
                   .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("query").alias("rank"))
                   .filter(pl.col("rank") <= k))
    if query_names is not None:
        results = results.with_columns(pl.Series("query_path", [str(query_names[q]) for q in results["query"]], pl.String))
    # The class of a query does not depend on which results the user filtered for: votes (and the distractor
    # verdict) come from the whole catalogue, so a filter excluding the true class cannot change the answer.
    predictions = searcher.predict(vectors)
    detector = DistractorDetector.for_searcher(searcher)
    verdicts = None
    if detector is not None:
        scores, flagged = detector.score(vectors)
        verdicts = pl.DataFrame({"query": np.arange(len(scores), dtype=np.int32), "distractor_score": scores, "is_distractor": flagged,
                                 "threshold": np.full(len(scores), detector.calibration.threshold)})
        results = results.join(verdicts.drop("threshold"), on="query", how="left")
    check = searcher.index_check
    return SearchOutcome(searcher.model.id, results, predictions, verdicts, index_warning=check.advice() if check is not None else None)


@dataclass(frozen=True)
class PredictOutcome:
    queries: int
    flagged: int
    threshold: float
    queued: int
    out: Path
    failures: list[tuple[Path, str]]  # query files left out, with the reason


def query_names(paths: Sequence[Path], root: Path) -> list[str]:
    """What the CSV calls each query: its path relative to the query folder (base names collide across sub-folders)."""
    root = Path(root)
    return [Path(p).relative_to(root).as_posix() if root.is_dir() else Path(p).name for p in paths]


def predict_folder(searcher: Searcher, paths: Sequence[Path], out: Path, *, queue_for_review: bool = True,
                   root: Path | None = None, with_scores: bool = False) -> PredictOutcome:
    """Top-5 classes with ``-1`` for distractors as a Kaggle CSV (names relative to ``root``, the query folder);
    flagged queries join the review queue."""
    detector = DistractorDetector.for_searcher(searcher)
    if detector is None:
        raise NotFoundError(f"model {searcher.model.id} has no distractor calibration: run lookalike calibrate first")
    encoded = encode_queries(searcher, paths)
    if not encoded.paths:
        raise InvalidRequestError(f"none of the {len(paths)} query files could be used; the first: {encoded.failures[0][0]}: {encoded.failures[0][1]}")
    paths, vectors = encoded.paths, encoded.vectors
    predictions = detector.predict(vectors)
    names = query_names(paths, root) if root is not None else [Path(p).name for p in paths]
    write_submission(Path(out), names, predictions, with_scores=with_scores)
    queued = 0
    if queue_for_review:
        ids = [content_id(p.read_bytes()) for p in paths]
        queued = enqueue_for_review(searcher.db, searcher.model, ids, [str(p.resolve()) for p in paths], predictions, detector.calibration.threshold)
    return PredictOutcome(len(paths), int(predictions["is_distractor"].sum()), detector.calibration.threshold, queued, Path(out), encoded.failures)
