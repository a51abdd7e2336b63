"""Interleaved timing: the one way this package compares the speed of two or more things.

Each round runs every callable once, the order reversed every other round (A B, B A, A B, ...), so drift in
machine load hits all of them alike; ratios measured this way are worth quoting, absolute times are not.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from so8t_core.config import check


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so a timer measures the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_samples(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    min_seconds: float = 0.0,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each callable over ``repeats`` interleaved rounds.

    A fast callable finishes in microseconds, where a scheduler hiccup would be the measurement; so each timed
    sample calls its callable ``inner`` times, ``inner`` chosen in the warm-up so that one sample of the slowest
    callable lasts about ``min_seconds`` (the same ``inner`` for all, so they do equal work).

    Args:
        fns: name -> callable.
        repeats: timed rounds.
        warmup: untimed rounds first (allocations, caches); at least one, which also calibrates ``inner``.
        min_seconds: target length of one timed sample (0: one call per sample).
        device: synchronised around each sample when it is a CUDA device.
    Returns:
        name -> seconds per call, one value per round.
    """
    check(repeats > 0, "repeats", repeats, "must be > 0")
    names, slowest = list(fns), 0.0
    for _ in range(max(1, warmup)):
        for n in names:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            slowest = max(slowest, time.perf_counter() - t0)
    inner = max(1, math.ceil(min_seconds / max(slowest, 1e-9)))
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[n]()
            sync(device)
            out[n].append((time.perf_counter() - t0) / inner)
    return out


def median_seconds(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Median of ``interleaved_samples``: seconds per call of each callable."""
    return {n: statistics.median(v) for n, v in interleaved_samples(fns, repeats, warmup, 0.0, device).items()}


def interleaved_map(
    fns: Mapping[str, Callable[[Any], Any]], items: Sequence[Any]
) -> tuple[dict[str, list[Any]], dict[str, list[float]]]:
    """Call every callable once on every item, item by item, the order reversed on every other item, so the
    callables share machine load the way ``interleaved_samples`` makes them; for work whose outputs matter too
    (an OCR engine's text on each image), where calling twice to warm up would double a long run.

    Args:
        fns: name -> callable of one item.
        items: the inputs.
    Returns:
        (name -> outputs in item order, name -> seconds of each call).
    """
    names = list(fns)
    outs: dict[str, list[Any]] = {n: [] for n in names}
    secs: dict[str, list[float]] = {n: [] for n in names}
    for i, item in enumerate(items):
        for n in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            outs[n].append(fns[n](item))
            secs[n].append(time.perf_counter() - t0)
    return outs, secs
