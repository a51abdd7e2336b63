"""The soul: an SO(8) block rotation and an alpha gate between a causal LM's final norm and its lm_head.

    h      = final hidden state (after the model's last norm)        (B, T, H)
    mixed  = h + sigmoid(alpha) * R_total h,   R_total = R_cmd @ R_safe
    logits = lm_head(mixed)

The gate is computed in float32 whatever the base's dtype (a 4-bit base gives bf16 hidden states), which also
makes the later fusion into lm_head exact. Training adds an orthogonality guard and PET (curvature of ``mixed``
along the sequence) to the LM loss; see ``so8t_core.lm.inject`` for the loop.

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from so8t_core.config import DESIGN_SCHEDULE, StageConfig, check, stage_fields
from so8t_core.gate.alpha import MODES, AlphaGate, LinearSchedule
from so8t_core.gate.pet import KINDS, PETSchedule, pet_loss
from so8t_core.gate.rotation import MAPS, ComposedSO8Rotation, orthogonality_loss, rotate_blocks

SOUL_FILE, SOUL_CONFIG = "soul.safetensors", "soul_config.json"


def mix(h: Tensor, R: Tensor, s: Tensor | float) -> Tensor:
    """The soul gate ``h + s R h``, R turning each 8-wide block of h: the one place the gate is computed.

    Every room that applies the gate calls this (the wrapper, notebook 03's head study, the safety pillars, the
    notebook 01-02 studies), so a head trained in one place and served in another sees the same mixed state.

    Args:
        h: (..., H) hidden states, H = n_blocks * 8.
        R: (n_blocks, 8, 8) rotation blocks (R_total = R_cmd @ R_safe, or a single block rotation).
        s: the gate weight sigmoid(alpha), a scalar (a tensor keeps its gradient).
    Returns:
        (..., H) mixed states in h's dtype.
    """
    return h + torch.as_tensor(s, dtype=h.dtype, device=h.device) * rotate_blocks(h, R)


@dataclass(frozen=True)
class SoulConfig:
    """Everything that defines a soul besides its learned numbers (saved as ``soul_config.json``)."""

    hidden_size: int
    map: str = "cayley"
    init_std: float = 0.0
    alpha_mode: str = "scheduled"  # fixed | scheduled | learned
    alpha_start: float = DESIGN_SCHEDULE.alpha_start
    alpha_target: float = DESIGN_SCHEDULE.alpha_target
    alpha_warmup: int = DESIGN_SCHEDULE.alpha_warmup
    alpha_anneal: int = DESIGN_SCHEDULE.alpha_anneal
    ortho_weight: float = 1.0
    pet_kind: str = "l2"
    pet_delta: float = 1.0
    pet_max_lambda: float = DESIGN_SCHEDULE.pet_max_lambda
    pet_warmup: int = DESIGN_SCHEDULE.pet_warmup
    pet_main: int = DESIGN_SCHEDULE.pet_main
    pet_anneal: int = DESIGN_SCHEDULE.pet_anneal

    def __post_init__(self) -> None:
        check(
            isinstance(self.hidden_size, int) and self.hidden_size > 0 and self.hidden_size % 8 == 0,
            "hidden_size",
            self.hidden_size,
            "must be a positive multiple of 8",
        )
        check(self.map in MAPS, "map", self.map, f"must be one of {MAPS}")
        check(self.alpha_mode in MODES, "alpha_mode", self.alpha_mode, f"must be one of {MODES}")
        check(self.pet_kind in KINDS, "pet_kind", self.pet_kind, f"must be one of {KINDS}")
        check(self.ortho_weight >= 0, "ortho_weight", self.ortho_weight, "must be >= 0")
        check(self.init_std >= 0, "init_std", self.init_std, "must be >= 0")

    def alpha_schedule(self) -> LinearSchedule:
        return LinearSchedule(self.alpha_start, self.alpha_target, self.alpha_warmup, self.alpha_anneal)

    def pet_schedule(self) -> PETSchedule:
        return PETSchedule(self.pet_max_lambda, self.pet_warmup, self.pet_main, self.pet_anneal)

    @classmethod
    def from_stage(cls, cfg: StageConfig, hidden_size: int, **extra: Any) -> SoulConfig:
        """The soul a stage config describes: every field named like one of the stage's is taken from it (the
        defaults here are the design schedule's, for souls no stage describes).

        Args:
            cfg: the stage config (notebook 03's ``SoulStageConfig``).
            hidden_size: the model's hidden size.
            **extra: fields the stage does not expose (``alpha_mode``, ...).
        Returns:
            The ``SoulConfig``.
        """
        return cls(**stage_fields(cls, cfg, hidden_size=hidden_size, **extra))

    @classmethod
    def from_json(cls, path: str | Path) -> SoulConfig:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {f.name for f in fields(cls)}
        check(set(d) <= names, "soul_config keys", sorted(set(d) - names), f"unknown in {path}")
        return cls(**d)


@dataclass
class SoulOutput:
    """What ``SoulWrapper.forward`` returns: the total loss, its parts, and the logits."""

    loss: Tensor | None
    lm_loss: Tensor | None
    ortho_loss: Tensor
    pet_loss: Tensor
    logits: Tensor


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross entropy with transformers' shift and ignore index -100."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM under an optional peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_size_of(model: nn.Module) -> int:
    return int(_causal_lm(model).config.hidden_size)


class SoulWrapper(nn.Module):
    """A causal LM (plain or with LoRA) whose final hidden state passes through the soul gate.

    Args:
        model: a transformers CausalLM, or a peft model around one.
        rotation: the composed SO(8) rotation (R_cmd @ R_safe) of the model's hidden size.
        alpha: the alpha gate.
        config: the SoulConfig the rotation and gate were built from (kept for saving and schedules).
        use_gate: False gives the plain model's logits through the same code path (the LoRA-only baseline).

    Explained in notebooks/03_soul_injection.ipynb.
    """

    def __init__(
        self,
        model: nn.Module,
        rotation: ComposedSO8Rotation,
        alpha: AlphaGate,
        config: SoulConfig,
        use_gate: bool = True,
    ) -> None:
        super().__init__()
        H = hidden_size_of(model)
        check(rotation.hidden_size == H, "rotation.hidden_size", rotation.hidden_size, f"model hidden size is {H}")
        self.model, self.rotation, self.alpha, self.config, self.use_gate = model, rotation, alpha, config, use_gate
        self.pet_schedule = config.pet_schedule()
        self.pet_lambda = self.pet_schedule(0)

    @classmethod
    def build(cls, model: nn.Module, config: SoulConfig, use_gate: bool = True) -> SoulWrapper:
        """A fresh soul for ``model`` from ``config`` (rotation at ``init_std``, alpha at its start)."""
        check(
            config.hidden_size == hidden_size_of(model),
            "hidden_size",
            config.hidden_size,
            f"model hidden size is {hidden_size_of(model)}",
        )
        rotation = ComposedSO8Rotation(config.hidden_size, config.map, config.init_std)
        sched = config.alpha_schedule() if config.alpha_mode == "scheduled" else None
        alpha = AlphaGate(config.alpha_mode, init=config.alpha_start, schedule=sched)
        return cls(model, rotation, alpha, config, use_gate)

    def set_step(self, step: int) -> None:
        """Move scheduled alpha and PET lambda to ``step``."""
        self.alpha.set_step(step)
        self.pet_lambda = self.pet_schedule(step)

    def soul_parameters(self) -> list[nn.Parameter]:
        return [p for p in [*self.rotation.parameters(), *self.alpha.parameters()] if p.requires_grad]

    def hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Final hidden state after the base's last norm, (B, T, H)."""
        lm = _causal_lm(self.model)
        device = lm.get_input_embeddings().weight.device
        mask = None if attention_mask is None else attention_mask.to(device)
        return lm.get_decoder()(input_ids=input_ids.to(device), attention_mask=mask).last_hidden_state

    def mix(self, h: Tensor) -> Tensor:
        """h + sigmoid(alpha) * R_total h in float32, (B, T, H)."""
        h32 = h.float()
        return mix(h32, self.rotation.matrices(), self.alpha.weight) if self.use_gate else h32

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> SoulOutput:
        mixed = self.mix(self.hidden(input_ids, attention_mask))
        head = _causal_lm(self.model).get_output_embeddings()
        logits = head(mixed.to(head.weight.dtype)).float()
        ortho = orthogonality_loss(self.rotation.matrices()) if self.use_gate else logits.new_zeros(())
        pet = pet_loss(mixed, attention_mask, self.config.pet_kind, self.config.pet_delta)
        lm = causal_lm_loss(logits, labels) if labels is not None else None
        total = None if lm is None else lm + self.config.ortho_weight * ortho + self.pet_lambda * pet
        return SoulOutput(total, lm, ortho, pet, logits)

    def soul_state(self) -> dict[str, Tensor]:
        """The soul's learned numbers: both generators and alpha."""
        return {
            "r_cmd.generators": self.rotation.r_cmd.generators.detach().float().cpu().contiguous(),
            "r_safe.generators": self.rotation.r_safe.generators.detach().float().cpu().contiguous(),
            "alpha": self.alpha.alpha.detach().float().cpu().reshape(1).contiguous(),
        }

    def load_soul_state(self, state: dict[str, Tensor], source: str = "soul state") -> None:
        """Copy ``state`` into the soul, refusing missing keys or wrong shapes by name."""
        want = self.soul_state()
        for k, v in want.items():
            check(k in state, k, "missing", f"not in {source}")
            check(
                tuple(state[k].shape) == tuple(v.shape),
                f"{k}.shape",
                tuple(state[k].shape),
                f"{source} does not fit this model: expected {tuple(v.shape)}",
            )
        with torch.no_grad():
            self.rotation.r_cmd.generators.copy_(state["r_cmd.generators"])
            self.rotation.r_safe.generators.copy_(state["r_safe.generators"])
            self.alpha.alpha.copy_(state["alpha"].reshape(()))

    def save(self, out_dir: str | Path) -> Path:
        """Write ``soul.safetensors`` + ``soul_config.json`` (and the LoRA adapter, if any) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(out)
        save_file(self.soul_state(), out / SOUL_FILE, metadata={"format": "so8t-soul-v1"})
        (out / SOUL_CONFIG).write_text(json.dumps(asdict(self.config), indent=2), encoding="utf-8")
        return out

    @classmethod
    def load(cls, soul_dir: str | Path, model: nn.Module) -> SoulWrapper:
        """Restore a saved soul around ``model`` (already carrying its LoRA adapter, if one was trained).

        Raises:
            FileNotFoundError: a soul file is missing (names it).
            ValueError: the soul does not fit the model (names the tensor and both shapes) or is corrupt.
        """
        d = Path(soul_dir)
        for f in (SOUL_FILE, SOUL_CONFIG):
            if not (d / f).exists():
                raise FileNotFoundError(f"{d / f} is missing: not a soul folder (SoulWrapper.save writes it)")
        try:
            config = SoulConfig.from_json(d / SOUL_CONFIG)
            state = load_file(d / SOUL_FILE)
        except (json.JSONDecodeError, TypeError, OSError) as exc:
            raise ValueError(f"{d}: corrupt soul files ({type(exc).__name__}: {exc})") from exc
        except Exception as exc:  # safetensors raises its own error type on a damaged header
            raise ValueError(f"{d / SOUL_FILE}: corrupt ({exc})") from exc
        H = hidden_size_of(model)
        check(config.hidden_size == H, "soul hidden_size", config.hidden_size, f"model hidden size is {H} ({d})")
        wrapper = cls.build(model, config)
        wrapper.load_soul_state(state, str(d / SOUL_FILE))
        return wrapper


def fused_head_weight(W: Tensor, R: Tensor, s: Tensor | float) -> Tensor:
    """W' = W + s W R in float32, using the block structure of R.

    Args:
        W: (V, H) lm_head weight, any float dtype.
        R: (H/8, 8, 8) rotation blocks R_total = R_cmd @ R_safe.
        s: sigmoid(alpha), a scalar.
    Returns:
        (V, H) float32 W'.
    Explained in notebooks/04_fusion_and_gguf.ipynb; ``so8t_core.rl`` trains through it (notebook 07).
    """
    V, H = W.shape
    n_blocks = R.shape[0]
    check(n_blocks * 8 == H, "R.shape", tuple(R.shape), f"needs H/8 = {H // 8} blocks for lm_head width {H}")
    W32 = W.float()
    Wb = W32.reshape(V, n_blocks, 8)  # (V, blocks, 8): row v, block b, input i
    # (W R)[v, b, j] = sum_i W[v, b, i] R_b[i, j]
    WR = torch.einsum("vbi,bij->vbj", Wb, R.to(device=W.device, dtype=torch.float32))  # (V, blocks, 8)
    s32 = torch.as_tensor(s, dtype=torch.float32, device=W.device)
    return W32 + s32 * WR.reshape(V, H)  # (V, H)


def describe(wrapper: SoulWrapper) -> dict[str, Any]:
    """Trainable parameter counts of the soul and of the rest (LoRA), for tables."""
    soul = sum(p.numel() for p in wrapper.soul_parameters()) if wrapper.use_gate else 0
    other = sum(p.numel() for p in wrapper.model.parameters() if p.requires_grad)
    return {"soul_params": soul, "lora_params": other, "alpha_mode": wrapper.alpha.mode}
