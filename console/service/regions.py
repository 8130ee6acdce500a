"""Use cases of regions: extract and embed them (``lookalike regions``) and search them (``lookalike search
--regions``) with a whole query image, a crop of it, or its own regions as a set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from engine.core.errors import InvalidRequestError
from engine.core.progress import ProgressCallback
from engine.media.decode import decode_image
from engine.regions.boxes import Box
from engine.regions.config import RegionConfig
from engine.regions.extract import RegionReport, extract_regions, region_rows
from engine.regions.query import load_region_index, search_region_sets, search_regions
from engine.regions.sources import create_region_source
from engine.storage.database import Database
from engine.versions import encoder_for_model


def regions_of_catalogue(db: Database, model: str | None, config: RegionConfig, where: str | None = None, folder: str | Path | None = None,
                         progress: ProgressCallback | None = None) -> RegionReport:
    """Extract and embed the regions of the catalogue images (those under ``folder`` and matching ``where``)."""
    record = db.resolve_model(model)
    conditions = [c for c in (where and f"({where})", folder and _under(folder)) if c]
    return extract_regions(db, record, config, " AND ".join(conditions) or None, progress)


def _under(folder: str | Path) -> str:
    prefix = str(Path(folder).resolve()).replace("'", "''")
    return f"path LIKE '{prefix}/%'"


def search_by_regions(db: Database, model: str | None, queries: Sequence[Path], *, k: int = 10, all_regions: bool = False, box: Box | None = None,
                      query_source: RegionConfig | None = None, source: str | None = None, where: str | None = None) -> pl.DataFrame:
    """Catalogue regions nearest to each query: the whole query image, its ``box``, or (``query_source``) the set of
    its own regions, which ranks images by how well they hold every one of them; only in images matching ``where``."""
    if box is not None and query_source is not None:
        raise InvalidRequestError("give --box or --query-regions, not both")
    record = db.resolve_model(model)
    encoder = encoder_for_model(db, record)
    index = load_region_index(db, record, source, where)
    images = [decode_image(Path(q).read_bytes()).image for q in queries]
    if query_source is not None:
        finder = create_region_source(query_source, db)
        sets = []
        for path, image in zip(queries, images):
            rows = region_rows("query", finder.name, finder.boxes(str(path), image), image.width, image.height)
            if not rows:
                raise InvalidRequestError(f"the {finder.name} source found no region in {path}; give --box x,y,w,h or search the whole image")
            sets.append(encoder.encode_images([image.crop((r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"])) for r in rows]))
        found = search_region_sets(index, sets, k)
    else:
        if box is not None:
            clipped = [box.clipped(image.width, image.height) for image in images]
            if any(b is None for b in clipped):
                raise InvalidRequestError(f"box {box.x},{box.y},{box.w},{box.h} lies outside the query image")
            images = [image.crop(b.as_pil()) for image, b in zip(images, clipped)]
        found = search_regions(index, encoder.encode_images(images), k, all_regions)
    names = pl.DataFrame({"query": np.arange(len(queries)), "query_path": [str(q) for q in queries]})
    return found.join(names, on="query", how="left")


def search_regions_of(db: Database, model: str | None, query: str, k: int = 10, where: str | None = None) -> pl.DataFrame:
    """``search --regions`` for one query given as the console takes it: an image file, or a stored image's id (or a
    unique prefix), whose file is then the query."""
    path = Path(query).expanduser()
    if not path.is_file():
        image_id = db.resolve_image_ids([query])[0]
        path = Path(db.images_frame(f"id = '{image_id}'", columns=["path"])["path"][0])
    return search_by_regions(db, model, [path], k=k, where=where)
