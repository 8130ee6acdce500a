"""Metric functions: hand-worked examples and brute force on seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation.metrics import (
    average_precision,
    average_precision_at_k,
    evaluate,
    exact_ranking,
    map_at_k,
    mean_average_precision,
    precision_at_k,
)
from engine.search.voting import vote_classes


def test_precision_at_k_hand_worked():
    retrieved = np.array([["a", "b", "a"], ["b", "b", "c"]])
    truth = np.array(["a", "c"])
    assert precision_at_k(retrieved, truth, 1) == pytest.approx(0.5)  # [1, 0]
    assert precision_at_k(retrieved, truth, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_average_precision_at_k_is_reciprocal_rank_of_the_true_class():
    assert average_precision_at_k(["x", "a", "y"], "a") == pytest.approx(0.5)
    assert average_precision_at_k(["a"], "a") == 1.0
    assert average_precision_at_k(["b", "c", "d", "e", "f", "a"], "a", k=5) == 0.0
    assert map_at_k([["a", "b"], ["b", "a"], ["c"]], ["a", "a", "a"]) == pytest.approx((1 + 0.5 + 0) / 3)


def test_average_precision_hand_worked():
    # relevant at ranks 1, 3, 4: (1/1 + 2/3 + 3/4) / 3
    assert average_precision(np.array([1, 0, 1, 1, 0], bool)) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision(np.zeros(4, bool)) == 0.0
    ranked = np.array([["a", "b", "a"], ["b", "a", "a"]])
    assert mean_average_precision(ranked, np.array(["a", "a"])) == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def _brute_force_ap(relevant: np.ndarray) -> float:
    total, hits = 0.0, 0
    for i, rel in enumerate(relevant, start=1):
        if rel:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def test_metrics_match_brute_force_on_seeded_data():
    rng = np.random.default_rng(7)
    labels = np.array(list("abcde"))
    catalogue = rng.normal(size=(300, 16)).astype(np.float32)
    catalogue /= np.linalg.norm(catalogue, axis=1, keepdims=True)
    catalogue_labels = labels[rng.integers(0, 5, 300)]
    queries = catalogue[:40] + 0.1 * rng.normal(size=(40, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    query_labels = catalogue_labels[:40]

    # brute force: full sort of cosine distances in numpy
    distances = 1 - queries @ catalogue.T
    order = np.argsort(distances, axis=1, kind="stable")
    relevant = catalogue_labels[order] == query_labels[:, None]
    expected_map = np.mean([_brute_force_ap(r) for r in relevant])
    expected_p1 = relevant[:, 0].mean()
    expected_p5 = relevant[:, :5].mean()

    faiss_distances, faiss_order = exact_ranking(queries, catalogue)
    np.testing.assert_allclose(faiss_distances, np.take_along_axis(distances, order, axis=1), atol=1e-5)
    result = evaluate(queries, query_labels, catalogue, catalogue_labels)
    assert result.mean_ap == pytest.approx(expected_map, abs=1e-6)
    assert result.p_at_1 == pytest.approx(expected_p1)
    assert result.p_at_5 == pytest.approx(expected_p5)
    assert result.per_class["queries"].sum() == 40
    assert 0 < result.map_at_5 <= 1


def test_evaluate_refuses_empty_inputs():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(np.zeros((0, 4), np.float32), [], np.ones((3, 4), np.float32), ["a"] * 3)


def test_vote_classes_weights_by_similarity_and_breaks_ties_by_rank():
    votes = vote_classes(["a", "b", "b", None, "c"], np.array([0.1, 0.2, 0.3, 0.0, 0.1]), top=5)
    assert [label for label, _ in votes] == ["b", "a", "c"]  # b: 0.8+0.7=1.5, a: 0.9, c: 0.9 (a ranks first)
    assert sum(score for _, score in votes) == pytest.approx(1.0)
    assert vote_classes([None, None], np.array([0.1, 0.2])) == []
