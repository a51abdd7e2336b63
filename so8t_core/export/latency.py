"""Per-token decoding speed of two models measured side by side, in transformers and in llama.cpp.

A fused model runs its base's graph (only lm_head's numbers changed), so its speed should equal the base's; what
is worth quoting is the ratio, measured interleaved (base, fused, fused, base, ...) so that drift in machine load
hits both alike. Absolute tokens/s depend on the machine and on what else runs on it.

Explained in notebooks/04_fusion_and_gguf.ipynb.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from so8t_core.config import check
from so8t_core.timing import interleaved_samples


def hf_decoder(model: Any, prompt: Sequence[int], new_tokens: int) -> Callable[[], int]:
    """A callable that greedily generates exactly ``new_tokens`` after ``prompt`` in transformers (KV cache on)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], device=device)

    @torch.no_grad()
    def run() -> int:
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=model.config.pad_token_id,
        )
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


def interleaved_tokens_per_second(
    runs: dict[str, Callable[[], int]], repeats: int = 5, warmup: int = 1, min_seconds: float = 0.2
) -> dict[str, list[float]]:
    """Tokens/s of each decoding callable, timed by ``timing.interleaved_samples``.

    Args:
        runs: name -> callable returning the number of tokens it decoded (the same number every call).
        repeats, warmup, min_seconds: as in ``timing.interleaved_samples``.
    Returns:
        name -> tokens/s per round.
    """
    tokens: dict[str, int] = {}

    def counted(name: str) -> Callable[[], None]:
        def run() -> None:
            tokens[name] = runs[name]()

        return run

    seconds = interleaved_samples({n: counted(n) for n in runs}, repeats, warmup, min_seconds)
    return {n: [tokens[n] / s for s in v] for n, v in seconds.items()}


def speed_ratio(rates: dict[str, list[float]], base: str = "base", other: str = "fused") -> dict[str, float]:
    """Median tokens/s of both and ``other / base`` (1.0 = same speed)."""
    b, o = statistics.median(rates[base]), statistics.median(rates[other])
    return {f"{base}_tokens_per_s": b, f"{other}_tokens_per_s": o, "ratio": o / b}


def compare_speed(base_run: Callable[[], int], fused_run: Callable[[], int], repeats: int = 5) -> dict[str, float]:
    """Interleaved tokens/s of base and fused decoding and their ratio (fused / base).

    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    return speed_ratio(interleaved_tokens_per_second({"base": base_run, "fused": fused_run}, repeats))


def llama_cpp_speed(
    base_gguf: str | Path,
    fused_gguf: str | Path,
    stream: Sequence[int],
    prompt_len: int,
    repeats: int = 5,
    n_threads: int | None = 1,
) -> dict[str, float]:
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
    from so8t_core.export.gguf import open_llama

    check(0 < prompt_len < len(stream), "prompt_len", prompt_len, f"must be in 1..{len(stream) - 1}")
    llms = [open_llama(p, len(stream), logits_all=False, n_threads=n_threads) for p in (base_gguf, fused_gguf)]
    runs = [llama_decoder(m, stream[:prompt_len], stream[prompt_len:]) for m in llms]
    return compare_speed(runs[0], runs[1], repeats=repeats)


def transformers_speed(
    base: Any, fused: Any, prompt: Sequence[int], new_tokens: int, repeats: int = 5
) -> dict[str, float]:
    """Greedy decoding tokens/s of two transformers models, interleaved, and their ratio (fused / base).

    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    return compare_speed(hf_decoder(base, prompt, new_tokens), hf_decoder(fused, prompt, new_tokens), repeats)
