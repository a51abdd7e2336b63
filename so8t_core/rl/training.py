"""GRPO over the soul-injected model with TRL: the soul inside the output head, a frozen reference, the rewards.

TRL's ``GRPOTrainer`` scores completions through the model's output head *weight* (a fused log-prob kernel that
never calls the head module), so the soul cannot stay a wrapper around the model. It goes into the head instead:
the soul's logits ``W (h + s R h)`` equal ``W' h`` with ``W' = W + s W R`` (``gate.soul.fused_head_weight``), and
``FusedSoulHead`` exposes W' as its ``weight``, recomputed from the live rotation and alpha on every access. Generation,
TRL's kernel and a plain forward all see the same soul, gradients reach the rotation and alpha when they are
trainable, and what is saved is the usual soul folder (LoRA adapter + ``soul.safetensors``), which notebook 04's
fusion turns into a plain checkpoint.

GRPO (group-relative advantages, no value model) rather than PPO: TRL 1.16 has no PPO trainer, the rewards are
rules on whole completions (no per-token value to learn), and a value head would double the trainable state on a
4-bit base. The KL to the reference enters as the ``stability`` reward (KL in the reward, as in PPO-RLHF), computed
against a frozen second copy of the imitation model, so TRL's own KL term stays off (``beta = 0``) and needs no
reference of its own.

Explained in notebooks/07_quad_reinforcement.ipynb.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from so8t_core.config import QuadRLStageConfig, check, stage_fields
from so8t_core.gate.soul import SoulWrapper, fused_head_weight
from so8t_core.rl.rewards import kl_k3, trl_text_rewards
from so8t_core.think import build_prompt, decode_raw, stop_ids

REWARDS = ("structure", "consistency", "correctness", "stability")


def chat_prompt(user: str) -> str:
    """The prompt layout the project's models were trained on (``think.chat_turn``: no system turn)."""
    return build_prompt(user, system="")


class FusedSoulHead(nn.Module):
    """An output head whose weight is W' = W + sigmoid(alpha) W R, from the soul's live rotation and alpha.

    Args:
        head: the model's output Linear (its weight W stays frozen).
        soul: the wrapper whose ``rotation`` and ``alpha`` modules are shared (trained in place).
    """

    def __init__(self, head: nn.Module, soul: SoulWrapper) -> None:
        super().__init__()
        self.head, self.rotation, self.alpha = head, soul.rotation, soul.alpha

    @property
    def weight(self) -> Tensor:
        W = self.head.weight
        return fused_head_weight(W, self.rotation.matrices(), self.alpha.weight).to(W.dtype)  # (V, H)

    @property
    def bias(self) -> Tensor | None:
        return self.head.bias

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.weight.to(h.dtype), None if self.bias is None else self.bias.to(h.dtype))


@dataclass
class Policy:
    """A soul-injected model ready for TRL: ``model`` (peft, soul in its head), ``tokenizer``, ``soul`` (for saving)."""

    model: Any
    tokenizer: Any
    soul: SoulWrapper
    train_soul: bool = False
    counts: dict[str, int] = field(default_factory=dict)


def load_policy(
    base_model: str | Path,
    soul_dir: str | Path,
    *,
    trainable: bool = True,
    train_soul: bool = False,
    load_in_4bit: bool = False,
) -> Policy:
    """Notebook 03's soul folder around its base, with the soul moved into the output head.

    Args:
        base_model: the base's folder or hub id.
        soul_dir: a soul folder (``SoulWrapper.save``: LoRA adapter + soul files).
        trainable: LoRA trains (False: a frozen reference).
        train_soul: the rotation generators and alpha train too (only with ``trainable``).
        load_in_4bit: NF4 base on a GPU.
    Returns:
        ``Policy``; ``counts`` holds the trainable LoRA and soul parameter counts.
    Raises:
        ValueError: the soul folder has no LoRA adapter (GRPO here trains LoRA, optionally the soul).
    """
    from so8t_core.lm.loading import load_soul_folder

    soul, tok = load_soul_folder(base_model, soul_dir, load_in_4bit=load_in_4bit)
    model = soul.model
    check(hasattr(model, "peft_config"), "soul_dir", str(soul_dir), "has no LoRA adapter (adapter_config.json)")
    for name, p in model.named_parameters():
        p.requires_grad_(trainable and "lora_" in name)
    for cfg in model.peft_config.values():
        cfg.inference_mode = not trainable
    lm = model.get_base_model()
    lm.lm_head = FusedSoulHead(lm.lm_head, soul)
    for p in (*soul.rotation.parameters(), *soul.alpha.parameters()):
        p.requires_grad_(trainable and train_soul)
    lm.generation_config.eos_token_id = stop_ids(tok)  # stop at <|end|> too: TRL masks after these ids
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    counts = {
        "lora": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n),
        "soul": sum(p.numel() for p in (*soul.rotation.parameters(), *soul.alpha.parameters()) if p.requires_grad),
    }
    model.train(trainable)
    return Policy(model, tok, soul, train_soul and trainable, counts)


def completion_logps(model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[Sequence[int]]):
    """Log-probabilities of each completion token given its prompt (text, tokenized as TRL does), no grad.

    Returns:
        ``(logps, mask)``, both (B, T_completion_max); mask is 1 on real completion tokens.
    """
    device = next(model.parameters()).device
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completions, strict=True)]
    T, C = max(len(r) for r in rows), max(1, max(len(c) for c in completions))
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], attn[i, : len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]  # (B, T-1)
    out, mask = torch.zeros(len(rows), C), torch.zeros(len(rows), C)
    for i, (p, c) in enumerate(zip(prompt_ids, completions, strict=True)):
        n = len(c)
        out[i, :n] = logp[i, len(p) - 1 : len(p) - 1 + n].cpu()  # the token at position t is scored at t - 1
        mask[i, :n] = 1
    return out, mask


class StabilityReward:
    """TRL reward: minus the mean per-token KL of each completion from ``policy`` to the frozen ``reference``."""

    __name__ = "stability"

    def __init__(self, policy: Policy, reference: Policy) -> None:
        self.policy, self.reference = policy, reference

    def __call__(self, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]], **_: Any) -> list[float]:
        tok = self.policy.tokenizer
        lp, mask = completion_logps(self.policy.model, tok, prompts, completion_ids)
        ref, _m = completion_logps(self.reference.model, tok, prompts, completion_ids)
        return (-kl_k3(lp, ref, mask)).tolist()


@dataclass(frozen=True)
class GRPOSettings:
    """One GRPO run (TRL's names where they exist).

    Every field is a knob of notebook 07 (``QuadRLStageConfig`` holds the defaults): build it with
    ``GRPOSettings.from_stage(cfg, seed)``.
    """

    steps: int
    num_generations: int  # completions per prompt: the group advantages are computed in
    prompts_per_step: int
    max_completion_length: int
    learning_rate: float  # LoRA
    soul_lr: float
    temperature: float
    weights: tuple  # structure, consistency, correctness, stability
    seed: int

    STAGE_NAMES: ClassVar[dict[str, str]] = {"learning_rate": "lr"}

    @classmethod
    def from_stage(cls, cfg: QuadRLStageConfig, seed: int | None = None) -> GRPOSettings:
        """One GRPO run of notebook 07.

        Args:
            cfg: notebook 07's config (``lr`` is TRL's ``learning_rate``; the ``w_*`` fields are ``weights``).
            seed: this run's seed (notebook 07 runs ``cfg.seed``, ``cfg.seed + 1``, ...); None: ``cfg.seed``.
        Returns:
            The ``GRPOSettings``.
        """
        kwargs = stage_fields(cls, cfg, weights=cfg.reward_weights())
        return cls(**kwargs | ({} if seed is None else {"seed": seed}))

    def __post_init__(self) -> None:
        for n in ("steps", "prompts_per_step", "max_completion_length", "learning_rate", "soul_lr", "temperature"):
            check(getattr(self, n) > 0, n, getattr(self, n), "must be > 0")
        check(self.num_generations >= 2, "num_generations", self.num_generations, "must be >= 2 (a group)")
        check(len(self.weights) == len(REWARDS), "weights", self.weights, f"one per reward {REWARDS}")


def _optimizer(policy: Policy, s: GRPOSettings) -> torch.optim.Optimizer:
    lora = [p for n, p in policy.model.named_parameters() if p.requires_grad and "lora_" in n]
    soul = [p for p in (*policy.soul.rotation.parameters(), *policy.soul.alpha.parameters()) if p.requires_grad]
    groups = [{"params": lora, "lr": s.learning_rate}] + ([{"params": soul, "lr": s.soul_lr}] if soul else [])
    return torch.optim.AdamW(groups, weight_decay=0.0)


def _quiet_progress_class() -> type:
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            return None

    return QuietProgress


def train_grpo(
    policy: Policy, reference: Policy, prompts: Sequence[str], labels: Sequence[str], s: GRPOSettings
) -> list[dict[str, float]]:
    """Train ``policy`` in place with TRL's ``GRPOTrainer`` on the user prompts and their gold labels.

    Args:
        policy, reference: from ``load_policy`` (trainable, frozen).
        prompts: user messages (the chat layout the project's models were trained on is added here).
        labels: gold decision per prompt (generated train split only).
        s: run settings.
    Returns:
        TRL's log history, one dict per step (``rewards/<name>/mean``, ``reward``, ``loss``, ...).
    """
    from datasets import Dataset
    from transformers import get_constant_schedule
    from transformers.trainer_callback import ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_dict({"prompt": [chat_prompt(p) for p in prompts], "label": list(labels)})
    tok = policy.tokenizer
    with tempfile.TemporaryDirectory(prefix="grpo-") as out:
        args = GRPOConfig(
            output_dir=out,
            max_steps=s.steps,
            per_device_train_batch_size=s.num_generations * s.prompts_per_step,
            num_generations=s.num_generations,
            max_completion_length=s.max_completion_length,
            temperature=s.temperature,
            learning_rate=s.learning_rate,
            beta=0.0,
            reward_weights=list(s.weights),
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            # TRL defaults to bf16, which on a CPU means bf16 autocast: train in float32 there, as every other stage
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            seed=s.seed,
            data_seed=s.seed,
            disable_dropout=True,  # the stability reward compares log-probs: no dropout noise in them
        )
        opt = _optimizer(policy, s)
        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=[*trl_text_rewards(lambda ids: decode_raw(tok, ids)), StabilityReward(policy, reference)],
            args=args,
            train_dataset=data,
            processing_class=tok,
            optimizers=(opt, get_constant_schedule(opt)),
        )
        trainer.remove_callback(ProgressCallback)  # keep the tqdm bar, drop its printing of every step's log dict
        trainer.add_callback(_quiet_progress_class()())
        try:
            trainer.train()
        finally:
            _forget_accelerator_state()
    policy.model.eval()
    return [h for h in trainer.state.log_history if "reward" in h]


def _forget_accelerator_state() -> None:
    """The Trainer's Accelerator settings live in a process-wide singleton; without a reset a later ``Accelerator()``
    in the same process (notebook 03's training loop, a test) inherits them."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def reward_curves(history: Sequence[dict[str, float]]) -> dict[str, list[float]]:
    """Per-step mean of each reward (and the weighted total ``reward``) from ``train_grpo``'s history."""
    out = {r: [float(h.get(f"rewards/{r}/mean", math.nan)) for h in history] for r in REWARDS}
    out["reward"] = [float(h["reward"]) for h in history]
    return out
