"""Retrieval of objects, measured at the image level: each query is an object (a crop) of one class, and a
catalogue image is relevant when it contains an object of that class (multi-label images). Small pure functions:
image rankings from whole-image vectors or from region vectors (an image's distance is its nearest region's), and
P@1, P@5 and full-ranking mAP of such rankings, per class and overall."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.evaluation.metrics import average_precision, exact_ranking


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
