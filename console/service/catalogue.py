"""Use cases that write the catalogue: ingest a folder, decide a review item (an image given a class joins
the catalogue with the encoder of the version it was flagged by)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from engine.catalogue.edits import Selection
from engine.catalogue.edits import delete as delete_images
from engine.core.errors import InvalidRequestError, NotFoundError
from engine.core.progress import ProgressCallback
from engine.core.splits import sql_quote
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, create_encoder
from engine.evaluation.detect import Decision, decide, review_row, write_review_row
from engine.masking.encoder import MaskedEncoder, masked_encoder
from engine.storage.database import AMBIGUITY_SHOWN, Database
from engine.versions import encoder_for_model
from ingest.distributed import RayConfig
from ingest.engines import IngestJob, run_ingest
from ingest.pipeline import IngestConfig, IngestReport, add_to_catalogue

DEFAULT_MASK_MODE = "zero"


@dataclass(frozen=True)
class IngestRequest:
    """One ingest as a front end asks for it; every default comes from the engine's configs."""

    folder: Path
    config: IngestConfig = field(default_factory=IngestConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mask: str | None = None  # a stored masker: images are masked before encoding (a version of its own)
    mask_mode: str | None = None
    engine: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)


def ingest_encoder(db: Database, config: EncoderConfig, mask: str | None = None, mask_mode: str | None = None) -> Encoder:
    """The encoder a folder is ingested with: ``config``'s, masked by a stored masker when one is named."""
    if mask_mode and not mask:
        raise InvalidRequestError("--mask-mode needs --mask MASKER (see lookalike maskers)")
    encoder = create_encoder(config)
    return masked_encoder(encoder, db, mask, mask_mode or DEFAULT_MASK_MODE, config.device) if mask else encoder


def ingest(db: Database, request: IngestRequest, *, encoder: Encoder | None = None, progress: ProgressCallback | None = None) -> IngestReport:
    """Scan, decode, encode and write ``request.folder``; ``encoder`` overrides the one the request names."""
    encoder = encoder or ingest_encoder(db, request.encoder, request.mask, request.mask_mode)
    config = request.config
    if isinstance(encoder, MaskedEncoder) and config.image_hook is None:
        config = dataclasses.replace(config, image_hook=encoder)  # stores each image's foreground fraction
    return run_ingest(request.engine, IngestJob(db, request.folder, config, request.encoder, encoder, request.ray, progress))


def resolve_review_id(db: Database, given: str) -> str:
    """A review item's id from the id or a unique prefix of it (an unknown one is left for ``decide`` to refuse)."""
    ids = [row["id"] for row in db.review.search().where(f"starts_with(id, {sql_quote(given)})").select(["id"]).limit(AMBIGUITY_SHOWN + 1).to_list()]
    if given in ids or len(ids) != 1:
        if len(ids) > 1 and given not in ids:
            raise NotFoundError(f"review id prefix {given!r} is ambiguous ({', '.join(ids[:AMBIGUITY_SHOWN])}); give more of it")
        return given
    return ids[0]


def decide_review(db: Database, decision: Decision, *, model: str | None = None, encoder: Encoder | None = None) -> dict:
    """Store a review decision; an image assigned or added to a class joins the catalogue.

    It is embedded by ``encoder`` when given, else by the encoder of ``model`` (id or name), else by the
    encoder of the version the query was flagged by. The review id may be any unique prefix of one.
    """
    decision = dataclasses.replace(decision, review_id=resolve_review_id(db, decision.review_id))

    def join(path: Path, label: str) -> None:
        chosen = encoder
        if chosen is None:
            flagged_by = db.review.search().where(f"id = {sql_quote(decision.review_id)}").select(["model_id"]).limit(1).to_list()
            record = db.resolve_model(model or (flagged_by[0]["model_id"] if flagged_by else None))
            chosen = encoder_for_model(db, record)
        add_to_catalogue(db, path, label, chosen)

    return decide(db, decision, join_catalogue=join)


@dataclass(frozen=True)
class ReviewUndo:
    """What taking a review decision back needs: the item as it was, and the image the decision added."""

    previous: dict
    joined_image: str | None  # None when the decision added no image (a confirmed distractor, or one already there)


def decide_review_undoably(db: Database, decision: Decision, *, encoder: Encoder | None = None) -> tuple[dict, ReviewUndo]:
    """:func:`decide_review`, returning also what :func:`undo_review` needs to take the decision back."""
    previous = review_row(db, resolve_review_id(db, decision.review_id))
    known_before = db.images.count_rows(f"id = {sql_quote(previous['id'])}") > 0
    row = decide_review(db, decision, encoder=encoder)
    return row, ReviewUndo(previous, None if known_before or not row["label"] else row["id"])


def undo_review(db: Database, undo: ReviewUndo) -> dict:
    """Take a decision back: an image it added leaves the catalogue (and every version), the item is as it was."""
    if undo.joined_image is not None:
        delete_images(db, Selection(ids=(undo.joined_image,)), allow_empty=True)
    write_review_row(db, undo.previous)
    return undo.previous
