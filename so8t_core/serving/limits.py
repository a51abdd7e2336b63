"""Bounds on the work one ``/think`` request can cause: a prompt limit in tokens, and a bounded queue for the model.

A prompt (with any OCR text) is measured in the served model's tokens, as the model reads it (the prompt of its
answer policy, ``policy.model_prompt``: ``think.build_prompt`` or the model's own chat template) and as a decision
source that reads tokens reads it (the text itself: safety heads, ``bow_ids``); the longer of the two must fit
``max_tokens``. Nothing is cut: a decision is made on exactly the text the model answers, or the request is
refused. Before tokenizing, a prompt longer than ``max_tokens`` times the longest token (in characters) is refused
at once: no such text can fit.

The model is used by one request at a time; ``Admission`` lets at most ``max_queue`` requests wait for it, refuses
the next at once (``Busy``: the server answers 503 with ``Retry-After``) and gives up a wait after ``max_wait_s``.
Each turn with the model is bounded by a deadline (``generate``'s ``max_time``), so a wait is bounded too.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from so8t_core.config import check
from so8t_core.serving.policy import QUAD, prompt_ids


def model_context(config: Any) -> tuple[int | None, int | None]:
    """``(trained, hard)``: the positions the model was trained on (``original_max_position_embeddings`` when a
    long-context rope extension such as Phi-3.5's raised ``max_position_embeddings``) and the most it accepts;
    ``(None, None)`` when the configuration does not say."""
    hard = getattr(config, "max_position_embeddings", None)
    trained = getattr(config, "original_max_position_embeddings", None) or hard
    return (int(trained), int(hard)) if isinstance(trained, int) and isinstance(hard, int) else (None, None)


def prompt_token_limit(
    config: Any, max_new_tokens: int, decide_max_tokens: int | None, requested: int | None = None
) -> int | None:
    """The prompt limit in tokens: ``requested``, else the trained context less ``max_new_tokens``, at most what
    the decision source reads.

    Args:
        config: the model's configuration (``max_position_embeddings``...), or None.
        max_new_tokens: the generation budget, which must fit beside the prompt.
        decide_max_tokens: the most tokens the decision source reads (None: it reads any length).
        requested: ``--max-prompt-tokens``, or None for the default.
    Returns:
        The limit, or None when neither the model nor the decision source bounds it and none was requested.
        Raises ``ValueError`` naming ``max_prompt_tokens`` when ``requested`` cannot be served whole.
    """
    trained, hard = model_context(config)
    if requested is None:
        bounds = [b for b in (trained and trained - max_new_tokens, decide_max_tokens) if b]
        requested = min(bounds) if bounds else None
        if requested is None:
            return None
    check(requested > 0, "max_prompt_tokens", requested, f"must be > 0 (max_new_tokens={max_new_tokens} must fit)")
    if hard is not None:
        check(
            requested + max_new_tokens <= hard,
            "max_prompt_tokens",
            requested,
            f"with max_new_tokens={max_new_tokens} exceeds the model's {hard} positions",
        )
    if decide_max_tokens is not None:
        check(
            requested <= decide_max_tokens,
            "max_prompt_tokens",
            requested,
            f"the decision source reads at most {decide_max_tokens} tokens: it would decide on a cut prompt",
        )
    return requested


def chars_per_token(tokenizer: Any) -> int:
    """The most characters one token can stand for: its longest token string. A token string is never shorter
    than the text it covers for tokenizers that keep every character (SentencePiece with byte fallback, byte-level
    BPE: a byte token covers less than a character), so ``tokens * chars_per_token >= characters``."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max(len(p) for p in pieces if isinstance(p, str))


def count_tokens(tokenizer: Any, text: str, policy: str = QUAD) -> int:
    """Tokens of ``text``: the longer of the prompt the model reads under ``policy`` and the text a decision source
    reads."""
    return max(len(prompt_ids(tokenizer, policy, text)), len(tokenizer(text)["input_ids"]))


@dataclass(frozen=True)
class PromptLimit:
    """``max_tokens`` per prompt, ``chars_per_token`` for the cheap check before tokenizing, and the model's answer
    policy (``policy.answer_policy``), which decides the prompt the model reads."""

    max_tokens: int
    chars_per_token: int
    policy: str = QUAD

    @property
    def max_chars(self) -> int:
        """No text longer than this fits ``max_tokens``."""
        return self.max_tokens * self.chars_per_token

    def refusal(self, tokenizer: Any, text: str) -> str | None:
        """Why ``text`` is too long (a message naming the limit), or None when it fits.

        Args:
            tokenizer: the served model's tokenizer.
            text: the prompt with any OCR text (``answer.model_text``).
        """
        flag = f"the limit of {self.max_tokens} tokens (--max-prompt-tokens)"
        if len(text) > self.max_chars:  # refused before tokenizing a byte of it
            return f"prompt too long: {len(text)} characters can hold more tokens than {flag} allows"
        n = count_tokens(tokenizer, text, self.policy)
        if n > self.max_tokens:
            return f"prompt too long: {n} tokens (with any OCR text, as the model reads it) exceed {flag}"
        return None


class Busy(Exception):
    """The model's queue is full, or a wait for it ran out: ``retry_after_s`` is a hint for the client."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message, self.retry_after_s = message, retry_after_s


class Admission:
    """A bounded queue in front of the model ``lock``: one request uses the model, at most ``max_queue`` wait.

    Args:
        lock: the model lock.
        max_queue: how many requests may wait while one uses the model (0: none).
        max_wait_s: the longest a request waits for its turn (0 with no queue).
    """

    def __init__(self, lock: threading.Lock, max_queue: int, max_wait_s: float) -> None:
        check(max_queue >= 0, "max_queue", max_queue, "must be >= 0")
        check(max_wait_s >= 0, "max_wait_s", max_wait_s, "must be >= 0")
        self.lock, self.max_queue, self.max_wait_s = lock, max_queue, max_wait_s
        self._guard = threading.Lock()
        self._admitted = 0  # waiting plus the one using the model
        self._turn_s = 0.0  # running mean of a turn with the model, for Retry-After

    def depth(self) -> dict[str, int]:
        """``{"waiting", "running", "max_queue"}`` without taking the model lock."""
        running = int(self.lock.locked())
        return {"waiting": max(self._admitted - running, 0), "running": running, "max_queue": self.max_queue}

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._turn_s * max(self._admitted, 1)))

    @contextmanager
    def turn(self) -> Iterator[float]:
        """Hold the model for one request; yields the ``time.monotonic()`` its turn began. Raises ``Busy`` at once
        when ``max_queue`` requests already wait, or after ``max_wait_s`` without a turn."""
        with self._guard:
            if self._admitted > self.max_queue:
                raise Busy(
                    f"server busy: {self.max_queue} requests already wait for the model (--max-queue)",
                    self._retry_after(),
                )
            self._admitted += 1
        try:
            if not self.lock.acquire(timeout=self.max_wait_s):
                raise Busy(f"server busy: no turn with the model within {self.max_wait_s:g} s", self._retry_after())
            started = time.monotonic()
            try:
                yield started
            finally:
                self.lock.release()
                with self._guard:
                    self._turn_s = 0.8 * self._turn_s + 0.2 * (time.monotonic() - started)
        finally:
            with self._guard:
                self._admitted -= 1
