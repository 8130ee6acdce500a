"""Adding a kind of model version is one module registered in one place; this file is the whole of one.

``random-projection``: a seeded Gaussian projection of the parent's vectors to fewer dimensions (the
Johnson-Lindenstrauss trick). Its ``build`` is all Lookalike needs to embed new queries for it; the test
publishes one and checks that the resolver rebuilds it from the stored row alone.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import schemas
from engine.core.clock import utc_now
from engine.core.errors import EncoderMismatchError
from engine.encoders.identity import encoder_fingerprint, model_version_id
from engine.storage.database import Database, ModelRecord
from engine.versions import KINDS, encoder_for_model, lineage
from engine.versions.kinds import BuildContext, SingleParent, register_kind
from ingest.pipeline import IngestConfig, ingest_folder
from tests.support.paths import SAMPLES

KIND = "random-projection"


def projection_matrix(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def projection_sha(parent: ModelRecord, dim: int, seed: int) -> str:
    return hashlib.sha256(json.dumps([parent.weights_sha256, KIND, dim, seed]).encode()).hexdigest()


class Projected(torch.nn.Module):
    def __init__(self, network: torch.nn.Module, projection: np.ndarray) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("projection", torch.from_numpy(projection))
        self.num_features = projection.shape[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.network(images).float(), dim=1) @ self.projection


@register_kind(KIND)
class RandomProjectionKind(SingleParent):
    """A seeded Gaussian projection of the parent's vectors to ``dim`` dimensions."""

    def build(self, context: BuildContext, record: ModelRecord):  # noqa: ANN201 - an Encoder
        parent = context.db.resolve_model(record.parent)
        base = context.encoder_of(parent)
        dim, seed = record.settings["dim"], record.settings["seed"]
        return base.derive(name=record.encoder, model=Projected(base.model, projection_matrix(base.dim, dim, seed)),
                           weights_sha256=projection_sha(parent, dim, seed))


# ---- what a publisher of such versions does (a command would call this) -------------------------------


def publish_projection(db: Database, parent: ModelRecord, dim: int, seed: int) -> ModelRecord:
    weights_sha = projection_sha(parent, dim, seed)
    fingerprint = encoder_fingerprint(parent.architecture, weights_sha, dim, parent.preprocessing)
    model_id = model_version_id(f"{parent.encoder}+projection", fingerprint)
    record = ModelRecord(
        id=model_id, encoder=f"{parent.encoder}+projection", architecture=parent.architecture, weights_source="(computed)",
        weights_sha256=weights_sha, dim=dim, preprocessing=parent.preprocessing, fingerprint=fingerprint,
        embeddings_table=schemas.embeddings_table_name(model_id), created_at=utc_now(), parent=parent.id,
        kind=KIND, config=json.dumps({"dim": dim, "seed": seed}),
    )
    rows = db.embeddings(parent).search().limit(None).to_arrow()
    vectors = np.asarray(rows.column("vector").to_pylist(), np.float32) @ projection_matrix(parent.dim, dim, seed)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    db.write_vectors(record, rows.column("image_id"), rows, vectors)
    db.add_model(record)  # the row last: the commit point
    return record


@pytest.fixture
def projected(tmp_path, tiny_encoder):
    db = Database(tmp_path / "db")
    report = ingest_folder(db, SAMPLES / "bag", IngestConfig(split="train", optimize=False), encoder=tiny_encoder)
    parent = db.resolve_model(report.model_id)
    return db, parent, publish_projection(db, parent, dim=8, seed=3)


def test_the_kind_is_registered_and_listed():
    assert KIND in KINDS and "Gaussian projection" in KINDS.describe()[KIND]


def test_the_resolver_rebuilds_the_new_kind_from_its_row(projected):
    db, parent, record = projected
    stored = db.resolve_model(record.id)  # read back: kind and config come from the table
    assert stored.kind == KIND and stored.settings == {"dim": 8, "seed": 3}
    encoder = encoder_for_model(db, stored, "cpu")
    image = Image.open(sorted((SAMPLES / "bag").iterdir())[0]).convert("RGB")
    expected = encoder_for_model(db, parent, "cpu").encode_images([image]) @ projection_matrix(parent.dim, 8, 3)
    np.testing.assert_allclose(encoder.encode_images([image]), expected / np.linalg.norm(expected), atol=1e-5)
    assert [m.id for m in lineage(db, stored)] == [stored.id, parent.id]


def test_a_row_whose_config_was_changed_is_refused(projected):
    db, _, record = projected
    tampered = ModelRecord(**{**record.__dict__, "config": json.dumps({"dim": 8, "seed": 4})})
    with pytest.raises(EncoderMismatchError, match="not comparable"):
        encoder_for_model(db, tampered, "cpu")
