"""What an ingest left in a database, comparable across databases (timestamps dropped, rows sorted)."""

from __future__ import annotations

import numpy as np
import polars as pl

from engine.storage.database import Database


def ingested_rows(db: Database) -> tuple[pl.DataFrame, dict[str, np.ndarray], pl.DataFrame]:
    """Image rows, vectors by image id and error rows of the database's active model."""
    model = db.resolve_model()
    images = db.images_frame().drop("ingested_at").sort("id")
    embedded = db.embeddings(model).search().select(["image_id", "vector"]).limit(None).to_arrow()
    vectors = dict(zip(embedded.column("image_id").to_pylist(), np.asarray(embedded.column("vector").to_pylist(), np.float32)))
    errors = db.errors_frame().drop("when").sort("path")
    return images, vectors, errors


def assert_same_rows(left: Database, right: Database, atol: float = 1e-5) -> None:
    """Same images, same error rows, same ids with vectors equal within ``atol``."""
    left_images, left_vectors, left_errors = ingested_rows(left)
    right_images, right_vectors, right_errors = ingested_rows(right)
    assert left_images.equals(right_images), (left_images, right_images)
    assert left_errors.equals(right_errors), (left_errors, right_errors)
    assert sorted(left_vectors) == sorted(right_vectors)
    for image_id, vector in left_vectors.items():
        np.testing.assert_allclose(vector, right_vectors[image_id], atol=atol)
