"""Catalogue images read back from their files, for versions that embed pixels (base, masked, fine-tuned, TTA)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from engine.media.decode import DecodeError, content_id, decode_image

logger = logging.getLogger(__name__)

STORED_IMAGES_BATCH = 64  # images decoded at a time: bounded memory for any number of rows


def stored_images(rows: pa.Table) -> tuple[list[int], list[Image.Image]]:
    """The images of catalogue ``rows`` (``image_id``, ``path``) decoded from their files: positions kept and images.

    A file that is gone, unreadable or no longer has the stored content (its hash is the image id) is skipped
    with a log line: its content is not what the catalogue holds, so no vector may be made from it."""
    kept, images = [], []
    for position, (image_id, path) in enumerate(zip(rows.column("image_id").to_pylist(), rows.column("path").to_pylist())):
        try:
            data = Path(path).read_bytes()
            if content_id(data) != image_id:
                raise DecodeError(f"{path} changed since it was ingested")
            images.append(decode_image(data).image)
            kept.append(position)
        except (OSError, DecodeError) as exc:
            logger.warning("cannot embed %s again: %s", path, exc)
    return kept, images


def encode_stored(rows: pa.Table, encode_images: Callable[[list[Image.Image]], np.ndarray], dim: int) -> tuple[pa.Table, np.ndarray]:
    """Vectors of catalogue ``rows`` made from their files by ``encode_images``, in bounded batches: the rows
    that could be read and their vectors."""
    kept_rows, chunks = [], []
    for start in range(0, rows.num_rows, STORED_IMAGES_BATCH):
        batch = rows.slice(start, STORED_IMAGES_BATCH)
        kept, images = stored_images(batch)
        if kept:
            kept_rows.append(batch.take(pa.array(kept, pa.int64())))
            chunks.append(encode_images(images))
    if not kept_rows:
        return rows.slice(0, 0), np.zeros((0, dim), np.float32)
    return pa.concat_tables(kept_rows), np.concatenate(chunks)
