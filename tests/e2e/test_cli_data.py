"""The data-management commands as a user runs them: ingest --metadata, relabel, split, delete, sync, refresh,
models --drop, export; bad input is one line with exit 2 and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from console.cli.main import main
from engine.storage.database import Database
from engine.versions.coverage import coverage_of
from tests.support.paths import SAMPLES

CLASSES = ("bag", "coat", "dress")
PER_CLASS = 4


@pytest.fixture
def folder(tmp_path) -> Path:
    for name in CLASSES:
        (tmp_path / "src" / name).mkdir(parents=True)
        for path in sorted((SAMPLES / name).glob("*.png"))[:PER_CLASS]:
            shutil.copy(path, tmp_path / "src" / name / path.name)
    return tmp_path / "src"


def _table_versions(db_path: Path) -> dict[str, int]:
    db = Database(db_path, read_only=True)
    return {name: db.connection.open_table(name).version for name in db.table_names()}


def test_data_commands_keep_every_version_in_step(tmp_path, folder, tiny_weights, capsys):
    db = str(tmp_path / "db")
    model = ["--model", "test_efficientnet", "--weights", str(tiny_weights)]
    bag = sorted((folder / "bag").glob("*.png"))[0]
    (tmp_path / "meta.csv").write_text(f"file,price,site,organic\nbag/{bag.name},12.5,north,yes\ncoat/{sorted((folder / 'coat').glob('*.png'))[0].name},99,south,no\n")
    assert main(["ingest", str(folder), "--db", db, *model, "--split", "train", "--metadata", str(tmp_path / "meta.csv")]) == 0
    assert main(["dba", "--db", db, "--catalogue-where", "label IS NOT NULL"]) == 0
    capsys.readouterr()

    # user columns are filterable in every version's table
    assert main(["search", "--db", db, "--id", Database(db).images_frame("price > 50", ["id"])["id"][0], "--include-self", "-k", "2",
                 "--where", "price > 10", "--columns", "price,site,organic"]) == 0
    shown = capsys.readouterr().out
    assert "99.0" in shown and "12.5" in shown and "south" in shown

    # bad input: one line, exit 2, nothing written
    before = _table_versions(Path(db))
    for argv, message in [
        (["relabel", "--where", "label = 'bag'", "--to", "two words"], "holds a space"),
        (["relabel", "--where", "label = 'bag'", "--to", "a\nb"], "newline"),
        (["relabel", "--where", "  ", "--to", "x"], "the --where filter is empty"),
        (["relabel", "ffffffff", "--to", "x"], "no image id is or starts with"),
        (["delete", "--where", "true", "--yes"], "empty catalogue"),
        (["sync", str(tmp_path / "gone")], "not a folder"),
        (["models", "--drop", Database(db).resolve_model("test_efficientnet").id], "is made from"),
    ]:
        assert main([*argv, "--db", db]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert _table_versions(Path(db)) == before

    assert main(["relabel", "--db", db, "--where", "label = 'bag'", "--to", "it's_a_bag"]) == 0
    assert main(["split", "--db", db, "--holdout", "0.25", "--to", "val", "--seed", "1"]) == 0
    assert main(["delete", "--db", db, "--where", "label = 'dress'"]) == 0
    assert "would delete 4 of 12 images" in capsys.readouterr().out
    assert main(["delete", "--db", db, "--where", "label = 'dress'", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "deleted 4 images; the catalogue holds 8" in out and "2 model versions in step" in out

    # the folder changes: a coat moves to dress/, a bag file is removed; sync takes both
    coat = sorted((folder / "coat").glob("*.png"))[1]
    coat.rename(folder / "dress" / coat.name)
    sorted((folder / "bag").glob("*.png"))[1].unlink()
    assert main(["sync", str(folder), "--db", db, *model]) == 0
    out = capsys.readouterr().out
    # the deleted dresses are still in the folder: the folder is the truth, so they are back (and the bags' class)
    assert "1 moved" in out and "1 removed" in out and "4 new" in out, out
    db_now = Database(db, read_only=True)
    frame = db_now.images_frame(columns=["path", "label", "split"])
    assert frame.filter(pl.col("path") == str(folder / "dress" / coat.name))["label"].to_list() == ["dress"]
    assert frame.height == 11 and all(coverage_of(db_now, m).in_step for m in db_now.find_models())

    # reads never write
    before = _table_versions(Path(db))
    for argv in (["info"], ["models"], ["errors"], ["search", "--id", frame_id(db), "-k", "1"]):
        assert main([*argv, "--db", db]) == 0
    assert _table_versions(Path(db)) == before

    # export: images, embeddings with their model id, search results; parquet, CSV, JSON
    assert main(["export", "--db", db, "--what", "images", "--out", str(tmp_path / "images.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "images.parquet").height == 11
    assert main(["export", "--db", db, "--what", "embeddings", "--out", str(tmp_path / "vectors.csv"), "--where", "split = 'train'"]) == 0
    vectors = pl.read_csv(tmp_path / "vectors.csv")
    assert set(vectors["model_id"]) == {Database(db).active_model_id()} and len(json.loads(vectors["vector"][0])) > 0
    assert main(["export", "--db", db, "--what", "results", "--out", str(tmp_path / "results.json"), "--id", frame_id(db), "-k", "3"]) == 0
    assert len(json.loads((tmp_path / "results.json").read_text())) == 3

    # drop the DBA version, then refresh reports every version in step
    dba = next(m.id for m in Database(db).find_models() if m.kind == "dba")
    assert main(["models", "--db", db, "--drop", dba]) == 0
    assert main(["refresh", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "in step, 11 rows" in out and dba not in [m.id for m in Database(db).find_models()]
    assert main(["models", "--db", db, "--drop", Database(db).resolve_model().id]) == 2
    assert "would leave no model version" in capsys.readouterr().err


def frame_id(db: str) -> str:
    return Database(db, read_only=True).images_frame(columns=["id"]).sort("id")["id"][0]
