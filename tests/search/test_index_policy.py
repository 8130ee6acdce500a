"""The index policy (which in-memory index, or LanceDB on disk, from rows, width and budget), the half-precision
graph, graphs that follow writes in place (checked against a plain reference model after every write), filtered
graph walks, and the recall check of LanceDB's index on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.search.config import MemoryIndexConfig, SearchConfig
from engine.search.disk_index import DISK_CHECK_FILE, check_disk_index
from engine.search.memory_index import CODES_SUFFIX, GRAPH_SUFFIX, GROWTH_HEADROOM, IDS_SUFFIX, LoadedTable, create_memory_index, vector_storage
from engine.search.policy import choose_memory_index, index_bytes
from engine.search.searcher import Searcher, index_folder
from engine.storage.index import IndexConfig, ensure_index
from tests.search.test_search import LABELS, assert_same_neighbours, brute_force, seeded  # noqa: F401 - seeded is a fixture
from tests.support.synthetic import clustered_vectors, synthetic_rows

DIM = 32


def config(kind: str = "auto", interval: float = 0.0, **changes) -> SearchConfig:
    return SearchConfig(memory_index=dataclasses.replace(MemoryIndexConfig(kind=kind), **changes), consistency_interval_s=interval)


def test_policy_picks_exact_then_full_graph_then_half_precision_then_disk():
    dim = 1280
    budget = dataclasses.replace(MemoryIndexConfig(), max_bytes=6 * 2**30)
    assert choose_memory_index(10_000, dim, budget) == "flat"
    assert choose_memory_index(100_000, dim, budget) == "hnsw"
    assert choose_memory_index(1_000_000, dim, budget) == "hnsw"  # 5.4 GB
    assert choose_memory_index(1_500_000, dim, budget) == "hnsw_fp16"  # 8 GB at full precision, 4.3 GB at half
    assert choose_memory_index(3_000_000, dim, budget) is None  # LanceDB on disk
    small = dataclasses.replace(budget, max_bytes=4 * 2**30)
    assert choose_memory_index(1_000_000, dim, small) == "hnsw_fp16"
    assert index_bytes("hnsw_fp16", 1_000_000, dim, budget) < 0.55 * index_bytes("hnsw", 1_000_000, dim, budget)
    # a named kind is kept while it fits, else the table goes to disk; off is always disk
    assert choose_memory_index(1_000_000, dim, dataclasses.replace(small, kind="hnsw")) is None
    assert choose_memory_index(1_000, dim, dataclasses.replace(budget, kind="hnsw")) == "hnsw"
    assert choose_memory_index(1_000, dim, dataclasses.replace(budget, kind="off")) is None


def test_half_precision_graph_matches_brute_force_within_half_precision(seeded):
    db, model, rows, vectors = seeded
    queries = clustered_vectors(20, DIM, clusters=8, seed=21)
    searcher = Searcher(db, model, config("hnsw_fp16"))
    result = searcher.search_vectors(queries, k=10)
    memory = searcher.memory_index()
    assert memory.kind == "hnsw_fp16" and memory.check.ok and memory.check.queries == len(rows) // 10  # a tenth held out
    order, distances = brute_force(queries, vectors, np.ones(len(rows), bool), 10)
    ids = np.array([r["id"] for r in rows])
    found = result.group_by("query", maintain_order=True).agg("image_id").sort("query")["image_id"].to_list()
    assert np.mean([len(set(f) & set(ids[o])) / 10 for f, o in zip(found, order)]) >= 0.98
    np.testing.assert_allclose(np.sort(result["distance"].to_numpy()), np.sort(distances.ravel()), atol=2e-3)
    filtered = searcher.search_vectors(queries, k=5, where="width < 300", columns=["width"])
    assert (filtered["width"].to_numpy() < 300).all() and filtered.height == 20 * 5


def write_rows(db, model, ids: list[str], vectors: np.ndarray, labels: list[str]) -> None:
    rows = synthetic_rows(len(ids), LABELS, seed=len(ids))
    db.write_embedded(model, [dict(r, id=i, label=label, labels=[label]) for r, i, label in zip(rows, ids, labels)], vectors)


class Reference:
    """The table as a plain dict: image id -> (vector, label)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[np.ndarray, str]] = {}

    def arrays(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids = sorted(self.rows)
        return ids, np.stack([self.rows[i][0] for i in ids]), np.array([self.rows[i][1] for i in ids])


def test_a_graph_follows_every_write_in_place_like_a_reference_model(db):
    from tests.support.synthetic import make_vector_model

    model = make_vector_model(db, dim=DIM)
    rng = np.random.default_rng(5)
    reference = Reference()
    pool = clustered_vectors(3000, DIM, clusters=12, seed=3)
    taken = 0

    def append(count: int) -> None:
        nonlocal taken
        ids = [f"r{taken + i:05d}" for i in range(count)]
        labels = [LABELS[int(x)] for x in rng.integers(0, len(LABELS), count)]
        write_rows(db, model, ids, pool[taken : taken + count], labels)
        reference.rows.update({i: (v, label) for i, v, label in zip(ids, pool[taken : taken + count], labels)})
        taken += count

    append(1200)
    searcher = Searcher(db, model, config("hnsw"))
    table = db.embeddings(model)
    queries = clustered_vectors(12, DIM, clusters=12, seed=77)
    searcher.search_vectors(queries, k=10)
    graph = searcher.memory_index().index  # the FAISS object: following a write keeps it, a rebuild replaces it
    steps = ["append", "delete", "relabel", "revector", "append", "delete", "relabel", "append"]
    for step in steps:
        table = db.embeddings(model)  # a fresh handle: one opened before the last append would not see its rows
        ids = sorted(reference.rows)
        if step == "append":
            append(60)
        elif step == "delete":
            gone = [ids[i] for i in rng.choice(len(ids), 40, replace=False)]
            table.delete("image_id IN (" + ", ".join(f"'{i}'" for i in gone) + ")")
            for i in gone:
                del reference.rows[i]
        elif step == "relabel":
            moved = [ids[i] for i in rng.choice(len(ids), 30, replace=False)]
            table.update(where="image_id IN (" + ", ".join(f"'{i}'" for i in moved) + ")", values={"label": "relabelled"})
            for i in moved:
                reference.rows[i] = (reference.rows[i][0], "relabelled")
        else:  # the same image gets another vector (a version recomputed whole, as DBA is)
            changed = [ids[i] for i in rng.choice(len(ids), 20, replace=False)]
            vectors = clustered_vectors(20, DIM, clusters=12, seed=taken)
            frame = pl.from_arrow(table.search().where("image_id IN (" + ", ".join(f"'{i}'" for i in changed) + ")").limit(None).to_arrow())
            frame = frame.sort("image_id")
            by_id = dict(zip(changed, vectors))
            fresh = frame.with_columns(pl.Series("vector", [by_id[i].tolist() for i in frame["image_id"]], pl.Array(pl.Float32, DIM)))
            table.merge_insert("image_id").when_matched_update_all().execute(fresh.to_arrow().cast(table.schema))
            for i in changed:
                reference.rows[i] = (by_id[i], reference.rows[i][1])
        result = searcher.search_vectors(queries, k=10, columns=["label"])
        memory = searcher.memory_index()
        assert memory.index is graph, f"{step}: the graph was rebuilt instead of followed"
        live_ids = set(memory.metadata["image_id"].drop_nulls())
        assert live_ids == set(reference.rows), step
        assert memory.rows == len(reference.rows) and memory.check.ok
        ref_ids, ref_vectors, ref_labels = reference.arrays()
        order, distances = brute_force(queries, ref_vectors, np.ones(len(ref_ids), bool), 10)
        found = result.group_by("query", maintain_order=True).agg("image_id").sort("query")["image_id"].to_list()
        assert np.mean([len(set(f) & {ref_ids[o] for o in row}) / 10 for f, row in zip(found, order)]) >= 0.97, step
        label_of = dict(zip(ref_ids, ref_labels))
        assert all(label_of[i] == label for i, label in result.select("image_id", "label").iter_rows()), step  # no deleted row, labels current
        vector_of = dict(zip(ref_ids, ref_vectors))
        for q, image_id, distance in result.select("query", "image_id", "distance").iter_rows():
            assert distance == pytest.approx(1 - float(queries[q] @ vector_of[image_id]), abs=1e-5), step
        relabelled = searcher.search_vectors(queries, k=5, where="label = 'relabelled'")
        mask = ref_labels == "relabelled"
        assert relabelled.height == 12 * min(5, int(mask.sum()))
        if mask.any():
            order, distances = brute_force(queries, ref_vectors, mask, min(5, int(mask.sum())))
            assert_same_neighbours(relabelled, [{"id": i} for i in ref_ids], order, distances)

    # a new process loads the followed graph (its node order is not the table's) and answers the same
    again = Searcher(db, model, config("hnsw"))
    assert again.search_vectors(queries, k=10)["image_id"].to_list() == searcher.search_vectors(queries, k=10)["image_id"].to_list()
    assert again.memory_index().dead == searcher.memory_index().dead > 0
    folder = index_folder(db, model)
    assert len(list(folder.glob(f"*{GRAPH_SUFFIX}"))) == 1 and len(list(folder.glob(f"*{IDS_SUFFIX}"))) == 1


def test_a_graph_is_rebuilt_once_too_many_of_its_rows_are_gone(seeded):
    db, model, rows, vectors = seeded
    searcher = Searcher(db, model, config("hnsw", max_dead_share=0.2))
    searcher.search_vectors(vectors[:1], k=3)
    graph = searcher.memory_index().index
    db.embeddings(model).delete("image_id < 'img000100'")  # 100 of 600: 17%, followed
    searcher.search_vectors(vectors[:1], k=3)
    assert searcher.memory_index().index is graph and searcher.memory_index().dead == 100
    db.embeddings(model).delete("image_id < 'img000200'")  # 200 of 600: 33%, rebuilt without them
    result = searcher.search_vectors(vectors[:5], k=3)
    assert searcher.memory_index().index is not graph and searcher.memory_index().dead == 0
    assert searcher.memory_index().rows == 400 and (result["image_id"] >= "img000200").all()


@pytest.mark.parametrize("kind", ["hnsw", "hnsw_fp16"])
def test_a_broad_filter_walks_the_graph_and_still_gives_k_results(seeded, kind):
    db, model, rows, vectors = seeded
    frame = pl.DataFrame([{"width": r["width"]} for r in rows])
    queries = clustered_vectors(30, DIM, clusters=8, seed=13)
    for where in ("width < 520", "width < 60"):  # about half the rows, and a few dozen
        mask = frame.select(pl.sql_expr(where)).to_series().to_numpy()
        searcher = Searcher(db, model, dataclasses.replace(config(kind, persist=False), exact_filter_rows=10))  # never a scan
        result = searcher.search_vectors(queries, k=10, where=where)
        assert result.height == 30 * min(10, int(mask.sum()))
        order, _ = brute_force(queries, vectors, mask, 10)
        ids = np.array([r["id"] for r in rows])
        found = result.group_by("query", maintain_order=True).agg("image_id").sort("query")["image_id"].to_list()
        assert set(result["image_id"]) <= set(ids[mask])
        assert np.mean([len(set(f) & set(ids[o])) / 10 for f, o in zip(found, order)]) >= 0.95


def test_a_damaged_saved_graph_is_ignored_and_rebuilt(seeded):
    db, model, rows, vectors = seeded
    first = Searcher(db, model, config("hnsw")).search_vectors(vectors[:4], k=5)
    folder = index_folder(db, model)
    (next(folder.glob(f"*{IDS_SUFFIX}"))).write_bytes(b"not parquet")
    again = Searcher(db, model, config("hnsw"))
    assert again.search_vectors(vectors[:4], k=5)["image_id"].to_list() == first["image_id"].to_list()
    next(folder.glob(f"*{GRAPH_SUFFIX}")).unlink()
    assert Searcher(db, model, config("hnsw")).search_vectors(vectors[:4], k=5)["image_id"].to_list() == first["image_id"].to_list()


def test_an_in_memory_source_and_the_check_agree_with_brute_force():
    vectors = clustered_vectors(2000, DIM, clusters=20, seed=2)
    table = LoadedTable(version=1, vectors=vectors, metadata=pl.DataFrame({"image_id": [f"{i:05d}" for i in range(2000)]}))
    for kind in ("hnsw", "hnsw_fp16"):
        index = create_memory_index(kind, table)
        assert index.check.queries == 200 and index.check.recall >= 0.95  # a tenth of the rows held out


def test_rows_appended_within_the_headroom_are_followed_without_copying_the_vectors():
    vectors = clustered_vectors(2100, DIM, clusters=20, seed=4)
    ids = [f"{i:05d}" for i in range(2100)]

    def version(rows: int, number: int) -> LoadedTable:
        return LoadedTable(version=number, vectors=vectors[:rows], metadata=pl.DataFrame({"image_id": ids[:rows]}))

    index = create_memory_index("hnsw", version(2000, 1))
    storage = vector_storage(index.index).codes
    allocation = int(storage.data())
    followed = index.refresh(version(2000 + int(2000 * GROWTH_HEADROOM), 2))  # exactly the headroom: no copy
    assert followed is not None and followed.rows == 2100 and int(storage.data()) == allocation
    nearest = followed.search(vectors[2099:2100], 1)[0][0, 0]
    assert followed.metadata["image_id"][int(nearest)] == "02099"  # the appended row is found


@pytest.mark.parametrize("kind", ["hnsw", "hnsw_fp16"])
def test_a_saved_graph_loads_with_headroom_and_follows_appends_without_copying_its_vectors(tmp_path, kind):
    vectors = clustered_vectors(2100, DIM, clusters=20, seed=4)
    ids = [f"{i:05d}" for i in range(2100)]

    def version(rows: int, number: int) -> LoadedTable:
        return LoadedTable(version=number, vectors=vectors[:rows], metadata=pl.DataFrame({"image_id": ids[:rows]}))

    cache = tmp_path / f"v1-{kind}-m32{GRAPH_SUFFIX}"
    built = create_memory_index(kind, version(2000, 1), cache_file=cache)
    assert cache.with_name(cache.stem + CODES_SUFFIX).exists()  # the vectors beside the graph, not inside it
    loaded = create_memory_index(kind, version(2000, 1), cache_file=cache)  # another process: read back
    assert loaded.capacity == int(2000 * (1 + GROWTH_HEADROOM))
    np.testing.assert_array_equal(loaded.search(vectors[:20], 10)[0], built.search(vectors[:20], 10)[0])
    allocation = int(vector_storage(loaded.index).codes.data())
    followed = loaded.refresh(version(2100, 2))
    assert followed is not None and int(vector_storage(followed.index).codes.data()) == allocation  # no copy
    assert followed.metadata["image_id"][int(followed.search(vectors[2099:2100], 1)[0][0, 0])] == "02099"


def test_a_graph_saved_whole_by_an_earlier_release_still_loads_and_one_without_its_vectors_is_rebuilt(tmp_path):
    import faiss

    vectors = clustered_vectors(1500, DIM, clusters=20, seed=5)
    table = LoadedTable(version=1, vectors=vectors, metadata=pl.DataFrame({"image_id": [f"{i:05d}" for i in range(1500)]}))
    cache = tmp_path / f"v1-hnsw-m32{GRAPH_SUFFIX}"
    built = create_memory_index("hnsw", table, cache_file=cache)
    codes = cache.with_name(cache.stem + CODES_SUFFIX)
    codes.unlink()
    faiss.write_index(built.index, str(cache))  # the earlier format: the vectors inside the graph file
    stamp = cache.stat().st_mtime_ns
    whole = create_memory_index("hnsw", table, cache_file=cache)
    assert cache.stat().st_mtime_ns == stamp and whole.capacity == 1500  # loaded as it was, not rebuilt
    faiss.write_index(built.index, str(cache), faiss.IO_FLAG_SKIP_STORAGE)  # a graph whose vectors file went missing
    rebuilt = create_memory_index("hnsw", table, cache_file=cache)
    assert codes.exists() and rebuilt.check.ok  # ignored (no crash) and built again
    assert (rebuilt.search(vectors[:5], 5)[1][:, 0] < 1e-5).all()  # each row finds itself (or its duplicate) first


def test_the_disk_index_is_checked_when_built_and_searches_use_the_setting_it_chose(db):
    from console.service.data import index_checks_frame
    from tests.support.synthetic import make_vector_model

    model = make_vector_model(db, dim=DIM)
    vectors = clustered_vectors(3000, DIM, clusters=30, seed=4)
    rows = synthetic_rows(3000, LABELS)
    db.write_embedded(model, rows, vectors)
    table = db.embeddings(model)
    assert ensure_index(table, IndexConfig(min_rows=1000, num_partitions=8))
    assert not ensure_index(table, IndexConfig(min_rows=1000))  # built once
    folder = index_folder(db, model)
    check = check_disk_index(table, folder)
    assert (folder / DISK_CHECK_FILE).exists() and check.kind == "lancedb IVF_PQ" and check.ok
    assert check.nprobes is not None and check.refine_factor is not None and check.queries == 300
    searcher = Searcher(db, model, config("off"))
    assert searcher.disk_setting() == (check.nprobes, check.refine_factor)
    queries = vectors[::150]  # from the table's own distribution, as the check's are
    result = searcher.search_vectors(queries, k=10)
    order, _ = brute_force(queries, vectors, np.ones(3000, bool), 10)
    ids = np.array([r["id"] for r in rows])
    found = result.group_by("query", maintain_order=True).agg("image_id").sort("query")["image_id"].to_list()
    assert np.mean([len(set(f) & set(ids[o])) / 10 for f, o in zip(found, order)]) >= 0.9
    assert searcher.index_check == check
    assert Searcher(db, model, dataclasses.replace(config("off"), refine_factor=3)).disk_setting() == (check.nprobes, 3)
    Searcher(db, model, config("hnsw")).search_vectors(queries, k=10)  # saves a graph beside it
    frame = index_checks_frame(db)
    assert set(frame["index"]) == {"hnsw", "lancedb IVF_PQ"}  # the graph's save kept the disk check
    assert frame.filter(pl.col("index") == "lancedb IVF_PQ")["setting"].to_list() == [check.setting]


def test_a_low_disk_recall_is_reported_with_the_setting_to_raise(db):
    from tests.support.synthetic import make_vector_model

    model = make_vector_model(db, dim=DIM)
    db.write_embedded(model, synthetic_rows(2000, LABELS), clustered_vectors(2000, DIM, clusters=200, seed=6))
    table = db.embeddings(model)
    ensure_index(table, IndexConfig(min_rows=100, num_partitions=64, num_sub_vectors=2))
    check = check_disk_index(table, index_folder(db, model), settings=((1, 1),))
    assert not check.ok and "refine_factor" in check.advice()
    assert Path(index_folder(db, model) / DISK_CHECK_FILE).exists()


def test_a_new_process_follows_the_graph_saved_for_an_older_version_instead_of_rebuilding(seeded):
    db, model, rows, vectors = seeded
    Searcher(db, model, config("hnsw")).search_vectors(vectors[:2], k=5)  # builds and saves the graph of this version
    table = db.embeddings(model)
    table.delete("image_id < 'img000050'")
    extra = synthetic_rows(30, LABELS, seed=9)
    db.write_embedded(model, [dict(r, id=f"late{i}") for i, r in enumerate(extra)], clustered_vectors(30, DIM, clusters=8, seed=31))
    later = Searcher(db, model, config("hnsw"))  # a new process: no graph in memory, none saved for this version
    result = later.search_vectors(vectors[60:70], k=5)
    memory = later.memory_index()
    assert memory.dead == 50 and memory.rows == 580 and memory.size == 630  # followed: 50 masked, 30 inserted
    assert memory.version == db.embeddings(model).version and memory.check.ok
    assert (result["image_id"] >= "img000050").all()
    folder = index_folder(db, model)
    assert [p.name.split("-")[0] for p in folder.glob(f"*{GRAPH_SUFFIX}")] == [f"v{memory.version}"]  # the older graph went
    assert Searcher(db, model, config("hnsw")).memory_index().dead == 50  # and the followed one loads as it is


def test_an_ivf_index_answers_filters_and_follows_writes_like_the_graphs(seeded):
    db, model, rows, vectors = seeded
    queries = clustered_vectors(20, DIM, clusters=8, seed=23)
    searcher = Searcher(db, model, config("ivf"))
    result = searcher.search_vectors(queries, k=10)
    memory = searcher.memory_index()
    assert memory.kind == "ivf" and memory.check.ok and memory.check.nprobes is not None
    order, _ = brute_force(queries, vectors, np.ones(len(rows), bool), 10)
    ids = np.array([r["id"] for r in rows])
    found = result.group_by("query", maintain_order=True).agg("image_id").sort("query")["image_id"].to_list()
    assert np.mean([len(set(f) & set(ids[o])) / 10 for f, o in zip(found, order)]) >= 0.95
    broad = Searcher(db, model, dataclasses.replace(config("ivf"), exact_filter_rows=10)).search_vectors(queries, k=10, where="width < 520", columns=["width"])
    assert broad.height == 200 and (broad["width"].to_numpy() < 520).all()
    db.embeddings(model).delete("image_id < 'img000040'")
    after = searcher.search_vectors(queries, k=10)
    assert searcher.memory_index().index is memory.index and searcher.memory_index().dead == 40
    assert (after["image_id"] >= "img000040").all()


def test_a_graph_that_cannot_reach_the_target_is_replaced_by_an_ivf(seeded, monkeypatch):
    db, model, rows, vectors = seeded
    monkeypatch.setattr("engine.search.memory_index.MAX_EF_SEARCH", 1)  # the graph cannot search harder ...
    for name in ("MIN_RECALL", "TUNE_RECALL"):  # ... and is held to a target it cannot reach on 600 rows
        monkeypatch.setattr(f"engine.search.memory_index.{name}", 0.995)
    weak = config("auto", exact_rows=100, hnsw_m=2, hnsw_ef_construction=2, hnsw_ef_search=1)
    searcher = Searcher(db, model, weak)
    searcher.search_vectors(vectors[:3], k=5)
    memory = searcher.memory_index()
    assert memory.kind == "ivf" and memory.check.ok and memory.check.recall >= 0.995, memory.check
    folder = index_folder(db, model)
    assert [p.name for p in folder.glob(f"*{GRAPH_SUFFIX}")] == [f"v{memory.version}-ivf-m2{GRAPH_SUFFIX}"]
    again = Searcher(db, model, weak)  # the next process loads the IVF, it does not build the graph again
    assert again.memory_index().kind == "ivf" and again.memory_index().check == memory.check
