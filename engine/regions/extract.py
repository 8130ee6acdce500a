"""Extract and embed regions: catalogue images (reader) -> boxes from a source (mapper) -> crops embedded by a
model version's encoder -> the ``regions`` table and the version's region vectors (writer), in image-id order,
upserted by region id, so a run killed midway resumes where it stopped and a re-run adds nothing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

import schemas
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.core.splits import sql_quote
from engine.media.decode import DecodeError, decode_image
from engine.regions.boxes import Box, region_id
from engine.regions.config import RegionConfig
from engine.regions.sources import create_region_source
from engine.storage.database import Database, ModelRecord
from engine.versions import encoder_for_model

logger = logging.getLogger(__name__)

IMAGES_PER_WRITE = 32  # images whose regions are embedded and written together (one commit per table)


@dataclass(frozen=True)
class RegionReport:
    images: int
    regions: int
    without_regions: int  # images the source found nothing in
    unreadable: int
    seconds: float
    embed_seconds: float


def region_rows(image_id: str, source: str, boxes: list[Box], width: int, height: int) -> list[dict]:
    """The ``regions`` rows of one image's boxes (clipped to the image; empty boxes dropped, duplicates once)."""
    rows, seen = [], set()
    for box in boxes:
        box = box.clipped(width, height)
        if box is None:
            continue
        key = region_id(image_id, source, box)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"region_id": key, "image_id": image_id, "source": source, "x": box.x, "y": box.y, "w": box.w, "h": box.h,
                     "area_share": box.area_share(width, height), "score": box.score, "label": box.label})
    return rows


def extract_regions(db: Database, model: ModelRecord, config: RegionConfig = RegionConfig(), where: str | None = None,
                    progress: ProgressCallback | None = None) -> RegionReport:
    """Find the regions of the catalogue images matching ``where`` with ``config.source`` and embed their crops with
    ``model``'s encoder (masked like the version when it is masked). An image's earlier regions from the same source
    are replaced (annotations may have changed)."""
    started = time.perf_counter()
    source = create_region_source(config, db)
    encoder = encoder_for_model(db, model, config.device)
    purge_orphans(db)
    images = db.images_frame(where, columns=["id", "path"]).sort("id")
    total_regions = without = unreadable = 0
    embed_seconds = 0.0
    for start in range(0, images.height, IMAGES_PER_WRITE):
        chunk = images.slice(start, IMAGES_PER_WRITE)
        rows, crops = [], []
        for image_id, path in zip(chunk["id"], chunk["path"]):
            try:
                image = decode_image(Path(path).read_bytes()).image
            except (OSError, DecodeError) as error:
                logger.warning("regions: %s unreadable (%s); skipped", path, error)
                unreadable += 1
                continue
            found = region_rows(image_id, source.name, source.boxes(path, image), image.width, image.height)
            without += not found
            rows.extend(found)
            crops.extend(image.crop((r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"])) for r in found)
        embedding_started = time.perf_counter()
        vectors = encoder.encode_images(crops) if crops else np.zeros((0, model.dim), np.float32)
        embed_seconds += time.perf_counter() - embedding_started
        replace_regions(db, model, chunk["id"].to_list(), source.name, pa.Table.from_pylist(rows, schema=pa.schema(schemas.REGION_FIELDS)), vectors)
        total_regions += len(rows)
        report_progress(progress, Progress("regions", min(start + IMAGES_PER_WRITE, images.height), images.height, "images",
                                           f"{total_regions} regions", {"regions": total_regions}))
    report = RegionReport(images.height, total_regions, without, unreadable, time.perf_counter() - started, embed_seconds)
    logger.info("regions of %d images from %s embedded by %s: %d regions in %.1f s", images.height, source.name, model.id, total_regions, report.seconds)
    return report


def replace_regions(db: Database, model: ModelRecord, image_ids: list[str], source: str, rows: pa.Table, vectors: np.ndarray) -> None:
    """The regions of ``image_ids`` from ``source`` become ``rows`` (for ``model``'s vectors and the regions table)."""
    if image_ids:
        condition = f"source = {sql_quote(source)} AND image_id IN ({', '.join(sql_quote(i) for i in image_ids)})"
        keep = set(rows.column("region_id").to_pylist())
        stale = f"{condition} AND region_id NOT IN ({', '.join(sql_quote(k) for k in keep)})" if keep else condition
        db.region_embeddings(model).delete(stale)
        db.regions.delete(stale)
    db.write_regions(model, rows, vectors)


def purge_orphans(db: Database) -> int:
    """Remove regions (and their vectors, every version's) of images no longer in the catalogue: what a delete killed
    between its commit and its region cleanup leaves behind. Returns how many regions went."""
    if schemas.REGIONS_TABLE not in db.table_names():
        return 0
    stored = set(db.images_frame(columns=["id"])["id"].to_list())
    found = db.regions.search().select(["image_id"]).limit(None).to_arrow().column("image_id").to_pylist()
    orphans = sorted(set(found) - stored)
    if orphans:
        db.delete_images(orphans)  # deletes nothing from images (they are gone) and every region of them
    return len(orphans)
