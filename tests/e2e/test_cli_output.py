"""The command line as a new user meets it: tables that fit 80 columns, --format for scripts, sentences for empty
results, label rules that count every file, catalogues without splits, and the default parent of a new head."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from console.cli.main import main
from tests.support.paths import QUERIES, SAMPLES

TERMINAL_COLUMNS = 80


@pytest.fixture
def narrow(monkeypatch):
    """A pipe of 80 columns, as rich measures it."""
    monkeypatch.setenv("COLUMNS", str(TERMINAL_COLUMNS))


@pytest.fixture
def model(tiny_weights) -> list[str]:
    return ["--model", "test_efficientnet", "--weights", str(tiny_weights)]


@pytest.fixture
def split_db(tmp_path, model, capsys) -> str:
    db = str(tmp_path / "db")
    assert main(["ingest", str(SAMPLES), "--db", db, "--split", "train", "--holdout", "0.25", *model]) == 0
    capsys.readouterr()
    return db


def test_search_prints_one_table_per_query_that_fits_80_columns(split_db, narrow, capsys):
    queries = sorted(QUERIES.glob("*.png"))[:2]
    assert main(["search", *map(str, queries), "--db", split_db, "-k", "3", "--predict"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= TERMINAL_COLUMNS, out
    assert "shape:" not in out and "┆" not in out  # no raw polars frame
    assert out.count("query ") == 2 and out.count("classes: ") == 2  # the query named once, not on every row
    for query in queries:
        assert query.name in out
    assert not re.search(r"\b[0-9a-f]{32}\b", out)  # 32-character ids shortened


def test_every_row_command_writes_csv_json_and_parquet(split_db, tmp_path, capsys):
    query = str(next(QUERIES.glob("*.png")))
    assert main(["search", query, "--db", split_db, "-k", "4", "--format", "csv"]) == 0
    rows = pl.read_csv(capsys.readouterr().out.encode())
    assert rows.height == 4 and len(rows["image_id"][0]) == 32  # in full, for scripts
    assert main(["search", query, "--db", split_db, "-k", "2", "--predict", "--format", "json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert set(both) == {"results", "predictions"} and len(both["results"]) == 2
    assert main(["search", query, "--db", split_db, "--predict", "--format", "csv"]) == 2  # two tables, one stdout
    assert "--out FILE" in capsys.readouterr().err
    out = tmp_path / "found.csv"
    assert main(["search", query, "--db", split_db, "--predict", "--out", str(out)]) == 0
    assert pl.read_csv(tmp_path / "found.results.csv").height == 10 and (tmp_path / "found.predictions.csv").exists()
    assert main(["models", "--db", split_db, "--format", "parquet"]) == 2
    assert main(["models", "--db", split_db, "--out", str(tmp_path / "models.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "models.parquet")["active"].to_list() == [True]
    assert main(["eval", "--db", split_db, "--format", "json"]) == 0
    (metrics,) = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert metrics["queries"] == 30 and metrics["catalogue"] == 90 and isinstance(metrics["queries"], int)
    assert main(["info", "--db", split_db, "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"tables", "models", "coverage", "labels"} <= set(info)
    assert main(["errors", "--db", split_db]) == 0
    assert capsys.readouterr().out.strip() == "no ingest errors"
    assert main(["review", "--db", split_db]) == 0
    assert capsys.readouterr().out.startswith("no pending review items")


def test_votes_do_not_change_with_a_filter_on_the_results(split_db, capsys):
    query = str(next(QUERIES.glob("sandal_*.png")))
    assert main(["search", query, "--db", split_db, "--predict", "--format", "json"]) == 0
    unfiltered = json.loads(capsys.readouterr().out)
    top = unfiltered["predictions"][0]["label"]
    assert main(["search", query, "--db", split_db, "--predict", "--format", "json", "--where", f"label != '{top}'"]) == 0
    filtered = json.loads(capsys.readouterr().out)
    assert all(row["label"] != top for row in filtered["results"])
    assert filtered["predictions"] == unfiltered["predictions"]  # before: the filter changed the voted class
    assert main(["search", query, "--db", split_db, "--predict", "--where", f"label != '{top}'"]) == 0
    assert "voted by the whole catalogue" in capsys.readouterr().out


@pytest.fixture
def messy(tmp_path) -> Path:
    """Spaces, unicode, two depths, top-level files, a text file and a fake .jpg."""
    root = tmp_path / "messy"
    for folder, source in (("sub dir/ünïcode", "sandal"), ("cat", "bag"), ("dog/x", "coat")):
        (root / folder).mkdir(parents=True)
        for image in sorted((SAMPLES / source).glob("*.png"))[:3]:
            shutil.copy(image, root / folder / image.name)
    shutil.copy(next((SAMPLES / "shirt").glob("*.png")), root / "loose.png")
    (root / "notes.txt").write_text("not an image")
    (root / "cat" / "fake.jpg").write_text("not a jpeg")
    return root


def labels_of(db: str) -> dict[str, str | None]:
    from engine.storage.database import Database

    frame = Database(db, read_only=True).images_frame(columns=["path", "label"])
    return {Path(p).name if "loose" in p else Path(p).parent.name: label for p, label in frame.iter_rows()}


def test_folder_labels_follow_the_rule_asked_for_and_every_file_is_counted(messy, tmp_path, model, capsys):
    db = str(tmp_path / "top")
    assert main(["ingest", str(messy), "--db", db, *model]) == 0
    out = capsys.readouterr().out
    assert "10 images labelled, 1 without a label" in out  # loose.png, at the top: counted, not silent
    assert "1 files skipped: not images" in out  # notes.txt
    assert "1 errors" in out  # fake.jpg: an image by its name, an error when decoded
    assert labels_of(db) == {"ünïcode": "sub_dir", "cat": "cat", "x": "dog", "loose.png": None}
    parent = str(tmp_path / "parent")
    assert main(["ingest", str(messy), "--db", parent, "--label-from", "parent", *model]) == 0
    assert labels_of(parent) == {"ünïcode": "ünïcode", "cat": "cat", "x": "x", "loose.png": None}
    deep = str(tmp_path / "deep")
    assert main(["ingest", str(messy), "--db", deep, "--label-depth", "2", *model]) == 0
    assert "6 images labelled, 5 without a label" in capsys.readouterr().out  # only sub dir/ünïcode and dog/x are two folders down
    assert labels_of(deep)["x"] == "x" and labels_of(deep)["cat"] is None


def test_label_csvs_are_read_by_column_name_and_refused_when_unreadable(messy, tmp_path, model, capsys):
    db = tmp_path / "db"
    named = tmp_path / "named.csv"
    first = sorted((messy / "cat").glob("*.png"))[0].name
    named.write_text(f"extra,file,class\n1,{first},feline\n2,gone.png,dog\n")
    assert main(["ingest", str(messy), "--db", str(db), "--labels", str(named), *model]) == 0
    out = capsys.readouterr().out
    assert "1 images labelled, 10 without a label; 2 CSV rows, 1 of them naming no file found" in out
    shutil.rmtree(db)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"colA,colB\n{first},feline\n")
    assert main(["ingest", str(messy), "--db", str(db), "--labels", str(unknown), *model]) == 2
    assert "cannot tell its columns" in capsys.readouterr().err
    unrelated = tmp_path / "unrelated.csv"
    unrelated.write_text("a,b\nc,d\n")
    assert main(["ingest", str(messy), "--db", str(db), "--labels", str(unrelated), *model]) == 2
    assert "names none of the 11 images" in capsys.readouterr().err
    assert not db.exists()  # a refused ingest leaves no empty database behind


def test_a_database_without_splits_trains_calibrates_and_evaluates_leave_one_out(tmp_path, model, capsys):
    from engine.storage.database import Database

    db = str(tmp_path / "db")
    assert main(["ingest", str(SAMPLES), "--db", db, *model]) == 0  # as the README's --labels line: no --split
    capsys.readouterr()
    base = Database(db, read_only=True).resolve_model().id
    assert main(["train", "--db", db, "--epochs", "2", "--activate"]) == 0  # before: "found 0 in split = 'train'"
    capsys.readouterr()
    assert main(["calibrate", "--db", db, "--folds", "2"]) == 2  # the head saw every class: a simulation would leak
    err = capsys.readouterr().err
    assert "trained on the labels of every catalogue class" in err and f"--model {base}" in err
    assert main(["calibrate", "--db", db, "--folds", "2", "--model", base]) == 0
    out = capsys.readouterr().out
    assert "on 120 catalogue images" in out and "of queries of known classes flagged" in out
    assert main(["eval", "--db", db]) == 2
    assert "--leave-one-out" in capsys.readouterr().err
    assert main(["eval", "--db", db, "--leave-one-out", "--format", "json"]) == 0
    (metrics,) = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert metrics["queries"] == 120 and metrics["catalogue"] == 119


def test_a_second_head_trains_on_the_base_encoder_unless_told(split_db, capsys):
    from engine.storage.database import Database

    assert main(["train", "--db", split_db, "--epochs", "1", "--activate"]) == 0
    capsys.readouterr()
    base, head = Database(split_db).find_models()[-1], Database(split_db).resolve_model()
    assert base.kind == "encoder" and head.kind == "head"
    assert main(["train", "--db", split_db, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"on {base.id} (the base encoder of the active model {head.id}" in out
    assert main(["train", "--db", split_db, "--epochs", "1", "--parent", head.id]) == 0
    assert "itself a trained version" in capsys.readouterr().out


def test_an_encoder_without_weights_offline_explains_weights(tmp_path, capsys):
    db = tmp_path / "db"
    assert main(["ingest", str(SAMPLES), "--db", str(db), "--model", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--weights FILE" in err and "efficientnet_lite0" in err and "huggingface" not in err.lower()
    assert not db.exists()


def test_search_warns_when_the_index_self_check_is_low_and_info_never_builds_one(split_db, monkeypatch, capsys):
    assert main(["info", "--db", split_db, "--format", "json"]) == 0
    assert "indexes" not in json.loads(capsys.readouterr().out)  # info builds no index
    query = str(next(QUERIES.glob("*.png")))
    assert main(["search", query, "--db", split_db, "-k", "2"]) == 0
    assert "warning" not in capsys.readouterr().err  # an exact index checks at 1.0
    assert main(["info", "--db", split_db, "--format", "json"]) == 0
    assert "indexes" not in json.loads(capsys.readouterr().out)  # an exact index (a small table) is not saved
    assert main(["search", query, "--db", split_db, "-k", "2", "--format", "json"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("engine.search.memory_index.MIN_RECALL", 1.01)  # as if the index had missed neighbours
    assert main(["search", query, "--db", split_db, "-k", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "hnsw_m" in err
