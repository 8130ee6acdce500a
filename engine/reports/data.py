"""What the reports read from a database: one model's vectors with their image metadata."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.reports.common import ReportDataMissing
from engine.storage.database import Database, ModelRecord
from engine.storage.filters import combine_where, read_filtered

COLUMNS = ["image_id", "path", "label", "split", "vector"]


@dataclass(frozen=True)
class EmbeddingSet:
    """Rows of one model's embeddings table, sorted by image id so that samples are reproducible."""

    ids: np.ndarray  # (n,) object
    paths: np.ndarray  # (n,) object
    labels: np.ndarray  # (n,) object, None when unlabelled
    splits: np.ndarray  # (n,) object
    vectors: np.ndarray  # (n, dim) float32, L2-normalised

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> EmbeddingSet:
        return EmbeddingSet(self.ids[rows], self.paths[rows], self.labels[rows], self.splits[rows], self.vectors[rows])

    def sample(self, size: int | None, seed: int) -> EmbeddingSet:
        """At most ``size`` rows, drawn with a seed (all rows when ``size`` is None or large enough)."""
        if size is None or size >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=size, replace=False))
        return self.take(rows)


def load_embeddings(db: Database, model: ModelRecord, where: str | None = None, labelled: bool = True) -> EmbeddingSet:
    """Vectors and metadata of ``model``'s images matching ``where`` (only labelled ones by default)."""
    embeddings = db.embeddings(model)
    query = embeddings.search().select(COLUMNS).limit(None)
    condition = combine_where(embeddings, where, *(["label IS NOT NULL"] if labelled else []))
    if condition:
        query = query.where(condition)
    table = read_filtered(query, where)
    column = table.column("vector").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, model.dim).astype(np.float32)
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
    order = np.argsort(ids.astype(str), kind="stable")
    return EmbeddingSet(
        ids[order],
        np.asarray(table.column("path").to_pylist(), dtype=object)[order],
        np.asarray(table.column("label").to_pylist(), dtype=object)[order],
        np.asarray(table.column("split").to_pylist(), dtype=object)[order],
        vectors[order],
    )


def require_rows(rows: EmbeddingSet, what: str, where: str | None, model: ModelRecord) -> EmbeddingSet:
    if len(rows) == 0:
        raise ReportDataMissing(f"no labelled {what} images match {where!r} for model {model.id}")
    return rows
