"""The benchmark scripts run end to end at their --quick size and produce sane values (never timings)."""

from __future__ import annotations

import sys

import polars as pl
import pytest

from engine.search.memory_index import list_memory_indexes
from tests.support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import cli_startup  # noqa: E402
import decode_memory  # noqa: E402
import ingest_pipeline  # noqa: E402
import query_latency  # noqa: E402
import recall_check  # noqa: E402
import search as search_benchmark  # noqa: E402


@pytest.mark.slow
def test_search_benchmark_quick(tmp_path):
    contenders, filtered = search_benchmark.main(["--quick", "--out", str(tmp_path / "search.csv"), "--work", str(tmp_path / "work")])
    assert "error" not in contenders.columns
    recall = dict(zip(contenders["contender"], contenders["recall@10"]))
    assert recall["exact brute force (FAISS flat)"] == 1.0
    settings = dict(zip(contenders["contender"], contenders["setting"]))
    assert settings["Lookalike default (policy)"].startswith("hnsw (policy)")  # --quick lowers exact_rows below its 2,000 rows
    assert min(v for name, v in recall.items() if name.startswith("Lookalike") and v is not None) >= 0.95
    measured = contenders.filter(pl.col("recall@10").is_not_null())
    assert (measured["p50_ms"] > 0).all() and (measured["batch_qps"] > 0).all() and (contenders["peak_rss_gb"] > 0).all()
    appended = contenders.filter(pl.col("contender").str.contains("appended")).row(0, named=True)
    assert appended["followed_in_place"] and appended["dead_rows"] == 0 and appended["self_check"] >= 0.95
    assert set(filtered["queries_with_k_results"]) == {"50/50"}
    assert (filtered["recall@10"] >= 0.95).all()
    assert (tmp_path / "search.csv").exists() and (tmp_path / "search_filtered.csv").exists()


def test_recall_check_benchmark_quick():
    frame = recall_check.main(["--quick"])
    assert set(frame["index"]) == set(list_memory_indexes()) and (frame["recall@10"] >= 0.95).all()


@pytest.mark.slow
def test_ingest_benchmark_quick(tmp_path):
    frame = ingest_pipeline.main(["--quick", "--out", str(tmp_path / "ingest.csv")])
    assert set(frame["contender"]) == {"forward", "pipeline", "naive", "reingest"}
    assert (frame["images_per_s"] > 0).all()


@pytest.mark.slow
def test_query_latency_quick():
    frame = query_latency.main(["--quick"])
    parts = dict(zip(frame["part"], frame["median_ms"]))
    assert set(parts) == {"read", "decode", "preprocess", "encode", "search", "vote", "total"}
    assert parts["total"] >= max(v for k, v in parts.items() if k != "total")


def test_cli_startup_benchmark_quick():
    frame = cli_startup.main(["--quick"])
    assert frame["command"].to_list()[0] == "lookalike --help" and (frame["this checkout cpu_s"] > 0).all()
    assert set(frame["this checkout heavy imports"]) == {"-"}  # no torch, timm, LanceDB, FAISS before a command runs


def test_decode_memory_benchmark_quick():
    frame = decode_memory.main(["--quick"])
    outcomes = dict(zip(frame["file"], frame["outcome"]))
    assert outcomes["photo 256x256"].startswith("decoded") and outcomes["panorama 30000x20"].startswith("decoded")
    assert outcomes["strip 200000x1"].startswith("error row: aspect ratio too extreme")


@pytest.mark.slow
def test_consistency_benchmark_quick():
    import consistency

    if not consistency.MIT.is_dir():
        pytest.skip(f"the MIT scenes photos are not at {consistency.MIT}")
    synced, versions = consistency.main(["--quick"])
    assert synced["runs"][0] == consistency.REPEATS and synced["median_s"][0] > 0
    assert versions["versions"].to_list() == [1, 3, 6] and versions["ratio_to_1_version"][0] == pytest.approx(1.0)
