"""Shared fixtures: small real images, a tiny timm encoder with local weights, databases in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub attempt would hang for a minute before failing

import numpy as np
import pytest
import timm
import torch

from engine.encoders.factory import Encoder, create_encoder
from engine.encoders.config import EncoderConfig
from engine.storage.database import Database, ModelRecord
from engine.core.clock import utc_now
import schemas

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "corpus"
SAMPLES = REPO / "data" / "samples"
QUERIES = REPO / "data" / "queries"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Seeded random weights of timm's test_efficientnet, saved as a local file."""
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tiny_weights) -> Encoder:
    return create_encoder(EncoderConfig(name="test_efficientnet", weights=str(tiny_weights), device="cpu", batch_size=8))


@pytest.fixture(scope="session")
def default_encoder() -> Encoder:
    return create_encoder(EncoderConfig(device="cpu"))


@pytest.fixture
def db(tmp_path) -> Database:
    return Database(tmp_path / "db")


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
