"""Search against brute force on seeded vectors, filters, batching, the ANN path and encoder checks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from engine.core.errors import EncoderMismatchError
from engine.search.config import SearchConfig
from engine.search.searcher import Searcher
from engine.storage.database import Database, ModelNotFoundError
from engine.storage.index import IndexConfig, ensure_index, has_vector_index
from tests.support.synthetic import clustered_vectors, make_vector_model, synthetic_rows

LABELS = ["coast", "forest", "street", "mountain"]


@pytest.fixture
def seeded(db):
    model = make_vector_model(db, dim=32)
    rows = synthetic_rows(600, LABELS)
    vectors = clustered_vectors(600, 32, clusters=8)
    db.write_embedded(model, rows, vectors)
    return db, model, rows, vectors


def brute_force(queries, vectors, mask, k):
    distances = 1 - queries @ vectors.T
    distances[:, ~mask] = np.inf
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def assert_same_neighbours(result: pl.DataFrame, rows, order, expected_distances):
    """Same distances rank by rank, and the same ids except where distances tie."""
    for q in range(order.shape[0]):
        mine = result.filter(pl.col("query") == q).sort("rank")
        np.testing.assert_allclose(mine["distance"].to_numpy(), expected_distances[q], atol=1e-5)
        expected_ids = [rows[i]["id"] for i in order[q]]
        for got, want, distance in zip(mine["image_id"], expected_ids, expected_distances[q]):
            tied = np.isclose(expected_distances[q], distance, atol=1e-6).sum() > 1
            assert got == want or tied


def test_search_matches_brute_force(seeded):
    db, model, rows, vectors = seeded
    queries = clustered_vectors(7, 32, clusters=8, seed=99)
    result = Searcher(db, model).search_vectors(queries, k=10)
    order, distances = brute_force(queries, vectors, np.ones(len(rows), bool), 10)
    assert result.height == 70
    assert result.columns[:6] == ["query", "rank", "image_id", "path", "label", "distance"]
    assert_same_neighbours(result, rows, order, distances)


@pytest.mark.parametrize("where", ["label = 'coast'", "label = 'forest' AND width >= 600", "split = 'val' AND height < 200"])
def test_filtered_search_matches_brute_force_and_fills_k(seeded, where):
    db, model, rows, vectors = seeded
    frame = pl.DataFrame([{k: r[k] for k in ("label", "width", "height", "split")} for r in rows])
    mask = frame.select(pl.sql_expr(where)).to_series().to_numpy()
    queries = clustered_vectors(4, 32, clusters=8, seed=5)
    k = 10
    result = Searcher(db, model).search_vectors(queries, k=k, where=where, columns=["width", "height", "split"])
    assert result.height == 4 * min(k, int(mask.sum()))
    order, distances = brute_force(queries, vectors, mask, min(k, int(mask.sum())))
    assert_same_neighbours(result, rows, order, distances)


def test_batch_equals_single_queries(seeded):
    db, model, _, _ = seeded
    searcher = Searcher(db, model)
    queries = clustered_vectors(5, 32, clusters=8, seed=11)
    batch = searcher.search_vectors(queries, k=6)
    for q in range(5):
        single = searcher.search_vectors(queries[q], k=6)
        assert single["image_id"].to_list() == batch.filter(pl.col("query") == q)["image_id"].to_list()


def test_search_by_stored_id_finds_itself_first(seeded):
    db, model, rows, _ = seeded
    result = Searcher(db, model).search_ids([rows[3]["id"], rows[10]["id"]], k=3)
    firsts = result.filter(pl.col("rank") == 1)
    assert firsts["image_id"].to_list() == [rows[3]["id"], rows[10]["id"]]
    assert firsts["distance"].abs().max() < 1e-5
    with pytest.raises(KeyError, match="no vectors"):
        Searcher(db, model).search_ids(["not-an-id"])


def test_bad_filter_gives_a_clear_error(seeded):
    db, model, _, _ = seeded
    with pytest.raises(ValueError, match="where filter"):
        Searcher(db, model).search_vectors(np.ones(32, np.float32), where="no_such_column = 1")


def test_wrong_dimension_and_encoder_are_refused(seeded, tiny_encoder):
    db, model, _, _ = seeded
    with pytest.raises(EncoderMismatchError, match="dim"):
        Searcher(db, model).search_vectors(np.ones((1, 16), np.float32))
    with pytest.raises(EncoderMismatchError, match="not comparable"):
        Searcher(db, model, encoder=tiny_encoder)


def test_unknown_model_names_the_models_present(seeded):
    db, _, _, _ = seeded
    with pytest.raises(ModelNotFoundError, match="synthetic-v1"):
        db.resolve_model("efficientnet_lite0")


def test_predict_votes_the_neighbourhood_class(seeded):
    db, model, rows, vectors = seeded
    searcher = Searcher(db, model, SearchConfig(vote_neighbours=5))
    predicted = searcher.predict(vectors[:20])
    top1 = predicted.filter(pl.col("rank") == 1).sort("query")["label"].to_list()
    neighbours = searcher.search_vectors(vectors[:20], k=5)
    for q, label in enumerate(top1):
        labels = neighbours.filter(pl.col("query") == q)["label"].to_list()
        assert label in labels


def test_ann_index_path_with_refinement_keeps_recall(db):
    model = make_vector_model(db, dim=32, model_id="ann-test")
    rows = synthetic_rows(3000, LABELS, seed=1)
    vectors = clustered_vectors(3000, 32, clusters=20, seed=1)
    for start in range(0, 3000, 1000):
        db.write_embedded(model, rows[start : start + 1000], vectors[start : start + 1000])
    table = db.embeddings(model)
    assert not ensure_index(table, IndexConfig(min_rows=5000))
    assert ensure_index(table, IndexConfig(min_rows=1000, num_partitions=16, num_sub_vectors=8))
    assert has_vector_index(table)
    queries = clustered_vectors(50, 32, clusters=20, seed=2)
    order, _ = brute_force(queries, vectors, np.ones(3000, bool), 10)
    result = Searcher(db, model, SearchConfig(nprobes=16)).search_vectors(queries, k=10)
    found = result.group_by("query").agg(pl.col("image_id")).sort("query")["image_id"].to_list()
    recall = np.mean([len(set(f) & {rows[i]["id"] for i in o}) / 10 for f, o in zip(found, order)])
    assert recall >= 0.95
    # a selective filter on an indexed table is answered exactly (an IVF probe would miss matches)
    frame = pl.DataFrame([{"width": r["width"], "label": r["label"]} for r in rows])
    where = "label = 'coast' AND width < 200"
    mask = frame.select(pl.sql_expr(where)).to_series().to_numpy()
    filtered = Searcher(db, model, SearchConfig(nprobes=1, exact_filter_rows=1000)).search_vectors(queries[:20], k=10, where=where)
    expected, distances = brute_force(queries[:20], vectors, mask, 10)
    assert_same_neighbours(filtered, rows, expected, distances)
    # re-ranked distances are exact cosine distances
    exact = 1 - np.einsum("d,d->", queries[0], vectors[[r["id"] for r in rows].index(found[0][0])])
    assert result.filter(pl.col("query") == 0)["distance"][0] == pytest.approx(exact, abs=1e-5)


def test_reopening_checks_schema_version(tmp_path):
    import lancedb
    import pyarrow as pa

    import schemas

    connection = lancedb.connect(tmp_path / "db")
    old = schemas.IMAGES_SCHEMA.with_metadata({schemas.SCHEMA_VERSION_KEY: b"0"})
    connection.create_table(schemas.IMAGES_TABLE, schema=old)
    with pytest.raises(schemas.SchemaMismatchError, match="schema version 0"):
        Database(tmp_path / "db")
    other = tmp_path / "db2"
    lancedb.connect(other).create_table(
        schemas.MODELS_TABLE, schema=pa.schema([pa.field("id", pa.string())]).with_metadata({schemas.SCHEMA_VERSION_KEY: b"1"})
    )
    with pytest.raises(schemas.SchemaMismatchError, match="missing columns"):
        Database(other)
