"""Exploratory analysis of the ``images`` table: per-split distributions, split-dependent skews, duplicates.

The warnings are small pure functions over a polars frame of image rows (the ``images`` schema), so a
planted skew can be tested without any image. A skew is a value of an image property (size, mode,
channels, format, class, aspect ratio) that is common in one split and rare in another: a model can
learn the property instead of the content, and a benchmark leaks (the classic case: distractors all
512x512 at the end of the test set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from scipy.stats import binom

from engine.core.errors import ReportError
from engine.reports.common import load_thumbnail, new_figure, show_thumbnail

NO_SPLIT = "(none)"

# Image properties a skew can hide in, as polars expressions over the ``images`` columns.
FEATURES: dict[str, pl.Expr] = {
    "size": pl.format("{}x{}", pl.col("width"), pl.col("height")),
    "aspect": pl.when(pl.col("width") > pl.col("height") * 1.05).then(pl.lit("landscape"))
    .when(pl.col("height") > pl.col("width") * 1.05).then(pl.lit("portrait")).otherwise(pl.lit("square")),
    "mode": pl.col("mode"),
    "channels": pl.col("channels").cast(pl.String),
    "format": pl.col("format").fill_null("unknown"),
    "label": pl.col("label").fill_null("(unlabelled)"),
}


@dataclass(frozen=True)
class SkewConfig:
    """When a value's share differs enough between two splits to warn."""

    features: tuple[str, ...] = ("size", "aspect", "mode", "channels", "format", "label")
    min_share: float = 0.05  # the value makes up at least this share of one split...
    min_count: int = 5  # ...with at least this many images...
    ratio: float = 4.0  # ...and is at least this many times as common there as in the other split...
    max_p_value: float = 1e-3  # ...and drawing the other split at the first split's rate would rarely be this low


@dataclass(frozen=True)
class EdaWarning:
    """One finding of the analysis, with the numbers behind it."""

    kind: str  # split-skew | cross-split-duplicates | label-conflict
    message: str
    details: dict = field(default_factory=dict)


def _with_split(images: pl.DataFrame) -> pl.DataFrame:
    return images.with_columns(pl.col("split").fill_null(NO_SPLIT))


def split_counts(images: pl.DataFrame) -> pl.DataFrame:
    """Images per split and label: split, label, images."""
    frame = _with_split(images).with_columns(FEATURES["label"].alias("label"))
    return frame.group_by("split", "label").agg(pl.len().alias("images")).sort("split", "label")


def feature_shares(images: pl.DataFrame, feature: str) -> pl.DataFrame:
    """Per split and value of one feature: count, split total and share."""
    if feature not in FEATURES:
        raise ReportError(f"unknown image feature {feature!r}; choose one of {sorted(FEATURES)}")
    frame = _with_split(images).select("split", FEATURES[feature].alias("value"))
    counts = frame.group_by("split", "value").agg(pl.len().alias("count"))
    totals = frame.group_by("split").agg(pl.len().alias("total"))
    return counts.join(totals, on="split").with_columns((pl.col("count") / pl.col("total")).alias("share")).sort("split", "value")


SKEW_SCHEMA = {"feature": pl.String, "value": pl.String, "split": pl.String, "count": pl.Int64, "total": pl.Int64, "share": pl.Float64,
               "other_split": pl.String, "other_count": pl.Int64, "other_total": pl.Int64, "other_share": pl.Float64, "p_value": pl.Float64}


def split_skews(images: pl.DataFrame, config: SkewConfig = SkewConfig()) -> pl.DataFrame:
    """Every (feature, value, split, other split) cell where a value is common in one split and rare in the other.

    A cell is kept when the value is at least ``min_share`` of split A (``min_count`` images or more),
    at least ``ratio`` times its share in split B, and the binomial probability of seeing at most B's
    count of it among B's images at A's rate is below ``max_p_value`` (so small splits raise no noise).
    Strongest (lowest p) first, smaller splits first among equals.
    """
    rows: list[dict] = []
    for feature in config.features:
        shares = feature_shares(images, feature)
        splits = sorted(shares["split"].unique().to_list())
        totals = dict(shares.select("split", "total").unique().iter_rows())
        lookup = {(s, v): c for s, v, c in shares.select("split", "value", "count").iter_rows()}
        for split, value, count, total, share in shares.select("split", "value", "count", "total", "share").iter_rows():
            if count < config.min_count or share < config.min_share:
                continue
            for other in splits:
                other_count, other_total = lookup.get((other, value), 0), totals[other]
                other_share = other_count / other_total
                if other == split or share < config.ratio * other_share:
                    continue
                p_value = float(binom.cdf(other_count, other_total, share))
                if p_value <= config.max_p_value:
                    rows.append({"feature": feature, "value": str(value), "split": split, "count": count, "total": total, "share": share,
                                 "other_split": other, "other_count": other_count, "other_total": other_total,
                                 "other_share": other_share, "p_value": p_value})
    # strongest first; among equals the smaller split first: the odd block is usually the small one
    return pl.DataFrame(rows, schema=SKEW_SCHEMA).sort(["p_value", "total", "share", "value"], descending=[False, False, True, False])


def split_skew_warnings(images: pl.DataFrame, config: SkewConfig = SkewConfig(), shown: int = 3) -> list[EdaWarning]:
    """One warning per image property whose distribution depends on the split, with the numbers behind it.

    ``details`` holds the feature, the smallest p-value and every skewed cell of :func:`split_skews`;
    the message names the ``shown`` strongest (split, value) pairs.
    """
    cells = split_skews(images, config)
    warnings = []
    for feature in config.features:
        mine = cells.filter(pl.col("feature") == feature)
        if not mine.height:
            continue
        pairs = mine.select("split", "value").unique(maintain_order=True).rows()
        parts = []
        for split, value in pairs[:shown]:
            cell = mine.filter((pl.col("split") == split) & (pl.col("value") == value))
            head = cell.row(0, named=True)
            against = ", ".join(f"{r['other_share']:.1%} of '{r['other_split']}' ({r['other_count']}/{r['other_total']})" for r in cell.iter_rows(named=True))
            parts.append(f"{value} is {head['share']:.1%} of '{split}' ({head['count']}/{head['total']}) but {against}")
        more = f" (+{len(pairs) - shown} more)" if len(pairs) > shown else ""
        p_value = float(mine["p_value"].min())
        warnings.append(EdaWarning("split-skew", f"{feature} depends on the split: " + "; ".join(parts) + more + f" [p <= {max(p_value, 1e-300):.1e}]",
                                   {"feature": feature, "p_value": p_value, "cells": mine.to_dicts()}))
    return sorted(warnings, key=lambda w: w.details["p_value"])


# ---- duplicates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DuplicateGroup:
    """Images whose embeddings are (near) identical: linked by cosine similarity above a threshold."""

    rows: tuple[int, ...]  # row positions in the vectors the groups were found in
    min_similarity: float  # the weakest link that joins the group
    max_similarity: float


def near_duplicate_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with cosine similarity >= ``threshold`` (exact, FAISS range search): (i, j, similarity)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    if len(vectors) < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    # range_search keeps similarities strictly above the radius
    lims, similarities, neighbours = index.range_search(vectors, float(np.nextafter(np.float32(threshold), np.float32(-1))))
    queries = np.repeat(np.arange(len(vectors)), np.diff(lims.astype(np.int64)))
    keep = queries < neighbours
    return queries[keep], neighbours[keep].astype(np.int64), similarities[keep]


def near_duplicate_groups(vectors: np.ndarray, threshold: float = 0.95) -> list[DuplicateGroup]:
    """Connected groups of images linked by cosine similarity >= ``threshold``, biggest first."""
    first, second, similarity = near_duplicate_pairs(vectors, threshold)
    parent = np.arange(len(vectors))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(first, second):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    links: dict[int, list[float]] = {}
    for i, _j, s in zip(first, second, similarity):
        links.setdefault(root(int(i)), []).append(float(s))
    for row in np.unique(np.concatenate([first, second])) if len(first) else []:
        members.setdefault(root(int(row)), []).append(int(row))
    groups = [DuplicateGroup(tuple(sorted(rows)), min(links[r]), max(links[r])) for r, rows in members.items()]
    return sorted(groups, key=lambda g: (-len(g.rows), -g.max_similarity, g.rows))


def duplicate_warnings(groups: Sequence[DuplicateGroup], splits: np.ndarray, labels: np.ndarray, paths: np.ndarray) -> list[EdaWarning]:
    """Groups that cross splits (a query that is in the catalogue too) or carry different labels."""
    warnings = []
    for group in groups:
        rows = list(group.rows)
        group_splits = sorted({str(s) for s in splits[rows]})
        group_labels = sorted({str(name) for name in labels[rows]})
        details = {"paths": [str(p) for p in paths[rows]], "splits": group_splits, "labels": group_labels,
                   "min_similarity": group.min_similarity}
        if len(group_splits) > 1:
            warnings.append(EdaWarning("cross-split-duplicates", f"{len(rows)} near-identical images (cosine >= {group.min_similarity:.3f}) "
                                       f"span splits {group_splits}: {', '.join(details['paths'][:3])}", details))
        if len(group_labels) > 1:
            warnings.append(EdaWarning("label-conflict", f"{len(rows)} near-identical images (cosine >= {group.min_similarity:.3f}) "
                                       f"carry different labels {group_labels}: {', '.join(details['paths'][:3])}", details))
    return warnings


# ---- figures -----------------------------------------------------------------------------------


def _split_colours(splits: Sequence[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
    return {s: palette[i % len(palette)] for i, s in enumerate(splits)}


def _share_bars(axis, shares: pl.DataFrame, title: str, colours: dict[str, str], top: int = 12) -> None:
    """Grouped horizontal bars: share of each value per split (the most common values)."""
    order = shares.group_by("value").agg(pl.col("count").sum()).sort("count", descending=True)["value"].head(top).to_list()
    splits = list(colours)
    height = 0.8 / max(1, len(splits))
    positions = np.arange(len(order))
    for i, split in enumerate(splits):
        mine = dict(shares.filter(pl.col("split") == split).select("value", "share").iter_rows())
        bars = axis.barh(positions + i * height, [mine.get(v, 0.0) for v in order], height, label=split, color=colours[split])
        axis.bar_label(bars, labels=[f"{mine[v]:.1%}" if mine.get(v) else "" for v in order], fontsize=7, padding=2)
    axis.set_xlim(0, 1.15)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_yticks(positions + height * (len(splits) - 1) / 2, [str(v) for v in order], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("share of the split")
    axis.set_title(title, fontsize=10)


def _split_histogram(axis, frame: pl.DataFrame, column: str, splits: Sequence[str], colours: dict[str, str], log: bool) -> None:
    """Step histograms of a numeric column, one per split, as the share of the split in each bin."""
    values = frame[column].to_numpy().astype(np.float64)
    low, high = values.min(), max(values.max(), values.min() + 1)
    bins = np.logspace(np.log10(max(1.0, low)), np.log10(high * 1.01), 40) if log else np.linspace(low, high, 40)
    for split in splits:
        mine = frame.filter(pl.col("split") == split)[column].to_numpy()
        axis.hist(mine, bins=bins, weights=np.full(len(mine), 1 / max(1, len(mine))), histtype="step", linewidth=1.8,
                  label=split, color=colours[split])
    if log:
        axis.set_xscale("log")
    axis.set_ylabel("share of the split")
    axis.legend(fontsize=8)


def eda_figure(images: pl.DataFrame) -> Figure:
    """Counts per split and label, and width, height, size, mode/channels and file size per split."""
    if images.height == 0:
        raise ReportError("the images table is empty: nothing to analyse")
    frame = _with_split(images)
    splits = sorted(frame["split"].unique().to_list())
    colours = _split_colours(splits)
    figure = new_figure(15, 9.5)
    axes = figure.subplots(2, 3)

    counts = split_counts(images)
    labels = sorted(counts["label"].unique().to_list())
    positions = np.arange(len(labels))
    height = 0.8 / len(splits)
    for i, split in enumerate(splits):
        mine = dict(counts.filter(pl.col("split") == split).select("label", "images").iter_rows())
        bars = axes[0, 0].barh(positions + i * height, [mine.get(name, 0) for name in labels], height, label=split, color=colours[split])
        axes[0, 0].bar_label(bars, labels=[str(mine[name]) if mine.get(name) else "" for name in labels], fontsize=7, padding=2)
    axes[0, 0].set_yticks(positions + height * (len(splits) - 1) / 2, labels, fontsize=8)
    axes[0, 0].invert_yaxis()
    axes[0, 0].set_xlabel("images")
    axes[0, 0].set_title("images per class and split", fontsize=10)
    axes[0, 0].legend(fontsize=8)

    for axis, column in ((axes[0, 1], "width"), (axes[0, 2], "height")):
        values = frame[column]
        if values.n_unique() <= 12:  # a few sizes: bars per value read better than a histogram
            shares = feature_shares(images.with_columns(pl.col(column).cast(pl.String).alias("mode")), "mode")
            _share_bars(axis, shares, f"{column} (pixels) per split", colours)
        else:
            _split_histogram(axis, frame, column, splits, colours, log=False)
            axis.set_xlabel(f"{column} (pixels)")
            axis.set_title(f"{column} per split", fontsize=10)

    _share_bars(axes[1, 0], feature_shares(images, "size"), "most common sizes (WxH) per split", colours)
    mode_shares = feature_shares(images.with_columns(pl.format("{} / {} ch / {}", "mode", "channels", pl.col("format").fill_null("?")).alias("mode")), "mode")
    _share_bars(axes[1, 1], mode_shares, "mode / channels / format per split", colours)

    _split_histogram(axes[1, 2], frame, "bytes", splits, colours, log=True)
    axes[1, 2].set_xlabel("file size (bytes)")
    axes[1, 2].set_title("file size per split", fontsize=10)
    figure.suptitle(f"Images: {images.height} in {len(splits)} splits, {len(labels)} classes")
    return figure


def duplicates_figure(groups: Sequence[DuplicateGroup], paths: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                      max_groups: int = 12, per_group: int = 5, thumbnail_size: int = 128) -> Figure:
    """Thumbnails of the biggest near-duplicate groups, label and split under each; small groups share a row."""
    shown = list(groups)[:max_groups]
    if not shown:
        figure = new_figure(6, 1.2)
        figure.text(0.5, 0.5, "no near-duplicate groups", ha="center", va="center")
        return figure
    width = min(per_group, max(len(g.rows) for g in shown))  # tiles per group
    groups_per_row = max(1, 6 // width)
    rows = int(np.ceil(len(shown) / groups_per_row))
    figure = new_figure(1.9 * width * groups_per_row, 2.1 * rows)
    axes = figure.subplots(rows, width * groups_per_row, squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for number, group in enumerate(shown):
        row, first_column = divmod(number, groups_per_row)
        for c, image_row in enumerate(group.rows[:width]):
            axis = axes[row, first_column * width + c]
            axis.set_axis_on()
            title = f"{labels[image_row]} / {splits[image_row]}"
            if c == 0:
                title = f"group {number + 1}: {len(group.rows)} imgs, cos>={group.min_similarity:.3f}\n{title}"
            crosses = len({str(splits[r]) for r in group.rows}) > 1
            show_thumbnail(axis, load_thumbnail(paths[image_row], thumbnail_size), title, edge="tab:red" if crosses else None)
    figure.suptitle(f"near-duplicate groups (stored embeddings): {len(groups)} groups; red frame = the group spans splits")
    return figure


def skew_summary(warnings: Sequence[EdaWarning]) -> pl.DataFrame:
    """The skewed cells behind the split-skew warnings, as one table."""
    cells = [cell for w in warnings if w.kind == "split-skew" for cell in w.details["cells"]]
    return pl.DataFrame(cells, schema=SKEW_SCHEMA)


__all__ = [
    "DuplicateGroup", "EdaWarning", "FEATURES", "SkewConfig", "duplicate_warnings", "duplicates_figure", "eda_figure",
    "feature_shares", "near_duplicate_groups", "near_duplicate_pairs", "skew_summary", "split_counts", "split_skew_warnings", "split_skews",
]
