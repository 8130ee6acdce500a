"""What the data audit looks for, as small pure functions over one version's vectors and the image rows.

All finders share one neighbour search of the catalogue against itself (:func:`neighbours`): each image's
nearest other images, self removed. Label mistakes vote over those neighbours with the image's own
near-duplicates left out too (a copy would vote for the label being questioned), then hand the out-of-sample
class probabilities to cleanlab's confident learning. Near-duplicate groups are a centre and the images that
pass the threshold *with the centre* (no chaining: A~B and B~C never put A with C unless A~C). Outliers are the
distractor scorers applied to the catalogue itself, flagged by a robust z-score. Split skews are the report's
warnings, as findings.

Finders are registered in :data:`FINDERS` (``lookalike list audit-kinds``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl
from PIL import Image

from engine.core.errors import InvalidRequestError
from engine.core.registry import Registry
from engine.evaluation.distractors import Neighbourhood, class_centroids, create_scorer, scorer_reference
from engine.reports.eda import FEATURES, NO_SPLIT, SkewConfig, split_skew_warnings

EXACT_SEARCH_ROWS = 50_000  # up to this many vectors the neighbour search is exact (FAISS flat, n^2 d)
PCA_DIM = 128  # above it, candidates are searched in this many PCA dimensions...
PCA_SAMPLE_ROWS = 50_000  # ...fitted on a seeded sample this large...
IVF_LISTS_PER_ROOT = 4  # ...with an IVF index of 4 sqrt(n) lists (a query scans 6 sqrt(n) rows)...
IVF_TRAIN_PER_LIST = 40  # ...trained on 40 sample rows a list...
IVF_PROBES = 24  # ...probing this many lists; then re-scored exactly on the full vectors
RESCORE_BLOCK = 512  # rows re-scored at once (bounded memory: block x width x dim floats)
RECALL_K = 10  # the search's self-check: recall@10 against exact search...
RECALL_SAMPLE = 200  # ...on this many seeded rows
MAD_TO_SIGMA = 1.4826  # the median absolute deviation of a normal distribution, in standard deviations
SHOWN_NEIGHBOURS = 5  # neighbours kept in a finding's evidence


@dataclass(frozen=True)
class AuditConfig:
    """How the audit looks; the defaults are what ``lookalike audit`` uses."""

    kinds: tuple[str, ...] = ("label-mistake", "near-duplicate", "outlier", "split-skew")
    # 30 voters and cleanlab's low_self_confidence filter: on MIT with 5% planted flips (seeds 0 and 1) the
    # best of k in {10, 20, 30, 50} x filter in {prune_by_noise_rate, both, confident_learning, low_self_confidence}
    # (docs/audit.md); the other neighbours-based finders use the same voters
    k: int = 30  # neighbours that vote for an image's class
    headroom: int = 20  # extra neighbours searched so self and near-duplicates can be left out of the vote
    duplicate_threshold: float = 0.95  # cosine similarity at which two images are near-duplicates on features alone
    # Pooled CNN features move under a resize or re-encode (a half-size copy of a MIT photo: cosine 0.65-0.84), so
    # neighbours above ``candidate_threshold`` are checked on pixels too: a small grey thumbnail, mirror-invariant,
    # correlated; at or above ``pixel_threshold`` they are copies. None turns the pixel check off (no file reads).
    candidate_threshold: float = 0.6
    pixel_threshold: float | None = 0.98
    label_filter: str = "low_self_confidence"  # cleanlab's filter_by
    outlier_scorer: str = "knn_mean"  # a distractor scorer (lookalike list scorers)
    outlier_z: float = 3.5  # robust z-score (median / MAD) above which an image is an outlier
    skew: SkewConfig = field(default_factory=SkewConfig)

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in FINDERS]
        if unknown:
            raise InvalidRequestError(f"unknown audit kind {unknown[0]!r}; choose from {FINDERS.names()}")
        if self.k < 1 or self.headroom < 0:
            raise InvalidRequestError(f"k must be at least 1 and headroom at least 0 (got k={self.k}, headroom={self.headroom})")
        if not 0.0 < self.duplicate_threshold <= 1.0:
            raise InvalidRequestError(f"the duplicate threshold is a cosine similarity in (0, 1], not {self.duplicate_threshold}")


@dataclass(frozen=True)
class Finding:
    """One thing the audit found: its kind, the images (most central first), a score and the evidence."""

    kind: str
    image_ids: tuple[str, ...]
    score: float
    message: str
    evidence: dict[str, Any]
    label: str | None = None  # the label a label mistake questions
    suggested: str | None = None  # the label the evidence suggests
    key: str = ""  # what else tells this finding from another of the same kind and images (a skew's feature and value)


@dataclass(frozen=True)
class AuditData:
    """What the finders see: one version's vectors of the audited images, their rows, and the shared search."""

    ids: np.ndarray  # (n,) object
    paths: np.ndarray
    labels: np.ndarray  # (n,) object, None when unlabelled
    splits: np.ndarray
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    images: pl.DataFrame  # the audited ``images`` rows (for split skews)
    similarities: np.ndarray  # (n, w) cosine similarity of each image's nearest other images, descending
    neighbours: np.ndarray  # (n, w) their row positions; -1 where there are fewer


def neighbours(vectors: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``width`` nearest *other* rows by inner product: (similarities, positions), -1 padded.

    Exact up to :data:`EXACT_SEARCH_ROWS` rows; above, candidates from an IVF index over a PCA projection, re-scored
    exactly on the full vectors (:func:`approximate_candidates`). One search serves every finder."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    wanted = min(width + 1, n)
    if n > EXACT_SEARCH_ROWS:
        similarities, positions = approximate_candidates(vectors, wanted)
    else:
        similarities, positions = faiss.knn(vectors, vectors, wanted, metric=faiss.METRIC_INNER_PRODUCT)
    # drop each row itself (not always first: an exact copy ties with it); where it is absent, drop the last
    is_self = positions == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), wanted - 1)
    keep = np.ones_like(positions, dtype=bool)
    keep[np.arange(n), drop] = False
    similarities = similarities[keep].reshape(n, wanted - 1)
    positions = positions[keep].reshape(n, wanted - 1)
    pad = width - (wanted - 1)
    if pad > 0:
        similarities = np.pad(similarities, ((0, 0), (0, pad)), constant_values=-np.inf)
        positions = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
    return similarities, positions


def approximate_candidates(vectors: np.ndarray, wanted: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``wanted`` nearest rows (itself included) for a table too big for exact all-pairs search:
    candidates from an IVF-Flat index over a ``PCA_DIM`` projection (trained on a seeded sample), then exact inner
    products on the full vectors, in blocks, sorted. The all-pairs cost drops from n^2 d to n (n/lists * probes)
    PCA_DIM + n wanted d."""
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    lists = max(1, int(IVF_LISTS_PER_ROOT * np.sqrt(n)))
    sample = np.sort(rng.choice(n, size=min(n, max(PCA_SAMPLE_ROWS, lists * IVF_TRAIN_PER_LIST)), replace=False))
    reduced_dim = min(PCA_DIM, dim)
    pca = faiss.PCAMatrix(dim, reduced_dim)
    pca.train(vectors[sample[:PCA_SAMPLE_ROWS]])
    reduced = np.empty((n, reduced_dim), np.float32)
    for start in range(0, n, RESCORE_BLOCK * 64):
        block = pca.apply(vectors[start : start + RESCORE_BLOCK * 64])
        reduced[start : start + len(block)] = block / np.clip(np.linalg.norm(block, axis=1, keepdims=True), 1e-12, None)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(reduced_dim), reduced_dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.train(reduced[sample[: min(len(sample), lists * IVF_TRAIN_PER_LIST)]])
    index.add(reduced)
    index.nprobe = min(IVF_PROBES, lists)
    _, candidates = index.search(reduced, wanted)
    del reduced, index
    similarities = np.empty((n, wanted), np.float32)
    for start in range(0, n, RESCORE_BLOCK):
        block = candidates[start : start + RESCORE_BLOCK]
        valid = block >= 0
        exact = (vectors[np.where(valid, block, 0)] @ vectors[start : start + len(block), :, None])[..., 0]
        exact[~valid] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")
        similarities[start : start + len(block)] = np.take_along_axis(exact, order, axis=1)
        candidates[start : start + len(block)] = np.where(np.take_along_axis(valid, order, axis=1), np.take_along_axis(block, order, axis=1), -1)
    return similarities, candidates


def search_recall(vectors: np.ndarray, positions: np.ndarray, k: int = RECALL_K, sample: int = RECALL_SAMPLE, seed: int = 0) -> float:
    """Recall@k of the shared search against exact search, on a seeded sample of rows (1.0 where it was exact)."""
    n = len(vectors)
    if n <= EXACT_SEARCH_ROWS or k < 1:
        return 1.0
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    _, exact = faiss.knn(np.ascontiguousarray(vectors[rows]), np.ascontiguousarray(vectors), k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    hits = [len(set(exact[i][exact[i] != row][:k].tolist()) & set(positions[row, :k].tolist())) for i, row in enumerate(rows)]
    return float(np.sum(hits) / (k * len(rows)))


def voters(data: AuditData, config: AuditConfig) -> np.ndarray:
    """(n, w) mask of the neighbours that vote: labelled, not a near-duplicate, the first ``k`` such."""
    labelled = np.array([label is not None for label in data.labels], dtype=bool)
    present = data.neighbours >= 0
    valid = present & labelled[np.where(present, data.neighbours, 0)] & (data.similarities < config.duplicate_threshold)
    return valid & (np.cumsum(valid, axis=1) <= config.k)


def class_probabilities(data: AuditData, config: AuditConfig) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample class probabilities of every image from its neighbours' votes (similarity-weighted, as
    search votes), self and near-duplicates excluded: (classes, probabilities (n, classes)). A row with no voter
    is uniform."""
    classes = np.array(sorted({label for label in data.labels if label is not None}), dtype=object)
    column = {label: i for i, label in enumerate(classes)}
    votes = voters(data, config)
    rows, slots = np.nonzero(votes)
    neighbour_labels = data.labels[data.neighbours[rows, slots]]
    weights = np.clip(data.similarities[rows, slots], 0.0, None).astype(np.float64)
    probabilities = np.zeros((len(data.ids), len(classes)), np.float64)
    np.add.at(probabilities, (rows, np.array([column[label] for label in neighbour_labels], dtype=np.int64)), weights)
    totals = probabilities.sum(axis=1, keepdims=True)
    empty = totals[:, 0] <= 0
    probabilities[empty] = 1.0
    totals[empty] = len(classes)
    return classes, probabilities / totals


def _neighbour_evidence(data: AuditData, row: int, mask: np.ndarray | None = None) -> list[dict[str, Any]]:
    slots = np.nonzero(mask[row])[0] if mask is not None else np.nonzero(data.neighbours[row] >= 0)[0]
    shown = []
    for slot in slots[:SHOWN_NEIGHBOURS]:
        other = int(data.neighbours[row, slot])
        shown.append({"id": str(data.ids[other]), "label": data.labels[other], "similarity": round(float(data.similarities[row, slot]), 4)})
    return shown


# ---- the finders ------------------------------------------------------------------------------------------

Finder = Callable[[AuditData, AuditConfig], list[Finding]]
FINDERS: Registry[Finder] = Registry("audit kind", sort=False)


def list_finders() -> dict[str, str]:
    """Audit kinds and what each looks for."""
    return FINDERS.describe()


@FINDERS.register("label-mistake", "labels the image's own neighbours disagree with (k-NN out-of-sample votes, cleanlab confident learning)")
def find_label_mistakes(data: AuditData, config: AuditConfig) -> list[Finding]:
    from cleanlab.filter import find_label_issues

    labelled = np.nonzero([label is not None for label in data.labels])[0]
    classes, probabilities = class_probabilities(data, config)
    if len(classes) < 2 or len(labelled) < 2:
        return []
    column = {label: i for i, label in enumerate(classes)}
    given = np.array([column[label] for label in data.labels[labelled]], dtype=np.int64)
    # n_jobs=1: cleanlab would fork, and a fork of a process holding LanceDB handles can deadlock
    issues = find_label_issues(given, probabilities[labelled], filter_by=config.label_filter, return_indices_ranked_by="self_confidence", n_jobs=1)
    votes = voters(data, config)
    findings = []
    for position in issues:
        row = int(labelled[position])
        own = float(probabilities[row, given[position]])
        others = probabilities[row].copy()
        others[given[position]] = -1.0
        suggested = str(classes[int(np.argmax(others))])
        label = str(data.labels[row])
        top = np.argsort(-probabilities[row], kind="stable")[:3]
        findings.append(Finding(
            "label-mistake", (str(data.ids[row]),), 1.0 - own,
            f"labelled {label} but its neighbours say {suggested} ({probabilities[row, column[suggested]]:.0%} of the vote; {label} {own:.0%})",
            {"path": str(data.paths[row]), "split": data.splits[row], "votes": {str(classes[c]): round(float(probabilities[row, c]), 4) for c in top},
             "neighbours": _neighbour_evidence(data, row, votes)},
            label=label, suggested=suggested))
    return findings


PIXEL_SIDE = 32  # thumbnail side of the pixel check: coarse enough to ignore re-encoding, fine enough to tell scenes apart
PIXEL_CROP = 0.05  # the centre view drops this share of each side


def pixel_signature(path: str) -> np.ndarray | None:
    """A file's grey ``PIXEL_SIDE`` thumbnails, zero-mean and unit-norm, one row per view: the whole image and its
    centre (``1 - 2 * PIXEL_CROP`` of each side: a cropped copy matches the original's centre), each also mirrored.
    None when the file cannot be read (moved, deleted, damaged: the features alone decide)."""
    from PIL import ImageOps

    from engine.media.decode import DecodeError, decode_image

    try:
        grey = decode_image(Path(path).read_bytes()).image.convert("L")
    except (OSError, DecodeError):
        return None
    width, height = grey.size
    centre = grey.crop((round(width * PIXEL_CROP), round(height * PIXEL_CROP), round(width * (1 - PIXEL_CROP)), round(height * (1 - PIXEL_CROP))))
    views = []
    for view in (grey, centre):
        small = view.resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX)
        views += [np.asarray(small, np.float32).ravel(), np.asarray(ImageOps.mirror(small), np.float32).ravel()]
    views = np.stack(views)
    views -= views.mean(axis=1, keepdims=True)
    return views / np.clip(np.linalg.norm(views, axis=1, keepdims=True), 1e-6, None)


def duplicate_links(data: AuditData, config: AuditConfig, signature: Callable[[str], np.ndarray | None] = pixel_signature) -> np.ndarray:
    """(n, w) mask of the neighbours that are copies: cosine >= ``duplicate_threshold``, or above
    ``candidate_threshold`` with thumbnails that correlate >= ``pixel_threshold`` (either way round)."""
    present = data.neighbours >= 0
    linked = present & (data.similarities >= config.duplicate_threshold)
    if config.pixel_threshold is None:
        return linked
    candidates = present & ~linked & (data.similarities >= config.candidate_threshold)
    rows, slots = np.nonzero(candidates)
    others = data.neighbours[rows, slots]
    signatures = {int(r): signature(str(data.paths[r])) for r in np.unique(np.concatenate([rows, others]))} if len(rows) else {}
    for row, slot, other in zip(rows.tolist(), slots.tolist(), others.tolist()):
        a, b = signatures[row], signatures[other]
        # whole against whole (either mirrored), or one's whole against the other's centre: never centre to centre
        if a is not None and b is not None and max(float(np.max(a[:2] @ b.T)), float(np.max(a[2:] @ b[:2].T))) >= config.pixel_threshold:
            linked[row, slot] = True
    return linked


def duplicate_groups(similarities: np.ndarray, positions: np.ndarray, linked: np.ndarray) -> list[tuple[int, list[int], list[float]]]:
    """Groups of rows joined by ``linked`` (an (n, w) mask over ``positions``), each a centre and the rows linked
    *with the centre*: (centre, members, their cosine similarity to the centre). Centres are taken by most links
    first, so no group chains pairs that are themselves far apart. Ordered biggest first."""
    links: dict[int, dict[int, float]] = {}
    rows, slots = np.nonzero(linked & (positions >= 0))
    for row, slot in zip(rows.tolist(), slots.tolist()):
        other, similarity = int(positions[row, slot]), float(similarities[row, slot])
        for a, b in ((row, other), (other, row)):
            links.setdefault(a, {})
            links[a][b] = max(similarity, links[a].get(b, -1.0))
    order = sorted(links, key=lambda r: (-len(links[r]), -max(links[r].values()), r))
    taken: set[int] = set()
    groups = []
    for centre in order:
        if centre in taken:
            continue
        members = sorted((m for m in links[centre] if m not in taken), key=lambda m: (-links[centre][m], m))
        if not members:
            continue
        taken.update([centre, *members])
        groups.append((centre, members, [links[centre][m] for m in members]))
    return sorted(groups, key=lambda g: (-len(g[1]), -min(g[2]), g[0]))


@FINDERS.register("near-duplicate", "groups of near-identical images (a centre and the images as close to it as the threshold); flagged when they span splits or labels")
def find_near_duplicates(data: AuditData, config: AuditConfig) -> list[Finding]:
    findings = []
    for centre, members, similarity in duplicate_groups(data.similarities, data.neighbours, duplicate_links(data, config)):
        rows = [centre, *members]
        splits = sorted({str(s) if s is not None else NO_SPLIT for s in data.splits[rows]})
        labels = sorted({str(label) for label in data.labels[rows] if label is not None})
        flags = [*(["spans splits"] if len(splits) > 1 else []), *(["two labels"] if len(labels) > 1 else [])]
        # flagged groups first: a copy across splits leaks, a copy with two labels is a mistake either way
        score = float(min(similarity)) + len(flags)
        findings.append(Finding(
            "near-duplicate", tuple(str(data.ids[r]) for r in rows), score,
            f"{len(rows)} near-identical images (cosine {min(similarity):.3f} or more to the first, or the same pixels)"
            + (f"; spans splits {', '.join(splits)}" if len(splits) > 1 else "") + (f"; carries labels {', '.join(labels)}" if len(labels) > 1 else ""),
            {"paths": [str(p) for p in data.paths[rows]], "labels": [data.labels[r] for r in rows], "splits": [data.splits[r] for r in rows],
             "similarity": [1.0, *[round(s, 4) for s in similarity]], "flags": flags},
            suggested=_majority(data.labels[rows])))
    return findings


def _majority(labels: np.ndarray) -> str | None:
    known = [str(label) for label in labels if label is not None]
    return max(sorted(set(known)), key=known.count) if known else None


@FINDERS.register("outlier", "labelled images far from every class: a distractor scorer applied to the catalogue itself, robust z-score")
def find_outliers(data: AuditData, config: AuditConfig) -> list[Finding]:
    labelled = np.nonzero([label is not None for label in data.labels])[0]
    all_votes = voters(data, config)
    votes = all_votes[labelled]
    usable = votes.any(axis=1)
    labelled, votes = labelled[usable], votes[usable]
    if len(labelled) < 3:
        return []
    # the first k voters of each row; a row with fewer repeats its farthest one (a fixed width for the scorers)
    order = np.argsort(~votes, axis=1, kind="stable")[:, : config.k]
    counts = votes.sum(axis=1)
    order = np.where(np.arange(order.shape[1])[None, :] < counts[:, None], order, order[np.arange(len(order)), np.maximum(counts - 1, 0)][:, None])
    similarity = np.take_along_axis(data.similarities[labelled], order, axis=1)
    neighbour_labels = data.labels[np.take_along_axis(data.neighbours[labelled], order, axis=1)]
    classes, centroids = class_centroids(data.vectors[labelled], data.labels[labelled])
    hood = Neighbourhood(1.0 - similarity, neighbour_labels, 1.0 - data.vectors[labelled] @ centroids.T, classes, data.vectors[labelled], centroids,
                         scorer_reference(data.vectors[labelled], data.labels[labelled], (classes, centroids)))
    scores = create_scorer(config.outlier_scorer)(hood)
    median = float(np.median(scores))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(scores - median)))
    if spread <= 0:
        return []
    z = (scores - median) / spread
    findings = []
    for position in np.argsort(-z, kind="stable"):
        if z[position] < config.outlier_z:
            break
        row = int(labelled[position])
        nearest = [str(label) for label in neighbour_labels[position][:SHOWN_NEIGHBOURS]]
        findings.append(Finding(
            "outlier", (str(data.ids[row]),), float(z[position]),
            f"far from every class ({config.outlier_scorer} {scores[position]:.3f}, robust z {z[position]:.1f}); labelled {data.labels[row]}, "
            f"nearest: {', '.join(nearest)}",
            {"path": str(data.paths[row]), "split": data.splits[row], "scorer": config.outlier_scorer, "score": round(float(scores[position]), 4),
             "median": round(median, 4), "neighbours": _neighbour_evidence(data, row, all_votes)},
            label=str(data.labels[row]), suggested=_majority(neighbour_labels[position])))
    return findings


@FINDERS.register("split-skew", "image properties (size, mode, format, class, ...) common in one split and rare in another: a leak")
def find_split_skews(data: AuditData, config: AuditConfig) -> list[Finding]:
    if data.images.is_empty():
        return []
    findings = []
    for warning in split_skew_warnings(data.images, config.skew):
        cell = warning.details["cells"][0]
        chosen = data.images.with_columns(pl.col("split").fill_null(NO_SPLIT)).filter(
            (pl.col("split") == cell["split"]) & (FEATURES[cell["feature"]].cast(pl.String) == cell["value"]))
        findings.append(Finding("split-skew", tuple(sorted(chosen["id"].to_list())), float(-np.log10(max(warning.details["p_value"], 1e-300))),
                                warning.message, {"feature": cell["feature"], "value": cell["value"], "split": cell["split"],
                                                  "cells": warning.details["cells"][:SHOWN_NEIGHBOURS]}, key=f"{cell['feature']}={cell['value']}"))
    return findings
