"""LoRA adapters on the base model, with a check that every requested target exists.

peft raises only when *no* target matches; a typo in one of several targets would silently train fewer matrices.
``apply_lora`` checks each target itself. Phi-3 fuses q, k and v into one ``qkv_proj`` (and gate/up into
``gate_up_proj``), so the Llama names ``q_proj``/``v_proj`` match nothing on it.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from so8t_core.config import SoulStageConfig, check, stage_fields

PHI3_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (as peft's ``LoraConfig`` names them, minus the plumbing).

    Args:
        r: adapter rank.
        alpha: scale numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        target_modules: module-name suffixes to adapt (default: every linear map of a Phi-3 block).
    """

    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...] = PHI3_TARGETS

    STAGE_NAMES: ClassVar[dict[str, str]] = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"}

    @classmethod
    def from_stage(cls, cfg: SoulStageConfig) -> LoraSettings:
        """Notebook 03's LoRA (``lora_r``, ``lora_alpha``, ``lora_dropout``), the one place its defaults live.

        Args:
            cfg: notebook 03's config.
        Returns:
            The ``LoraSettings``.
        """
        return cls(**stage_fields(cls, cfg))

    def __post_init__(self) -> None:
        check(self.r > 0, "r", self.r, "must be > 0")
        check(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))  # lists from JSON stay hashable
        check(len(self.target_modules) > 0, "target_modules", self.target_modules, "must name at least one module")


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Sorted distinct last name parts of the model's linear layers (``qkv_proj``, ``lm_head``, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")  # peft's rule for a list of targets


def apply_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """Wrap ``model`` in a peft ``PeftModel`` with LoRA adapters; only the adapters are trainable.

    Args:
        model: a transformers causal LM.
        settings: rank, scale, dropout and targets.
    Returns:
        The ``PeftModel``.
    Raises:
        ValueError: naming each target that matches no module, and listing the linear modules there are.
    Explained in notebooks/00_base_model.ipynb.
    """
    from peft import LoraConfig, get_peft_model

    names = [name for name, _ in model.named_modules()]
    missing = [t for t in settings.target_modules if not any(_matches(n, t) for n in names)]
    check(not missing, "target_modules", missing, f"match no module; linear modules are {linear_module_names(model)}")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
