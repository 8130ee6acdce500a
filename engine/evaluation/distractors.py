"""Distractors: score how far a query is from every known class, calibrate a threshold, flag queries.

A *scorer* turns a query's neighbourhood in the catalogue (its nearest images and the class centroids)
into one number, higher meaning "more likely a distractor". Scorers live in one registry
(``create_scorer``). A *calibration* picks a threshold on the catalogue alone: whole classes are held
out in turn and play the distractors, so no hand-tuned number is involved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from engine.core.errors import EvaluationError
from engine.core.registry import Registry
from engine.evaluation.config import CalibrationConfig
from engine.evaluation.metrics import average_precision_at_k
from engine.search.fusion import ClassScores, ranked_classes
from engine.search.voting import vote_classes

logger = logging.getLogger(__name__)

DISTRACTOR_LABEL = "-1"


@dataclass(frozen=True)
class Neighbourhood:
    """What scorers see of a batch of queries: nearest catalogue images and class centroids."""

    distances: np.ndarray  # (n, K) cosine distances to the K nearest catalogue images, ascending
    labels: np.ndarray  # (n, K) their labels (object array)
    centroid_distances: np.ndarray  # (n, C) cosine distances to the class centroids
    classes: np.ndarray  # (C,) the classes of those centroids
    # for the scorers fitted by a calibration (mahalanobis, ensemble): the query vectors, the centroids and the
    # calibration's reference (:func:`scorer_reference`, :func:`fit_rank_reference`)
    query_vectors: np.ndarray | None = None
    centroids: np.ndarray | None = None
    reference: dict | None = None

    def fitted(self, name: str) -> dict:
        """The calibration's reference, refused by name when the scorer needs one the neighbourhood lacks."""
        if not self.reference or self.query_vectors is None or self.centroids is None:
            raise EvaluationError(f"scorer {name!r} needs the reference a calibration fits: run lookalike calibrate --scorer {name}")
        return self.reference


# ---- scorers -------------------------------------------------------------------------------------

Scorer = Callable[[Neighbourhood], np.ndarray]
SCORERS: Registry[Scorer] = Registry("distractor scorer")


def register_scorer(name: str, doc: str) -> Callable[[Scorer], Scorer]:
    return SCORERS.register(name, doc)


def list_scorers() -> dict[str, str]:
    """Scorer names and what each measures."""
    return SCORERS.describe()


def create_scorer(name: str) -> Scorer:
    """A scorer by name; the error names the valid choices."""
    return SCORERS.get(name)


@register_scorer("nearest", "cosine distance to the nearest catalogue image")
def nearest_distance(hood: Neighbourhood) -> np.ndarray:
    return hood.distances[:, 0].astype(np.float64)


@register_scorer("knn_mean", "mean cosine distance to the K nearest catalogue images")
def mean_knn_distance(hood: Neighbourhood) -> np.ndarray:
    return hood.distances.mean(axis=1).astype(np.float64)


@register_scorer("centroid", "cosine distance to the nearest class centroid")
def centroid_distance(hood: Neighbourhood) -> np.ndarray:
    return hood.centroid_distances.min(axis=1).astype(np.float64)


@register_scorer("margin", "1 - (vote share of the first class - vote share of the second)")
def vote_margin(hood: Neighbourhood) -> np.ndarray:
    scores = []
    for labels, distances in zip(hood.labels, hood.distances):
        shares = [share for _, share in vote_classes(list(labels), distances, top=2)] + [0.0, 0.0]
        scores.append(1.0 - (shares[0] - shares[1]))
    return np.asarray(scores, dtype=np.float64)


@register_scorer("agreement", "1 - fraction of the K nearest images that carry the top-voted class")
def knn_disagreement(hood: Neighbourhood) -> np.ndarray:
    scores = []
    for labels, distances in zip(hood.labels, hood.distances):
        voted = vote_classes(list(labels), distances, top=1)
        scores.append(1.0 - (np.mean(labels == voted[0][0]) if voted else 0.0))
    return np.asarray(scores, dtype=np.float64)


@register_scorer("mahalanobis", "distance to the nearest class centroid, each dimension scaled by the catalogue's within-class variance")
def mahalanobis_distance(hood: Neighbourhood) -> np.ndarray:
    weights = np.asarray(hood.fitted("mahalanobis")["inverse_variance"], dtype=np.float64)
    queries, centroids = hood.query_vectors.astype(np.float64), hood.centroids.astype(np.float64)
    # sum_d w_d (q_d - c_d)^2 for every query and centroid, without the (n, C, dim) array
    squared = (queries**2 @ weights)[:, None] - 2.0 * queries @ (centroids * weights).T + (centroids**2 @ weights)[None, :]
    return np.sqrt(np.clip(squared.min(axis=1), 0.0, None) / len(weights))


# The ensemble's members: distance to the class prototype, local density, and the variance-scaled prototype
# distance; each is turned into its rank among the calibration's known queries before they are averaged.
ENSEMBLE_SCORERS = ("centroid", "knn_mean", "mahalanobis")
ENSEMBLE = "ensemble"
REFERENCE_QUANTILES = 257  # points of each member's known-query distribution kept (its empirical CDF)
VARIANCE_FLOOR = 1e-6  # added to every dimension's within-class variance (dimensions a class never varies in)


@register_scorer(ENSEMBLE, "mean rank of the centroid, knn_mean and mahalanobis scores among the calibration's known queries")
def rank_ensemble(hood: Neighbourhood) -> np.ndarray:
    ranks = hood.fitted(ENSEMBLE).get("ranks")
    if not ranks:
        raise EvaluationError(f"scorer {ENSEMBLE!r} needs the ranks a calibration fits: run lookalike calibrate --scorer {ENSEMBLE}")
    return np.mean([rank_among(create_scorer(name)(hood), np.asarray(ranks[name])) for name in ENSEMBLE_SCORERS], axis=0)


def rank_among(scores: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Each score's rank (0-1) in the distribution given by its evenly spaced ``quantiles``; beyond either end it goes
    on linearly (over the known queries' range), so queries farther out than every known one still keep their order."""
    levels = np.linspace(0.0, 1.0, len(quantiles))
    span = max(float(quantiles[-1] - quantiles[0]), np.finfo(np.float64).eps)
    inside = np.interp(scores, quantiles, levels)
    return np.where(scores > quantiles[-1], 1.0 + (scores - quantiles[-1]) / span,
                    np.where(scores < quantiles[0], (scores - quantiles[0]) / span, inside))


def scorer_reference(vectors: np.ndarray, labels: Sequence[str], centroids: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """What the fitted scorers need from a catalogue: the inverse within-class variance of every dimension
    (``centroids``: the catalogue's :func:`class_centroids`, when the caller has them)."""
    labels = np.asarray(labels, dtype=object)
    classes, centroids = centroids or class_centroids(vectors, labels)
    centred = vectors - centroids[np.searchsorted(classes, labels)]
    return {"inverse_variance": (1.0 / (centred.var(axis=0) + VARIANCE_FLOOR)).tolist()}


def fit_rank_reference(hoods: Sequence[Neighbourhood], known: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Each ensemble member's score distribution over the known queries of ``hoods`` (quantiles, for ranking)."""
    levels = np.linspace(0.0, 1.0, REFERENCE_QUANTILES)
    return {name: np.quantile(np.concatenate([create_scorer(name)(h)[k] for h, k in zip(hoods, known)]), levels).tolist()
            for name in ENSEMBLE_SCORERS}


def class_centroids(vectors: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised mean vector of every class: (classes, centroids)."""
    labels = np.asarray(labels, dtype=object)
    classes = np.array(sorted(set(labels)), dtype=object)
    centroids = np.stack([vectors[labels == c].mean(axis=0) for c in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
    return classes, centroids.astype(np.float32)


def neighbourhood(queries: np.ndarray, catalogue: np.ndarray, catalogue_labels: Sequence[str], k: int = 10,
                  reference: dict | None = None) -> Neighbourhood:
    """Exact neighbourhood of each query in a catalogue (FAISS flat, cosine); ``reference``: a calibration's, else
    the catalogue's own variances (:func:`scorer_reference`)."""
    labels = np.asarray(catalogue_labels, dtype=object)
    k = min(k, len(catalogue))
    similarities, indices = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(catalogue, np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    classes, centroids = class_centroids(catalogue, labels)
    return Neighbourhood(1.0 - similarities, labels[indices], 1.0 - queries @ centroids.T, classes, queries, centroids,
                         reference or scorer_reference(catalogue, labels, (classes, centroids)))


# ---- predictions with -1 -------------------------------------------------------------------------


def insert_distractor(classes: Sequence[str], flagged: bool, top: int = 5, unflagged_rank: int = 2) -> list[str]:
    """The top classes with ``-1`` in its place: first when flagged, else at ``unflagged_rank``.

    Keeping ``-1`` at rank 2 of unflagged queries is the usual hedge under MAP@5: a missed distractor
    still earns 1/2, and a known query whose class is first loses nothing.
    """
    rank = 1 if flagged else unflagged_rank
    ranked = [c for c in classes if c != DISTRACTOR_LABEL]
    if rank <= top:
        ranked.insert(rank - 1, DISTRACTOR_LABEL)
    return ranked[:top]


def voted_classes(hood: Neighbourhood, top: int = 5, class_scores: ClassScores | None = None) -> list[list[str]]:
    """Top classes of every query by k-NN voting (blended with a classifier by ``class_scores``), padded with the
    nearest centroids' classes."""
    result = []
    for query, (labels, distances, centroid_distances) in enumerate(zip(hood.labels, hood.distances, hood.centroid_distances)):
        voted = [label for label, _ in ranked_classes(class_scores, query, list(labels), distances, top)]
        for extra in hood.classes[np.argsort(centroid_distances)]:
            if len(voted) >= top:
                break
            if extra not in voted:
                voted.append(extra)
        result.append(voted)
    return result


def distractor_ap_pairs(classes: list[list[str]], truth: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per query, AP@5 when flagged (``-1`` first) and when not (``-1`` at rank 2)."""
    flagged = np.array([average_precision_at_k(insert_distractor(c, True), t, 5) for c, t in zip(classes, truth)])
    unflagged = np.array([average_precision_at_k(insert_distractor(c, False), t, 5) for c, t in zip(classes, truth)])
    return flagged, unflagged


def map5_with_distractors(classes: list[list[str]], scores: np.ndarray, threshold: float, truth: Sequence[str]) -> float:
    """MAP@5 of the predictions with ``-1`` placed by ``threshold`` (truth ``-1`` for distractors)."""
    flagged, unflagged = distractor_ap_pairs(classes, truth)
    return float(np.where(np.asarray(scores) > threshold, flagged, unflagged).mean()) if len(flagged) else 0.0


def map5_curve(scores: np.ndarray, ap_flagged: np.ndarray, ap_unflagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MAP@5 at every distinct threshold at once: (thresholds, map5), flagging ``score > threshold``.

    Thresholds are midpoints between consecutive distinct scores plus one below and one above all.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    distinct = np.unique(sorted_scores)
    thresholds = np.r_[distinct[0] - 1e-6, (distinct[:-1] + distinct[1:]) / 2, distinct[-1] + 1e-6]
    # queries at or below a threshold are unflagged: their count at each threshold
    unflagged_count = np.searchsorted(sorted_scores, thresholds, side="right")
    gain = np.r_[0.0, np.cumsum(ap_unflagged[order] - ap_flagged[order])]  # switching the lowest n to unflagged
    total = ap_flagged.sum() + gain[unflagged_count]
    return thresholds, total / len(scores)


# ---- metrics over scores --------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, is_distractor: np.ndarray) -> float:
    """AUROC of ``scores`` separating distractors (positives) from known queries; ties count one half."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(is_distractor, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        raise EvaluationError("AUROC needs both distractors and known queries")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, is_distractor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, true-positive rate, false-positive rate), flagging ``score > threshold``."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(is_distractor, dtype=bool)
    thresholds = np.r_[-np.inf, np.unique(scores)]
    positives, negatives = np.sort(scores[positive]), np.sort(scores[~positive])
    tpr = 1.0 - np.searchsorted(positives, thresholds, side="right") / max(len(positives), 1)
    fpr = 1.0 - np.searchsorted(negatives, thresholds, side="right") / max(len(negatives), 1)
    return thresholds, tpr, fpr


FPR_AT_RECALL = 0.95  # the distractor recall at which the false-positive rate is reported beside AUROC


def fpr_at_recall(scores: np.ndarray, is_distractor: np.ndarray, recall: float = FPR_AT_RECALL) -> float:
    """Share of known queries flagged by the highest threshold that still catches ``recall`` of the distractors."""
    _, tpr, fpr = roc_curve(scores, is_distractor)
    reaching = np.flatnonzero(tpr >= recall)  # thresholds ascend, so tpr and fpr descend: the last one reaching is the best
    return float(fpr[reaching[-1]]) if len(reaching) else 1.0


def flag_precision_recall(scores: np.ndarray, is_distractor: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = np.asarray(scores) > threshold
    positive = np.asarray(is_distractor, dtype=bool)
    precision = float((flagged & positive).sum() / flagged.sum()) if flagged.any() else 0.0
    recall = float((flagged & positive).sum() / positive.sum()) if positive.any() else 0.0
    return precision, recall


# ---- calibration ---------------------------------------------------------------------------------


@dataclass
class Calibration:
    """A calibrated threshold and the evidence behind it."""

    scorer: str
    threshold: float
    objective: str
    config: dict
    data: dict  # what it was fitted on: counts, folds and the classes held out in each
    curve: dict  # thresholds, tpr, fpr, map5 over the pooled fold scores
    auroc: float
    map5: float  # MAP@5 with -1 at the chosen threshold on the pooled folds
    reference: dict = field(default_factory=dict)  # what the fitted scorers need at query time (scorer_reference)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls(**json.loads(text))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


def _choose_threshold(objective: str, scores: np.ndarray, positive: np.ndarray, classes: list[list[str]], truth: list[str], target_fpr: float) -> tuple[float, dict]:
    thresholds, tpr, fpr = roc_curve(scores, positive)
    candidates, map5 = map5_curve(scores, *distractor_ap_pairs(classes, truth))
    distinct = np.unique(scores)
    curve = {"thresholds": thresholds[1:].tolist(), "tpr": tpr[1:].tolist(), "fpr": fpr[1:].tolist(),
             "map5_thresholds": candidates.tolist(), "map5": map5.tolist()}
    if objective == "map5":
        return float(candidates[int(np.argmax(map5))]), curve
    known = scores[~positive]
    if objective == "fpr":
        # the smallest threshold that flags at most target_fpr of the known queries
        return float(np.quantile(known, 1.0 - target_fpr, method="higher")), curve
    if objective == "roc":
        best = int(np.argmin(fpr**2 + (1 - tpr) ** 2))
        return float(thresholds[best]) if np.isfinite(thresholds[best]) else float(distinct[0] - 1e-6), curve
    raise EvaluationError(f"unknown calibration objective {objective!r}; choose one of ['map5', 'fpr', 'roc']")


def held_out_class_sets(classes: Sequence[str], per_fold: int, folds: int, rng: np.random.Generator) -> list[set[str]]:
    """``folds`` distinct sets of ``per_fold`` classes, dealt from seeded shuffles so that every class plays the
    distractor about equally often; fewer when the classes allow fewer distinct sets (6 classes in pairs: 15)."""
    wanted = min(folds, math.comb(len(classes), per_fold))
    sets: list[set[str]] = []
    pool: list[str] = []
    while len(sets) < wanted:
        if len(pool) < per_fold:  # a new round: the classes not yet dealt in this one go first
            pool += [c for c in rng.permutation(classes).tolist() if c not in pool]
        held = set(pool[:per_fold])
        if held in sets:  # the same set again: shuffle what is left of the round instead
            pool = rng.permutation(pool).tolist()
            continue
        sets.append(held)
        pool = pool[per_fold:]
    return sets


def simulate_folds(labels: Sequence[str], config: CalibrationConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per fold: (catalogue mask, known-query mask, distractor mask) over the catalogue rows.

    Each fold holds out a distinct set of classes (:func:`held_out_class_sets`); kept classes lend ``query_fraction`` of their images (stratified) as known queries.
    """
    labels = np.asarray(labels, dtype=object)
    classes = sorted(set(labels))
    if len(classes) < 3:
        raise EvaluationError(f"calibration needs at least 3 classes to hold some out, found {len(classes)}")
    rng = np.random.default_rng(config.seed)
    per_fold = max(1, round(len(classes) * config.holdout_class_fraction))
    folds = []
    for held in held_out_class_sets(classes, per_fold, config.folds, rng):
        distractor = np.isin(labels, list(held))
        known_query = np.zeros(len(labels), bool)
        for cls in classes:
            if cls in held:
                continue
            members = np.flatnonzero(labels == cls)
            if len(members) < 2:
                continue
            chosen = rng.choice(members, size=max(1, round(len(members) * config.query_fraction)), replace=False)
            known_query[chosen] = True
        catalogue = ~distractor & ~known_query
        folds.append((catalogue, known_query, distractor))
    return folds


def flag_rates(scores: np.ndarray, is_distractor: np.ndarray, threshold: float) -> dict[str, float]:
    """The share of known queries a threshold flags (its false-positive rate) and of distractors it catches."""
    flagged = np.asarray(scores) > threshold
    positive = np.asarray(is_distractor, bool)
    return {"known_flagged": float(flagged[~positive].mean()) if (~positive).any() else 0.0,
            "distractors_caught": float(flagged[positive].mean()) if positive.any() else 0.0}


@dataclass(frozen=True)
class SimulatedFold:
    """One fold of a calibration: its queries' neighbourhood among the classes kept, and which are distractors."""

    hood: Neighbourhood
    is_distractor: np.ndarray
    truth: list[str]  # the queries' labels, DISTRACTOR_LABEL for the held-out classes'
    held_out_classes: list[str]


def simulated_folds(vectors: np.ndarray, labels: Sequence[str], config: CalibrationConfig) -> tuple[list[SimulatedFold], dict]:
    """The folds of :func:`simulate_folds` with their neighbourhoods, and the reference the scorer is fitted to
    (the catalogue's variances; with the ensemble, its members' ranks among the folds' known queries)."""
    labels = np.asarray(labels, dtype=object)
    folds = []
    for catalogue, known, distractor in simulate_folds(labels, config):
        queries = known | distractor
        hood = neighbourhood(vectors[queries], vectors[catalogue], labels[catalogue], config.neighbours)  # fold's own variances
        folds.append(SimulatedFold(hood, distractor[queries], np.where(distractor[queries], DISTRACTOR_LABEL, labels[queries]).tolist(),
                                   sorted(set(labels[distractor]))))
    reference = scorer_reference(vectors, labels)
    if config.scorer == ENSEMBLE:
        ranks = fit_rank_reference([f.hood for f in folds], [~f.is_distractor for f in folds])
        reference["ranks"] = ranks
        folds = [dataclasses.replace(f, hood=dataclasses.replace(f.hood, reference=f.hood.reference | {"ranks": ranks})) for f in folds]
    return folds, reference


def calibrate(vectors: np.ndarray, labels: Sequence[str], config: CalibrationConfig = CalibrationConfig()) -> Calibration:
    """Calibrate a distractor threshold on a labelled catalogue alone, by holding out whole classes."""
    scorer = create_scorer(config.scorer)
    labels = np.asarray(labels, dtype=object)
    folds, reference = simulated_folds(vectors, labels, config)
    pooled_scores = [scorer(f.hood) for f in folds]
    pooled_positive = [f.is_distractor for f in folds]
    pooled_classes = [classes for f in folds for classes in voted_classes(f.hood)]
    pooled_truth = [label for f in folds for label in f.truth]
    fold_info = [{"held_out_classes": f.held_out_classes, "known_queries": int((~f.is_distractor).sum()), "distractors": int(f.is_distractor.sum())}
                 for f in folds]
    scores, positive = np.concatenate(pooled_scores), np.concatenate(pooled_positive)
    threshold, curve = _choose_threshold(config.objective, scores, positive, pooled_classes, pooled_truth, config.target_fpr)
    for info, fold_scores, fold_positive in zip(fold_info, pooled_scores, pooled_positive):  # what the threshold does per fold
        info |= flag_rates(fold_scores, fold_positive, threshold)
    result = Calibration(
        scorer=config.scorer, threshold=threshold, objective=config.objective, config=asdict(config),
        data={"catalogue_images": int(len(labels)), "classes": len(set(labels)), "folds": fold_info, **flag_rates(scores, positive, threshold),
              "fpr_at_95_recall": fpr_at_recall(scores, positive)},
        curve=curve, auroc=roc_auc(scores, positive), map5=map5_with_distractors(pooled_classes, scores, threshold, pooled_truth),
        reference=reference,
    )
    logger.info("calibrated %s/%s: threshold %.4f, AUROC %.3f, MAP@5 %.3f", config.scorer, config.objective, threshold, result.auroc, result.map5)
    return result


@dataclass(frozen=True)
class DistractorEvaluation:
    """Distractor detection on a query set with known answers."""

    auroc: float
    map5_calibrated: float
    map5_no_threshold: float  # -1 never first: always at rank 2
    map5_hindsight: float  # the best threshold for this very query set
    hindsight_threshold: float
    flag_precision: float
    flag_recall: float
    fpr_at_95_recall: float = 1.0  # share of known queries flagged when 95% of the distractors are caught
    extra: dict = field(default_factory=dict)


def evaluate_distractors(hood: Neighbourhood, truth: Sequence[str], calibration: Calibration) -> DistractorEvaluation:
    """AUROC, MAP@5 with -1 (calibrated, no threshold, best in hindsight) and the flag's precision/recall."""
    if calibration.reference:  # scored as the calibration scores: with its variances and ranks
        hood = dataclasses.replace(hood, reference=calibration.reference)
    scores = create_scorer(calibration.scorer)(hood)
    truth = list(truth)
    positive = np.array([t == DISTRACTOR_LABEL for t in truth])
    classes = voted_classes(hood)
    candidates, map5 = map5_curve(scores, *distractor_ap_pairs(classes, truth))
    best = int(np.argmax(map5))
    precision, recall = flag_precision_recall(scores, positive, calibration.threshold)
    return DistractorEvaluation(
        auroc=roc_auc(scores, positive),
        map5_calibrated=map5_with_distractors(classes, scores, calibration.threshold, truth),
        map5_no_threshold=map5_with_distractors(classes, scores, np.inf, truth),
        map5_hindsight=float(map5[best]),
        hindsight_threshold=float(candidates[best]),
        flag_precision=precision,
        flag_recall=recall,
        fpr_at_95_recall=fpr_at_recall(scores, positive),
    )
