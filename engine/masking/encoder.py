"""Masked encoding: :class:`MaskedEncoder` masks every image before the encoder's own preprocessing.

The masker and mode are part of its preprocessing record, hence of its fingerprint: a masked catalogue is a
model version of its own, and a query encoder with another masker (or none) is refused like any other
mismatched encoder. Ingest stores each image's foreground fraction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

import schemas
from engine.core.clock import utc_now
from engine.core.errors import MaskingError
from engine.encoders.factory import Encoder
from engine.encoders.identity import model_version_id
from engine.masking.masks import foreground_fraction
from engine.masking.modes import apply_mask, check_mask_mode
from engine.masking.store import load_masker, open_table
from engine.masking.unet import Masker
from engine.storage.database import Database, ModelRecord

logger = logging.getLogger(__name__)

MASK_KEY = "mask"  # key of the masking record inside a model's preprocessing JSON


# ---- masked encoding -----------------------------------------------------------------------------


@dataclass
class MaskedEncoder(Encoder):
    """An encoder that masks each image (a stored masker, one apply mode) before its own preprocessing.

    It is also the ingest pipeline's image hook: :meth:`preprocess_measured` returns each image's
    foreground fraction, which :meth:`store_measured` writes to the ``foreground`` table.
    """

    masker: Masker | None = None
    mask_mode: str = "zero"

    def __post_init__(self) -> None:
        if self.masker is None:
            raise MaskingError("a masked encoder needs a masker")
        check_mask_mode(self.mask_mode)
        super().__post_init__()

    @classmethod
    def wrap(cls, encoder: Encoder, masker: Masker, mode: str) -> MaskedEncoder:
        """``encoder`` with masking in front."""
        kept = {f.name: getattr(encoder, f.name) for f in fields(Encoder) if f.init}
        return cls(**kept, masker=masker, mask_mode=mode)

    version_kind = "masked"

    @property
    def version_config(self) -> dict[str, str]:
        return {**super().version_config, **self.masking}

    @property
    def masking(self) -> dict[str, str]:
        return {"masker": self.masker.id, "mode": self.mask_mode}

    @property
    def preprocessing(self) -> str:
        # the masking is part of the preprocessing, hence of the fingerprint and the model id
        return json.dumps({**self.data_config, MASK_KEY: self.masking}, sort_keys=True, default=list)

    @property
    def model_id(self) -> str:
        return model_version_id(f"{self.name}+mask", self.fingerprint)

    def preprocess_measured(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        """The masked image's input tensor, and its foreground fraction."""
        mask = self.masker.predict([image])[0]
        return self.transform(apply_mask(image, mask, self.mask_mode)), {"foreground": foreground_fraction(mask)}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess_measured(image)[0]

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Masks predicted a batch at a time, then encoded as :class:`Encoder` does."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            masks = self.masker.predict(chunk)
            chunks.append(self.encode_tensors(torch.stack([self.transform(apply_mask(im, m, self.mask_mode)) for im, m in zip(chunk, masks)])))
        return np.concatenate(chunks)

    def store_measured(self, db: Database, model: ModelRecord, rows: Iterable[dict]) -> None:
        """Write the foreground fraction of freshly ingested rows (each carrying ``measured``)."""
        now = utc_now()
        records = [{"image_id": r["id"], "model_id": model.id, "masker_id": self.masker.id, "mode": self.mask_mode,
                    "fraction": float(r["measured"]["foreground"]), "created_at": now} for r in rows if r.get("measured")]
        if records:
            table = pa.Table.from_pylist(records, schema=schemas.FOREGROUND_SCHEMA)
            open_table(db, schemas.FOREGROUND_TABLE, schemas.FOREGROUND_SCHEMA).merge_insert(["image_id", "model_id"]).when_matched_update_all().when_not_matched_insert_all().execute(table)


def masking_of(model: ModelRecord) -> dict[str, str] | None:
    """The masker and mode a model version's vectors were made with (None for unmasked versions)."""
    try:
        recorded = json.loads(model.preprocessing or "{}")
    except json.JSONDecodeError:
        return None
    return recorded.get(MASK_KEY) if isinstance(recorded, dict) else None


def masked_encoder(encoder: Encoder, db: Database, masker: str, mode: str, device: str | None = None) -> MaskedEncoder:
    """``encoder`` masking with a stored masker in ``mode``."""
    return MaskedEncoder.wrap(encoder, load_masker(db, masker, device or str(encoder.device)), check_mask_mode(mode))


