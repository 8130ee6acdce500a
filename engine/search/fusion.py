"""k-NN + classifier fusion for class prediction: a linear classifier's class probabilities blended with the k-NN
vote (the way the best whale-identification solutions scored: a trained head's class logits with the neighbours).

``lookalike tune`` fits the classifier on the chosen version's catalogue vectors, picks the blend weight on the
catalogue hold-out (:func:`best_weight`; weight 0 is the plain vote) and stores both with the version's query
pipeline; ``predict`` and ``eval`` then rank classes with :func:`fuse`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.core.checksums import file_sha256
from engine.core.errors import SearchError
from engine.search.voting import vote_classes

logger = logging.getLogger(__name__)

# Inverse regularisation of the logistic regression: on MIT (Lite0, 80/20 split) the catalogue hold-out put 10
# ahead of 0.1 and 1 for the fused vote, with L2-normalised inputs.
CLASSIFIER_C = 10.0
CLASSIFIER_MAX_ITER = 2000
CLASSIFIER_FORMAT = "lookalike.classifier/1"
CLASSIFIERS_FOLDER = "classifiers"  # under the database's folder, beside the trained heads


@dataclass(frozen=True)
class LinearClassifier:
    """Multinomial logistic regression over L2-normalised vectors: ``classes`` and their weights."""

    classes: tuple[str, ...]
    coef: np.ndarray  # (classes, dim); one row for two classes (scikit-learn's binary form)
    intercept: np.ndarray

    def blend(self, vectors: np.ndarray, weight: float) -> ClassScores:
        """The class probabilities of ``vectors``, to blend with their votes at ``weight``."""
        return ClassScores(self.classes, self.probabilities(vectors), weight)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(queries, classes) class probabilities, rows summing to 1."""
        logits = _normalised(vectors) @ self.coef.T + self.intercept
        if len(self.classes) == 2 and logits.shape[1] == 1:  # binary: p(second class) = sigmoid
            positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - positive, positive], axis=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ClassScores:
    """A classifier's class probabilities for a batch of queries, to blend with their votes at ``weight``."""

    classes: tuple[str, ...]
    probabilities: np.ndarray  # (queries, classes)
    weight: float

    def ranked(self, query: int, neighbour_labels: Sequence[str | None], distances: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
        """Query ``query``'s classes, fused (:func:`fuse`)."""
        return fuse(neighbour_labels, distances, self.probabilities[query], self.classes, self.weight, top)


def ranked_classes(class_scores: ClassScores | None, query: int, neighbour_labels: Sequence[str | None], distances: np.ndarray,
                   top: int = 5) -> list[tuple[str, float]]:
    """Query ``query``'s classes: blended by ``class_scores`` when given, else the plain k-NN vote."""
    return class_scores.ranked(query, neighbour_labels, distances, top) if class_scores else vote_classes(neighbour_labels, distances, top=top)


def fit_classifier(vectors: np.ndarray, labels: Sequence[str], seed: int = 0) -> LinearClassifier:
    """A logistic regression on ``vectors`` (normalised here, as at query time) and their labels."""
    from sklearn.linear_model import LogisticRegression  # heavy: only tuning fits

    if len(set(labels)) < 2:
        raise SearchError(f"a classifier needs at least 2 classes, found {len(set(labels))}")
    model = LogisticRegression(C=CLASSIFIER_C, max_iter=CLASSIFIER_MAX_ITER, random_state=seed).fit(_normalised(vectors), np.asarray(labels))
    return LinearClassifier(tuple(str(c) for c in model.classes_), model.coef_.astype(np.float32), model.intercept_.astype(np.float32))


def fuse(neighbour_labels: Sequence[str | None], distances: np.ndarray, probabilities: np.ndarray | None, classes: Sequence[str],
         weight: float, top: int = 5) -> list[tuple[str, float]]:
    """Classes ranked by ``(1 - weight) * vote share + weight * classifier probability`` (scores sum to 1).

    ``weight`` 0 (or no ``probabilities``) is exactly :func:`engine.search.voting.vote_classes`."""
    votes = vote_classes(neighbour_labels, distances, top=len(neighbour_labels))
    if probabilities is None or weight <= 0:
        return votes[:top]
    scores = {label: weight * float(p) for label, p in zip(classes, probabilities)}
    order = {label: position for position, (label, _) in enumerate(votes)}  # ties: the vote's order, then the classifier's
    for label, share in votes:
        scores[label] = scores.get(label, 0.0) + (1.0 - weight) * share
    ranked = sorted(scores, key=lambda c: (-scores[c], order.get(c, len(order)), c))
    return [(label, scores[label]) for label in ranked[:top]]


def best_weight(weights: Sequence[float], score_of: dict[float, float]) -> float:
    """The weight with the best score; a tie goes to the smaller weight (the plain vote first)."""
    return min(weights, key=lambda w: (-score_of[w], w))


def save_classifier(classifier: LinearClassifier, path: Path) -> str:
    """Write ``classifier`` to ``path`` atomically; returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, format=np.array(CLASSIFIER_FORMAT), classes=np.array(classifier.classes, dtype=str),
                 coef=classifier.coef, intercept=classifier.intercept)
    tmp.replace(path)
    return file_sha256(path)


def load_classifier(path: Path, sha256: str) -> LinearClassifier:
    """The classifier stored at ``path``, refused unless its checksum is ``sha256`` (the one its pipeline recorded)."""
    if not path.exists():
        raise SearchError(f"the class fusion's classifier {path} is missing: run lookalike tune again, or give --reranker faiss to predict without the tuned pipeline")
    if file_sha256(path) != sha256:
        raise SearchError(f"the class fusion's classifier {path} is not the file its pipeline recorded: run lookalike tune again, or give --reranker faiss to predict without the tuned pipeline")
    with np.load(path, allow_pickle=False) as saved:
        if str(saved["format"]) != CLASSIFIER_FORMAT:
            raise SearchError(f"{path} is not a {CLASSIFIER_FORMAT} file: run lookalike tune again")
        return LinearClassifier(tuple(str(c) for c in saved["classes"]), saved["coef"], saved["intercept"])


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float32).tiny)
