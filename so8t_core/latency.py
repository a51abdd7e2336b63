"""Per-token decoding speed of two models measured side by side, in transformers and in llama.cpp.

A fused model runs its base's graph (only lm_head's numbers changed), so its speed should equal the base's; what
is worth quoting is the ratio, measured interleaved (base, fused, fused, base, ...) so that drift in machine load
hits both alike. Absolute tokens/s depend on the machine and on what else runs on it.

Explained in notebooks/04_fusion_and_gguf.ipynb.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import check


def hf_decoder(model: Any, prompt: Sequence[int], new_tokens: int) -> Callable[[], int]:
    """A callable that greedily generates exactly ``new_tokens`` after ``prompt`` in transformers (KV cache on)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], device=device)

    @torch.no_grad()
    def run() -> int:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, pad_token_id=model.config.pad_token_id)
        return new_tokens

    return run


def llama_decoder(llm: Any, prompt: Sequence[int], continuation: Sequence[int]) -> Callable[[], int]:
    """A callable that evaluates ``prompt`` in llama.cpp, then ``continuation`` one token per step (decoding)."""
    check(len(prompt) + len(continuation) <= llm.n_ctx(), "continuation", len(continuation), "exceeds n_ctx")

    def run() -> int:
        llm.reset()
        llm.eval(list(prompt))
        for t in continuation:  # one decode call per token, as generation does
            llm.eval([int(t)])
        return len(continuation)

    return run


def interleaved_tokens_per_second(runs: dict[str, Callable[[], int]], repeats: int = 5, warmup: int = 1,
                                  min_seconds: float = 0.2) -> dict[str, list[float]]:
    """Tokens/s of each callable over ``repeats`` rounds, the order reversed every other round.

    A tiny model decodes a whole run in milliseconds, where a scheduler hiccup would be the measurement; so each
    timed sample calls its callable ``inner`` times, ``inner`` chosen in the warm-up so that one sample of the
    slowest callable lasts about ``min_seconds`` (the same ``inner`` for all, so they do equal work).

    Args:
        runs: name -> callable returning the number of tokens it decoded.
        repeats: timed rounds.
        warmup: untimed rounds first (allocations, caches); at least one, which also calibrates ``inner``.
        min_seconds: target length of one timed sample.
    Returns:
        name -> tokens/s per round.
    """
    check(repeats > 0, "repeats", repeats, "must be > 0")
    names, slowest = list(runs), 0.0
    for _ in range(max(1, warmup)):
        for n in names:
            t0 = time.perf_counter()
            runs[n]()
            slowest = max(slowest, time.perf_counter() - t0)
    inner = max(1, math.ceil(min_seconds / max(slowest, 1e-9)))
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            tokens = sum(runs[n]() for _ in range(inner))
            out[n].append(tokens / (time.perf_counter() - t0))
    return out


def speed_ratio(rates: dict[str, list[float]], base: str = "base", other: str = "fused") -> dict[str, float]:
    """Median tokens/s of both and ``other / base`` (1.0 = same speed)."""
    b, o = statistics.median(rates[base]), statistics.median(rates[other])
    return {f"{base}_tokens_per_s": b, f"{other}_tokens_per_s": o, "ratio": o / b}


def compare_speed(base_run: Callable[[], int], fused_run: Callable[[], int], repeats: int = 5) -> dict[str, float]:
    """Interleaved tokens/s of base and fused decoding and their ratio (fused / base).

    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    return speed_ratio(interleaved_tokens_per_second({"base": base_run, "fused": fused_run}, repeats))


def llama_cpp_speed(base_gguf: str | Path, fused_gguf: str | Path, stream: Sequence[int], prompt_len: int,
                    repeats: int = 5, n_threads: int | None = 1) -> dict[str, float]:
    """Decoding tokens/s of two GGUF files in llama.cpp, interleaved, and their ratio (fused / base).

    Args:
        base_gguf, fused_gguf: files of the same GGUF type.
        stream: token ids; the first ``prompt_len`` are the prompt, the rest are decoded one per call.
        prompt_len: prompt length.
        repeats: timed rounds.
        n_threads: llama.cpp threads for both prompt and decoding (one thread keeps a shared machine from
            dominating the figure with thread scheduling; None: llama.cpp's defaults).
    Returns:
        ``{"base_tokens_per_s", "fused_tokens_per_s", "ratio"}``.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    from .gguf import open_llama

    check(0 < prompt_len < len(stream), "prompt_len", prompt_len, f"must be in 1..{len(stream) - 1}")
    llms = [open_llama(p, len(stream), logits_all=False, n_threads=n_threads) for p in (base_gguf, fused_gguf)]
    runs = [llama_decoder(m, stream[:prompt_len], stream[prompt_len:]) for m in llms]
    return compare_speed(*runs, repeats=repeats)


def transformers_speed(base: Any, fused: Any, prompt: Sequence[int], new_tokens: int,
                       repeats: int = 5) -> dict[str, float]:
    """Greedy decoding tokens/s of two transformers models, interleaved, and their ratio (fused / base).

    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    return compare_speed(hf_decoder(base, prompt, new_tokens), hf_decoder(fused, prompt, new_tokens), repeats)
