"""What every verdict function shares: look a measured value up by name and fail loudly when it is not there.

A notebook's findings (the booleans and one-line conclusions it logs) are computed by package functions, never in
cells. Those functions read their inputs through ``need``, so a variant that was not run raises ``KeyError``
naming it, instead of a silent sentinel that makes a comparison come out False.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def need(values: Mapping[str, Any], key: str, what: str) -> Any:
    """``values[key]``, or ``KeyError`` naming ``what`` needed it and which keys there are."""
    if key not in values:
        raise KeyError(f"{what}: no {key!r} among {sorted(values)} (was it run?)")
    return values[key]


def lower(values: Mapping[str, float], a: str, b: str, what: str) -> bool:
    """True when ``values[a] < values[b]`` (e.g. a perplexity); both must be there."""
    return bool(need(values, a, what) < need(values, b, what))


def higher(values: Mapping[str, float], a: str, b: str, what: str) -> bool:
    """True when ``values[a] > values[b]`` (e.g. an accuracy); both must be there."""
    return bool(need(values, a, what) > need(values, b, what))
