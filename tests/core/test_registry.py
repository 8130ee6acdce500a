"""The one registry helper every family is built on."""

from __future__ import annotations

import pytest

from engine.core.errors import InvalidRequestError, LookalikeError, UnknownNameError
from engine.core.registry import Registry


def test_members_are_listed_sorted_with_their_descriptions():
    registry: Registry[int] = Registry("widget")
    registry.add("b", 2, "the second")

    @registry.register("a")
    def first() -> None:
        """The first, described by its docstring."""

    assert registry.names() == ["a", "b"] and registry.describe() == {"a": "The first, described by its docstring.", "b": "the second"}
    assert registry.get("a") is first and "b" in registry and len(registry) == 2


def test_registration_order_is_kept_when_asked():
    registry: Registry[int] = Registry("section", sort=False)
    for name in ("zeta", "alpha", "mid"):
        registry.add(name, 0)
    assert registry.names() == ["zeta", "alpha", "mid"]


def test_duplicates_are_refused_and_unknown_names_answered_with_the_valid_ones():
    registry: Registry[int] = Registry("widget")
    registry.add("a", 1, info_key="x")
    with pytest.raises(InvalidRequestError, match="already registered"):
        registry.add("a", 2)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; choose one of \['a'\]") as raised:
        registry.get("c")
    assert isinstance(raised.value, LookalikeError) and isinstance(raised.value, ValueError)
    assert registry.entry("a").info == {"info_key": "x"}


@pytest.mark.parametrize("module,function", [
    ("engine.encoders.config", "list_encoders"), ("engine.versions", "list_kinds"), ("engine.training", "list_methods"),
    ("engine.training", "list_regimes"), ("engine.search.rerank", "list_rerankers"), ("engine.evaluation.distractors", "list_scorers"),
    ("engine.masking.modes", "list_mask_modes"), ("engine.masking.masks", "list_mask_readers"), ("engine.reports", "list_plots"),
    ("engine.reports", "list_projectors"), ("ingest.engines", "list_ingest_engines"), ("engine.search.memory_index", "list_memory_indexes"),
    ("engine.training.augment", "list_augmentations"), ("engine.versions.derived", "list_derivations"), ("engine.core.faults", "fault_actions"),
])
def test_every_family_lists_names_with_descriptions(module, function):
    import importlib

    listed = getattr(importlib.import_module(module), function)()
    assert isinstance(listed, dict) and listed and all(isinstance(d, str) and d for d in listed.values()), listed
