"""The in-memory FAISS path of unfiltered search: same answers as brute force and as LanceDB, refreshed
when the table changes, HNSW graphs saved and reused, and LanceDB when the vectors exceed the budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.search.config import MemoryIndexConfig, SearchConfig
from engine.search.memory_index import TableSource, create_memory_index, list_memory_indexes
from engine.search.searcher import Searcher
from tests.search.test_search import LABELS, assert_same_neighbours, brute_force, seeded  # noqa: F401 - seeded is a fixture
from tests.support.synthetic import clustered_vectors, synthetic_rows


def config(kind: str, **changes) -> SearchConfig:
    return SearchConfig(memory_index=dataclasses.replace(MemoryIndexConfig(kind=kind), **changes))


@pytest.mark.parametrize("kind", ["off", "flat", "auto"])
def test_exact_kinds_match_brute_force(seeded, kind):
    db, model, rows, vectors = seeded
    searcher = Searcher(db, model, config(kind))
    queries = clustered_vectors(9, 32, clusters=8, seed=42)
    result = searcher.search_vectors(queries, k=10, columns=["split", "width"])
    assert (searcher.memory_index() is None) == (kind == "off")
    assert result.columns == ["query", "rank", "image_id", "path", "label", "distance", "split", "width"]
    order, distances = brute_force(queries, vectors, np.ones(len(rows), bool), 10)
    assert_same_neighbours(result, rows, order, distances)
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[i]["width"] == w and by_id[i]["split"] == s for i, w, s in result.select("image_id", "width", "split").iter_rows())


def test_hnsw_recall_and_graph_saved_then_reused(seeded, tmp_path):
    db, model, rows, vectors = seeded
    queries = clustered_vectors(50, 32, clusters=8, seed=7)
    searcher = Searcher(db, model, config("hnsw"))
    result = searcher.search_vectors(queries, k=10)
    order, _ = brute_force(queries, vectors, np.ones(len(rows), bool), 10)
    ids = np.array([r["id"] for r in rows])
    found = result.group_by("query", maintain_order=True).agg("image_id").sort("query")["image_id"].to_list()
    recall = np.mean([len(set(f) & set(ids[o])) / 10 for f, o in zip(found, order)])
    assert recall >= 0.98
    saved = list((tmp_path / "db" / "_faiss" / model.embeddings_table).glob("*.faiss"))
    assert len(saved) == 1
    stamp = saved[0].stat().st_mtime_ns
    again = Searcher(db, model, config("hnsw"))
    assert again.search_vectors(queries, k=10)["image_id"].to_list() == result["image_id"].to_list()
    assert saved[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


@pytest.mark.parametrize("kind", ["off", "flat", "hnsw"])
def test_new_rows_are_found_after_a_write(seeded, kind):
    db, model, rows, vectors = seeded
    searcher = Searcher(db, model, dataclasses.replace(config(kind), consistency_interval_s=0.0))
    probe = clustered_vectors(1, 32, clusters=3, seed=1234)
    before = searcher.search_vectors(probe, k=1)
    assert before["distance"][0] > 1e-4
    extra = synthetic_rows(1, LABELS, seed=77)
    extra[0]["id"] = "new-row"
    db.write_embedded(model, extra, probe)
    after = searcher.search_vectors(probe, k=1)
    assert after["image_id"][0] == "new-row" and after["distance"][0] < 1e-4
    if kind == "hnsw":
        assert len(list((Path(db.uri) / "_faiss" / model.embeddings_table).glob("*.faiss"))) == 1  # the stale graph is gone
        assert searcher.memory_index().dead == 0 and searcher.memory_index().rows == len(rows) + 1  # followed in place


def test_over_budget_searches_on_disk(seeded):
    db, model, rows, vectors = seeded
    searcher = Searcher(db, model, config("flat", max_bytes=600 * 32 * 4 - 1))
    assert searcher.memory_index() is None
    queries = clustered_vectors(3, 32, clusters=8, seed=3)
    order, distances = brute_force(queries, vectors, np.ones(len(rows), bool), 5)
    assert_same_neighbours(searcher.search_vectors(queries, k=5), rows, order, distances)


def test_unknown_column_and_kind_are_clear_errors(seeded):
    db, model, _, vectors = seeded
    with pytest.raises(ValueError, match="unknown columns"):
        Searcher(db, model).search_vectors(vectors[:1], k=3, columns=["colour"])
    with pytest.raises(ValueError, match=r"choose one of \['flat', 'hnsw', 'hnsw_fp16', 'ivf'\]"):
        create_memory_index("annoy", TableSource(db.embeddings(model), 1))
    assert list(list_memory_indexes()) == ["flat", "hnsw", "hnsw_fp16", "ivf"]


@pytest.mark.parametrize("kind", ["off", "flat", "hnsw"])
@pytest.mark.parametrize("where", ["label = 'coast'", "width < 60", "label = 'coast' AND width < 30", "label = 'nothing'"])
def test_filtered_queries_match_brute_force_on_every_path(seeded, kind, where):
    # off: LanceDB's prefiltered scan; flat and hnsw: the rows LanceDB's scalar scan matched, scanned exactly in RAM
    db, model, rows, vectors = seeded
    frame = pl.DataFrame([{"label": r["label"], "width": r["width"]} for r in rows])
    mask = frame.select(pl.sql_expr(where)).to_series().to_numpy()
    queries = clustered_vectors(3, 32, clusters=8, seed=8)
    for reranker in ("faiss", "qe"):  # the direct path and the re-ranked one
        searcher = Searcher(db, model, dataclasses.replace(config(kind, persist=False), reranker=reranker))
        result = searcher.search_vectors(queries, k=10, where=where, columns=["width"])
        assert (searcher.memory_index() is None) == (kind == "off")
        assert result.height == 3 * min(10, int(mask.sum()))
        assert set(result["image_id"]) <= {r["id"] for r, m in zip(rows, mask) if m}
        if reranker == "faiss":
            order, distances = brute_force(queries, vectors, mask, min(10, int(mask.sum())))
            assert_same_neighbours(result, rows, order, distances)


def test_filtered_in_memory_search_sees_rows_written_after_it_was_built(seeded):
    db, model, rows, vectors = seeded
    searcher = Searcher(db, model, dataclasses.replace(config("flat"), consistency_interval_s=0.0))
    query = vectors[:1]
    assert searcher.search_vectors(query, k=3, where="label = 'new'").height == 0
    extra = synthetic_rows(605, ["new"], seed=5)[600:]
    db.write_embedded(model, [dict(r, id=f"new{i}") for i, r in enumerate(extra)], vectors[:5])
    found = searcher.search_vectors(query, k=3, where="label = 'new'")
    assert found["image_id"].to_list()[0] == "new0" and found.height == 3


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_k_beyond_the_table_gives_every_row_once_in_distance_order(seeded, kind):
    db, model, rows, vectors = seeded
    queries = clustered_vectors(3, 32, clusters=8, seed=7)
    result = Searcher(db, model, config(kind, persist=False)).search_vectors(queries, k=1000)
    for q in range(3):
        mine = result.filter(pl.col("query") == q)
        assert mine["rank"].to_list() == list(range(1, mine.height + 1))
        assert mine["image_id"].n_unique() == mine.height
        assert (np.diff(mine["distance"].to_numpy()) >= -1e-6).all()
    assert result.height == 3 * len(rows)  # an HNSW walk alone stopped at 357 of the 600 rows


def test_quality_rerankers_still_see_the_candidates_of_the_memory_index(seeded):
    db, model, rows, vectors = seeded
    queries = clustered_vectors(4, 32, clusters=8, seed=3)
    plain = Searcher(db, model, config("flat")).search_vectors(queries, k=5)
    expanded = Searcher(db, model, dataclasses.replace(config("flat"), reranker="qe")).search_vectors(queries, k=5)
    on_disk = Searcher(db, model, dataclasses.replace(config("off"), reranker="qe")).search_vectors(queries, k=5)
    assert expanded["image_id"].to_list() == on_disk["image_id"].to_list()
    np.testing.assert_allclose(expanded["distance"].to_numpy(), on_disk["distance"].to_numpy(), atol=1e-5)
    assert plain.height == expanded.height == 20
