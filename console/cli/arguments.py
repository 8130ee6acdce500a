"""argparse types for numeric options: a bad value is a one-line usage error naming the option's range."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _bounded(kind: type, low: float | None, high: float | None, low_open: bool, high_open: bool, what: str) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from error
        if kind is float and value != value:  # NaN passes every comparison below
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _bounded(int, 1, None, False, False, "must be at least 1")
non_negative_int = _bounded(int, 0, None, False, False, "must be 0 or more")
positive_float = _bounded(float, 0.0, None, True, False, "must be greater than 0")
non_negative_float = _bounded(float, 0.0, None, False, False, "must be 0 or more")
open_fraction = _bounded(float, 0.0, 1.0, True, True, "must be between 0 and 1 (exclusive)")
unit_fraction = _bounded(float, 0.0, 1.0, False, True, "must be at least 0 and below 1")
crop_fraction = _bounded(float, 0.0, 1.0, True, False, "must be above 0 and at most 1")
similarity = _bounded(float, -1.0, 1.0, False, False, "must be a cosine similarity between -1 and 1")
