"""Seeded synthetic rows and vectors, and a model version for vectors made outside any encoder."""

from __future__ import annotations

import numpy as np

import schemas
from engine.core.clock import utc_now
from engine.storage.database import Database, ModelRecord


def make_vector_model(db: Database, dim: int, model_id: str = "synthetic-v1") -> ModelRecord:
    """A model version for vectors made outside any encoder (seeded synthetic data)."""
    record = ModelRecord(
        id=model_id, encoder="synthetic", architecture="none", weights_source="seeded", weights_sha256="0" * 64,
        dim=dim, preprocessing="{}", fingerprint=f"synthetic-{dim}", embeddings_table=schemas.embeddings_table_name(model_id),
        created_at=utc_now(),
    )
    db.add_model(record)
    return record


def synthetic_rows(n: int, labels: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"img{i:06d}", "path": f"/synthetic/{i:06d}.png", "label": labels[i % len(labels)],
            "labels": [labels[i % len(labels)]], "split": "train" if i % 5 else "val",
            "width": int(rng.integers(16, 1024)), "height": int(rng.integers(16, 1024)), "channels": 3, "mode": "RGB",
            "format": "PNG", "bytes": 1000 + i, "source": "/synthetic", "ingested_at": utc_now(),
        }
        for i in range(n)
    ]


def clustered_vectors(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Seeded, L2-normalised vectors around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
