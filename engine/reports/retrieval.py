"""Retrieval analysis of a query split against the catalogue: galleries, per-class PR curves, confusion.

Everything is computed from one exact cosine ranking of the whole catalogue per query (FAISS flat, the
same ranking ``engine.evaluation.metrics.evaluate`` scores), in chunks of queries so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from engine.core.errors import ReportError
from engine.evaluation.metrics import EvaluationResult, average_precision, average_precision_at_k, exact_ranking
from engine.reports.common import class_colours, load_thumbnail, new_figure, show_thumbnail
from engine.reports.data import EmbeddingSet
from engine.search.voting import vote_classes

RECALL_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class RetrievalAnalysis:
    """Per query: its top-k results, AP over the full ranking, voted class, interpolated PR curve."""

    queries: EmbeddingSet
    catalogue: EmbeddingSet
    top_rows: np.ndarray  # (n, k) catalogue row of each result, best first
    top_distances: np.ndarray  # (n, k) cosine distances
    ap: np.ndarray  # (n,) full-ranking average precision
    voted: np.ndarray  # (n,) top class by k-NN voting (object)
    precision_at_recall: np.ndarray  # (n, len(RECALL_GRID)) interpolated precision
    p_at_1: np.ndarray  # (n,) as in engine.evaluation.metrics.evaluate
    p_at_5: np.ndarray  # (n,)
    ap_at_5: np.ndarray  # (n,) Kaggle AP@5 of the voted top-5 classes

    @property
    def classes(self) -> list[str]:
        return sorted({str(name) for name in self.catalogue.labels} | {str(name) for name in self.queries.labels})


def interpolated_precision(relevant: np.ndarray, grid: np.ndarray = RECALL_GRID) -> np.ndarray:
    """Interpolated precision (the best precision at recall >= r) at each recall level of ``grid``."""
    relevant = np.asarray(relevant, dtype=bool)
    total = relevant.sum()
    if total == 0:
        return np.zeros(len(grid))
    hits = np.cumsum(relevant)
    precision = hits / np.arange(1, len(relevant) + 1)
    recall = hits / total
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    position = np.searchsorted(recall, grid, side="left")
    return np.where(position < len(relevant), best_after[np.minimum(position, len(relevant) - 1)], 0.0)


def analyse_retrieval(queries: EmbeddingSet, catalogue: EmbeddingSet, k: int = 5, vote_neighbours: int = 10, chunk: int = 256) -> RetrievalAnalysis:
    """Rank the whole catalogue for every query and keep what the figures need."""
    if len(queries) == 0 or len(catalogue) == 0:
        raise ReportError(f"nothing to analyse: {len(queries)} queries, {len(catalogue)} catalogue images")
    labels = catalogue.labels
    keep = max(k, vote_neighbours)
    top_rows, top_distances, ap, voted, pr, p1, p5, ap5 = [], [], [], [], [], [], [], []
    for start in range(0, len(queries), chunk):
        distances, order = exact_ranking(queries.vectors[start : start + chunk], catalogue.vectors)
        truth = queries.labels[start : start + chunk]
        relevant = labels[order] == truth[:, None]
        top_rows.append(order[:, :k])
        top_distances.append(distances[:, :k])
        ap.extend(average_precision(row) for row in relevant)
        pr.extend(interpolated_precision(row) for row in relevant)
        p1.append(relevant[:, :1].mean(axis=1))
        p5.append(relevant[:, :5].mean(axis=1))
        for rows, dist, actual in zip(order[:, :keep], distances[:, :keep], truth):
            ranked = [label for label, _ in vote_classes(list(labels[rows[:vote_neighbours]]), dist[:vote_neighbours], top=5)]
            voted.append(ranked[0] if ranked else None)
            ap5.append(average_precision_at_k(ranked, actual, 5))
    return RetrievalAnalysis(queries, catalogue, np.concatenate(top_rows), np.concatenate(top_distances), np.asarray(ap),
                             np.asarray(voted, dtype=object), np.stack(pr), np.concatenate(p1), np.concatenate(p5), np.asarray(ap5))


def evaluation_of(analysis: RetrievalAnalysis) -> EvaluationResult:
    """The metrics of ``engine.evaluation.metrics.evaluate`` (overall and per class) from the chunked analysis."""
    per_query = pl.DataFrame({"label": analysis.queries.labels.astype(str), "P@1": analysis.p_at_1, "P@5": analysis.p_at_5,
                              "mAP@5": analysis.ap_at_5, "AP": analysis.ap})
    per_class = (
        per_query.group_by("label")
        .agg(pl.len().alias("queries"), pl.col("P@1").mean(), pl.col("P@5").mean(), pl.col("mAP@5").mean(), pl.col("AP").mean().alias("mAP"))
        .sort("label")
    )
    return EvaluationResult(len(analysis.queries), len(analysis.catalogue), float(analysis.p_at_1.mean()), float(analysis.p_at_5.mean()),
                            float(analysis.ap_at_5.mean()), float(analysis.ap.mean()), per_class)


# ---- gallery -----------------------------------------------------------------------------------


def sample_queries(analysis: RetrievalAnalysis, count: int, seed: int = 0) -> np.ndarray:
    """``count`` query rows spread over classes (round-robin over classes, seeded within each)."""
    rng = np.random.default_rng(seed)
    per_class = {cls: list(rng.permutation(np.flatnonzero(analysis.queries.labels == cls))) for cls in sorted(set(analysis.queries.labels), key=str)}
    chosen: list[int] = []
    while len(chosen) < min(count, len(analysis.queries)):
        for rows in per_class.values():
            if rows and len(chosen) < count:
                chosen.append(int(rows.pop()))
    return np.asarray(chosen, dtype=np.int64)


def worst_queries(analysis: RetrievalAnalysis, count: int) -> np.ndarray:
    """The ``count`` queries with the lowest AP (ties: lowest P@1 first, then row order)."""
    correct_first = analysis.catalogue.labels[analysis.top_rows[:, 0]] == analysis.queries.labels
    order = np.lexsort((np.arange(len(analysis.ap)), correct_first, analysis.ap))
    return order[:count]


def gallery_figure(analysis: RetrievalAnalysis, rows: Sequence[int], title: str, thumbnail_size: int = 150) -> Figure:
    """Each query with its top-k results: thumbnails, labels, distances, green/red frames for right/wrong."""
    rows = list(rows)
    if not rows:
        raise ReportError("no queries to show in the gallery")
    k = analysis.top_rows.shape[1]
    figure = new_figure(1.75 * (k + 1), 2.05 * len(rows), dpi=90)
    axes = figure.subplots(len(rows), k + 1, squeeze=False)
    queries, catalogue = analysis.queries, analysis.catalogue
    for r, q in enumerate(rows):
        truth = queries.labels[q]
        show_thumbnail(axes[r, 0], load_thumbnail(queries.paths[q], thumbnail_size),
                       f"QUERY: {truth}\nAP {analysis.ap[q]:.2f}, voted {analysis.voted[q]}", edge="black")
        for c in range(k):
            found = analysis.top_rows[q, c]
            label = catalogue.labels[found]
            correct = label == truth
            show_thumbnail(axes[r, c + 1], load_thumbnail(catalogue.paths[found], thumbnail_size),
                           f"#{c + 1} {'✓' if correct else '✗'} {label}\nd = {analysis.top_distances[q, c]:.3f}",
                           edge="tab:green" if correct else "tab:red", title_colour="darkgreen" if correct else "darkred")
    figure.suptitle(title)
    return figure


def gallery_table(analysis: RetrievalAnalysis, rows: Sequence[int]) -> pl.DataFrame:
    """The numbers of a gallery: query path, label, AP, voted class, labels and distances of its results."""
    catalogue = analysis.catalogue
    return pl.DataFrame({
        "query": [str(analysis.queries.paths[q]) for q in rows],
        "label": [str(analysis.queries.labels[q]) for q in rows],
        "AP": [float(analysis.ap[q]) for q in rows],
        "voted": [str(analysis.voted[q]) for q in rows],
        "results": [" ".join(str(catalogue.labels[i]) for i in analysis.top_rows[q]) for q in rows],
        "distances": [" ".join(f"{d:.3f}" for d in analysis.top_distances[q]) for q in rows],
    })


# ---- per-class precision-recall and confusion ----------------------------------------------------


def class_pr_curves(analysis: RetrievalAnalysis) -> dict[str, np.ndarray]:
    """Mean interpolated precision at each level of RECALL_GRID over the queries of each class."""
    labels = analysis.queries.labels
    return {cls: analysis.precision_at_recall[labels == cls].mean(axis=0) for cls in sorted(set(labels), key=str)}


def pr_figure(analysis: RetrievalAnalysis, per_class: pl.DataFrame | None = None) -> Figure:
    """Per-class precision-recall curves of retrieval (the whole catalogue ranked for each query)."""
    curves = class_pr_curves(analysis)
    colours = class_colours(list(curves))
    mean_ap = {cls: float(analysis.ap[analysis.queries.labels == cls].mean()) for cls in curves}
    figure = new_figure(8.5, 6.5)
    axis = figure.subplots()
    for cls in sorted(curves, key=lambda c: -mean_ap[c]):
        axis.plot(RECALL_GRID, curves[cls], color=colours[cls], linewidth=2, label=f"{cls} (mAP {mean_ap[cls]:.3f})")
    axis.plot(RECALL_GRID, analysis.precision_at_recall.mean(axis=0), color="black", linestyle="--", linewidth=1.5,
              label=f"all (mAP {analysis.ap.mean():.3f})")
    axis.set_xlabel("recall (share of the class's catalogue images retrieved)")
    axis.set_ylabel("interpolated precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    axis.set_title(f"precision-recall per class: {len(analysis.queries)} queries, {len(analysis.catalogue)} catalogue images")
    return figure


def confusion_matrix(analysis: RetrievalAnalysis) -> tuple[list[str], np.ndarray]:
    """(classes, counts[true, voted]) of the k-NN voted top class."""
    classes = sorted({str(name) for name in analysis.queries.labels} | {str(v) for v in analysis.voted if v is not None})
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), np.int64)
    for truth, voted in zip(analysis.queries.labels, analysis.voted):
        if voted is not None:
            counts[index[str(truth)], index[str(voted)]] += 1
    return classes, counts


def confusion_pairs(classes: Sequence[str], counts: np.ndarray, top: int = 10) -> pl.DataFrame:
    """The most frequent confusions: true class, voted class, queries, share of the true class's queries."""
    rows = []
    for i, truth in enumerate(classes):
        total = counts[i].sum()
        for j, voted in enumerate(classes):
            if i != j and counts[i, j]:
                rows.append({"true": truth, "voted": voted, "queries": int(counts[i, j]), "share": float(counts[i, j] / total)})
    frame = pl.DataFrame(rows, schema={"true": pl.String, "voted": pl.String, "queries": pl.Int64, "share": pl.Float64})
    return frame.sort(["queries", "share", "true", "voted"], descending=[True, True, False, False]).head(top)


def confusion_figure(classes: Sequence[str], counts: np.ndarray) -> Figure:
    """Row-normalised confusion matrix (true class x voted class) with the counts written in."""
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, float), where=totals > 0)
    size = max(5.0, 0.6 * len(classes) + 2.5)
    figure = new_figure(size + 1.2, size)
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if counts[i, j]:
                axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(classes)), classes, fontsize=8)
    axis.set_xlabel("voted class (k-NN, top 1)")
    axis.set_ylabel("true class")
    accuracy = np.trace(counts) / max(1, counts.sum())
    axis.set_title(f"confusion between classes (top-1 accuracy {accuracy:.3f})")
    figure.colorbar(image, ax=axis, label="share of the true class's queries")
    return figure


def metric_table_figure(per_class: pl.DataFrame) -> Figure:
    """The per-class metric table drawn as a figure (for the console and the PNG set)."""
    columns = per_class.columns
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in per_class.iter_rows()]
    figure = new_figure(1.4 * len(columns) + 1, 0.32 * (len(cells) + 2) + 0.6)
    axis = figure.subplots()
    axis.set_axis_off()
    table = axis.table(cellText=cells, colLabels=columns, loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    axis.set_title("per-class metrics (queries vs catalogue)")
    return figure
