"""Search regions: a query vector (a whole image, a crop, or each region of a query image) against a version's
region vectors, exactly (FAISS inner product over unit vectors). Answers name the image, the box and the distance;
by default the best region of each image, ``all_regions`` every region; a set of query regions scores an image by
the mean of each query region's best match in it (images that contain the same several things rank first)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl

from engine.core.errors import NotFoundError
from engine.storage.database import Database, ModelRecord, vectors_of

BOX_COLUMNS = ["region_id", "image_id", "source", "x", "y", "w", "h", "label"]
FETCH_FACTOR = 20  # regions fetched per wanted image before grouping (images have several regions each)


@dataclass(frozen=True)
class RegionIndex:
    """A version's region vectors and their boxes, for the images still in the catalogue."""

    boxes: pl.DataFrame  # BOX_COLUMNS + path, one row per vector
    vectors: np.ndarray

    @property
    def size(self) -> int:
        return len(self.vectors)


def load_region_index(db: Database, model: ModelRecord, source: str | None = None, where: str | None = None) -> RegionIndex:
    """``model``'s region vectors (of one source, if given), joined with the catalogue images (matching ``where``, a
    filter over their metadata like a whole-image search's): regions of deleted images (a delete killed midway) are
    never answered."""
    table = db.region_embeddings(model)
    query = table.search().select([*BOX_COLUMNS, "vector"]).limit(None)
    if source:
        query = query.where(f"source = '{source}'")
    rows = query.to_arrow()
    if rows.num_rows == 0:
        hint = f" from source {source!r}" if source else ""
        raise NotFoundError(f"model {model.id} has no region vectors{hint}: run lookalike regions --source grid|annotations|masker|detector first")
    boxes = pl.from_arrow(rows.drop_columns(["vector"])).with_row_index("row")
    images = db.images_frame(where, columns=["id", "path"]).rename({"id": "image_id"})
    boxes = boxes.join(images, on="image_id", how="inner").sort("row")
    if boxes.height == 0:
        raise NotFoundError(f"no image matching {where!r} has region vectors in model {model.id}: widen the filter, or run lookalike regions --where on them")
    vectors = vectors_of(rows)[boxes["row"].to_numpy()]
    return RegionIndex(boxes.drop("row"), np.ascontiguousarray(vectors, np.float32))


def search_regions(index: RegionIndex, queries: np.ndarray, k: int = 10, all_regions: bool = False) -> pl.DataFrame:
    """The ``k`` nearest regions (``all_regions``) or the ``k`` images with the nearest region, per query: one row
    per answer with the query's number, its rank, the box and the cosine distance."""
    queries = np.ascontiguousarray(queries, np.float32)
    wanted = k if all_regions else min(index.size, k * FETCH_FACTOR)
    frames = []
    for q, query in enumerate(queries):
        fetch = wanted
        while True:
            similarities, rows = faiss.knn(query[None], index.vectors, min(fetch, index.size), metric=faiss.METRIC_INNER_PRODUCT)
            found = index.boxes[rows[0].tolist()].with_columns(pl.Series("distance", 1.0 - similarities[0], pl.Float32))
            if not all_regions:
                found = found.unique("image_id", keep="first", maintain_order=True)
            if all_regions or found.height >= k or fetch >= index.size:
                break
            fetch *= 4  # too few distinct images among the regions fetched: fetch more
        frames.append(found.head(k).with_columns(pl.lit(q).alias("query"), pl.int_range(1, pl.len() + 1).alias("rank")))
    return _ordered(pl.concat(frames) if frames else index.boxes.head(0))


def search_region_sets(index: RegionIndex, query_sets: list[np.ndarray], k: int = 10) -> pl.DataFrame:
    """Images ranked for each query *set* of region vectors: an image's distance is the mean, over the query's regions,
    of the distance to that image's nearest region (1 - mean best similarity)."""
    image_ids = index.boxes["image_id"].to_numpy()
    order = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order]
    starts = np.r_[0, np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1]
    images = sorted_ids[starts]
    frames = []
    for q, regions in enumerate(query_sets):
        similarities = np.asarray(regions, np.float32) @ index.vectors[order].T  # (query regions, catalogue regions)
        best = np.maximum.reduceat(similarities, starts, axis=1)  # each query region's best match in each image
        distance = 1.0 - best.mean(axis=0)
        top = np.argsort(distance, kind="stable")[:k]
        frames.append(pl.DataFrame({"query": q, "rank": np.arange(1, len(top) + 1), "image_id": images[top], "distance": distance[top].astype(np.float32)}))
    ranked = pl.concat(frames) if frames else pl.DataFrame(schema={"query": pl.Int64, "rank": pl.Int64, "image_id": pl.String, "distance": pl.Float32})
    paths = index.boxes.select("image_id", "path").unique("image_id")
    return ranked.join(paths, on="image_id", how="left").sort(["query", "rank"])


def _ordered(frame: pl.DataFrame) -> pl.DataFrame:
    lead = ["query", "rank", "image_id", "x", "y", "w", "h", "distance", "label", "source", "path", "region_id"]
    return frame.select([c for c in lead if c in frame.columns])
