"""Retrieval of objects, measured at the image level: each query is an object (a crop) of one class, and a
catalogue image is relevant when it contains an object of that class (multi-label images). Small pure functions:
image rankings from whole-image vectors or from region vectors (an image's distance is its nearest region's), and
P@1, P@5 and full-ranking mAP of such rankings, per class and overall; and :func:`evaluate_regions`, a version's
stored regions measured for ``lookalike eval --regions``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.core.errors import EvaluationError
from engine.evaluation.metrics import EvaluationResult, average_precision, evaluate, exact_ranking
from engine.evaluation.multilabel import label_iou_at_k
from engine.regions.query import RegionIndex, load_region_index, search_region_sets
from engine.storage.database import Database, ModelRecord


@dataclass(frozen=True)
class ObjectRetrieval:
    p_at_1: float
    p_at_5: float
    mean_ap: float
    queries: int
    per_class: pl.DataFrame  # class, queries, P@1, P@5, mAP


def rank_images_by_regions(queries: np.ndarray, region_vectors: np.ndarray, region_images: np.ndarray, images: int) -> np.ndarray:
    """(queries, images) image indices in rank order, an image's distance being its nearest region's
    (``region_images[r]`` is region r's image index in ``0..images-1``; an image without regions ranks last)."""
    similarities = np.asarray(queries, np.float32) @ np.asarray(region_vectors, np.float32).T
    best = np.full((len(queries), images), -np.inf, np.float32)
    region_images = np.asarray(region_images)
    order = np.argsort(region_images, kind="stable")
    grouped = region_images[order]
    starts = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
    if len(order):
        best[:, grouped[starts]] = np.maximum.reduceat(similarities[:, order], starts, axis=1)  # each image's nearest region
    return np.argsort(-best, axis=1, kind="stable")


def rank_images(queries: np.ndarray, image_vectors: np.ndarray) -> np.ndarray:
    """(queries, images) image indices in rank order by whole-image cosine similarity."""
    return exact_ranking(queries, image_vectors)[1]


def object_retrieval(rankings: np.ndarray, query_labels: Sequence[str], image_labels: Sequence[set[str]]) -> ObjectRetrieval:
    """P@1, P@5 and full-ranking mAP of image rankings, an image relevant when its label set holds the query's class."""
    relevant = np.array([[query_labels[q] in image_labels[i] for i in ranking] for q, ranking in enumerate(rankings)], bool)
    if not len(relevant):
        return ObjectRetrieval(0.0, 0.0, 0.0, 0, pl.DataFrame())
    frame = pl.DataFrame({"class": list(query_labels), "p1": relevant[:, 0].astype(float), "p5": relevant[:, :5].mean(axis=1),
                          "ap": [average_precision(row) for row in relevant]})
    per_class = frame.group_by("class").agg(pl.len().alias("queries"), pl.col("p1").mean().alias("P@1"), pl.col("p5").mean().alias("P@5"),
                                             pl.col("ap").mean().alias("mAP")).sort("class")
    return ObjectRetrieval(float(frame["p1"].mean()), float(frame["p5"].mean()), float(frame["ap"].mean()), len(frame), per_class)


@dataclass(frozen=True)
class RegionEvaluation:
    objects: EvaluationResult  # region-level: each labelled query region against the labelled catalogue regions
    label_iou: float  # image-level: query images (their regions as a set) against catalogue images, label-IoU@k
    k: int
    query_images: int
    catalogue_images: int


def evaluate_regions(db: Database, model: ModelRecord, source: str | None, catalogue_where: str, query_where: str, k: int = 5,
                     vote_neighbours: int = 10) -> RegionEvaluation:
    """A version's stored regions measured with the metrics of ``eval``: region-level P@1 / P@5 / mAP@5 / mAP by
    object label, and image-level label-IoU@k of images ranked by their regions as sets (multi-label images)."""
    index = load_region_index(db, model, source)
    catalogue_ids = set(db.images_frame(catalogue_where, columns=["id"])["id"].to_list())
    query_ids = set(db.images_frame(query_where, columns=["id"])["id"].to_list())
    boxes = index.boxes.with_row_index("row")
    labelled = boxes.filter(pl.col("label").is_not_null())
    in_catalogue = labelled.filter(pl.col("image_id").is_in(list(catalogue_ids)))
    in_queries = labelled.filter(pl.col("image_id").is_in(list(query_ids)))
    if not in_catalogue.height or not in_queries.height:
        raise EvaluationError(f"{in_queries.height} labelled regions in the query images and {in_catalogue.height} in the catalogue: "
                              "extract labelled regions of both (lookalike regions --source annotations --annotations FILE)")
    objects = evaluate(index.vectors[in_queries["row"].to_numpy()], in_queries["label"].to_list(),
                       index.vectors[in_catalogue["row"].to_numpy()], in_catalogue["label"].to_list(), vote_neighbours)
    catalogue_index = RegionIndex(boxes.filter(pl.col("image_id").is_in(list(catalogue_ids))).drop("row"),
                                  index.vectors[boxes.filter(pl.col("image_id").is_in(list(catalogue_ids)))["row"].to_numpy()])
    label_sets = labelled.group_by("image_id").agg(pl.col("label").unique())
    sets_by_image = dict(zip(label_sets["image_id"], label_sets["label"].to_list()))
    query_images = sorted(query_ids & set(boxes["image_id"]))
    query_sets = [index.vectors[boxes.filter(pl.col("image_id") == image)["row"].to_numpy()] for image in query_images]
    ranked = search_region_sets(catalogue_index, query_sets, k)
    retrieved = [[sets_by_image.get(i, []) for i in group["image_id"]] for _, group in ranked.group_by("query", maintain_order=True)]
    iou = label_iou_at_k([sets_by_image.get(i, []) for i in query_images], retrieved, k)
    return RegionEvaluation(objects, iou, k, len(query_images), catalogue_index.boxes["image_id"].n_unique())
