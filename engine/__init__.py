"""Lookalike engine: encoders, the embedded database, search, voting and evaluation."""

from engine.encoders import Encoder, EncoderConfig, create_encoder, list_encoders
from engine.evaluation import EvaluationResult, evaluate
from engine.rerank import create_reranker, list_rerankers
from engine.search import SearchConfig, Searcher
from engine.store import Database, EncoderMismatchError, ModelNotFoundError, ModelRecord

__all__ = [
    "Database",
    "Encoder",
    "EncoderConfig",
    "EncoderMismatchError",
    "EvaluationResult",
    "ModelNotFoundError",
    "ModelRecord",
    "SearchConfig",
    "Searcher",
    "create_encoder",
    "create_reranker",
    "evaluate",
    "list_encoders",
    "list_rerankers",
]
