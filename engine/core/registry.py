"""One small registry for every family of named, pluggable things (encoders, version kinds, re-rankers, ...).

Modelled on timm's ``register_model`` / ``create_model``: a family's module creates one :class:`Registry`,
registers its members at import time (so importing the package completes registration), and answers
``create``/``get`` with an :class:`~engine.core.errors.UnknownNameError` that lists the valid names.
Every family's ``list_*`` function returns :meth:`Registry.describe`: names to one-line descriptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engine.core.errors import InvalidRequestError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered member: its name, the object itself, a one-line description and family-specific facts."""

    name: str
    item: T
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named members of one family. Duplicate names are refused; unknown names are answered with the valid ones."""

    def __init__(self, family: str, *, sort: bool = True) -> None:
        """``sort=False`` keeps the order of registration (e.g. the sections of a report)."""
        self.family = family
        self._sort = sort
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, item: T, description: str = "", **info: Any) -> T:
        """Register ``item`` under ``name``; returns the item."""
        if name in self._entries:
            raise InvalidRequestError(f"{self.family} {name!r} is already registered")
        self._entries[name] = Entry(name, item, description or _first_line(item), dict(info))
        return item

    def register(self, name: str, description: str = "", **info: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorate(item: T) -> T:
            return self.add(name, item, description, **info)

        return decorate

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``; unknown names raise :class:`UnknownNameError` listing the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.family} {name!r}; choose one of {self.names()}") from None

    def get(self, name: str) -> T:
        """The registered object of ``name``."""
        return self.entry(name).item

    def names(self) -> list[str]:
        return sorted(self._entries) if self._sort else list(self._entries)

    def describe(self) -> dict[str, str]:
        """Names to one-line descriptions: what every ``list_*`` function returns."""
        return {name: self._entries[name].description for name in self.names()}

    def entries(self) -> list[Entry[T]]:
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _first_line(item: object) -> str:
    doc = getattr(item, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
