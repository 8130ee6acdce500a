"""Distractor scorers, calibration on synthetic data with a known answer, metrics vs brute force, and the
database side: stored calibrations, flagged search results, Kaggle predictions and the review queue."""

from __future__ import annotations

import csv
import dataclasses
import itertools

import numpy as np
import polars as pl
import pytest

from engine.core.errors import EvaluationError
from engine.evaluation.config import CalibrationConfig
from engine.evaluation.detect import (
    Decision,
    DistractorDetector,
    calibrate_model,
    decide,
    enqueue_for_review,
    latest_calibration,
    review_frame,
    write_submission,
)
from engine.evaluation.distractors import (
    DISTRACTOR_LABEL,
    calibrate,
    create_scorer,
    distractor_ap_pairs,
    evaluate_distractors,
    fpr_at_recall,
    insert_distractor,
    list_scorers,
    map5_curve,
    map5_with_distractors,
    neighbourhood,
    rank_among,
    roc_auc,
    roc_curve,
    scorer_reference,
    simulate_folds,
)
from engine.media.decode import content_id
from engine.search.searcher import Searcher
from ingest.pipeline import IngestConfig, add_to_catalogue, ingest_folder
from tests.support.paths import QUERIES, SAMPLES


def separated_classes(n_classes: int, per_class: int, dim: int = 24, spread: float = 0.15, seed: int = 0):
    """Tight clusters on near-orthogonal centres: a held-out class is far from every kept one."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:n_classes]
    labels = np.repeat([f"c{i}" for i in range(n_classes)], per_class)
    vectors = centres[np.repeat(np.arange(n_classes), per_class)] + spread * rng.normal(size=(n_classes * per_class, dim)) / np.sqrt(dim)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_registry_names_the_choices():
    assert set(list_scorers()) == {"nearest", "knn_mean", "centroid", "margin", "agreement", "mahalanobis", "ensemble"}
    with pytest.raises(ValueError, match="centroid"):
        create_scorer("nope")


def test_insert_distractor_places_minus_one():
    assert insert_distractor(["a", "b", "c", "d", "e"], flagged=True) == ["-1", "a", "b", "c", "d"]
    assert insert_distractor(["a", "b", "c", "d", "e"], flagged=False) == ["a", "-1", "b", "c", "d"]
    assert insert_distractor(["a"], flagged=False, unflagged_rank=6) == ["a"]


def test_roc_auc_matches_pairwise_brute_force_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 80).astype(float)  # many ties
    positive = rng.random(80) < 0.4
    pairs = [(p, n) for p, n in itertools.product(scores[positive], scores[~positive])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(scores, positive) == pytest.approx(expected)
    thresholds, tpr, fpr = roc_curve(scores, positive)
    for t, a, b in zip(thresholds, tpr, fpr):
        assert a == pytest.approx((scores[positive] > t).mean()) and b == pytest.approx((scores[~positive] > t).mean())


def test_fpr_at_95_recall_matches_a_loop_over_thresholds():
    rng = np.random.default_rng(8)
    scores = np.r_[rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 140)]
    positive = np.r_[np.ones(60, bool), np.zeros(140, bool)]
    candidates = [t for t in np.r_[-np.inf, np.unique(scores)] if (scores[positive] > t).mean() >= 0.95]
    expected = min((scores[~positive] > t).mean() for t in candidates)
    assert fpr_at_recall(scores, positive) == pytest.approx(expected)
    assert fpr_at_recall(np.r_[2.0, 3.0, 0.0, 1.0], np.array([True, True, False, False])) == 0.0  # perfectly separated


def test_map5_curve_matches_a_loop_over_thresholds():
    rng = np.random.default_rng(4)
    classes = [list(rng.permutation(list("abcdef"))[:5]) for _ in range(60)]
    truth = [DISTRACTOR_LABEL if rng.random() < 0.3 else str(rng.choice(list("abcdef"))) for _ in range(60)]
    scores = rng.random(60).round(2)
    thresholds, curve = map5_curve(scores, *distractor_ap_pairs(classes, truth))
    for t, value in zip(thresholds, curve):
        assert value == pytest.approx(map5_with_distractors(classes, scores, t, truth))


def test_folds_hold_out_whole_classes_and_cover_them():
    _, labels = separated_classes(8, 20)
    folds = simulate_folds(labels, CalibrationConfig(folds=4, holdout_class_fraction=0.25))
    held = [set(labels[d]) for _, _, d in folds]
    assert all(len(h) == 2 for h in held) and set().union(*held) == set(labels)
    for catalogue, known, distractor in folds:
        assert not (catalogue & known).any() and not (catalogue & distractor).any()
        assert not set(labels[catalogue]) & set(labels[distractor])
    with pytest.raises(ValueError, match="at least 3 classes"):
        simulate_folds(np.array(["a", "b"] * 5), CalibrationConfig())


@pytest.mark.parametrize("scorer", ["nearest", "centroid", "knn_mean", "mahalanobis", "ensemble"])
def test_calibration_finds_the_known_answer_on_separated_data(scorer):
    """Known classes sit at distance ~spread from their cluster, distractors ~1 away: the threshold must
    fall in the gap between the two, and MAP@5 with -1 must be perfect on fresh data."""
    vectors, labels = separated_classes(10, 30, seed=1)
    calibration = calibrate(vectors, labels, CalibrationConfig(scorer=scorer, objective="map5"))
    assert calibration.auroc == pytest.approx(1.0)

    fresh, _ = separated_classes(10, 30, seed=2)  # another seed: new centres, unrelated to the catalogue
    kept = np.isin(labels, [f"c{i}" for i in range(7)])
    hood = neighbourhood(np.concatenate([vectors[kept][:20], fresh[:30]]), vectors[kept], labels[kept], reference=calibration.reference)
    scores = create_scorer(scorer)(hood)
    known_max, distractor_min = scores[:20].max(), scores[20:].min()
    assert known_max < calibration.threshold < distractor_min
    truth = list(labels[kept][:20]) + [DISTRACTOR_LABEL] * 30
    result = evaluate_distractors(hood, truth, calibration)
    assert result.map5_calibrated == pytest.approx(1.0)
    assert result.map5_no_threshold < 0.8  # distractors earn 1/2 at best without the threshold
    assert (result.flag_precision, result.flag_recall) == (1.0, 1.0)


def test_mahalanobis_matches_a_loop_and_the_ensemble_averages_ranks_among_known_queries():
    vectors, labels = separated_classes(5, 20, spread=0.6, seed=9)
    queries = vectors[::7] + 0.05
    hood = neighbourhood(queries, vectors, labels)
    weights = np.asarray(scorer_reference(vectors, labels)["inverse_variance"])
    expected = [min(np.sqrt((weights * (q - c) ** 2).sum() / len(weights)) for c in hood.centroids) for q in queries.astype(np.float64)]
    np.testing.assert_allclose(create_scorer("mahalanobis")(hood), expected, rtol=1e-6)
    with pytest.raises(EvaluationError, match="needs the ranks a calibration fits: run lookalike calibrate --scorer ensemble"):
        create_scorer("ensemble")(hood)
    with pytest.raises(EvaluationError, match="needs the reference a calibration fits"):
        create_scorer("mahalanobis")(dataclasses.replace(hood, reference=None))
    calibration = calibrate(vectors, labels, CalibrationConfig(scorer="ensemble"))
    ranks = calibration.reference["ranks"]
    ranked = dataclasses.replace(hood, reference=calibration.reference)
    levels = np.linspace(0, 1, len(ranks["centroid"]))
    by_hand = np.mean([rank_among(create_scorer(name)(ranked), np.asarray(ranks[name])) for name in ("centroid", "knn_mean", "mahalanobis")], axis=0)
    np.testing.assert_allclose(create_scorer("ensemble")(ranked), by_hand)
    within = np.linspace(ranks["centroid"][0], ranks["centroid"][-1], 9)  # within the known queries' range: the empirical CDF
    np.testing.assert_allclose(rank_among(within, np.asarray(ranks["centroid"])), np.interp(within, ranks["centroid"], levels))
    far = rank_among(np.array([ranks["centroid"][-1] + 0.1, ranks["centroid"][-1] + 0.2]), np.asarray(ranks["centroid"]))
    assert 1.0 < far[0] < far[1]  # beyond every known query the order is kept, not flattened at 1


def test_fpr_objective_keeps_false_rejections_under_target():
    vectors, labels = separated_classes(8, 40, spread=1.2, seed=5)  # overlapping: the objective matters
    calibration = calibrate(vectors, labels, CalibrationConfig(objective="fpr", target_fpr=0.1, scorer="nearest"))
    curve = calibration.curve
    fpr_at = np.interp(calibration.threshold, curve["thresholds"], curve["fpr"])
    assert fpr_at <= 0.1 + 1e-9
    roc = calibrate(vectors, labels, CalibrationConfig(objective="roc", scorer="nearest"))
    assert 0.5 < roc.auroc <= 1.0


@pytest.fixture
def sample_db(db, tiny_encoder):
    ingest_folder(db, SAMPLES, IngestConfig(split="train"), encoder=tiny_encoder)
    return db


def test_stored_calibration_flags_search_results_and_predictions(sample_db, tiny_encoder, tmp_path):
    model = sample_db.resolve_model()
    assert latest_calibration(sample_db, model) is None
    first = calibrate_model(sample_db, model, CalibrationConfig(scorer="nearest"))
    second = calibrate_model(sample_db, model, CalibrationConfig(scorer="centroid"))
    active = latest_calibration(sample_db, model)
    assert active.id == second.id != first.id and active.scorer == "centroid"
    assert active.details["data"]["classes"] == 10 and len(active.details["data"]["folds"]) == 4
    assert active.centroids.shape == (10, tiny_encoder.dim)

    searcher = Searcher(sample_db, model, encoder=tiny_encoder)
    detector = DistractorDetector.for_searcher(searcher)
    paths = sorted(QUERIES.glob("*.png"))
    vectors = searcher.encode_files(paths)
    scores, flagged = detector.score(vectors)
    expected = 1.0 - (vectors @ active.centroids.T).max(axis=1)  # the centroid scorer by hand
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_array_equal(flagged, scores > active.threshold)

    results = detector.annotate(searcher.search_vectors(vectors, k=3), vectors)
    assert results.height == 30 and results["distractor_score"].null_count() == 0

    predictions = detector.predict(vectors)
    out = tmp_path / "submission.csv"
    write_submission(out, [p.name for p in paths], predictions)
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["Image", "Id"] and len(rows) == 11
    for (_name, classes), is_flagged in zip(rows[1:], predictions["is_distractor"]):
        ranked = classes.split()
        assert len(ranked) == 5 and ranked.count(DISTRACTOR_LABEL) == 1
        assert (ranked[0] == DISTRACTOR_LABEL) == is_flagged


def test_review_queue_decisions_are_stored_and_join_the_catalogue(sample_db, tiny_encoder):
    model = sample_db.resolve_model()
    calibrate_model(sample_db, model)
    searcher = Searcher(sample_db, model, encoder=tiny_encoder)
    detector = DistractorDetector.for_searcher(searcher)
    paths = sorted(QUERIES.glob("*.png"))
    predictions = detector.predict(searcher.encode_files(paths)).with_columns(pl.lit(True).alias("is_distractor"))
    ids = [content_id(p.read_bytes()) for p in paths]
    assert enqueue_for_review(sample_db, model, ids, [str(p) for p in paths], predictions, 0.5) == 10
    enqueue_for_review(sample_db, model, ids, [str(p) for p in paths], predictions, 0.5)  # twice: no duplicates
    assert review_frame(sample_db, "pending").height == 10

    join = lambda path, label: add_to_catalogue(sample_db, path, label, tiny_encoder)  # noqa: E731
    bag = next(i for i, p in zip(ids, paths) if p.name.startswith("bag"))
    coat = next(i for i, p in zip(ids, paths) if p.name.startswith("coat"))
    shirt = next(i for i, p in zip(ids, paths) if p.name.startswith("shirt"))
    decide(sample_db, Decision(bag, "distractor", None, "alice"), join)
    decide(sample_db, Decision(coat, "assigned", "coat", "bob"), join)
    decide(sample_db, Decision(shirt, "added", "blouse", "carol"), join)
    with pytest.raises(ValueError, match="not in the catalogue"):
        decide(sample_db, Decision(ids[0], "assigned", "hat", "dave"), join)
    with pytest.raises(ValueError, match="already exists"):
        decide(sample_db, Decision(ids[0], "added", "coat", "dave"), join)
    with pytest.raises(KeyError):
        decide(sample_db, Decision("missing", "distractor", None, "dave"), join)
    with pytest.raises(ValueError, match="contains whitespace.*'new_class_two'"):  # it would read back as three classes
        decide(sample_db, Decision(ids[0], "added", "new\nclass two", "dave"), join)

    decided = review_frame(sample_db).filter(pl.col("status") != "pending")
    assert dict(zip(decided["id"], decided["status"])) == {bag: "distractor", coat: "assigned", shirt: "added"}
    assert dict(zip(decided["id"], decided["decided_by"])) == {bag: "alice", coat: "bob", shirt: "carol"}
    assert decided["decided_at"].null_count() == 0
    assert review_frame(sample_db, "pending").height == 7
    images = sample_db.images_frame()
    assert images.height == 122
    assert images.filter(pl.col("id") == coat)["label"].to_list() == ["coat"]
    assert images.filter(pl.col("id") == shirt)["label"].to_list() == ["blouse"]
    embedded = pl.from_arrow(sample_db.embeddings(model).search().where(f"image_id = '{shirt}'").select(["label", "split"]).limit(None).to_arrow())
    assert embedded.row(0) == ("blouse", "train")


def test_the_kaggle_writer_refuses_class_names_it_cannot_write_unambiguously(tmp_path):
    predictions = pl.DataFrame({"query": [0, 1], "classes": [["coat", "-1"], ["sub dir", "coat"]]})
    with pytest.raises(ValueError, match="contain whitespace"):
        write_submission(tmp_path / "s.csv", ["a.png", "b.png"], predictions)
    assert not (tmp_path / "s.csv").exists()  # nothing half-written


@pytest.mark.parametrize("scorer", ["mahalanobis", "ensemble"])
def test_a_fitted_scorer_scores_queries_with_what_its_stored_calibration_fitted(sample_db, tiny_encoder, scorer):
    """The detector of a new process scores with the reference read back from the calibrations table, the same
    numbers the calibration's own functions give."""
    model = sample_db.resolve_model()
    stored = calibrate_model(sample_db, model, CalibrationConfig(scorer=scorer, folds=2))
    active = latest_calibration(sample_db, model)
    assert active.details["reference"] == stored.details["reference"] and ("ranks" in active.details["reference"]) == (scorer == "ensemble")
    searcher = Searcher(sample_db, model, encoder=tiny_encoder)
    vectors = searcher.encode_files(sorted(QUERIES.glob("*.png")))
    scores, flagged = DistractorDetector.for_searcher(searcher).score(vectors)
    catalogue = sample_db.embeddings(model).search().where(active.catalogue_where).select(["vector", "label"]).limit(None).to_arrow()
    catalogue_vectors = np.stack(catalogue.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    hood = neighbourhood(vectors, catalogue_vectors, catalogue.column("label").to_pylist(), active.neighbours, reference=active.details["reference"])
    np.testing.assert_allclose(scores, create_scorer(scorer)(hood), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(flagged, scores > active.threshold)
