"""Rule-based rewards over a raw quad-thinking completion: structure, consistency, correctness, stability.

Every reward reads the completion with the output policy's own lexer (``so8t_core.think``): the outline comes from
``top_level_parts`` and the answer from ``extract_final``, so a completion the server would answer with the fallback
message never earns the answer's share of a reward. The four rewards:

* **structure** (graded, in [0, 1]): six checks of equal weight, one per thinking part (exactly one top-level
  part of that name, closed, non-empty, nothing nested inside), one for the order (the top-level parts are exactly
  observation, deduction, abduction, integration, final) and one for the answer (``extract_final`` accepts it);
* **consistency** (the design's "isomorphism", 0 or 1): the decision stated in the integration part equals the form
  of the final answer (an answer for ALLOW, a refusal for REFUSE, a referral for ESCALATE);
* **correctness** (0 or 1): the form of the final answer equals the prompt's gold label;
* **stability** (<= 0): minus the mean per-token KL estimate to the reference policy (``k3 = e^r - r - 1`` with
  ``r = log p_ref - log p``, Schulman's unbiased, non-negative estimator, the one TRL uses for its own KL term).

Explained in notebooks/07_quad_reinforcement.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from so8t_core.batching import masked_mean
from so8t_core.config import check
from so8t_core.think import DECISIONS, FALLBACK_MESSAGE, FINAL_TAG, THINK_PARTS, extract_final, top_level_parts
from so8t_core.verdicts import need

OUTLINE = (*(f"think-{p}" for p in THINK_PARTS), FINAL_TAG)
# Phrases that mark a decision, checked REFUSE first, then ESCALATE: a referral or refusal may also say "answer"
# ("I have not answered it"), never the other way round. Lower-cased substring match; en and ja.
STATED_CUES: dict[str, tuple[str, ...]] = {
    "REFUSE": ("refuse", "decline", "断", "拒否"),
    "ESCALATE": ("refer", "professional", "qualified", "escalat", "専門家", "つなぎ", "相談"),
    "ALLOW": ("answer", "help", "explain", "回答", "説明", "手伝", "答え"),
}
ANSWER_CUES: dict[str, tuple[str, ...]] = {
    "REFUSE": (
        "can't help",
        "cannot help",
        "can not help",
        "won't help",
        "協力できません",
        "お応えできません",
        "できません",
    ),
    "ESCALATE": ("qualified person", "professional", "doctor", "lawyer", "helpline", "専門家", "相談窓口", "医師"),
}


def _cue(text: str, cues: Mapping[str, tuple[str, ...]]) -> str | None:
    low = text.lower()
    return next((d for d in ("REFUSE", "ESCALATE", "ALLOW") if any(c in low for c in cues.get(d, ()))), None)


def answer_decision(raw: str) -> str | None:
    """The decision the served answer of ``raw`` takes, read from its form: a refusal, a referral, or (any other
    non-empty answer) ALLOW; ``None`` when the server would send the fallback message.

    Args:
        raw: a raw completion (new tokens only).
    Returns:
        One of ``DECISIONS`` or ``None``.
    """
    final = extract_final(raw)
    if final == FALLBACK_MESSAGE:
        return None
    return _cue(final, ANSWER_CUES) or "ALLOW"


def stated_decision(raw: str) -> str | None:
    """The decision stated in the integration part (exactly one closed top-level one), or ``None`` (no such
    part, or no decision phrase in it)."""
    parts = [p for p in top_level_parts(raw) if p.name == f"think-{THINK_PARTS[-1]}"]
    if len(parts) != 1 or not parts[0].closed:
        return None
    return _cue(parts[0].content, STATED_CUES)


def structure_checks(raw: str) -> dict[str, bool]:
    """The six checks the structure reward averages (names: the four parts, ``order``, ``final``)."""
    parts = top_level_parts(raw)
    out = {}
    for p in THINK_PARTS:
        mine = [x for x in parts if x.name == f"think-{p}"]
        out[p] = len(mine) == 1 and mine[0].closed and not mine[0].nested and bool(mine[0].content)
    out["order"] = tuple(x.name for x in parts) == OUTLINE
    out["final"] = extract_final(raw) != FALLBACK_MESSAGE
    return out


def structure_reward(raw: str) -> float:
    """Share of ``structure_checks`` that pass, in [0, 1] (graded, so partial layouts are told apart)."""
    checks = structure_checks(raw)
    return sum(checks.values()) / len(checks)


def consistency_reward(raw: str) -> float:
    """1.0 when the integration part states the decision the final answer takes, else 0.0."""
    stated = stated_decision(raw)
    return float(stated is not None and stated == answer_decision(raw))


def correctness_reward(raw: str, label: str) -> float:
    """1.0 when the final answer takes the gold ``label``'s form, else 0.0 (a fallback answer is wrong).

    Raises:
        ValueError: ``label`` is not one of ``DECISIONS``.
    """
    check(label in DECISIONS, "label", label, f"must be one of {DECISIONS}")
    return float(answer_decision(raw) == label)


def kl_k3(policy_logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """Mean per-token KL(policy || reference) estimate over the completion tokens of each row.

    Args:
        policy_logps, ref_logps: (B, T) log-probabilities of the sampled tokens under the two policies.
        mask: (B, T) 1 for completion tokens.
    Returns:
        (B,) non-negative estimates (0 for a row without tokens).
    """
    r = (ref_logps - policy_logps).float()
    k3 = torch.exp(r) - r - 1  # (B, T), >= 0
    return masked_mean(k3, mask)


def stability_reward(policy_logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """Minus ``kl_k3``: 0 for a completion the reference would write just as likely, negative otherwise."""
    return -kl_k3(policy_logps, ref_logps, mask)


def score_completion(raw: str, label: str) -> dict[str, float]:
    """The three text rewards of one completion (stability needs the models, see ``training``)."""
    return {
        "structure": structure_reward(raw),
        "consistency": consistency_reward(raw),
        "correctness": correctness_reward(raw, label),
    }


def trl_text_rewards(decode: Callable[[Sequence[int]], str]) -> list[Callable[..., list[float]]]:
    """The text rewards in TRL's reward-function form (keyword arguments ``completion_ids`` and the dataset's
    ``label`` column; one float per completion). The function names are TRL's log names (``rewards/structure``).

    Args:
        decode: token ids -> raw text (``think.decode_raw`` with the policy's tokenizer), so tags that are special
            tokens are seen as TRL's own text decoding would drop them.
    """

    def structure(completion_ids: Sequence[Sequence[int]], **_: Any) -> list[float]:
        return [structure_reward(decode(ids)) for ids in completion_ids]

    def consistency(completion_ids: Sequence[Sequence[int]], **_: Any) -> list[float]:
        return [consistency_reward(decode(ids)) for ids in completion_ids]

    def correctness(completion_ids: Sequence[Sequence[int]], label: Sequence[str], **_: Any) -> list[float]:
        return [correctness_reward(decode(ids), y) for ids, y in zip(completion_ids, label, strict=True)]

    return [structure, consistency, correctness]


def _trend(curve: Sequence[float], window: float) -> float:
    n = max(1, round(len(curve) * window))
    return float(sum(curve[-n:]) / n - sum(curve[:n]) / n)


def reward_hacking(
    curves: Mapping[str, Sequence[float]], tol: float = 0.02, window: float = 0.25, reward: str = "structure"
) -> dict[str, Any]:
    """The reward-hacking watch: does the reward rise while correctness does not?

    A policy that earns more reward without answering more correctly has found what the reward pays for that is
    not the task (correctness falling is the plain case; correctness flat is the quiet one). Each trend is the
    mean of the last ``window`` share of steps minus the mean of the first.

    Args:
        curves: per-step mean rewards; needs ``reward`` and ``correctness`` (at least 2 steps each).
        tol: a change within ``tol`` counts as flat.
        window: share of the steps at each end that is averaged.
        reward: the curve that stands for the reward (``structure`` by default).
    Returns:
        ``{"structure_change", "correctness_change", "reward_rose", "hacking": bool, "conclusion": one line}``
        (``structure_change`` is the change of ``reward``).
    Raises:
        KeyError: a curve is missing. ValueError: fewer than 2 steps, or ``window`` outside (0, 0.5].
    """
    s, c = need(curves, reward, "reward_hacking"), need(curves, "correctness", "reward_hacking")
    check(min(len(s), len(c)) >= 2, "curves", (len(s), len(c)), "need at least 2 steps")
    check(0 < window <= 0.5, "window", window, "must be in (0, 0.5]")
    ds, dc = _trend(s, window), _trend(c, window)
    rose = ds > tol
    hacking = rose and dc <= tol
    if hacking:
        text = f"reward hacking: {reward} rose by {ds:+.3f} while correctness changed by {dc:+.3f}"
    else:
        text = f"no reward hacking seen: {reward} {ds:+.3f}, correctness {dc:+.3f} (first vs last {window:.0%})"
    return {"structure_change": ds, "correctness_change": dc, "reward_rose": rose, "hacking": hacking,
            "conclusion": text}  # fmt: skip


def total_rewards(rows: Mapping[str, Sequence[float]], weights: Sequence[float]) -> list[float]:
    """Each answer's total reward as GRPO weighs it: structure, consistency and correctness minus the KL term.

    Args:
        rows: per-answer ``structure``, ``consistency``, ``correctness`` and ``kl`` (``evaluation.evaluate_policy``).
        weights: ``(w_structure, w_consistency, w_correctness, w_stability)`` (``QuadRLStageConfig.reward_weights``).
    Returns:
        One total per answer.
    """
    check(len(weights) == 4, "weights", weights, "must be (structure, consistency, correctness, stability)")
    ws, wc, wr, wk = weights
    parts = zip(rows["structure"], rows["consistency"], rows["correctness"], rows["kl"], strict=True)
    return [ws * a + wc * b + wr * c - wk * k for a, b, c, k in parts]
