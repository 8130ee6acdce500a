"""Audit: the data audit's open findings, one at a time with their images side by side, decided with single keys
and undone with ``u``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image as PILImage
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.widgets import DataTable, Footer, Header, Static

from console.service.audit import AuditDecision, FindingView, decide, list_findings, run_audit, show_finding, undo
from console.tui.screens.base import ConsoleScreen
from console.tui.widgets import Thumbnail, fill_table, load_preview
from engine.core.splits import sql_quote

SHOWN_IMAGES = 4  # images of a finding shown side by side (a group's first ones)


@dataclass(frozen=True)
class AuditItem:
    """The finding on screen: previews of its images, then (for a finding about one image) of the neighbours that
    voted, so the label can be judged against them."""

    view: FindingView
    previews: list[PILImage.Image | None]
    captions: list[str]


class AuditScreen(ConsoleScreen):
    """r: relabel to the suggestion · k: keep · d: delete · m: move copies to the first image's split · n/p: next and
    previous · u: undo the last decision · a: run the audit."""

    AUTO_FOCUS = "#audit-table"

    BINDINGS = [
        # short descriptions: every key fits the footer at 80 columns
        Binding("r", "decide('relabel')", "Relabel"),
        Binding("k", "decide('keep')", "Keep"),
        Binding("d", "decide('delete')", "Delete"),
        Binding("m", "decide('move')", "Move"),
        Binding("n", "step(1)", "Next"),
        Binding("p", "step(-1)", "Prev"),
        Binding("u", "undo", "Undo"),
        Binding("a", "audit", "Audit"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._findings = pl.DataFrame()
        self._position = 0
        self._item: AuditItem | None = None
        self._undoable: list[str] = []  # findings decided in this session, newest last

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="audit-counts")
        with Vertical(id="audit-body", classes="panel"):
            yield Static("No findings: press a to run the audit.", id="audit-info")
            with Grid(id="audit-grid"):
                for cell in range(SHOWN_IMAGES):
                    yield Thumbnail(self.lookalike.image_class, "", id=f"audit-cell-{cell}")
            yield DataTable(id="audit-table", cursor_type="row")
        yield Static("", id="audit-message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#audit-grid").display = self.lookalike.image_class is not None

    # ---- reading -------------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.load_findings()

    @work(thread=True, exclusive=True, group="audit")
    def load_findings(self) -> None:
        def read() -> None:
            findings = list_findings(self.lookalike.db)
            position = min(self._position, max(findings.height - 1, 0))
            item = self._read_item(findings["id"][position]) if findings.height else None
            self.ui(self._show, findings, position, item)

        self.guarded("audit-message", "reading the audit", read)

    def _read_item(self, finding_id: str) -> AuditItem:
        view = show_finding(self.lookalike.db, finding_id)
        shown = view.images.head(SHOWN_IMAGES)
        paths = shown["path"].to_list() if shown.height else []
        captions = [f"{label or '?'} · {split or '-'}" for label, split in shown.select("label", "split").iter_rows()] if shown.height else []
        neighbours = view.evidence.get("neighbours") or []
        if len(paths) == 1 and neighbours:
            chosen = neighbours[: SHOWN_IMAGES - 1]
            found = dict(self.lookalike.db.images_frame("id IN (" + ", ".join(sql_quote(n["id"]) for n in chosen) + ")", ["id", "path"]).iter_rows())
            for neighbour in chosen:
                if neighbour["id"] in found:
                    paths.append(found[neighbour["id"]])
                    captions.append(f"neighbour: {neighbour['label']} {neighbour['similarity']:.2f}")
        show_images = self.lookalike.image_class is not None
        return AuditItem(view, [load_preview(Path(p)) if show_images and Path(p).is_file() else None for p in paths], captions)

    def _show(self, findings: pl.DataFrame, position: int, item: AuditItem | None) -> None:
        self._findings, self._position, self._item = findings, position, item
        kinds = ", ".join(f"{n} {k}" for k, n in findings.group_by("kind").len().sort("kind").iter_rows()) if findings.height else "none"
        self.query_one("#audit-counts", Static).update(
            f"{findings.height} open findings ({kinds})" + (f" · showing {position + 1} of {findings.height}" if findings.height else "")
            + (f" · {len(self._undoable)} decided in this session (u undoes)" if self._undoable else ""))
        info = self.query_one("#audit-info", Static)
        if item is None:
            info.update("No open findings: press a to run the audit (label mistakes, near-duplicates, outliers, split skews).")
            fill_table(self.query_one("#audit-table", DataTable), pl.DataFrame(), "no finding")
            for cell in range(SHOWN_IMAGES):
                self.query_one(f"#audit-cell-{cell}", Thumbnail).display = False
            return
        row = item.view.row
        text = Text()
        text.append(f"{row['kind']} ", style="bold").append(f"{row['id']} · score {row['score']:.3f}\n")
        text.append(row["message"] + "\n")
        if row["suggested"]:
            text.append("suggested label: ", style="bold").append(f"{row['suggested']}\n")
        if item.view.outdated:
            text.append(f"out of date: {item.view.outdated} (run the audit again, or keep it)\n", style="red")
        info.update(text)
        images = item.view.images
        fill_table(self.query_one("#audit-table", DataTable), images.select("label", "split", "path", "id") if images.height else images, "no images left")
        for cell in range(SHOWN_IMAGES):
            thumb = self.query_one(f"#audit-cell-{cell}", Thumbnail)
            thumb.display = cell < len(item.previews)
            if cell < len(item.previews):
                thumb.show(item.previews[cell], item.captions[cell])

    # ---- moving and deciding -------------------------------------------------------------------

    def action_step(self, offset: int) -> None:
        if self._findings.height:
            self._position = (self._position + offset) % self._findings.height
            self.load_findings()

    def action_decide(self, action: str) -> None:
        """Decide the finding on screen; it leaves the screen at once so that a second key press cannot decide it twice."""
        if self._item is None:
            return
        item, self._item = self._item, None
        self.say("audit-message", f"recording {action}…")
        self.run_decision(AuditDecision(item.view.row["id"], action, decided_by=self.lookalike.config.user))

    @work(thread=True, group="audit-decide")
    def run_decision(self, decision: AuditDecision) -> None:
        def run() -> None:
            report = decide(self.lookalike.db, decision)
            if report.edit is not None:
                self.lookalike.data_changed()
            self._undoable.append(report.finding["id"])
            edit = f" ({report.edit.action}: {report.edit.images} images, {len(report.edit.versions)} versions in step)" if report.edit else ""
            self.ui(self.say, "audit-message", f"{report.finding['id'][:12]}: {report.finding['status']}{edit}")

        self.guarded("audit-message", f"the {decision.action} decision", run)
        self.ui(self.load_findings)  # after a failure too: the finding comes back

    def action_undo(self) -> None:
        if not self._undoable:
            self.say("audit-message", "nothing decided in this session to undo", error=True)
            return
        self.run_undo(self._undoable[-1])

    @work(thread=True, group="audit-decide")
    def run_undo(self, finding_id: str) -> None:
        def run() -> None:
            report = undo(self.lookalike.db, finding_id)
            self._undoable.remove(finding_id)
            if report.edit is not None:
                self.lookalike.data_changed()
            self.ui(self.say, "audit-message", f"{finding_id[:12]} is open again" + (f"; {report.edit.images} images restored" if report.edit else ""))

        self.guarded("audit-message", "the undo", run)
        self.ui(self.load_findings)

    def action_audit(self) -> None:
        self.say("audit-message", "auditing the catalogue…")
        self.run_the_audit()

    @work(thread=True, exclusive=True, group="audit-run")
    def run_the_audit(self) -> None:
        def run() -> None:
            report = run_audit(self.lookalike.db)
            found = ", ".join(f"{n} {k}" for k, n in report.counts.items())
            self.ui(self.say, "audit-message", f"audited {report.images} images with {report.model_id} in {report.seconds:.1f}s: {found}")

        self.guarded("audit-message", "the audit", run)
        self.ui(self.load_findings)
