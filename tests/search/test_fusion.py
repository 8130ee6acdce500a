"""k-NN + classifier fusion: the pure blend, the classifier against scikit-learn, its file, and tune -> predict/eval."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from console.cli.main import main
from console.service.search import open_searcher
from console.service.tuning import tune_pipeline
from engine.core.errors import SearchError
from engine.evaluation.config import TuneConfig
from engine.evaluation.distractors import Neighbourhood, voted_classes
from engine.evaluation.metrics import load_split
from engine.search.config import SearchConfig
from engine.search.fusion import (
    CLASSIFIER_C,
    ClassScores,
    LinearClassifier,
    best_weight,
    fit_classifier,
    fuse,
    load_classifier,
    save_classifier,
)
from engine.search.pipeline import stored_pipeline
from engine.search.voting import vote_classes
from engine.storage.database import Database
from tests.support.synthetic import make_vector_model, synthetic_rows

LABELS = [f"class{i}" for i in range(6)]  # 6, not 5: synthetic_rows puts every 5th row in val
DIM = 24
SIGNAL_DIMS = 3


def test_weight_zero_is_the_plain_vote_and_weight_one_the_classifier():
    labels, distances = ["a", "a", "b", None, "c"], np.array([0.1, 0.2, 0.15, 0.3, 0.4])
    probabilities, classes = np.array([0.1, 0.3, 0.6]), ("a", "b", "c")
    assert fuse(labels, distances, probabilities, classes, 0.0) == vote_classes(labels, distances)
    assert fuse(labels, distances, None, classes, 0.7, top=2) == vote_classes(labels, distances, top=2)
    assert [c for c, _ in fuse(labels, distances, probabilities, classes, 1.0)] == ["c", "b", "a"]
    half = fuse(labels, distances, probabilities, classes, 0.5)
    assert sum(score for _, score in half) == pytest.approx(1.0)
    votes = dict(vote_classes(labels, distances))
    assert dict(half)["b"] == pytest.approx(0.5 * votes["b"] + 0.5 * 0.3)
    assert fuse([None, None], np.array([0.1, 0.2]), probabilities, classes, 0.5)[0][0] == "c"  # no vote: the classifier decides


def test_ties_go_to_the_smaller_weight():
    assert best_weight((0.0, 0.5, 1.0), {0.0: 0.9, 0.5: 0.95, 1.0: 0.95}) == 0.5
    assert best_weight((0.0, 0.5), {0.0: 0.9, 0.5: 0.9}) == 0.0


@pytest.mark.parametrize("n_classes", [2, 4])
def test_the_classifier_gives_scikit_learns_probabilities(n_classes):
    rng = np.random.default_rng(n_classes)
    vectors = rng.normal(size=(120, 8)).astype(np.float32)
    labels = [f"k{i % n_classes}" for i in range(120)]
    vectors[:, 0] += np.array([i % n_classes for i in range(120)])
    classifier = fit_classifier(vectors, labels)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    reference = LogisticRegression(C=CLASSIFIER_C, max_iter=2000, random_state=0).fit(unit, labels)
    assert classifier.classes == tuple(reference.classes_)
    np.testing.assert_allclose(classifier.probabilities(vectors * 3.0), reference.predict_proba(unit), atol=1e-4)  # scale-free
    with pytest.raises(SearchError, match="at least 2 classes"):
        fit_classifier(vectors[:3], ["k0"] * 3)


def test_the_classifier_file_round_trips_and_a_changed_or_missing_file_is_refused(tmp_path):
    classifier = LinearClassifier(("a", "b", "c"), np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32))
    path = tmp_path / "classifiers" / "v1.npz"
    sha = save_classifier(classifier, path)
    again = load_classifier(path, sha)
    assert again.classes == classifier.classes and np.array_equal(again.coef, classifier.coef)
    save_classifier(LinearClassifier(("a", "b", "c"), 2 * np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32)), path)
    with pytest.raises(SearchError, match="not the file its pipeline recorded: run lookalike tune again"):
        load_classifier(path, sha)
    with pytest.raises(SearchError, match="is missing"):
        load_classifier(tmp_path / "gone.npz", sha)


def test_distractor_predictions_rank_classes_with_the_blend():
    hood = Neighbourhood(np.array([[0.1, 0.2, 0.3]]), np.array([["a", "a", "b"]], dtype=object), np.array([[0.5, 0.4, 0.1]]),
                         np.array(["a", "b", "c"], dtype=object))
    assert voted_classes(hood, top=3) == [["a", "b", "c"]]
    blend = ClassScores(("a", "b", "c"), np.array([[0.0, 0.1, 0.9]]), 1.0)
    assert voted_classes(hood, top=3, class_scores=blend) == [["c", "b", "a"]]


@pytest.fixture
def noisy_neighbours(db):
    """Classes in 3 of 24 dimensions, the rest loud noise: neighbours vote badly, a linear classifier sees through it."""
    rows = synthetic_rows(500, LABELS)
    rng = np.random.default_rng(3)
    centres = 2.0 * np.random.default_rng(4).normal(size=(len(LABELS), SIGNAL_DIMS))
    signal = centres[[LABELS.index(r["label"]) for r in rows]] + 0.6 * rng.normal(size=(len(rows), SIGNAL_DIMS))
    vectors = np.concatenate([signal, 2.0 * rng.normal(size=(len(rows), DIM - SIGNAL_DIMS))], axis=1)
    model = make_vector_model(db, DIM, "noisy-v1")
    db.write_embedded(model, rows, (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32))
    return db, model


def _top1_accuracy(searcher, vectors, labels) -> float:
    predictions = searcher.predict(vectors, top=1)
    return float(np.mean(np.array(predictions.sort("query")["label"].to_list()) == np.array(labels)))


def test_tune_blends_a_classifier_in_when_it_helps_and_predict_and_eval_use_it(noisy_neighbours, capsys):
    db, model = noisy_neighbours
    result = tune_pipeline(db, ["noisy-v1"], TuneConfig(head_methods=(), ensemble_sizes=()))
    fusion = stored_pipeline(db, model).fusion
    assert fusion["weight"] > 0 and fusion["scores"][f"{fusion['weight']:g}"] > fusion["scores"]["0"]
    assert result.best.pipeline.fusion == fusion and "classifier" in result.best.pipeline.describe()
    queries, truth = load_split(db.embeddings(model), "split = 'val'")  # never seen by tune
    fused = open_searcher(db, "noisy-v1", SearchConfig())
    assert fused.config.class_fusion is not None and fused.fusion_classifier().classes == tuple(LABELS)
    plain = open_searcher(db, "noisy-v1", SearchConfig(), reranker_named=True)  # a named re-ranker: no tuned pipeline
    assert plain.config.class_fusion is None and plain.fusion_classifier() is None
    assert _top1_accuracy(fused, queries, truth) > _top1_accuracy(plain, queries, truth) + 0.05  # measured 0.99 vs 0.88
    capsys.readouterr()
    before = Database(db.uri).settings.version
    assert main(["eval", "--db", str(db.uri)]) == 0  # reads only
    out = capsys.readouterr().out
    assert f"classes: vote + classifier at weight {fusion['weight']:g}" in out
    assert Database(db.uri).settings.version == before


def test_tune_without_fusion_keeps_the_vote(noisy_neighbours, capsys):
    db, model = noisy_neighbours
    assert main(["tune", "--db", str(db.uri), "--heads", "", "--no-fusion"]) == 0
    assert "class prediction" not in capsys.readouterr().out
    assert stored_pipeline(db, model).fusion is None
    assert open_searcher(db, "noisy-v1", SearchConfig()).config.class_fusion is None
