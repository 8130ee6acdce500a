"""A model version's query pipeline: the re-ranker chain (and its parameters) its searches use by default.

``lookalike tune`` chooses one on a hold-out of the catalogue and stores it with the version (a row of the
``settings`` table keyed by the version's id, with the table of every candidate's score); ``search``,
``predict``, ``eval`` and the console read it back with :func:`stored_pipeline` unless a re-ranker is named.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import SearchError
from engine.search.config import ClassFusion, SearchConfig
from engine.search.rerank import CHAIN_SEPARATOR, create_reranker, reranker_config_type
from engine.storage.database import MODEL_SETTING_SEPARATOR, Database, ModelRecord

PIPELINE_KEY_PREFIX = "query-pipeline" + MODEL_SETTING_SEPARATOR


@dataclass(frozen=True)
class QueryPipeline:
    """A re-ranker (``faiss``: exact k-NN) or a chain of quality stages, with each stage's parameters."""

    reranker: str
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage name -> its config's fields
    objective: str | None = None  # what it was tuned for, and its score on the hold-out
    score: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every candidate's hold-out scores
    # class prediction: {"weight", "classifier", "sha256", "scores": {weight: hold-out mAP@5}} (engine.search.fusion);
    # None or weight 0: the plain k-NN vote
    fusion: dict[str, Any] | None = None

    def class_fusion(self) -> ClassFusion | None:
        """The blend of the vote with the stored classifier, when tuning chose one."""
        if not self.fusion or not self.fusion.get("weight") or not self.fusion.get("classifier"):
            return None
        return ClassFusion(float(self.fusion["weight"]), self.fusion["classifier"], self.fusion["sha256"])

    def configs(self) -> dict[str, object]:
        """The stages' typed configs, as ``SearchConfig.reranker_configs`` takes them."""
        typed = {}
        for stage, values in self.parameters.items():
            config_type = reranker_config_type(stage)
            if config_type is None:
                raise SearchError(f"stage {stage!r} of pipeline {self.reranker!r} takes no parameters")
            typed[stage] = config_type(**values)
        return typed

    def describe(self) -> str:
        """e.g. ``qe(neighbours=5, alpha=3.0)+k-reciprocal``."""
        parts = []
        for stage in self.reranker.split(CHAIN_SEPARATOR):
            values = self.parameters.get(stage)
            parts.append(stage + ("(" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")" if values else ""))
        fusion = self.class_fusion()
        return CHAIN_SEPARATOR.join(parts) + (f", classes: vote + classifier (weight {fusion.weight:g})" if fusion else "")

    def applied_to(self, config: SearchConfig) -> SearchConfig:
        """``config`` searching with this pipeline."""
        create_reranker(self.reranker, configs=self.configs())  # a stored name no longer registered fails here, by name
        return dataclasses.replace(config, reranker=self.reranker, reranker_configs=self.configs() or None, class_fusion=self.class_fusion())

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> QueryPipeline:
        return cls(**json.loads(text))

    @classmethod
    def of(cls, reranker: str, configs: dict[str, object] | None = None, **fields: Any) -> QueryPipeline:
        """From a re-ranker name and typed stage configs."""
        return cls(reranker, {stage: dataclasses.asdict(config) for stage, config in (configs or {}).items()}, **fields)


def pipeline_key(model: ModelRecord) -> str:
    return PIPELINE_KEY_PREFIX + model.id


def stored_pipeline(db: Database, model: ModelRecord) -> QueryPipeline | None:
    """The query pipeline stored with ``model`` (None: plain exact k-NN)."""
    text = db.get_setting(pipeline_key(model))
    return QueryPipeline.from_json(text) if text else None


def store_pipeline(db: Database, model: ModelRecord, pipeline: QueryPipeline) -> None:
    """Make ``pipeline`` the default of ``model``'s searches."""
    db.set_setting(pipeline_key(model), pipeline.as_json())


def search_config_for(db: Database, model: ModelRecord, config: SearchConfig, reranker_named: bool) -> SearchConfig:
    """``config`` with ``model``'s stored pipeline unless the caller named a re-ranker."""
    pipeline = None if reranker_named else stored_pipeline(db, model)
    return pipeline.applied_to(config) if pipeline else config
