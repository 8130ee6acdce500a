"""The console's Search screen with regions on: boxes in the table, drawn on the thumbnails."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from console.service.regions import regions_of_catalogue
from console.tui.widgets import BOX_COLOUR, Thumbnail
from engine.regions.config import RegionConfig
from tests.e2e.test_console import make_app, settle, table_columns, table_rows, text_of, type_into
from tests.regions.test_regions import region_db  # noqa: F401 - a fixture

pytestmark = pytest.mark.anyio


async def test_ctrl_g_searches_regions_and_draws_their_boxes(region_db, tiny_encoder, tmp_path):  # noqa: F811
    db, root = region_db
    shutil.copytree(db.uri, tmp_path / "db")
    from engine.storage.database import Database

    copy = Database(tmp_path / "db")
    regions_of_catalogue(copy, None, RegionConfig(source="annotations", annotations=str(root / "annotations.json")))
    app = make_app(tmp_path / "db", tiny_encoder)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("f2")
        await settle(pilot)
        await pilot.press("ctrl+g")
        assert "regions on" in text_of(app, "#search-message")
        await type_into(pilot, "#search-k", "4", submit=False)
        await type_into(pilot, "#search-query", str(root / "img003.png"))
        await settle(pilot)
        assert "regions (the best of each image)" in text_of(app, "#search-message")
        assert {"x", "y", "w", "h"} <= set(table_columns(app, "#search-table"))
        rows = table_rows(app, "#search-table")
        assert len(rows) == 4 and len({r[3] for r in rows}) == 4  # the best region of four images
        distances = [float(r[2]) for r in rows]
        assert distances == sorted(distances)
        captions = [str(t.query_one(".caption").render()) for t in app.screen.query(Thumbnail) if t.id.startswith("search-cell") and t.display]
        assert len(captions) == 4 and " at " in captions[0]
        picture = np.asarray(app.screen.query_one("#search-cell-0 .picture").image)
        assert (np.abs(picture.astype(int) - BOX_COLOUR).sum(axis=2) < 30).any()  # the box is drawn
        first = rows[0][3].rsplit("/", 1)[-1]  # the image of the best region
        await type_into(pilot, "#search-where", f"path NOT LIKE '%{first}'", submit=False)  # a filter applies to regions too
        await type_into(pilot, "#search-query", str(root / "img003.png"))
        await settle(pilot)
        filtered = table_rows(app, "#search-table")
        assert len(filtered) == 4 and not any(r[3].endswith(first) for r in filtered) and filtered[0][3] == rows[1][3]
        await pilot.press("ctrl+g")
        assert "regions off" in text_of(app, "#search-message")
