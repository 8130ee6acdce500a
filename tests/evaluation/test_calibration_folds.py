"""Simulated distractor folds: distinct held-out class sets, and what the threshold does in each fold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluation.config import CalibrationConfig
from engine.evaluation.distractors import calibrate, flag_rates, held_out_class_sets, simulate_folds


@pytest.mark.parametrize(("classes", "per_fold", "folds"), [(6, 2, 4), (8, 2, 4), (4, 1, 4), (3, 1, 5), (10, 3, 12)])
def test_held_out_class_sets_are_distinct_and_balanced(classes, per_fold, folds):
    names = [f"c{i}" for i in range(classes)]
    sets = held_out_class_sets(names, per_fold, folds, np.random.default_rng(0))
    assert len(sets) == min(folds, math.comb(classes, per_fold))
    assert len({frozenset(s) for s in sets}) == len(sets)  # before: 6 classes, 4 folds of 2 -> fold 4 = fold 1
    assert all(len(s) == per_fold for s in sets)
    counts = [sum(name in s for s in sets) for name in names]
    assert max(counts) - min(counts) <= 1 + (len(sets) * per_fold > classes)  # each class about as often


def test_six_classes_give_four_different_folds():
    labels = [f"c{i % 6}" for i in range(120)]
    folds = simulate_folds(labels, CalibrationConfig(folds=4))
    held = [frozenset(np.asarray(labels)[distractor]) for _, _, distractor in folds]
    assert len(set(held)) == 4


def test_flag_rates_match_a_count_by_hand():
    scores = np.array([0.1, 0.5, 0.9, 0.2, 0.8, 0.7])
    positive = np.array([False, False, False, True, True, True])
    assert flag_rates(scores, positive, 0.6) == {"known_flagged": pytest.approx(1 / 3), "distractors_caught": pytest.approx(2 / 3)}


def test_calibration_reports_the_rates_per_fold_and_pooled():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    labels = np.repeat([f"c{i}" for i in range(6)], 20)
    vectors = centres[np.repeat(np.arange(6), 20)] + 0.3 * rng.normal(size=(120, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = calibrate(vectors.astype(np.float32), labels, CalibrationConfig(folds=4))
    folds = result.data["folds"]
    assert len(folds) == 4 and all({"known_flagged", "distractors_caught"} <= set(f) for f in folds)
    pooled = result.data["known_flagged"]
    assert min(f["known_flagged"] for f in folds) <= pooled <= max(f["known_flagged"] for f in folds)
