"""The recall self-check of in-memory indexes: measured against brute force when an index is built, saved
beside a persisted graph and read back without recomputing, shown by ``lookalike info``, and a warning
naming the setting to raise when recall is low."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import polars as pl
import pytest

from engine.search.config import MemoryIndexConfig, SearchConfig
from engine.search.memory_index import (
    CHECK_SUFFIX,
    MIN_RECALL,
    TUNE_RECALL,
    LoadedTable,
    MemoryIndex,
    create_memory_index,
    saved_checks,
    self_check,
)
from engine.search.searcher import Searcher
from tests.search.test_search import seeded  # noqa: F401 - a fixture
from tests.support.synthetic import clustered_vectors


def rows_and_outside_queries(rows: int, queries: int, dim: int, seed: int = 0) -> tuple[LoadedTable, np.ndarray]:
    """A table and new queries drawn from the same clusters (what a user's new images are to a catalogue)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    drawn = centres[rng.integers(0, 30, rows + queries)] + 0.5 * rng.normal(size=(rows + queries, dim))
    drawn = (drawn / np.linalg.norm(drawn, axis=1, keepdims=True)).astype(np.float32)
    return LoadedTable(version=3, vectors=drawn[:rows], metadata=pl.DataFrame({"image_id": [f"{i:06d}" for i in range(rows)]})), drawn[rows:]


def loaded(rows: int = 3000, dim: int = 32, seed: int = 0) -> LoadedTable:
    vectors = clustered_vectors(rows, dim, clusters=30, seed=seed).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return LoadedTable(version=3, vectors=vectors, metadata=pl.DataFrame({"image_id": [f"{i:06d}" for i in range(rows)]}))


def brute_force_recall(index: MemoryIndex, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Recall@k of the index's answers against brute force, by image id (the index's node order is not the table's:
    the rows its check held out were inserted last)."""
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    found, _ = index.search(queries, k)
    ids = index.metadata["image_id"].to_numpy()
    return float(np.mean([len(set(ids[f[f >= 0]]) & {f"{t:06d}" for t in row}) / k for f, row in zip(found, truth)]))


def test_exact_index_checks_at_one_and_writes_nothing(tmp_path):
    table = loaded()
    index = create_memory_index("flat", table, MemoryIndexConfig(), tmp_path / "v3-flat32.faiss")
    assert index.check.recall == 1.0 and index.check.ok and index.check.advice() is None
    assert (index.check.kind, index.check.version, index.check.rows, index.check.k) == ("flat", 3, 3000, 10)
    assert list(tmp_path.iterdir()) == []  # a search of a small table writes no file


def test_a_persisted_graph_saves_its_check_beside_it(tmp_path):
    index = create_memory_index("hnsw", loaded(), MemoryIndexConfig(), tmp_path / "v3-hnsw32.faiss")
    assert saved_checks(tmp_path) == [index.check]


def test_low_recall_is_measured_like_brute_force_and_warns_with_the_setting(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("engine.search.memory_index.MAX_EF_SEARCH", 1)  # no room to tune: the graph stays weak
    weak = dataclasses.replace(MemoryIndexConfig(), hnsw_m=4, hnsw_ef_construction=8, hnsw_ef_search=1)
    table, outside = rows_and_outside_queries(4000, 500, 64)
    with caplog.at_level(logging.WARNING, logger="engine.search.memory_index"):
        index = create_memory_index("hnsw", table, weak, tmp_path / "v3-hnsw4.faiss")
    assert index.check.recall < MIN_RECALL and index.check.queries == 300
    # held-out rows measure what new queries of the same distribution get
    assert index.check.recall == pytest.approx(brute_force_recall(index, table.vectors, outside, 10), abs=0.06)
    assert "hnsw_m" in index.check.advice()
    assert any("hnsw_m" in r.getMessage() for r in caplog.records)
    strong = create_memory_index("hnsw", table, MemoryIndexConfig(), None)
    assert strong.check.recall > index.check.recall and strong.check.ok


def test_the_check_raises_ef_search_until_recall_is_reached_and_a_reload_keeps_it(tmp_path):
    weak = dataclasses.replace(MemoryIndexConfig(), hnsw_m=8, hnsw_ef_construction=32, hnsw_ef_search=1)
    table, outside = rows_and_outside_queries(4000, 500, 64)
    index = create_memory_index("hnsw", table, weak, tmp_path / "v3-hnsw8.faiss")
    assert 1 < index.ef_search < 1024 and index.check.ef_search == index.ef_search and index.check.recall >= TUNE_RECALL
    assert brute_force_recall(index, table.vectors, outside, 10) >= MIN_RECALL - 0.02
    again = create_memory_index("hnsw", table, weak, tmp_path / "v3-hnsw8.faiss")  # loaded: the chosen efSearch with it
    assert again.ef_search == index.ef_search and again.check == index.check


def test_duplicate_rows_tie_instead_of_counting_as_misses():
    table = loaded(rows=500)
    doubled = LoadedTable(version=1, vectors=np.concatenate([table.vectors, table.vectors]),
                          metadata=pl.concat([table.metadata, table.metadata.with_columns(pl.col("image_id") + "b")]))
    for kind in ("flat", "hnsw"):
        index = create_memory_index(kind, doubled)
        assert self_check(index, doubled).recall == 1.0


def test_saved_check_is_read_back_not_recomputed_and_a_changed_table_is_checked_again(tmp_path, monkeypatch):
    table = loaded()
    cache = tmp_path / "v3-hnsw32.faiss"
    first = create_memory_index("hnsw", table, MemoryIndexConfig(), cache)
    monkeypatch.setattr("engine.search.memory_index.self_check", lambda index, source: pytest.fail("the saved check was recomputed"))
    again = create_memory_index("hnsw", table, MemoryIndexConfig(), cache)
    assert again.check == first.check
    monkeypatch.undo()
    grown = LoadedTable(version=4, vectors=np.concatenate([table.vectors, loaded(rows=100, seed=9).vectors]),
                        metadata=pl.concat([table.metadata, pl.DataFrame({"image_id": [f"n{i}" for i in range(100)]})]))
    newer = create_memory_index("hnsw", grown, MemoryIndexConfig(), tmp_path / "v4-hnsw32.faiss")
    assert newer.check.version == 4 and newer.check.rows == 3100
    assert [c.version for c in saved_checks(tmp_path)] == [4]  # the older version's check went with its graph
    (tmp_path / f"v4-hnsw32{CHECK_SUFFIX}").write_text("{not json")
    assert saved_checks(tmp_path) == []  # unreadable: skipped, not a crash


def test_searcher_and_info_show_the_check(seeded, tmp_path):
    from console.service.data import index_checks_frame

    db, model, rows, vectors = seeded
    assert index_checks_frame(db).height == 0  # info never builds an index
    searcher = Searcher(db, model, SearchConfig(memory_index=MemoryIndexConfig(kind="hnsw")))
    searcher.search_vectors(vectors[:2], k=5)
    assert searcher.index_check is not None and searcher.index_check.rows == len(rows)
    frame = index_checks_frame(db)
    assert frame.select("model_id", "index", "rows", "recall").row(0) == (model.id, "hnsw", len(rows), searcher.index_check.recall)
