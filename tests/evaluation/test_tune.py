"""Tuning a query pipeline on a hold-out of the catalogue: the split, the choice, where it is stored and who uses it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from console.cli.main import main
from console.service.search import open_searcher
from console.service.tuning import LEAK_NOTE, tune_pipeline, tuned_pipelines, tuning_candidates
from engine.core.errors import EvaluationError
from engine.evaluation.compare import rank_catalogue
from engine.evaluation.config import TuneConfig
from engine.evaluation.metrics import evaluate_ranking
from engine.evaluation.tune import ENSEMBLE_SEPARATOR, RERANKER_GRID, holdout_split, tune
from engine.search.config import DEFAULT_RERANKER, SearchConfig
from engine.search.pipeline import QueryPipeline, stored_pipeline
from engine.search.rerank import create_reranker
from engine.storage.database import Database
from tests.support.synthetic import make_vector_model, synthetic_rows

LABELS = [f"class{i}" for i in range(6)]
DIM = 16


def labelled_vectors(rows: list[dict], noise: float, seed: int) -> np.ndarray:
    """Each row near its label's centre: classes overlap with ``noise``, so re-rankers can change the answers."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(len(LABELS), DIM))
    vectors = centres[[LABELS.index(r["label"]) for r in rows]] + noise * rng.normal(size=(len(rows), DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def two_versions(db):
    rows = synthetic_rows(300, LABELS)
    sharp, blurred = make_vector_model(db, DIM, "sharp-v1"), make_vector_model(db, DIM, "blurred-v1")
    db.write_embedded(sharp, rows, labelled_vectors(rows, 0.8, seed=1))
    db.write_embedded(blurred, rows, labelled_vectors(rows, 2.5, seed=2))
    return db, sharp, blurred, rows


def record_training(monkeypatch, epochs: int) -> list:
    """Make tune's head training record every TrainConfig it is given (and train for ``epochs``); the list fills as it runs."""
    import console.service.tuning as tuning

    configs = []
    real_train = tuning.train

    def recording_train(db, parent, config, progress=None):  # noqa: ANN001
        configs.append(config)
        return real_train(db, parent, dataclasses.replace(config, epochs=epochs), progress=progress)

    monkeypatch.setattr(tuning, "train", recording_train)
    return configs


def test_the_holdout_is_stratified_seeded_and_keeps_single_images_in_the_gallery():
    labels = ["a"] * 40 + ["b"] * 20 + ["c"]
    probes, gallery = holdout_split(labels, 0.25, seed=3)
    assert set(probes).isdisjoint(gallery) and len(probes) + len(gallery) == len(labels)
    assert 60 in gallery  # the only "c"
    assert sorted(labels[i] for i in probes).count("a") == 10 and sorted(labels[i] for i in probes).count("b") == 5
    again, _ = holdout_split(labels, 0.25, seed=3)
    assert np.array_equal(probes, again)
    with pytest.raises(EvaluationError, match="two labelled classes"):
        holdout_split(["a", "b"], 0.5, seed=0)


def test_the_winner_is_the_best_scored_candidate_and_its_score_can_be_recomputed(two_versions):
    db, sharp, blurred, _ = two_versions
    result = tune(db, [blurred, sharp], TuneConfig(objective="p1"))
    final = result.scores.filter(result.scores["rung"] == result.scores["rung"].max())
    assert result.best.pipeline.score == final["P@1"].max()
    assert result.best.model.id == "sharp-v1"  # the less noisy version wins
    singles = result.scores.filter(~result.scores["model"].str.contains(ENSEMBLE_SEPARATOR))
    assert singles.filter(singles["rung"] == 1).height == 2 * len(RERANKER_GRID)  # every candidate scored once at least
    # the catalogue only: the 240 train rows, none of the 60 val queries
    assert result.probes + result.gallery == 240
    # recomputed by hand on the same split with the same pure functions
    table = db.embeddings(sharp).search().where("split = 'train'").select(["image_id", "vector", "label"]).limit(None).to_arrow().sort_by("image_id")
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    labels = table.column("label").to_pylist()
    probes, gallery = holdout_split(labels, TuneConfig.holdout, TuneConfig.seed)
    reranker = create_reranker(result.best.pipeline.reranker, configs=result.best.pipeline.configs())
    distances, indices = rank_catalogue(reranker, vectors[probes], vectors[gallery])
    again = evaluate_ranking(distances, indices, [labels[i] for i in probes], [labels[i] for i in gallery], 10)
    assert again.p_at_1 == pytest.approx(result.best.pipeline.score)


def test_a_version_trained_on_the_catalogue_labels_is_scored_but_never_chosen(two_versions):
    db, sharp, blurred, _ = two_versions
    result = tune(db, [sharp, blurred], TuneConfig(), notes={"sharp-v1": LEAK_NOTE})
    assert result.best.model.id == "blurred-v1"
    assert set(result.scores.filter(result.scores["model"] == "sharp-v1")["note"]) == {LEAK_NOTE}
    with pytest.raises(EvaluationError, match="trained on the catalogue's labels"):
        tune(db, [sharp], TuneConfig(), notes={"sharp-v1": LEAK_NOTE})


def test_a_budget_of_nothing_still_scores_one_candidate(two_versions):
    db, sharp, _, _ = two_versions
    result = tune(db, [sharp], TuneConfig(budget_s=0.0))
    assert result.scores.height == 1 and result.best.pipeline.reranker == DEFAULT_RERANKER


def test_the_stored_pipeline_is_what_searches_use_unless_a_reranker_is_named(two_versions):
    db, sharp, blurred, rows = two_versions
    result = tune_pipeline(db, ["blurred-v1"], TuneConfig(objective="map", head_methods=()))
    assert db.active_model_id() == "blurred-v1"
    kept = stored_pipeline(db, blurred)
    assert kept is not None and kept.reranker == result.best.pipeline.reranker and kept.candidates
    searcher = open_searcher(db, "blurred-v1", SearchConfig(k=5))
    assert searcher.config.reranker == kept.reranker
    assert searcher.config.reranker_configs == (kept.configs() or None)
    named = open_searcher(db, "blurred-v1", SearchConfig(k=5), reranker_named=True)
    assert named.config.reranker == DEFAULT_RERANKER
    assert open_searcher(db, "sharp-v1", SearchConfig(k=5)).config.reranker == DEFAULT_RERANKER  # nothing stored with it
    assert tuned_pipelines(db)["model"].to_list() == ["blurred-v1"] and tuning_candidates(db, "blurred-v1").height == len(kept.candidates)
    db.drop_model(blurred)  # the pipeline goes with its version
    assert stored_pipeline(db, blurred) is None and db.get_setting("query-pipeline:sharp-v1") is None


def test_a_pipeline_round_trips_through_json_with_typed_configs():
    from engine.search.rerank import KReciprocalConfig, QueryExpansionConfig

    pipeline = QueryPipeline.of("qe+k-reciprocal", {"qe": QueryExpansionConfig(neighbours=5, alpha=1.0), "k-reciprocal": KReciprocalConfig(k1=10)},
                                objective="p1", score=0.9)
    again = QueryPipeline.from_json(pipeline.as_json())
    assert again == pipeline and again.configs()["qe"] == QueryExpansionConfig(neighbours=5, alpha=1.0)
    assert again.describe().startswith("qe(neighbours=5, alpha=1.0, depth=None)+k-reciprocal(k1=10")
    config = again.applied_to(SearchConfig())
    assert config.reranker == "qe+k-reciprocal" and dataclasses.asdict(config.reranker_configs["k-reciprocal"])["k1"] == 10


def test_the_cli_tunes_shows_and_evaluates_with_the_stored_pipeline(two_versions, capsys):
    db, _, _, _ = two_versions
    path = str(db.uri)
    assert main(["tune", "--db", path, "--models", "blurred-v1", "--objective", "p1", "--budget-minutes", "1", "--heads", ""]) == 0
    out = capsys.readouterr().out
    assert "blurred-v1 with" in out and "now the active model" in out
    assert main(["tune", "--db", path, "--show"]) == 0
    shown = capsys.readouterr().out
    assert "blurred-v1" in shown and "P@1" in shown
    before = Database(path).settings.version
    assert main(["eval", "--db", path]) == 0  # reads only, with the stored pipeline
    assert f"({stored_pipeline(Database(path), Database(path).resolve_model('blurred-v1')).reranker}" in capsys.readouterr().out
    assert Database(path).settings.version == before


def test_trial_heads_learn_from_the_gallery_only_and_a_winning_head_is_trained_again_on_the_whole_catalogue(two_versions, monkeypatch):
    import console.service.tuning as tuning

    db, _, _, rows = two_versions
    # the classes live in 4 of 16 dimensions, the other 12 are loud noise: a learned projection wins
    rng = np.random.default_rng(5)
    centres = 3 * np.random.default_rng(7).normal(size=(len(LABELS), 4))
    vectors = np.concatenate([centres[[LABELS.index(r["label"]) for r in rows]] + 0.5 * rng.normal(size=(len(rows), 4)),
                              4 * rng.normal(size=(len(rows), DIM - 4))], axis=1)
    hidden = make_vector_model(db, DIM, "hidden-v1")
    db.write_embedded(hidden, rows, (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32))
    trained = record_training(monkeypatch, epochs=10)
    config = TuneConfig(objective="p1", head_methods=("arcface",), head_seeds=(0,), ensemble_sizes=())
    probes, _ = tuning.holdout_ids(db, hidden, config)
    result = tune_pipeline(db, ["hidden-v1"], config)
    trained_on = [config.catalogue_where for config in trained]
    assert all(f"'{probe}'" in trained_on[0] for probe in probes) and "NOT IN" in trained_on[0]  # the trial head never saw a probe
    heads = [m for m in db.find_models() if m.parent == "hidden-v1"]
    assert result.best.model.parent == "hidden-v1"  # the head won: trained again on the whole catalogue, the trial one dropped
    assert len(trained_on) == 2 and "NOT IN" not in trained_on[1]
    assert [h.id for h in heads] == [result.best.model.id]
    assert stored_pipeline(db, result.best.model) is not None and db.active_model_id() == result.best.model.id


def test_an_ensemble_of_two_noisy_views_wins_and_is_published_as_a_version(db):
    rows = synthetic_rows(300, LABELS)
    first, second = make_vector_model(db, DIM, "view-a"), make_vector_model(db, DIM, "view-b")
    db.write_embedded(first, rows, labelled_vectors(rows, 2.0, seed=11))  # the same classes, independent noise
    db.write_embedded(second, rows, labelled_vectors(rows, 2.0, seed=12))
    result = tune_pipeline(db, None, TuneConfig(objective="map", head_methods=()))
    ensembles = result.scores.filter(result.scores["model"].str.contains(ENSEMBLE_SEPARATOR))
    assert ensembles.height >= 1 and set(ensembles["probes"]) == {result.probes}
    assert result.best.model.kind == "ensemble" and {m.id for m in result.best.members} == {"view-a", "view-b"}
    assert db.active_model_id() == result.best.model.id and stored_pipeline(db, result.best.model) is not None
    stored = db.embeddings(result.best.model).count_rows()
    assert stored == 300 and result.best.model.dim == 2 * DIM


def test_trial_heads_left_by_a_killed_tune_are_dropped_by_the_next(two_versions):
    from console.service.tuning import TRIAL_MARKER
    from engine.training import TrainConfig, train

    db, _, blurred, _ = two_versions
    left = train(db, blurred, TrainConfig(method="arcface", epochs=1, catalogue_where=f"split = 'train' AND {TRIAL_MARKER}")).model
    kept = train(db, blurred, TrainConfig(method="arcface", epochs=1, catalogue_where="split = 'train'")).model  # the user's own head
    tune_pipeline(db, ["blurred-v1"], TuneConfig(head_methods=(), ensemble_sizes=()))
    ids = {m.id for m in db.find_models()}
    assert left.id not in ids and kept.id in ids


def test_tune_encode_makes_a_base_version_of_a_bundled_encoder_from_the_stored_files_and_tunes_it_too(tmp_path, tiny_encoder, capsys):
    from ingest.pipeline import IngestConfig, ingest_folder
    from tests.support.paths import SAMPLES

    db = Database(tmp_path / "db")
    ingest_folder(db, SAMPLES, IngestConfig(split="train"), encoder=tiny_encoder)
    catalogue = db.images.count_rows()
    assert main(["tune", "--db", str(db.uri), "--encode", "efficientnet_lite0", "--heads", "", "--no-activate"]) == 0
    capsys.readouterr()
    lite = [m for m in Database(db.uri).find_models() if m.encoder == "efficientnet_lite0"]
    assert len(lite) == 1 and Database(db.uri).embeddings(lite[0]).count_rows() == catalogue  # every image, from its file
    winner = tuned_pipelines(Database(db.uri))["model"].to_list()
    scored = set(tuning_candidates(Database(db.uri), winner[0])["versions"])
    assert {lite[0].id, tiny_encoder.model_id} <= scored  # the new version was scored beside the first
    with pytest.raises(SystemExit):  # refused by argparse, before anything is written
        main(["tune", "--db", str(db.uri), "--encode", "nope"])
    assert "unknown encoder 'nope'; choose one of ['efficientnet_lite0'" in capsys.readouterr().err


def test_a_killed_tune_resumes_with_the_trial_heads_it_had_trained(two_versions, monkeypatch):
    import console.service.tuning as tuning
    from engine.training import TrainConfig, train

    db, _, blurred, _ = two_versions
    config = TuneConfig(head_methods=("arcface", "triplet"), head_seeds=(0,), ensemble_sizes=())
    probes, _ = tuning.holdout_ids(db, blurred, config)
    where = tuning.gallery_where(db, probes, config)
    # what a tune killed after its first head leaves: that head, on this gallery; and one for another gallery
    done = train(db, blurred, TrainConfig(method="arcface", seed=0, epochs=2, catalogue_where=where)).model
    other = train(db, blurred, TrainConfig(method="arcface", seed=0, epochs=1, catalogue_where=f"split = 'train' AND {tuning.TRIAL_MARKER}")).model
    trained = record_training(monkeypatch, epochs=2)
    result = tune_pipeline(db, ["blurred-v1"], config)
    assert trained[0].method == "triplet"  # the arcface head was reused, not trained again (a refit of a winner may follow)
    assert done.id in set(result.scores["model"]) and other.id not in set(result.scores["model"])
    left = {m.id for m in db.find_models()}
    assert done.id not in left and other.id not in left  # both gone once the tune is done
    assert not tuning.trial_heads(db)


def test_an_interrupted_tune_keeps_its_trial_heads_for_the_next(two_versions, monkeypatch):
    import console.service.tuning as tuning

    db, _, _, _ = two_versions

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning, "tune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune_pipeline(db, ["blurred-v1"], TuneConfig(head_methods=("arcface",), head_seeds=(0,), ensemble_sizes=()))
    assert len(tuning.trial_heads(db)) == 1
