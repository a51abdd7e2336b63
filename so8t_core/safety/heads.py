"""Safety, task and dual policy heads on a frozen LM's pooled hidden states.

Four linear heads read the same feature, the masked mean of the LM's final hidden state (in transformers 5.x
``hidden_states[-1]`` is the output of the final norm: ``capture_outputs`` replaces the last captured layer
output with ``last_hidden_state``, checked in tests/test_safety.py by ``lm_head(hidden_states[-1]) == logits``):

==========  ========================  =====================================================================
head        output                    meaning a user can act on
==========  ========================  =====================================================================
safety      P(unsafe), 2-way softmax  the content judgement: would answering help serious harm (gold REFUSE)?
task        4-way softmax over TASKS  what kind of request it is (routing, per-task metrics)
refuse      P(refuse), sigmoid        policy: do not answer at all; reply with the fixed refusal
escalate    P(escalate), sigmoid      policy: not safe to answer automatically; hand to a qualified person.
                                      Trained on gold ESCALATE *or* REFUSE, so a harmful prompt that slips under
                                      the refuse threshold is still escalated rather than answered.
==========  ========================  =====================================================================

Features are always taken from the raw prompt text (no chat template) - in training (notebook 06), in the
``eval`` command line and in ``lm.generate.respond`` - so the heads see the same kind of input everywhere.

The safety and refuse heads share a target on the shipped data but play different roles: the safety head is
the classifier we report (AUPRC, the Llama-Guard-style binary F1/FPR), the policy heads carry tuned thresholds
and can be retrained for another deployment's policy without touching the classifier.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from so8t_core.artifacts import atomic_path, write_json_atomic
from so8t_core.batching import pool_prompts
from so8t_core.config import check
from so8t_core.safety.labels import LABELS, metrics

TASKS = ("information", "coding", "creative", "advice")
HEADS_WEIGHTS = "safety_heads.safetensors"
HEADS_CONFIG = "safety_heads.json"
HEADS_STAGE = "06_safety_eval"  # the stage whose folder holds heads trained on a model
HEADS_NOTEBOOK = f"notebooks/{HEADS_STAGE}.ipynb"
HEADS_MAX_TOKENS = 512  # tokens of a prompt the heads read; a server must refuse longer prompts, not cut them


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds on P(refuse) and P(escalate), each in [0, 1]."""

    refuse: float = 0.5
    escalate: float = 0.5

    def __post_init__(self) -> None:
        for name in ("refuse", "escalate"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and 0.0 <= v <= 1.0, name, v, "threshold must be in [0, 1]")


class SafetyHeads(nn.Module):
    """Four linear heads on standardised pooled hidden states (see the module docstring for their meaning).

    Args:
        hidden_size: width H of the pooled feature.
        n_tasks: number of task classes (``len(TASKS)``).

    Explained in notebooks/06_safety_eval.ipynb.
    """

    def __init__(self, hidden_size: int, n_tasks: int = len(TASKS)) -> None:
        super().__init__()
        check(hidden_size > 0, "hidden_size", hidden_size, "must be > 0")
        check(n_tasks > 1, "n_tasks", n_tasks, "must be > 1")
        self.hidden_size, self.n_tasks = hidden_size, n_tasks
        # Feature standardisation is part of the heads so it travels with them in the safetensors file.
        self.register_buffer("mu", torch.zeros(hidden_size))
        self.register_buffer("sigma", torch.ones(hidden_size))
        self.safety = nn.Linear(hidden_size, 2)
        self.task = nn.Linear(hidden_size, n_tasks)
        self.refuse = nn.Linear(hidden_size, 1)
        self.escalate = nn.Linear(hidden_size, 1)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head for features ``h`` (N, H)."""
        z = (h.float() - self.mu) / self.sigma  # (N, H)
        return {
            "safety": self.safety(z),
            "task": self.task(z),
            "refuse": self.refuse(z).squeeze(-1),
            "escalate": self.escalate(z).squeeze(-1),
        }

    @torch.no_grad()
    def probs(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities: ``p_unsafe`` (N,), ``task`` (N, n_tasks), ``p_refuse`` (N,), ``p_escalate`` (N,)."""
        out = self(h)
        return {
            "p_unsafe": out["safety"].softmax(-1)[:, 1],
            "task": out["task"].softmax(-1),
            "p_refuse": out["refuse"].sigmoid(),
            "p_escalate": out["escalate"].sigmoid(),
        }


@torch.no_grad()
def pooled_hidden_states(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 16,
    max_length: int = HEADS_MAX_TOKENS,
    layers: Sequence[int] = (-1,),
) -> torch.Tensor:
    """Masked mean of the final (post-norm) hidden state of each prompt, or of several layers side by side.

    Prompts are tokenised one by one and right-padded by ``lm.batching.pool_prompts`` (the pooling notebook 06's
    pillars train with), so the tokenizer needs no pad token and a prompt's feature does not depend on what it is
    batched with. The model is put in eval mode and restored.

    Args:
        model: a causal LM accepting ``output_hidden_states=True``.
        tokenizer: its tokenizer.
        prompts: non-empty strings.
        batch_size: prompts per forward pass.
        max_length: tokens kept per prompt (the rest is cut).
        layers: indices into the model's ``hidden_states`` (0: the token embeddings, -1: after the final norm);
            their masked means are concatenated in this order.
    Returns:
        Float32 CPU tensor (N, H * len(layers)).

    Explained in notebooks/06_safety_eval.ipynb.
    """
    n_states = model.config.num_hidden_layers + 1
    check(
        len(layers) > 0 and all(-n_states <= i < n_states for i in layers),
        "layers",
        tuple(layers),
        f"need indices into {n_states} hidden states",
    )
    device = next(model.parameters()).device
    # the pooled states need no logits: one position's instead of every position's over the whole vocabulary
    # (for Gemma 3's 262k-token head that is most of the forward pass)
    skip_head = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def states(ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True, **skip_head)
        return [out.hidden_states[i] for i in layers]  # each (B, T, H)

    width = model.config.hidden_size * len(layers)
    return pool_prompts(model, states, tokenizer, prompts, width, batch_size, max_length)


def train_heads(
    features: torch.Tensor,
    labels: Sequence[str],
    tasks: Sequence[str],
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> SafetyHeads:
    """Fit all four heads jointly (full batch AdamW) on frozen features.

    Loss = CE(safety, gold REFUSE) + CE(task) + BCE(refuse, gold REFUSE) + BCE(escalate, gold not ALLOW).
    Seeded through a forked RNG, so the caller's global torch RNG is left as it was.

    Args:
        features: (N, H) pooled hidden states.
        labels: N labels in ``LABELS``.
        tasks: N task names in ``TASKS``.
        steps, lr, weight_decay: optimiser settings.
        seed: initialisation seed.
    Returns:
        Trained ``SafetyHeads`` in eval mode.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    check(features.ndim == 2 and len(features) > 0, "features", tuple(features.shape), "must be (N, H), N > 0")
    check(len(labels) == len(features), "labels", len(labels), f"need one per feature row ({len(features)})")
    check(len(tasks) == len(features), "tasks", len(tasks), f"need one per feature row ({len(features)})")
    check(steps > 0 and lr > 0, "steps/lr", (steps, lr), "must be > 0")
    bad = sorted({x for x in labels if x not in LABELS}) + sorted({t for t in tasks if t not in TASKS})
    check(not bad, "labels/tasks", bad, f"unknown; labels are {LABELS}, tasks are {TASKS}")
    x = features.detach().float()
    y_refuse = torch.tensor([lab == "REFUSE" for lab in labels], dtype=torch.float32)
    y_escalate = torch.tensor([lab != "ALLOW" for lab in labels], dtype=torch.float32)
    y_task = torch.tensor([TASKS.index(t) for t in tasks])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = SafetyHeads(x.shape[1])
    heads.mu.copy_(x.mean(0))
    heads.sigma.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    heads.train()
    for _ in range(steps):
        out = heads(x)
        loss = (
            F.cross_entropy(out["safety"], y_refuse.long())
            + F.cross_entropy(out["task"], y_task)
            + F.binary_cross_entropy_with_logits(out["refuse"], y_refuse)
            + F.binary_cross_entropy_with_logits(out["escalate"], y_escalate)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads.eval()


def _as_array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def decide(head_outputs: Mapping[str, Any], thresholds: Thresholds | None = None) -> list[str]:
    """Labels from policy-head probabilities.

    REFUSE if P(refuse) >= t_refuse, else ESCALATE if P(escalate) >= t_escalate, else ALLOW. Refusal is
    checked first because it is the stronger action; escalation then catches what refusal let through.

    Args:
        head_outputs: mapping with ``p_refuse`` and ``p_escalate`` (N,) (as from ``SafetyHeads.probs``).
        thresholds: ``Thresholds``; 0.5 / 0.5 when ``None``.
    Returns:
        N labels from ``LABELS``.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    t = thresholds or Thresholds()
    p_ref, p_esc = _as_array(head_outputs["p_refuse"]), _as_array(head_outputs["p_escalate"])
    check(
        p_ref.shape == p_esc.shape and p_ref.ndim == 1,
        "head_outputs",
        (p_ref.shape, p_esc.shape),
        "p_refuse and p_escalate must be 1-D and the same length",
    )
    return ["REFUSE" if r >= t.refuse else "ESCALATE" if e >= t.escalate else "ALLOW" for r, e in zip(p_ref, p_esc)]


def _candidates(p: np.ndarray) -> list[float]:
    u = np.unique(p)
    mids = ((u[:-1] + u[1:]) / 2).tolist()  # midpoints generalise better than the dev scores themselves
    return sorted({0.0, 1.0, *mids})


def tune_thresholds(
    p_refuse: Any, p_escalate: Any, labels: Sequence[str], max_over_refusal: float = 0.05
) -> Thresholds:
    """Pick thresholds on the dev split.

    1. ``refuse``: maximise ``safety_f1`` subject to ``over_refusal_rate <= max_over_refusal`` (over-refusal
       depends only on this threshold). Ties go to the lower threshold (refuse more). If no candidate meets
       the cap, the one with the lowest over-refusal is taken.
    2. ``escalate``: with ``refuse`` fixed, maximise 3-way ``macro_f1``; ties go to the lower threshold.

    Candidates are 0, 1 and the midpoints between consecutive distinct dev probabilities.

    Args:
        p_refuse, p_escalate: dev probabilities (N,).
        labels: dev gold labels; must contain ALLOW and REFUSE.
        max_over_refusal: the cap on the share of gold ALLOW refused.
    Returns:
        ``Thresholds``.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    p_ref, p_esc = _as_array(p_refuse), _as_array(p_escalate)
    check(len(p_ref) == len(labels) == len(p_esc), "labels", len(labels), "need one per probability")
    check({"ALLOW", "REFUSE"} <= set(labels), "labels", sorted(set(labels)), "dev needs gold ALLOW and REFUSE")
    check(0.0 <= max_over_refusal <= 1.0, "max_over_refusal", max_over_refusal, "must be in [0, 1]")

    def refuse_key(t: float) -> tuple:
        # Over-refusal and safety_f1 depend only on which prompts are refused, so escalation is irrelevant here.
        m = metrics(labels, decide({"p_refuse": p_ref, "p_escalate": p_esc}, Thresholds(t, 1.0)))
        feasible = m["over_refusal_rate"] <= max_over_refusal
        return (feasible, m["safety_f1"] if feasible else -m["over_refusal_rate"], -t)

    t_ref = max(_candidates(p_ref), key=refuse_key)

    def escalate_key(t: float) -> tuple:
        m = metrics(labels, decide({"p_refuse": p_ref, "p_escalate": p_esc}, Thresholds(t_ref, t)))
        return (-math.inf if math.isnan(m["macro_f1"]) else m["macro_f1"], -t)

    return Thresholds(float(t_ref), float(max(_candidates(p_esc), key=escalate_key)))


def save_heads(heads: SafetyHeads, folder: str | Path, thresholds: Thresholds | None = None) -> Path:
    """Write ``safety_heads.safetensors`` and ``safety_heads.json`` (config + thresholds) into ``folder``.

    Both are written through ``atomic_path``. Returns the JSON path.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_path(folder / HEADS_WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}, str(tmp))
    cfg = {
        "hidden_size": heads.hidden_size,
        "tasks": list(TASKS),
        "labels": list(LABELS),
        "thresholds": asdict(thresholds or Thresholds()),
        "pooling": "masked mean of hidden_states[-1]",
    }
    write_json_atomic(folder / HEADS_CONFIG, cfg)
    return folder / HEADS_CONFIG


def load_heads(folder: str | Path) -> tuple[SafetyHeads, Thresholds]:
    """Heads and thresholds saved by ``save_heads``; a clear error naming the notebook when absent."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [f for f in (HEADS_WEIGHTS, HEADS_CONFIG) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no trained safety heads ({', '.join(missing)} missing): "
            f"run {HEADS_NOTEBOOK} to train and save them next to the model"
        )
    cfg = json.loads((folder / HEADS_CONFIG).read_text(encoding="utf-8"))
    check(tuple(cfg.get("tasks", ())) == TASKS, "tasks", cfg.get("tasks"), "heads were saved for other tasks")
    heads = SafetyHeads(int(cfg["hidden_size"]))
    heads.load_state_dict(load_file(str(folder / HEADS_WEIGHTS)), strict=True)
    return heads.eval(), Thresholds(**cfg["thresholds"])


def predict_with_heads(
    model: Any,
    tokenizer: Any,
    heads: SafetyHeads,
    prompts: Sequence[str],
    thresholds: Thresholds | None = None,
    batch_size: int = 16,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Decisions and head probabilities for ``prompts`` (pooled states -> heads -> ``decide``)."""
    feats = pooled_hidden_states(model, tokenizer, prompts, batch_size)
    check(
        feats.shape[1] == heads.hidden_size,
        "hidden_size",
        feats.shape[1],
        f"the heads expect {heads.hidden_size}: they were trained on another model",
    )
    probs = {k: v.numpy() for k, v in heads.probs(feats).items()}
    return decide(probs, thresholds), probs


def heads_decider(
    model: Any, tokenizer: Any, heads: SafetyHeads, thresholds: Thresholds | None = None
) -> Callable[[str], str]:
    """A ``decide`` callable for ``lm.generate.respond``: prompt -> the heads' label under ``thresholds``."""
    return lambda prompt: predict_with_heads(model, tokenizer, heads, [prompt], thresholds)[0][0]
