"""Visual reports: EDA, embedding maps, retrieval galleries, per-class curves, training and distractor curves.

Pure API over a :class:`engine.storage.database.Database`: functions return matplotlib ``Figure`` objects (drawn on
their own Agg canvas, never through pyplot) or PNG bytes, and ``write_report`` writes PNGs plus one
self-contained HTML page. The console draws on the same functions.
"""

from engine.reports.common import ReportDataMissing, figure_png, new_figure
from engine.reports.eda import EdaWarning, SkewConfig, near_duplicate_groups, split_skew_warnings
from engine.reports.embedding_map import MapConfig, create_projector, list_projectors
from engine.reports.report import (
    Report,
    ReportConfig,
    ReportContext,
    ReportSection,
    build_report,
    build_section,
    create_plot,
    list_plots,
    plot_pngs,
    write_report,
)

__all__ = [
    "EdaWarning", "MapConfig", "Report", "ReportConfig", "ReportContext", "ReportDataMissing", "ReportSection", "SkewConfig",
    "build_report", "build_section", "create_plot", "create_projector", "figure_png", "list_plots", "list_projectors", "near_duplicate_groups", "plot_pngs",
    "new_figure", "split_skew_warnings", "write_report",
]
