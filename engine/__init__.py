"""Lookalike engine, in layers (each sub-package imports only the ones below it):

``reports`` > ``training`` > ``evaluation`` > ``search`` > ``catalogue`` > ``versions`` > ``masking`` >
``encoders`` | ``storage`` > ``vectors`` | ``media`` > ``core``.

The names below are the public API, imported on first use so that ``import engine.core`` (and the
CLI's ``--help``) does not load torch, timm or LanceDB.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "Database": "engine.storage.database",
    "ModelRecord": "engine.storage.database",
    "ModelNotFoundError": "engine.storage.database",
    "EncoderMismatchError": "engine.core.errors",
    "LookalikeError": "engine.core.errors",
    "Encoder": "engine.encoders.factory",
    "EncoderConfig": "engine.encoders.config",
    "create_encoder": "engine.encoders.factory",
    "list_encoders": "engine.encoders.config",
    "EvaluationResult": "engine.evaluation.metrics",
    "evaluate": "engine.evaluation.metrics",
    "create_reranker": "engine.search.rerank",
    "list_rerankers": "engine.search.rerank",
    "SearchConfig": "engine.search.config",
    "Searcher": "engine.search.searcher",
    "encoder_for_model": "engine.versions",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from engine.core.errors import EncoderMismatchError, LookalikeError
    from engine.encoders.config import EncoderConfig, list_encoders
    from engine.encoders.factory import Encoder, create_encoder
    from engine.evaluation.metrics import EvaluationResult, evaluate
    from engine.search.config import SearchConfig
    from engine.search.rerank import create_reranker, list_rerankers
    from engine.search.searcher import Searcher
    from engine.storage.database import Database, ModelNotFoundError, ModelRecord
    from engine.versions import encoder_for_model


def __getattr__(name: str) -> Any:
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'engine' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
