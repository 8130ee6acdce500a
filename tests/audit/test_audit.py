"""The data audit: finders checked against brute force and planted problems; findings stored, decided through the
catalogue's edits (every version follows), undone, never raised again once decided, and finished after a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageOps

from console.cli.main import main
from engine.audit import AuditConfig, AuditDecision, audit_frame, decide, run_audit, undo
from engine.audit.finders import AuditData, class_probabilities, duplicate_groups, duplicate_links, find_label_mistakes, find_outliers, neighbours
from engine.core.errors import InvalidRequestError
from engine.core.faults import reset_fault_counts
from engine.storage.database import Database
from engine.storage.filters import WhereFilterError
from engine.versions.coverage import coverage_of
from tests.support.paths import SAMPLES

CLASSES = ("bag", "coat", "dress")
PER_CLASS = 4


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _data(vectors: np.ndarray, labels: list, config: AuditConfig, paths: list[str] | None = None, splits: list | None = None) -> AuditData:
    n = len(vectors)
    similarities, positions = neighbours(vectors, config.k + config.headroom)
    return AuditData(np.array([f"{i:04d}" for i in range(n)], dtype=object), np.array(paths or [f"/nowhere/{i}.png" for i in range(n)], dtype=object),
                     np.array(labels, dtype=object), np.array(splits or ["train"] * n, dtype=object), vectors, pl.DataFrame(), similarities, positions)


def _clusters(seed: int = 0, classes: int = 4, per_class: int = 60, dim: int = 32, spread: float = 0.35) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    vectors = np.concatenate([centres[c] + spread * rng.normal(size=(per_class, dim)) for c in range(classes)])
    return _unit(vectors), [f"class{c}" for c in range(classes) for _ in range(per_class)]


# ---- pure finders ---------------------------------------------------------------------------------------------


def test_neighbours_are_the_exact_nearest_others():
    vectors, _ = _clusters(dim=16)
    similarities, positions = neighbours(vectors, 7)
    brute = vectors @ vectors.T
    np.fill_diagonal(brute, -np.inf)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :7]
    assert not (positions == np.arange(len(vectors))[:, None]).any()
    np.testing.assert_allclose(similarities, np.take_along_axis(brute, expected, axis=1), atol=1e-5)
    # a width beyond the rows is padded, never filled with the row itself
    small_sims, small_positions = neighbours(vectors[:3], 5)
    assert (small_positions[:, 2:] == -1).all() and np.isneginf(small_sims[:, 2:]).all()


def test_above_the_exact_limit_candidates_come_from_an_index_and_are_rescored_exactly(monkeypatch):
    from engine.audit import finders

    rng = np.random.default_rng(5)
    latent = rng.normal(size=(3000, 12)) @ rng.normal(size=(12, 64))  # low-dimensional, as image embeddings are
    vectors = _unit(latent + 0.05 * rng.normal(size=latent.shape))
    monkeypatch.setattr(finders, "EXACT_SEARCH_ROWS", 1000)
    monkeypatch.setattr(finders, "PCA_DIM", 16)
    similarities, positions = finders.neighbours(vectors, 10)
    valid = positions >= 0
    rows = np.nonzero(valid)[0]
    np.testing.assert_allclose(similarities[valid], np.sum(vectors[rows] * vectors[positions[valid]], axis=1), atol=1e-5)
    assert (np.diff(np.where(valid, similarities, -np.inf), axis=1) <= 1e-6).all()  # best first
    assert not (positions == np.arange(len(vectors))[:, None]).any()
    assert finders.search_recall(vectors, positions) >= 0.9
    monkeypatch.setattr(finders, "EXACT_SEARCH_ROWS", 10_000)
    assert finders.search_recall(vectors, positions) == 1.0  # an exact search is not sampled


def test_duplicate_groups_never_chain_and_every_member_passes_with_its_centre():
    rng = np.random.default_rng(1)
    base = _unit(rng.normal(size=(1, 64)))[0]
    step = _unit(rng.normal(size=(1, 64)))[0]
    step -= (step @ base) * base
    step /= np.linalg.norm(step)
    # a chain a-b-c-d-e: neighbours ~0.95 apart, the ends far apart
    chain = _unit(np.stack([np.cos(t) * base + np.sin(t) * step for t in np.arange(5) * 0.3]))
    others = _unit(rng.normal(size=(40, 64)))
    vectors = np.concatenate([chain, others])
    config = AuditConfig(duplicate_threshold=0.94, pixel_threshold=None)
    data = _data(vectors, [None] * len(vectors), config)
    groups = duplicate_groups(data.similarities, data.neighbours, duplicate_links(data, config))
    full = vectors @ vectors.T
    assert groups, "the chain holds near-duplicates"
    for centre, members, similarity in groups:
        np.testing.assert_allclose(similarity, full[centre, members], atol=1e-5)
        assert all(full[centre, m] >= 0.94 for m in members)
    together = [set([c, *m]) for c, m, _ in groups]
    assert not any({0, 4} <= group for group in together) and not any({0, 3} <= group for group in together)
    assert sum(len(g) for g in together) == len(set().union(*together))  # an image is in one group at most


def test_label_mistakes_find_planted_flips_and_ignore_votes_of_copies():
    vectors, labels = _clusters()
    rng = np.random.default_rng(3)
    flipped = rng.choice(len(labels), size=12, replace=False)
    noisy = list(labels)
    for row in flipped:
        noisy[row] = "class0" if labels[row] != "class0" else "class1"
    config = AuditConfig(pixel_threshold=None)
    found = find_label_mistakes(_data(vectors, noisy, config), config)
    flagged = {int(f.image_ids[0]) for f in found}
    hits = len(flagged & set(flipped.tolist()))
    assert hits / len(flipped) >= 0.9 and hits / len(flagged) >= 0.9, (hits, len(flagged))
    by_row = {int(f.image_ids[0]): f for f in found}
    for row in flipped:
        if row in by_row:
            assert by_row[row].suggested == labels[row] and by_row[row].label == noisy[row]

    # the report's measure of how far findings can be trusted: clean labels on separable features agree fully
    from engine.audit.run import vote_agreement

    assert vote_agreement(_data(vectors, labels, config), config) == 1.0
    assert 0.9 < vote_agreement(_data(vectors, noisy, config), config) < 1.0

    # an exact copy carrying the same (wrong) label does not vote for it
    copy = np.concatenate([vectors, vectors[flipped[:1]]])
    copy_labels = [*noisy, noisy[flipped[0]]]
    data = _data(copy, copy_labels, config)
    classes, probabilities = class_probabilities(data, config)
    column = {label: i for i, label in enumerate(classes)}
    assert probabilities[flipped[0], column[noisy[flipped[0]]]] < 0.2
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_an_image_far_from_every_class_is_an_outlier():
    vectors, labels = _clusters(per_class=40)
    stranger = _unit(np.random.default_rng(9).normal(size=(1, vectors.shape[1])) * 10)
    config = AuditConfig(pixel_threshold=None)
    found = find_outliers(_data(np.concatenate([vectors, stranger]), [*labels, "class2"], config), config)
    assert found and found[0].image_ids == (f"{len(labels):04d}",) and found[0].score >= config.outlier_z


def test_the_pixel_check_links_resized_mirrored_and_cropped_copies_but_not_other_photos(tmp_path):
    source = sorted((SAMPLES / "bag").glob("*.png"))[0]
    with Image.open(source) as opened:
        image = opened.convert("RGB").resize((112, 112))
    image.save(tmp_path / "original.png")
    image.resize((56, 56)).save(tmp_path / "resized.png")
    ImageOps.mirror(image).save(tmp_path / "mirrored.png")
    image.crop((6, 6, 106, 106)).save(tmp_path / "cropped.png")
    image.save(tmp_path / "jpeg.jpg", quality=60)
    other = sorted((SAMPLES / "coat").glob("*.png"))[0]
    shutil.copy(other, tmp_path / "other.png")
    names = ["original.png", "resized.png", "mirrored.png", "cropped.png", "jpeg.jpg", "other.png"]
    # features say nothing (all at 0.7 to each other): only pixels can link them
    vectors = _unit(np.eye(len(names)) * 0.55 + 0.45)
    config = AuditConfig(duplicate_threshold=0.99, candidate_threshold=0.5)
    data = _data(vectors, [None] * len(names), config, paths=[str(tmp_path / n) for n in names])
    groups = duplicate_groups(data.similarities, data.neighbours, duplicate_links(data, config))
    assert [sorted(names[r] for r in [c, *m]) for c, m, _ in groups] == [sorted(names[:5])]
    # unreadable files leave the decision to the features
    gone = _data(vectors, [None] * len(names), config, paths=[str(tmp_path / "missing") for _ in names])
    assert not duplicate_links(gone, config).any()


def test_unknown_kinds_and_bad_settings_are_refused_with_the_valid_choices():
    with pytest.raises(InvalidRequestError, match="label-mistake"):
        AuditConfig(kinds=("typo",))
    with pytest.raises(InvalidRequestError, match="cosine"):
        AuditConfig(duplicate_threshold=1.5)


# ---- stored findings and decisions ----------------------------------------------------------------------------


@pytest.fixture
def audit_db(tmp_path, tiny_weights) -> Path:
    """Samples of three classes, a resized copy of a bag filed as a coat in another split, and a DBA version."""
    src = tmp_path / "src"
    for name in CLASSES:
        (src / name).mkdir(parents=True)
        for path in sorted((SAMPLES / name).glob("*.png"))[:PER_CLASS]:
            shutil.copy(path, src / name / path.name)
    bag = sorted((src / "bag").glob("*.png"))[0]
    with Image.open(bag) as opened:
        opened.convert("RGB").resize((56, 56)).save(src / "coat" / "copy_of_bag.png")
    db = str(tmp_path / "db")
    assert main(["ingest", str(src), "--db", db, "--model", "test_efficientnet", "--weights", str(tiny_weights), "--split", "train"]) == 0
    copy_id = Database(db).images_frame("path LIKE '%copy_of_bag%'", ["id"])["id"][0]
    assert main(["split", copy_id, "--to", "query", "--db", db]) == 0
    assert main(["dba", "--db", db, "--catalogue-where", "label IS NOT NULL"]) == 0
    return Path(db)


def _labels_everywhere(db: Database, image_id: str) -> set:
    found = set(db.images_frame(f"id = '{image_id}'", ["label"])["label"].to_list())
    for model in db.find_models():
        rows = db.embeddings(model).search().where(f"image_id = '{image_id}'").select(["label"]).limit(None).to_list()
        found |= {r["label"] for r in rows}
        assert coverage_of(db, model).in_step, model.id
    return found


def test_a_copy_across_splits_with_two_labels_is_found_decided_and_undone_in_every_version(audit_db):
    db = Database(audit_db)
    report = run_audit(db, config=AuditConfig(k=3, headroom=5))
    assert report.model_id == db.resolve_model("test_efficientnet").id  # the base encoder, not the active DBA version
    assert 0.0 <= report.vote_agreement <= 1.0 and report.search_recall == 1.0
    groups = audit_frame(db, "near-duplicate")
    copy_id = db.images_frame("path LIKE '%copy_of_bag%'", ["id"])["id"][0]
    mine = groups.filter(pl.col("image_ids").list.contains(copy_id))
    assert mine.height == 1
    finding = mine.row(0, named=True)
    assert "spans splits" in finding["message"] and "carries labels bag, coat" in finding["message"]
    evidence = json.loads(finding["evidence"])
    assert set(evidence["flags"]) == {"spans splits", "two labels"}

    # relabel the group to bag: every version follows; undo puts coat back everywhere
    decided = decide(db, AuditDecision(finding["id"][:8], "relabel", label="bag", decided_by="tester"))
    assert decided.finding["status"] == "relabelled" and decided.finding["decided_by"] == "tester"
    assert _labels_everywhere(db, copy_id) == {"bag"}
    with pytest.raises(InvalidRequestError, match="decided already"):
        decide(db, AuditDecision(finding["id"], "keep"))
    again = run_audit(db, config=AuditConfig(k=3, headroom=5))
    assert again.decided_again >= 1 and audit_frame(db, "near-duplicate", status="relabelled")["id"].to_list() == [finding["id"]]
    undo(db, finding["id"])
    assert _labels_everywhere(db, copy_id) == {"coat"}
    assert audit_frame(db, "near-duplicate").filter(pl.col("id") == finding["id"]).height == 1

    # delete keeps the first image of the group and removes the copies from every version; it cannot be undone
    members = finding["image_ids"][1:]
    decide(db, AuditDecision(finding["id"], "delete"))
    assert db.images_frame(f"id IN ({', '.join(repr(m) for m in members)})").height == 0
    assert db.images_frame(f"id = '{finding['image_ids'][0]}'").height == 1
    for model in db.find_models():
        assert not db.embeddings(model).search().where(f"image_id = '{members[0]}'").limit(None).to_list()
    with pytest.raises(InvalidRequestError, match="ingest their files again"):
        undo(db, finding["id"])


def test_keep_is_not_raised_again_and_findings_not_found_again_go(audit_db):
    db = Database(audit_db)
    config = AuditConfig(k=3, headroom=5)
    run_audit(db, config=config)
    first = audit_frame(db)
    chosen = first.row(0, named=True)
    decide(db, AuditDecision(chosen["id"], "keep", decided_by="tester"))
    run_audit(db, config=config)
    assert chosen["id"] not in audit_frame(db)["id"].to_list()
    assert audit_frame(db, status="kept")["id"].to_list() == [chosen["id"]]
    # a stricter audit of the same kinds drops the open findings it no longer finds, never the decided one
    run_audit(db, config=dataclasses.replace(config, duplicate_threshold=1.0, pixel_threshold=None, kinds=("near-duplicate",)))
    assert audit_frame(db, "near-duplicate").height == 0
    assert audit_frame(db, status="kept").height == 1


def test_a_decision_killed_after_its_edit_is_finished_by_deciding_again_and_undo_restores_the_first_state(audit_db, monkeypatch):
    db = Database(audit_db)
    run_audit(db, config=AuditConfig(k=3, headroom=5))
    copy_id = db.images_frame("path LIKE '%copy_of_bag%'", ["id"])["id"][0]
    finding = audit_frame(db, "near-duplicate").filter(pl.col("image_ids").list.contains(copy_id)).row(0, named=True)
    monkeypatch.setenv("LOOKALIKE_FAULTS", "audit.applied=eio")
    reset_fault_counts()
    with pytest.raises(OSError):  # as a crash would leave it: the edit made, the finding not yet marked
        decide(db, AuditDecision(finding["id"], "relabel", label="dress"))
    monkeypatch.delenv("LOOKALIKE_FAULTS")
    reset_fault_counts()
    assert _labels_everywhere(db, copy_id) == {"dress"}  # the edit landed; the finding is still open with its intent
    with pytest.raises(InvalidRequestError, match="unfinished relabel"):
        decide(db, AuditDecision(finding["id"], "keep"))
    decide(db, AuditDecision(finding["id"], "relabel", label="dress"))
    undo(db, finding["id"])
    assert _labels_everywhere(db, copy_id) == {"coat"}  # what it held before the first try, not "dress"


def test_audit_cli_runs_lists_shows_decides_and_undoes_and_reading_never_writes(audit_db, capsys):
    db = str(audit_db)
    before = {name: Database(db, read_only=True).connection.open_table(name).version for name in Database(db, read_only=True).table_names()}
    assert main(["audit", "list", "--db", db]) == 0
    assert "no open findings" in capsys.readouterr().out
    assert "audit" not in Database(db, read_only=True).table_names()  # a read created nothing
    assert {name: Database(db, read_only=True).connection.open_table(name).version for name in Database(db, read_only=True).table_names()} == before

    assert main(["audit", "--db", db, "-k", "3", "--kinds", "near-duplicate,outlier"]) == 0
    out = capsys.readouterr().out
    assert "near-duplicate" in out and "audited 13 images" in out
    assert main(["audit", "list", "--db", db, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    group = next((row for row in listed if row["kind"] == "near-duplicate" and "carries labels" in row["message"]), listed)
    assert main(["audit", "show", group["id"][:10], "--db", db]) == 0
    shown = capsys.readouterr().out
    assert group["id"] in shown and "copy_of_bag.png" in shown
    assert main(["audit", "decide", group["id"][:10], "--keep", "--by", "me", "--db", db]) == 0
    assert "kept by me" in capsys.readouterr().out
    assert main(["audit", "undo", group["id"][:10], "--db", db]) == 0
    assert "open again" in capsys.readouterr().out
    for argv, message in [(["audit", "decide", group["id"], "--db", db], "one of --relabel"),
                          (["audit", "show", "--db", db], "needs a finding id"),
                          (["audit", "show", "zzzz", "--db", db], "no audit finding"),
                          (["audit", "--kinds", "typo", "--db", db], "unknown audit kind")]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_deciding_a_finding_whose_images_were_deleted_elsewhere_says_so(audit_db):
    db = Database(audit_db)
    run_audit(db, config=AuditConfig(k=3, headroom=5))
    finding = audit_frame(db).row(0, named=True)
    assert main(["delete", *finding["image_ids"], "--yes", "--db", str(audit_db)]) == 0
    after = audit_frame(db).filter(pl.col("id") == finding["id"]).row(0, named=True)
    assert after["present"] == 0 and "deleted since" in after["outdated"]
    with pytest.raises(InvalidRequestError, match="out of date"):
        decide(db, AuditDecision(finding["id"], "relabel", label="bag"))
    assert decide(db, AuditDecision(finding["id"], "keep")).finding["status"] == "kept"


def test_a_label_mistake_relabelled_elsewhere_is_out_of_date_in_every_view(audit_db, capsys):
    db = Database(audit_db)
    run_audit(db, config=AuditConfig(k=3, headroom=5, kinds=("label-mistake",)))
    finding = audit_frame(db).row(0, named=True)
    other = next(c for c in CLASSES if c != finding["label"])
    assert main(["relabel", finding["image_ids"][0], "--to", other, "--db", str(audit_db)]) == 0
    assert audit_frame(db).filter(pl.col("id") == finding["id"])["outdated"].to_list() == [f"relabelled {other} since"]
    capsys.readouterr()
    assert main(["audit", "list", "--db", str(audit_db), "--format", "csv"]) == 0
    assert "out of date: relabelled" in capsys.readouterr().out
    with pytest.raises(InvalidRequestError, match="out of date"):
        decide(db, AuditDecision(finding["id"], "relabel"))
    # the next audit replaces it: the stale finding is gone (its id held the old label)
    run_audit(db, config=AuditConfig(k=3, headroom=5, kinds=("label-mistake",)))
    assert finding["id"] not in audit_frame(db)["id"].to_list()


@pytest.mark.skipif(os.environ.get("LOOKALIKE_FAULTS") is not None, reason="runs its own faults")
def test_dropping_a_version_drops_its_findings(audit_db):
    db = Database(audit_db)
    dba = next(m for m in db.find_models() if m.kind == "dba")
    run_audit(db, model=dba.id, config=AuditConfig(k=3, headroom=5))
    assert audit_frame(db, status=None).filter(pl.col("model_id") == dba.id).height
    assert main(["models", "--drop", dba.id, "--db", str(audit_db)]) == 0
    assert audit_frame(db, status=None).filter(pl.col("model_id") == dba.id).height == 0


def test_an_audit_of_some_images_finds_only_among_them_and_keeps_other_scopes(audit_db):
    db = Database(audit_db)
    config = AuditConfig(k=3, headroom=5, kinds=("label-mistake", "near-duplicate"))
    everything = run_audit(db, config=config)
    whole = audit_frame(db)
    report = run_audit(db, where="split = 'train'", config=config)
    assert report.images == everything.images - 1 and report.scope == "split = 'train'"
    train = set(db.images_frame("split = 'train'", ["id"])["id"].to_list())
    scoped = audit_frame(db).filter(pl.col("scope") == report.scope)
    assert all(set(ids) <= train for ids in scoped["image_ids"].to_list())
    # the whole-catalogue findings are still there: a run replaces open findings of its own scope only
    assert set(whole["id"].to_list()) <= set(audit_frame(db)["id"].to_list())
    with pytest.raises(WhereFilterError, match="unknown column 'colour'"):
        run_audit(db, where="colour = 'red'")
