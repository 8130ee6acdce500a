"""A database written by release 0.1 (``tests/data/release_0_1_db``) opens, is upgraded in place once, and keeps
every row, vector and version working: kinds recorded, encoders rebuilt from the record, searches unchanged.

The fixture was written by the release at commit d8408ce (a tiny timm encoder with seeded weights stored in
the database folder, a head, a fine-tuned backbone, whitening, DBA, TTA, an ensemble and a masked version),
then copied here: its recorded file paths point to the folder it was written in, so opening the copy also
shows that a moved database finds its files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lancedb
import numpy as np
import pytest

import schemas
from engine.storage.database import Database
from engine.storage.migrations import NEW_MODEL_COLUMNS, legacy_kind
from engine.versions import encoder_for_model, lineage
from tests.support.paths import REPO

FIXTURE = REPO / "tests" / "data" / "release_0_1_db"
EXPECTED_KINDS = {
    "test_efficientnet-60838c77": "encoder",
    "test_efficientnet+arcface-17f1d558": "head",
    "test_efficientnet+ft-arcface-48db1833": "finetuned",
    "test_efficientnet+whiten-de83d730": "whiten",
    "test_efficientnet+arcface+dba-0d599309": "dba",
    "ensemble-d6dd6796": "ensemble",
    "test_efficientnet+tta-16bbcce8": "tta",
    "test_efficientnet+mask-dd297135": "masked",
}


@pytest.fixture
def old_db(tmp_path) -> Path:
    target = tmp_path / "moved" / "db"
    shutil.copytree(FIXTURE, target)
    return target


def raw_rows(folder: Path, table: str) -> list[dict]:
    return lancedb.connect(str(folder)).open_table(table).to_arrow().to_pylist()


def test_the_fixture_is_a_release_0_1_database():
    names = lancedb.connect(str(FIXTURE)).open_table(schemas.MODELS_TABLE).schema.names
    assert not set(NEW_MODEL_COLUMNS) & set(names)
    assert {r["id"] for r in raw_rows(FIXTURE, schemas.MODELS_TABLE)} == set(EXPECTED_KINDS)


def test_opening_upgrades_in_place_and_loses_nothing(old_db):
    before_models = {r["id"]: r for r in raw_rows(old_db, schemas.MODELS_TABLE)}
    before_images = sorted(raw_rows(old_db, schemas.IMAGES_TABLE), key=lambda r: r["id"])
    before_vectors = {m["id"]: sorted((r["image_id"], r["vector"]) for r in raw_rows(old_db, m["embeddings_table"])) for m in before_models.values()}

    db = Database(old_db)
    upgraded = {r["id"]: r for r in raw_rows(old_db, schemas.MODELS_TABLE)}
    assert {i: r["kind"] for i, r in upgraded.items()} == EXPECTED_KINDS
    for model_id, row in upgraded.items():  # every 0.1 column unchanged
        assert {k: row[k] for k in before_models[model_id]} == before_models[model_id]
        assert json.loads(row["config"]) == legacy_kind(before_models[model_id])[1]
    assert sorted(raw_rows(old_db, schemas.IMAGES_TABLE), key=lambda r: r["id"]) == before_images
    for model_id, vectors in before_vectors.items():
        assert sorted((r["image_id"], r["vector"]) for r in raw_rows(old_db, db.resolve_model(model_id).embeddings_table)) == vectors
    assert db.active_model_id() == "test_efficientnet+arcface-17f1d558"

    version = lancedb.connect(str(old_db)).open_table(schemas.MODELS_TABLE).version
    Database(old_db)  # a second open has nothing to do: no new table version
    assert lancedb.connect(str(old_db)).open_table(schemas.MODELS_TABLE).version == version


def test_every_version_rebuilds_its_encoder_from_the_record(old_db):
    db = Database(old_db)
    image = db.images_frame(columns=["id", "path"])
    for model_id, kind in EXPECTED_KINDS.items():
        record = db.resolve_model(model_id)
        encoder = encoder_for_model(db, record, "cpu")  # the fingerprint check passes: the same vectors
        assert encoder.fingerprint == record.fingerprint and encoder.dim == record.dim, kind
    dba = db.resolve_model("test_efficientnet+arcface+dba-0d599309")
    assert [m.id for m in lineage(db, dba)] == [dba.id, "test_efficientnet+arcface-17f1d558", "test_efficientnet-60838c77"]
    ensemble = db.resolve_model("ensemble-d6dd6796")
    assert {m.id for m in lineage(db, ensemble)[1:]} == {"test_efficientnet-60838c77", "test_efficientnet+arcface-17f1d558"}
    assert image.height > 0


def test_a_rebuilt_encoder_reproduces_the_stored_vectors(old_db):
    """Re-encode the stored images' pixels? They lived outside the fixture; instead the stored vectors of the head
    version are its head applied to the base's stored vectors, which the rebuilt head reproduces."""
    import torch

    db = Database(old_db)
    base, head = db.resolve_model("test_efficientnet-60838c77"), db.resolve_model("test_efficientnet+arcface-17f1d558")
    encoder = encoder_for_model(db, head, "cpu")
    rows = {r["image_id"]: np.asarray(r["vector"], np.float32) for r in db.embeddings(base).search().limit(None).to_arrow().to_pylist()}
    stored = {r["image_id"]: np.asarray(r["vector"], np.float32) for r in db.embeddings(head).search().limit(None).to_arrow().to_pylist()}
    ids = sorted(rows)
    with torch.inference_mode():
        again = torch.nn.functional.normalize(encoder.model.head(torch.from_numpy(np.stack([rows[i] for i in ids]))), dim=1).numpy()
    np.testing.assert_allclose(again, np.stack([stored[i] for i in ids]), atol=1e-5)
