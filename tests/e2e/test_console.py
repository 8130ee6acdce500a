"""The operator console, driven through Textual's pilot on real databases: every screen's main action."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import pytest_textual_snapshot
from PIL import Image as PILImage
from rich.console import Console
from textual.widgets import Button, DataTable, Input, ProgressBar, Sparkline, Static

from console.tui.app import ConsoleConfig, LookalikeApp
from console.tui.widgets import Thumbnail
from engine.evaluation.detect import enqueue_for_review, review_frame
from engine.media.decode import content_id
from ingest.pipeline import IngestConfig, ingest_folder
from tests.support.paths import CORPUS, QUERIES, SAMPLES

pytestmark = pytest.mark.anyio

# pytest-textual-snapshot 1.0.0 names its file extension the syrupy 4 way (``_file_extension``); syrupy 7
# (the one that installs next to pytest 9) reads ``file_extension``: without this, snapshots end in .raw.
pytest_textual_snapshot.SVGImageExtension.file_extension = "svg"

CLASSES = ("bag", "coat", "sandal", "trouser")
PER_CLASS = 5
SIZE = (160, 50)


def make_app(db_path: Path, encoder, thumbnails: bool = True) -> LookalikeApp:
    return LookalikeApp(ConsoleConfig(db=str(db_path), thumbnails=thumbnails, user="tester"), encoder=encoder)


async def settle(pilot, rounds: int = 6) -> None:
    """Wait until every worker (and the workers they start) has finished and the UI has caught up."""
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in pilot.app.workers):
            return


async def wait_for(pilot, condition, rounds: int = 50) -> None:
    """Pause until ``condition()`` holds (a message handler may run a few frames after the input that posts it)."""
    for _ in range(rounds):
        if condition():
            return
        await pilot.pause(0.02)


async def type_into(pilot, selector: str, text: str, submit: bool = True) -> None:
    field = pilot.app.screen.query_one(selector, Input)
    field.value = text
    field.focus()
    await pilot.pause()
    if submit:
        await pilot.press("enter")


def text_of(app, selector: str) -> str:
    """The plain text a Static shows (strings, Rich Text and Rich groups alike)."""
    content = app.screen.query_one(selector, Static).content
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(content)
    return console.export_text().strip()


def table_rows(app, selector: str) -> list[list[str]]:
    table = app.screen.query_one(selector, DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def table_columns(app, selector: str) -> list[str]:
    return [str(c.label) for c in app.screen.query_one(selector, DataTable).columns.values()]


def copy_samples(folder: Path) -> Path:
    """A few classes of the shipped samples, plus one file that cannot be decoded."""
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for path in sorted((SAMPLES / name).glob("*.png"))[:PER_CLASS]:
            shutil.copy(path, folder / name / path.name)
    shutil.copy(CORPUS / "bad" / "truncated.jpg", folder / "bag" / "truncated.jpg")
    return folder


@pytest.fixture
def sample_folder(tmp_path) -> Path:
    return copy_samples(tmp_path / "incoming")


@pytest.fixture(scope="module")
def ingested_template(tmp_path_factory, tiny_encoder) -> tuple[Path, Path]:
    """The sample folder ingested once per module (split train); tests get their own copy of the database."""
    from engine import Database

    root = tmp_path_factory.mktemp("console")
    folder = copy_samples(root / "incoming")
    ingest_folder(Database(root / "db"), folder, IngestConfig(split="train"), encoder=tiny_encoder)
    return root / "db", folder


@pytest.fixture
def sample_db(tmp_path, ingested_template) -> Path:
    path = tmp_path / "db"
    shutil.copytree(ingested_template[0], path)
    return path


@pytest.fixture
def ingested_folder(ingested_template) -> Path:
    """The folder the sample database was ingested from (read only)."""
    return ingested_template[1]


async def test_library_ingests_a_folder_with_live_progress(tmp_path, sample_folder, tiny_encoder):
    app = make_app(tmp_path / "db", tiny_encoder)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert table_columns(app, "#library-counts") == ["no images yet"]
        await type_into(pilot, "#ingest-split", "train", submit=False)
        await type_into(pilot, "#ingest-path", str(sample_folder))
        await settle(pilot)
        bar = app.screen.query_one("#ingest-progress", ProgressBar)
        files = len(CLASSES) * PER_CLASS + 1
        assert (bar.total, bar.progress) == (files, files)
        status = text_of(app, "#ingest-status")
        assert f"{files} files, {files - 1} new, 0 known, 1 errors" in status, status
        counts = {(row[0], row[1]): int(row[2]) for row in table_rows(app, "#library-counts")}
        assert counts == {("train", name): PER_CLASS for name in CLASSES}
        tables = dict((row[0], int(row[1])) for row in table_rows(app, "#library-tables"))
        assert tables["images"] == files - 1 and tables["ingest_errors"] == 1
        errors = table_rows(app, "#errors-table")
        assert len(errors) == 1 and errors[0][0].endswith("truncated.jpg")
        await type_into(pilot, "#errors-filter", "no such text", submit=False)
        await wait_for(pilot, lambda: table_columns(app, "#errors-table") == ["no ingest errors"])
        assert table_columns(app, "#errors-table") == ["no ingest errors"]
        await type_into(pilot, "#errors-filter", "TRUNCATED", submit=False)
        await wait_for(pilot, lambda: len(table_rows(app, "#errors-table")) == 1)
        assert len(table_rows(app, "#errors-table")) == 1

        # a second ingest of the same folder finds everything known
        await pilot.click("#ingest-start")
        await settle(pilot)
        assert f"{files} files, 0 new, {files - 1} known, 1 errors" in text_of(app, "#ingest-status")


async def test_library_rejects_a_missing_folder(tmp_path, tiny_encoder):
    app = make_app(tmp_path / "db", tiny_encoder)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_into(pilot, "#ingest-path", str(tmp_path / "nowhere"))
        await settle(pilot)
        status = app.screen.query_one("#ingest-status", Static)
        assert "not a folder" in text_of(app, "#ingest-status") and status.has_class("error")
        assert not app.screen.query_one("#ingest-start", Button).disabled


async def test_search_by_file_shows_ranked_results_thumbnails_and_classes(sample_db, ingested_folder, tiny_encoder):
    app = make_app(sample_db, tiny_encoder)
    query = sorted((ingested_folder / "coat").glob("*.png"))[0]
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await settle(pilot)
        await type_into(pilot, "#search-k", "6", submit=False)
        await type_into(pilot, "#search-query", str(query))
        await settle(pilot)
        rows = table_rows(app, "#search-table")
        assert len(rows) == 6 and [r[0] for r in rows] == [str(i) for i in range(1, 7)]
        assert rows[0][3] == f"…/coat/{query.name}" and float(rows[0][2]) == pytest.approx(0.0, abs=1e-4)  # itself, first
        distances = [float(r[2]) for r in rows]
        assert distances == sorted(distances)
        assert "6 results from model" in text_of(app, "#search-message")
        predictions = text_of(app, "#search-predictions")
        assert "1. " in predictions and "no calibration" in predictions
        captions = [str(t.query_one(".caption").render()) for t in app.screen.query(Thumbnail) if t.id.startswith("search-cell") and t.display]
        assert len(captions) == 6 and captions[0].startswith("#1 coat")
        assert app.image_class is not None  # headless: textual-image's unicode renderer
        pictures = [app.screen.query_one(f"#search-cell-{i} .picture").image for i in range(6)]
        assert all(p is not None and max(p.size) <= 256 for p in pictures)  # decoded previews, not paths
        assert app.screen.query_one("#search-query-picture .picture").image.size == pictures[0].size  # the query is result 1

        # picking a result makes it the next query (a catalogue image, by id)
        table = app.screen.query_one("#search-table", DataTable)
        table.move_cursor(row=2)
        picked = rows[2][-1]  # the id, shortened; the query takes it whole
        await pilot.press("p")
        await settle(pilot)
        assert app.screen.query_one("#search-query", Input).value.startswith(picked)
        assert table_rows(app, "#search-table")[0][-1] == picked


async def test_search_with_bad_where_shows_the_error_and_keeps_working(sample_db, ingested_folder, tiny_encoder):
    app = make_app(sample_db, tiny_encoder, thumbnails=False)
    query = sorted((ingested_folder / "bag").glob("*.png"))[0]
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await settle(pilot)
        await type_into(pilot, "#search-query", str(query), submit=False)
        await type_into(pilot, "#search-where", "labell = 'bag'")
        await settle(pilot)
        message = app.screen.query_one("#search-message", Static)
        assert message.has_class("error") and "labell" in text_of(app, "#search-message")
        await type_into(pilot, "#search-where", "label = 'sandal'")
        await settle(pilot)
        assert not message.has_class("error")
        labels = {r[1] for r in table_rows(app, "#search-table")}
        assert labels == {"sandal"}
        await type_into(pilot, "#search-query", str(query.parent / "missing.png"))
        await settle(pilot)
        assert message.has_class("error") and "neither an image file" in text_of(app, "#search-message")
        assert table_rows(app, "#search-table") == []  # before: the sandal results stayed under the error


async def test_train_runs_live_then_stops_and_resumes(sample_db, tiny_encoder):
    app = make_app(sample_db, tiny_encoder, thumbnails=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        assert len(table_rows(app, "#train-models")) == 1
        await type_into(pilot, "#train-dim", "16", submit=False)
        await type_into(pilot, "#train-epochs", "2", submit=False)
        await pilot.click("#train-start")
        await settle(pilot)
        assert len(app.screen.query_one("#train-loss", Sparkline).data) == 2
        assert len(app.screen.query_one("#train-map", Sparkline).data) == 2
        assert text_of(app, "#train-status").startswith("trained ")
        models = table_rows(app, "#train-models")
        assert len(models) == 2 and "arcface" in models[0][0]

        # make the new version active with the keyboard
        app.screen.query_one("#train-models", DataTable).focus()
        await pilot.press("a")
        await settle(pilot)
        assert app.db.active_model_id() == models[0][0]

        # r: its training curves from the reports module, over the screen
        await pilot.press("r")
        await settle(pilot)
        assert type(app.screen).__name__ == "FigureScreen", text_of(app, "#train-status")
        assert app.screen.figure_names == ["model", "all_versions"]
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.query_one("#train-models", DataTable).row_count == 2

        # a long run: stop it after its first epochs, then start it again, it resumes
        await type_into(pilot, "#train-epochs", "10000", submit=False)
        await type_into(pilot, "#train-patience", "10000", submit=False)
        app.screen.query_one("#train-parent").value = models[1][0]
        await pilot.click("#train-start")
        loss = app.screen.query_one("#train-loss", Sparkline)
        for _ in range(400):
            await pilot.pause(0.02)
            if len(loss.data) >= 1:
                break
        await pilot.click("#train-stop")
        await settle(pilot)
        status = text_of(app, "#train-status")
        assert "stopped after epoch" in status and "press Start to resume" in status, status
        stopped_at = int(status.split("stopped after epoch ")[1].split()[0])
        assert stopped_at >= 1 and len(app.db.find_models()) == 2  # no half-trained version
        await pilot.click("#train-start")
        for _ in range(400):
            await pilot.pause(0.02)
            if len(loss.data) >= 1:
                break
        await pilot.click("#train-stop")
        await settle(pilot)
        bar = app.screen.query_one("#train-progress", ProgressBar)
        assert bar.progress == stopped_at + len(loss.data)  # counted on from where it stopped


@pytest.fixture
def review_db(sample_db, tiny_encoder) -> Path:
    """Three query images waiting in the review queue, as lookalike predict would leave them."""
    from engine import Database

    db = Database(sample_db)
    model = db.resolve_model()
    paths = [next(QUERIES.glob(f"{name}_*.png")) for name in ("bag", "coat", "dress")]
    predictions = pl.DataFrame({
        "query": np.arange(3, dtype=np.int32), "distractor_score": [0.9, 0.8, 0.7], "is_distractor": [True] * 3,
        "suggested": [["bag", "coat"], ["coat", "bag"], ["sandal", "coat"]],
    })
    enqueue_for_review(db, model, [content_id(p.read_bytes()) for p in paths], [str(p) for p in paths], predictions, 0.5)
    return sample_db


async def test_review_confirms_assigns_and_skips(review_db, tiny_encoder):
    app = make_app(review_db, tiny_encoder)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await settle(pilot)
        assert text_of(app, "#review-counts").startswith("3 left to review")
        assert "bag_test" in text_of(app, "#review-info")
        assert len(table_rows(app, "#review-table")) == 5  # its nearest catalogue images

        await pilot.press("c")  # the bag query: a distractor
        await settle(pilot)
        assert text_of(app, "#review-counts").startswith("2 left to review · 1 decided")
        assert "coat_test" in text_of(app, "#review-info")

        await pilot.press("s")  # skip the coat query
        await settle(pilot)
        assert "dress_test" in text_of(app, "#review-info")

        await pilot.press("2")  # the dress query: its second suggestion, coat
        await settle(pilot)
        assert "dress_test" in text_of(app, "#review-message") and "assigned as coat" in text_of(app, "#review-message")
        assert text_of(app, "#review-counts").startswith("1 left to review · 2 decided")

    queue = review_frame(app.db)
    decided = dict(zip(queue["path"].map_elements(lambda p: Path(p).name.split("_test")[0], return_dtype=pl.String), queue["status"]))
    assert decided == {"bag": "distractor", "coat": "pending", "dress": "assigned"}
    images = app.db.images_frame()
    assert images.height == len(CLASSES) * PER_CLASS + 1
    assert images.filter(pl.col("path").str.contains("dress_test"))["label"].to_list() == ["coat"]


async def test_review_keys_never_fall_into_the_class_box_and_decisions_undo(review_db, tiny_encoder):
    app = make_app(review_db, tiny_encoder, thumbnails=False)
    catalogue = len(CLASSES) * PER_CLASS
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await settle(pilot)
        footer = " ".join(str(b.binding.description) for b in app.screen.active_bindings.values() if b.binding.show)
        assert all(word in footer for word in ("Confirm", "Assign #n", "New class", "Undo", "Skip", "View"))
        await pilot.press("1")  # the bag query: its first suggestion, bag; it joins the catalogue
        await settle(pilot)
        assert "assigned as bag" in text_of(app, "#review-message") and app.db.images.count_rows() == catalogue + 1
        await pilot.press("u")
        await settle(pilot)
        assert "undone" in text_of(app, "#review-message") and app.db.images.count_rows() == catalogue  # it left again
        assert text_of(app, "#review-counts").startswith("3 left to review") and "bag_test" in text_of(app, "#review-info")

        box = app.screen.query_one("#review-new-class", Input)
        await pilot.press("c")  # a screen key: confirms the bag query, is not typed
        await settle(pilot)
        assert box.value == "" and "coat_test" in text_of(app, "#review-info")
        await pilot.press("n", *"gown", "enter")  # n gives the box the keys; Enter adds the class and gives them back
        await settle(pilot)
        assert "added as gown" in text_of(app, "#review-message") and not box.has_focus
        await pilot.press("c")  # confirms the dress query: before, "c" was typed into the box
        await settle(pilot)
        assert box.value == "" and text_of(app, "#review-counts").startswith("0 left to review")
        await pilot.press("n", "x", "escape")  # escape leaves the box without deciding
        await settle(pilot)
        assert box.value == "" and not box.has_focus

    decided = dict(zip(review_frame(app.db)["path"].map_elements(lambda p: Path(p).name.split("_test")[0], return_dtype=pl.String),
                       review_frame(app.db)["status"]))
    assert decided == {"bag": "distractor", "coat": "added", "dress": "distractor"}
    assert app.db.images.count_rows() == catalogue + 1


async def test_search_results_open_full_screen_and_page(sample_db, ingested_folder, tiny_encoder):
    from console.tui.screens.figure import ImageViewer

    app = make_app(sample_db, tiny_encoder)
    query = sorted((ingested_folder / "coat").glob("*.png"))[0]
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await settle(pilot)
        await type_into(pilot, "#search-k", "3", submit=False)
        await type_into(pilot, "#search-query", str(query))
        await settle(pilot)
        await pilot.press("down", "v")
        await settle(pilot)
        viewer = app.screen
        assert isinstance(viewer, ImageViewer) and viewer.shown[0].startswith("#2 ")
        picture = viewer.query_one("#viewer-picture .picture").image
        with PILImage.open(viewer.shown[1]) as original:
            assert picture is not None and picture.size == original.size  # the image itself (these are 28 px), not a thumbnail
        await pilot.press("right")
        await settle(pilot)
        assert viewer.shown[0].startswith("#3 ")
        await pilot.press("escape")
        await settle(pilot)
        assert not isinstance(app.screen, ImageViewer) and table_rows(app, "#search-table")  # the results are still there


async def test_data_screen_filters_and_summarises(sample_db, tiny_encoder):
    app = make_app(sample_db, tiny_encoder, thumbnails=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await settle(pilot)
        total = len(CLASSES) * PER_CLASS
        assert text_of(app, "#data-message").startswith(f"{total} of {total} images match")
        await type_into(pilot, "#data-where", "label = 'coat' OR label = 'bag'")
        await settle(pilot)
        assert text_of(app, "#data-message").startswith(f"{2 * PER_CLASS} of {total} images match")
        rows = table_rows(app, "#data-table")
        assert len(rows) == 2 * PER_CLASS and {r[1] for r in rows} == {"coat", "bag"}
        summary = text_of(app, "#data-summary")
        assert f"{2 * PER_CLASS} images, 2 labels" in summary and "Modes" in summary and "Longer side" in summary
        for label in ("bag", "coat"):  # equal counts: two full-length bars
            assert re.search(rf"^\s+{label}\s+█{{30}} {PER_CLASS}$", summary, re.MULTILINE), summary

        await type_into(pilot, "#data-where", "width >> 3")
        await settle(pilot)
        message = app.screen.query_one("#data-message", Static)
        assert message.has_class("error") and "bad where filter" in text_of(app, "#data-message")
        assert len(table_rows(app, "#data-table")) == 2 * PER_CLASS  # the last good view stays

        # f: the reports module's EDA figure of the filtered images, over the screen
        app.screen.query_one("#data-table", DataTable).focus()
        await pilot.press("f")
        await settle(pilot)
        assert type(app.screen).__name__ == "FigureScreen", text_of(app, "#data-message")
        assert "x" in str(app.screen.query_one("#figure-picture .picture", Static).content)  # "[WxH image]"
        await pilot.press("escape")
        await pilot.pause()
        assert "EDA figure saved to" in text_of(app, "#data-message")
        saved = Path(text_of(app, "#data-message").split("saved to ")[1].strip())
        assert saved.read_bytes()[:4] == b"\x89PNG"
        saved.unlink()

        # s: search with the highlighted image
        await type_into(pilot, "#data-where", "label = 'sandal'")
        await settle(pilot)
        app.screen.query_one("#data-table", DataTable).focus()
        await pilot.press("s")
        await settle(pilot)
        assert app.current_mode == "search"
        first = table_rows(app, "#search-table")[0]
        assert first[1] == "sandal" and float(first[2]) == pytest.approx(0.0, abs=1e-4)


async def test_data_screen_relabels_and_deletes_in_every_version(sample_db, tiny_encoder):
    from engine import Database
    from engine.versions.coverage import coverage_of
    from engine.versions.derived import DBAConfig, publish_derived

    db = Database(sample_db)
    publish_derived(db, "dba", [db.resolve_model()], DBAConfig(neighbours=3))  # a second version to keep in step
    app = make_app(sample_db, tiny_encoder, thumbnails=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await settle(pilot)
        await type_into(pilot, "#data-where", "label = 'coat'")
        await settle(pilot)
        chosen = app.screen._view.matching["id"][0]
        await type_into(pilot, "#data-label", "jacket")
        await settle(pilot, rounds=12)
        assert "2 model versions in step" in text_of(app, "#data-message"), text_of(app, "#data-message")
        app.screen.query_one("#data-table", DataTable).focus()
        await pilot.press("ctrl+d")
        await pilot.pause()
        assert "press Delete (ctrl+d) again" in text_of(app, "#data-message")
        deleted = app.screen._view.matching["id"][0]
        await pilot.press("ctrl+d")
        await settle(pilot, rounds=12)
        assert "2 model versions in step" in text_of(app, "#data-message"), text_of(app, "#data-message")
    db = Database(sample_db, read_only=True)
    assert db.images_frame(f"id = '{chosen}'")["label"].to_list() == ["jacket"]
    assert db.images_frame(f"id = '{deleted}'").height == 0
    for model in db.find_models():
        rows = db.embeddings(model).search().where(f"image_id = '{chosen}' OR image_id = '{deleted}'").select(["image_id", "label"]).limit(None).to_list()
        assert [(r["image_id"], r["label"]) for r in rows] == [(chosen, "jacket")] and coverage_of(db, model).in_step


def test_library_layout_snapshot(tmp_path, tiny_encoder, snap_compare):
    """The Library screen of an empty database: panels, ingest form and the F-key footer."""
    app = make_app(tmp_path / "db", tiny_encoder, thumbnails=False)

    async def quiet(pilot) -> None:
        await settle(pilot)
        app.sub_title = "snapshot"  # not the tmp path
        for field in app.screen.query(Input):
            field.cursor_blink = False  # a blinking cursor would make the picture depend on timing
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 36), run_before=quiet)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("screen", ["f1", "f2", "f4"], ids=["library", "search", "review"])
def test_screens_fit_small_and_large_terminals(tmp_path, tiny_encoder, snap_compare, screen, size):
    """Library, Search and Review of an empty database at tmux's 80x24 and at 160x48: nothing cut or stray."""
    app = make_app(tmp_path / "db", tiny_encoder, thumbnails=False)

    async def quiet(pilot) -> None:
        await pilot.press(screen)
        await settle(pilot)
        app.sub_title = "snapshot"
        for field in app.screen.query(Input):
            field.cursor_blink = False
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=quiet)


def test_console_command_is_registered(tmp_path):
    from console.cli import main as cli
    from console.cli.tui_command import cmd_console

    args = cli.build_parser().parse_args(["console", "--db", str(tmp_path / "db"), "--no-images", "--model", "test_efficientnet"])
    assert args.func is cmd_console and args.db == str(tmp_path / "db") and args.no_images and args.model == "test_efficientnet"
    assert cli.build_parser().parse_args(["console", "--encoder", "x"]).model == "x"  # the older spelling still works



async def test_audit_screen_runs_the_audit_decides_with_keys_and_undoes(sample_db, tiny_encoder):
    app = make_app(sample_db, tiny_encoder)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f6")
        await settle(pilot)
        assert "0 open findings" in text_of(app, "#audit-counts")
        await pilot.press("a")
        await settle(pilot, rounds=12)
        assert "audited" in text_of(app, "#audit-message"), text_of(app, "#audit-message")
        counts = text_of(app, "#audit-counts")
        assert "showing 1 of" in counts, counts
        shown = app.screen._item.view.row["id"]
        await pilot.press("k")
        await settle(pilot, rounds=12)
        assert f"{shown[:12]}: kept" in text_of(app, "#audit-message"), text_of(app, "#audit-message")
        assert app.screen._item is None or app.screen._item.view.row["id"] != shown
        await pilot.press("u")
        await settle(pilot, rounds=12)
        assert "open again" in text_of(app, "#audit-message"), text_of(app, "#audit-message")
    from engine.audit import audit_frame
    from engine.storage.database import Database

    assert shown in audit_frame(Database(sample_db, read_only=True))["id"].to_list()
