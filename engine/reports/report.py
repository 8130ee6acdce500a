"""The report of a model version: registered plots (EDA, embedding maps, galleries, curves) and their output.

Each plot is a builder from a :class:`ReportContext` to a :class:`ReportSection` (figures, tables,
notes, warnings), registered by name; ``lookalike plot NAME`` draws one, ``lookalike report`` all of
them. The context loads the model's vectors and ranks the queries once, whatever the plots share.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.core.registry import Registry
from engine.core.splits import CATALOGUE_WHERE, QUERY_WHERE
from engine.evaluation.detect import latest_calibration
from engine.evaluation.metrics import EvaluationResult, load_split
from engine.reports import curves, eda, embedding_map, html, retrieval
from engine.reports.common import ReportDataMissing, figure_png
from engine.reports.data import EmbeddingSet, load_embeddings, require_rows
from engine.storage.database import Database, ModelRecord

logger = logging.getLogger(__name__)

CACHE_FOLDER = "report_cache"  # under the database folder


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows and on which rows."""

    catalogue_where: str = CATALOGUE_WHERE
    query_where: str = QUERY_WHERE
    k: int = 5
    vote_neighbours: int = 10
    gallery_queries: int = 8
    worst_queries: int = 8
    max_queries: int | None = 2000  # queries analysed (a seeded sample beyond this)
    map: embedding_map.MapConfig = field(default_factory=embedding_map.MapConfig)
    map_models: tuple[str, ...] = ()  # empty: the model and its parent; ("all",): every version
    duplicate_threshold: float = 0.95
    skew: eda.SkewConfig = field(default_factory=eda.SkewConfig)
    seed: int = 0


@dataclass
class ReportSection:
    """What one plot produced."""

    key: str
    title: str
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    tables: list[tuple[str, pl.DataFrame]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[eda.EdaWarning] = field(default_factory=list)


@dataclass
class Report:
    title: str
    model_id: str
    sections: list[ReportSection]

    @property
    def warnings(self) -> list[eda.EdaWarning]:
        return [w for s in self.sections for w in s.warnings]


class ReportContext:
    """A database, a model version and the data several plots share, loaded once on first use."""

    def __init__(self, db: Database, model: ModelRecord, config: ReportConfig = ReportConfig()) -> None:
        self.db, self.model, self.config = db, model, config

    @property
    def cache(self) -> embedding_map.ProjectionCache:
        return embedding_map.ProjectionCache(self.db.local_folder(CACHE_FOLDER) / "maps")

    @cached_property
    def images(self) -> pl.DataFrame:
        return self.db.images_frame()

    @cached_property
    def catalogue(self) -> EmbeddingSet:
        where = self.db.catalogue_where(self.config.catalogue_where)
        return require_rows(load_embeddings(self.db, self.model, where), "catalogue", where, self.model)

    @cached_property
    def queries(self) -> EmbeddingSet:
        rows = require_rows(load_embeddings(self.db, self.model, self.config.query_where), "query", self.config.query_where, self.model)
        return rows.sample(self.config.max_queries, self.config.seed)

    @cached_property
    def analysis(self) -> retrieval.RetrievalAnalysis:
        return retrieval.analyse_retrieval(self.queries, self.catalogue, self.config.k, self.config.vote_neighbours)

    @cached_property
    def evaluation(self) -> EvaluationResult:
        return retrieval.evaluation_of(self.analysis)

    def map_models(self) -> list[ModelRecord]:
        wanted = self.config.map_models
        if wanted == ("all",):
            return self.db.find_models()
        if wanted:
            return [self.db.resolve_model(name) for name in wanted]
        parent = [self.db.resolve_model(self.model.parent)] if self.model.parent else []
        return [self.model, *parent]


PlotBuilder = Callable[[ReportContext], ReportSection]
PLOTS: Registry[PlotBuilder] = Registry("plot", sort=False)  # a report draws them in this order


def register_plot(name: str, description: str) -> Callable[[PlotBuilder], PlotBuilder]:
    return PLOTS.register(name, description)


def list_plots() -> dict[str, str]:
    """Plot names (in report order) and what each shows."""
    return PLOTS.describe()


def create_plot(name: str) -> PlotBuilder:
    """A plot builder by name; the error names the valid choices."""
    return PLOTS.get(name)


def build_section(context: ReportContext, name: str) -> ReportSection:
    """One plot; missing data (no queries, no calibration, no training history) becomes a note, not an error."""
    builder = create_plot(name)
    try:
        return builder(context)
    except ReportDataMissing as exc:
        logger.info("plot %s skipped: %s", name, exc)
        return ReportSection(name, list_plots()[name], notes=[f"not drawn: {exc}"])


def build_report(db: Database, model: str | ModelRecord | None = None, config: ReportConfig = ReportConfig(),
                 plots: list[str] | None = None, progress: ProgressCallback | None = None) -> Report:
    """Every registered plot (or the ones named) for a model version (default: the active one)."""
    record = model if isinstance(model, ModelRecord) else db.resolve_model(model)
    context = ReportContext(db, record, config)
    sections = []
    names = plots or PLOTS.names()
    for position, name in enumerate(names):
        report_progress(progress, Progress("report", position, len(names), "sections", name))
        sections.append(build_section(context, name))
    return Report(f"Lookalike report: {record.id}", record.id, sections)


def plot_pngs(db: Database, name: str, model: str | ModelRecord | None = None, config: ReportConfig = ReportConfig()) -> tuple[ReportSection, dict[str, bytes]]:
    """One plot as PNG bytes by figure name, with its section (tables, notes, warnings): what a console shows."""
    record = model if isinstance(model, ModelRecord) else db.resolve_model(model)
    section = build_section(ReportContext(db, record, config), name)
    return section, {figure_name: figure_png(figure) for figure_name, figure in section.figures}


def _file_name(section: str, figure: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{section}-{figure}") + ".png"


def write_report(report: Report, out_dir: Path | str, subtitle: str = "", page: bool = True) -> list[Path]:
    """The PNG of every figure and (with ``page``) ``index.html`` with the figures embedded; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, pngs = [], {}
    for section in report.sections:
        for name, figure in section.figures:
            png = figure_png(figure)
            pngs[f"{section.key}/{name}"] = png
            path = out / _file_name(section.key, name)
            path.write_bytes(png)
            written.append(path)
    if page:
        index = out / "index.html"
        index.write_text(html.render_page(report.title, subtitle, report.sections, pngs), encoding="utf-8")
        written.append(index)
    return written


# ---- the plots -----------------------------------------------------------------------------------


@register_plot("eda", "images per split and class, size/mode/channel distributions, split skews, near-duplicates")
def _eda(context: ReportContext) -> ReportSection:
    images, config = context.images, context.config
    if images.height == 0:
        raise ReportDataMissing("the images table is empty: run lookalike ingest")
    section = ReportSection("eda", "Exploratory analysis")
    section.figures.append(("distributions", eda.eda_figure(images)))
    section.warnings.extend(eda.split_skew_warnings(images, config.skew))
    everything = load_embeddings(context.db, context.model, labelled=False)
    groups = eda.near_duplicate_groups(everything.vectors, config.duplicate_threshold)
    section.warnings.extend(eda.duplicate_warnings(groups, everything.splits, everything.labels, everything.paths))
    section.figures.append(("near_duplicates", eda.duplicates_figure(groups, everything.paths, everything.labels, everything.splits)))
    in_groups = sum(len(g.rows) for g in groups)
    section.notes.append(f"{len(section.warnings)} warnings; {len(groups)} near-duplicate groups ({in_groups} images) at cosine >= "
                         f"{config.duplicate_threshold} in the embeddings of {context.model.id}")
    section.tables.append(("images per split and class", eda.split_counts(images)))
    skews = eda.skew_summary(section.warnings)
    if skews.height:
        section.tables.append(("split skews", skews))
    else:
        section.notes.append(f"no split-dependent distribution of {', '.join(config.skew.features)}")
    if groups:
        section.tables.append(("near-duplicate groups", pl.DataFrame({
            "group": [i + 1 for i, g in enumerate(groups) for _ in g.rows],
            "min_cosine": [g.min_similarity for g in groups for _ in g.rows],
            "path": [str(everything.paths[r]) for g in groups for r in g.rows],
            "label": [str(everything.labels[r]) for g in groups for r in g.rows],
            "split": [str(everything.splits[r]) for g in groups for r in g.rows],
        })))
    return section


@register_plot("umap", "embedding map of catalogue (by class) and queries per model version (UMAP, or t-SNE/PCA)")
def _umap(context: ReportContext) -> ReportSection:
    config = context.config
    maps = []
    where = context.db.catalogue_where(config.catalogue_where)
    for model in context.map_models():
        catalogue = require_rows(load_embeddings(context.db, model, where), "catalogue", where, model)
        queries = load_embeddings(context.db, model, config.query_where)
        maps.append(embedding_map.embedding_map(model.id, catalogue, queries if len(queries) else None, config.map, context.cache))
    section = ReportSection("umap", f"Embedding map ({config.map.method})")
    section.figures.append((f"{config.map.method}-map", embedding_map.embedding_map_figure(maps)))  # umap-tsne-map.png: says what drew it
    section.notes.append("; ".join(f"{m.model_id}: {len(m.labels)} points, {'cached' if m.from_cache else 'fitted'}" for m in maps))
    return section


@register_plot("gallery", "sample queries and the worst queries (lowest AP) with their top-k results")
def _gallery(context: ReportContext) -> ReportSection:
    analysis, config = context.analysis, context.config
    sample = retrieval.sample_queries(analysis, config.gallery_queries, config.seed)
    worst = retrieval.worst_queries(analysis, config.worst_queries)
    section = ReportSection("gallery", "Retrieval gallery")
    section.figures.append(("sample", retrieval.gallery_figure(analysis, sample, f"{context.model.id}: sample queries, top {config.k}")))
    section.figures.append(("worst", retrieval.gallery_figure(analysis, worst, f"{context.model.id}: worst queries by AP, top {config.k}")))
    section.tables.append(("sample queries", retrieval.gallery_table(analysis, sample)))
    section.tables.append(("worst queries", retrieval.gallery_table(analysis, worst)))
    return section


@register_plot("pr", "per-class precision-recall curves, per-class metrics and confusion between classes")
def _pr(context: ReportContext) -> ReportSection:
    analysis, result = context.analysis, context.evaluation
    classes, counts = retrieval.confusion_matrix(analysis)
    section = ReportSection("pr", "Per-class metrics")
    section.figures.append(("pr_curves", retrieval.pr_figure(analysis)))
    section.figures.append(("confusion", retrieval.confusion_figure(classes, counts)))
    section.figures.append(("metrics", retrieval.metric_table_figure(result.per_class)))
    section.tables.append(("overall", result.as_frame()))
    section.tables.append(("per class", result.per_class.sort("mAP")))
    section.tables.append(("most frequent confusions (true -> voted)", retrieval.confusion_pairs(classes, counts)))
    return section


@register_plot("curves", "training loss and validation metrics per epoch of trained model versions")
def _curves(context: ReportContext) -> ReportSection:
    section = ReportSection("curves", "Training curves")
    own = context.model.notes and _has_history(context.model)
    if own:
        section.figures.append(("model", curves.training_curves_figure([curves.training_history(context.model)])))
    trained = [m for m in context.db.find_models() if _has_history(m)]
    if not trained:
        raise ReportDataMissing("no model version has a training history: train one with lookalike train")
    histories = sorted((curves.training_history(m) for m in trained), key=lambda h: h.model_id)
    section.figures.append(("all_versions", curves.training_curves_figure(histories)))
    section.tables.append(("trained versions", pl.DataFrame({
        "model": [h.model_id for h in histories], "method": [h.method for h in histories],
        "epochs": [len(h.epochs) for h in histories], "best_epoch": [h.best_epoch for h in histories],
        "best_val_map5": [float(np.nanmax(h.val_map5)) for h in histories],
    }).sort("best_val_map5", descending=True)))
    if not own:
        section.notes.append(f"{context.model.id} was not trained by lookalike train; curves of the {len(trained)} trained versions")
    return section


def _has_history(model: ModelRecord) -> bool:
    try:
        curves.training_history(model)
    except ReportDataMissing:
        return False
    return True


@register_plot("distractors", "distractor score histograms (known vs held-out classes) with the calibrated threshold")
def _distractors(context: ReportContext) -> ReportSection:
    calibration = latest_calibration(context.db, context.model)
    if calibration is None:
        raise ReportDataMissing(f"no distractor calibration for model {context.model.id}: run lookalike calibrate --model {context.model.id}")
    # the catalogue exactly as calibrate_model read it (row order decides the seeded folds)
    vectors, labels = load_split(context.db.embeddings(context.model), calibration.catalogue_where)
    if len(vectors) == 0:
        raise ReportDataMissing(f"no labelled catalogue images match {calibration.catalogue_where!r} for model {context.model.id}")
    scores = curves.calibration_scores(vectors, labels, calibration)
    section = ReportSection("distractors", "Distractor scores")
    fitted_on = calibration.details.get("data", {}).get("catalogue_images")
    if fitted_on != len(vectors):
        section.notes.append(f"the catalogue changed since calibration {calibration.id} ({fitted_on} images then, {len(vectors)} now): "
                             "the histograms are today's scores, the threshold is the stored one; recalibrate to refit it")
    section.figures.append(("histogram", curves.distractor_figure(calibration, scores)))
    known, held = scores.scores[~scores.is_distractor], scores.scores[scores.is_distractor]
    section.tables.append(("calibration", pl.DataFrame({
        "calibration": [calibration.id], "scorer": [calibration.scorer], "objective": [calibration.objective],
        "threshold": [calibration.threshold], "auroc": [calibration.auroc], "map5_with_-1": [calibration.map5],
        "known_flagged": [float((known > calibration.threshold).mean())], "distractors_flagged": [float((held > calibration.threshold).mean())],
    })))
    return section
