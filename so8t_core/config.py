"""Paths and one frozen, validated dataclass per notebook stage.

Paths are resolved from the package root, never from the current directory, so a notebook run by papermill
from ``notebooks/`` and a test run from the repo root agree on where artifacts live. ``SO8T_ARTIFACTS`` and
``SO8T_REPORTS`` move the output folders (the tests use this to stay out of the user's artifacts).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PARAMS_DIR = REPO_ROOT / "params"
DATA_DIR = REPO_ROOT / "data"


def artifacts_dir() -> Path:
    """Root of the stage outputs (``artifacts/`` unless ``SO8T_ARTIFACTS`` says otherwise)."""
    return Path(os.environ.get("SO8T_ARTIFACTS", REPO_ROOT / "artifacts")).resolve()


def reports_dir() -> Path:
    """Root of the rendered reports (``reports/`` unless ``SO8T_REPORTS`` says otherwise)."""
    return Path(os.environ.get("SO8T_REPORTS", REPO_ROOT / "reports")).resolve()


def check(ok: bool, field: str, value: Any, why: str) -> None:
    """Raise ``ValueError`` naming ``field`` and its bad ``value`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{field}={value!r}: {why}")


class StageConfig:
    """Mixin for the frozen stage dataclasses: JSON round trip and a shared name check."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> Any:
        """The config from a notebook's ``globals()``: every field must be defined there (by the parameters cell,
        where papermill injects its values); other names are ignored. A missing field raises ``ValueError``."""
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        missing = [n for n in names if n not in namespace]
        check(not missing, "parameters", missing, f"not defined in the notebook's parameters cell ({cls.__name__})")
        return cls(**{n: namespace[n] for n in names})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        check(not unknown, "keys", unknown, f"not fields of {cls.__name__}")
        return cls(**d)


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v > 0, n, v, "must be > 0")


def _threads(obj: Any) -> None:
    check(obj.torch_threads >= 0, "torch_threads", obj.torch_threads, "must be >= 0 (0 = torch's default)")


MAPS = ("cayley", "exp")
GOLDEN_RATIO = (1 + math.sqrt(5)) / 2  # the design's alpha target, phi


@dataclass(frozen=True)
class GateSchedule:
    """The alpha and PET schedules of the design: the one place their default numbers are written.

    alpha: ``alpha_start`` for ``alpha_warmup`` steps, then linear to ``alpha_target`` over ``alpha_anneal``.
    PET: lambda 0 -> ``pet_max_lambda`` over ``pet_warmup``, held for ``pet_main``, back to 0 over ``pet_anneal``.
    """

    alpha_start: float = -5.0
    alpha_target: float = GOLDEN_RATIO
    alpha_warmup: int = 50
    alpha_anneal: int = 400
    pet_max_lambda: float = 0.1
    pet_warmup: int = 100
    pet_main: int = 1000
    pet_anneal: int = 200


DESIGN_SCHEDULE = GateSchedule()
# Notebook 03's runs are 300 steps: the design schedule compressed so the gate opens and PET ends within the run.
SHORT_SCHEDULE = GateSchedule(alpha_warmup=30, alpha_anneal=150, pet_warmup=30, pet_main=200, pet_anneal=70)


COMPUTE_DTYPES = ("bfloat16", "float16")
MIN_VOCAB = 338  # equals base_model.MIN_VOCAB (bytes + special tokens + room); kept literal to avoid importing torch


@dataclass(frozen=True)
class BaseModelConfig(StageConfig):
    """Stage 00: corpus, tokenizer and pretraining of the embedded default base model, or a real checkpoint.

    ``base_model = ""`` means the embedded default (trained here); anything else is a model folder or a hub id
    that is loaded instead (tokenizer training and pretraining are skipped). ``corpus_files`` (comma-separated)
    replaces the generated corpus by the user's own text files.
    """

    seed: int = 0
    n_docs: int = 30000
    heldout_fraction: float = 0.1
    vocab_size: int = 5000
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 50
    eval_batch_size: int = 32
    eval_every: int = 100  # held-out perplexity every this many steps (the curve); 0 = only before and after
    gen_tokens: int = 96
    probe: bool = True  # the precondition check: a linear probe on the base's pooled states vs baselines
    probe_batch_size: int = 64
    probe_max_length: int = 96
    probe_layers: str = "0,-1"  # hidden states pooled side by side (0: token embeddings, -1: after the final norm)
    probe_max_prompts: int = 0  # > 0: a seeded sample of at most this many generated train / dev prompts each
    max_over_refusal: float = 0.05  # the dev rule every safety system is thresholded by
    n_boot: int = 1000  # bootstrap resamples of translation pairs
    base_model: str = ""
    corpus_files: str = ""
    load_in_4bit: bool = False
    compute_dtype: str = "bfloat16"
    torch_threads: int = 0  # 0 keeps torch's default (all cores); see Stage

    def __post_init__(self) -> None:
        _positive(self, "n_docs", "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        _positive(
            self,
            "steps",
            "batch_size",
            "lr",
            "eval_batch_size",
            "gen_tokens",
            "probe_batch_size",
            "probe_max_length",
            "n_boot",
        )
        check(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0 (0: no curve)")
        check(self.probe_max_prompts >= 0, "probe_max_prompts", self.probe_max_prompts, "must be >= 0 (0: all)")
        try:
            layers = self.probe_layer_ids
        except ValueError:
            layers = ()
        check(len(layers) > 0, "probe_layers", self.probe_layers, "comma-separated hidden-state indices, e.g. '0,-1'")
        check(0.0 <= self.max_over_refusal <= 1.0, "max_over_refusal", self.max_over_refusal, "must be in [0, 1]")
        check(self.vocab_size >= MIN_VOCAB, "vocab_size", self.vocab_size, f"must be >= {MIN_VOCAB}")
        check(0.0 < self.heldout_fraction < 1.0, "heldout_fraction", self.heldout_fraction, "must be in (0, 1)")
        check(self.hidden_size % 8 == 0, "hidden_size", self.hidden_size, "must be a multiple of 8 (SO(8) blocks)")
        check(self.hidden_size % self.num_heads == 0, "num_heads", self.num_heads, "must divide hidden_size")
        check((self.hidden_size // self.num_heads) % 2 == 0, "num_heads", self.num_heads, "head size must be even")
        check(self.seq_len >= 2, "seq_len", self.seq_len, "must be >= 2")
        check(0 <= self.warmup_steps < self.steps, "warmup_steps", self.warmup_steps, "must be in [0, steps)")
        _threads(self)
        check(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", self.compute_dtype, f"one of {COMPUTE_DTYPES}")
        check(
            not (self.load_in_4bit and not self.base_model),
            "load_in_4bit",
            self.load_in_4bit,
            "applies to a real checkpoint (set base_model); the embedded default is trained in full precision",
        )

    @property
    def embedded(self) -> bool:
        """True when the stage trains the embedded default model instead of loading ``base_model``."""
        return not self.base_model.strip()

    @property
    def probe_layer_ids(self) -> tuple[int, ...]:
        """``probe_layers`` as integers (``"0,-1"`` -> ``(0, -1)``)."""
        return tuple(int(x) for x in self.probe_layers.split(",") if x.strip())


@dataclass(frozen=True)
class RotationMathConfig(StageConfig):
    """Stage 01: the SO(8) rotation math notebook."""

    seed: int = 0
    n_samples: int = 64  # random generators per norm in the accuracy sweep
    max_norm: float = 10.0
    n_norms: int = 12
    width: int = 3072  # hidden size of the parameter comparison (Phi-3.5-mini's)
    timing_width: int = 1024  # hidden size of the timing comparison (the dense gate is slow on CPU)
    tokens: int = 256  # tokens in the timing batch
    timing_repeats: int = 5

    def __post_init__(self) -> None:
        _positive(self, "n_samples", "max_norm", "n_norms", "width", "timing_width", "tokens", "timing_repeats")
        for name in ("width", "timing_width"):
            check(getattr(self, name) % 8 == 0, name, getattr(self, name), "must be a multiple of 8")


@dataclass(frozen=True)
class AlphaStageConfig(StageConfig):
    """Stage 02: alpha annealing, the PET schedule and the learned-vs-scheduled experiment."""

    seed: int = 0
    alpha_start: float = DESIGN_SCHEDULE.alpha_start
    alpha_target: float = DESIGN_SCHEDULE.alpha_target
    warmup_steps: int = DESIGN_SCHEDULE.alpha_warmup
    anneal_steps: int = DESIGN_SCHEDULE.alpha_anneal
    pet_max_lambda: float = DESIGN_SCHEDULE.pet_max_lambda
    pet_warmup: int = DESIGN_SCHEDULE.pet_warmup
    pet_main: int = DESIGN_SCHEDULE.pet_main
    pet_anneal: int = DESIGN_SCHEDULE.pet_anneal
    exp_hidden: int = 64  # synthetic experiment: width of the hidden state
    exp_steps: int = 600
    exp_batch: int = 128
    exp_lr: float = 0.05
    map: str = "cayley"

    def __post_init__(self) -> None:
        _positive(self, "warmup_steps", "anneal_steps", "exp_hidden", "exp_steps", "exp_batch", "exp_lr")
        check(self.pet_max_lambda >= 0, "pet_max_lambda", self.pet_max_lambda, "must be >= 0")
        check(self.exp_hidden % 8 == 0, "exp_hidden", self.exp_hidden, "must be a multiple of 8")
        check(self.map in MAPS, "map", self.map, f"must be one of {MAPS}")
        check(self.alpha_target > self.alpha_start, "alpha_target", self.alpha_target, "must exceed alpha_start")


@dataclass(frozen=True)
class SoulStageConfig(StageConfig):
    """Stage 03: soul injection on notebook 00's base, with its ablations."""

    seed: int = 0
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 2e-3
    soul_lr: float = 2e-2
    grad_accum: int = 1
    grad_checkpointing: bool = False
    checkpoint_every: int = 100
    map: str = "cayley"
    init_std: float = 0.0
    alpha_start: float = SHORT_SCHEDULE.alpha_start
    alpha_target: float = SHORT_SCHEDULE.alpha_target
    alpha_warmup: int = SHORT_SCHEDULE.alpha_warmup
    alpha_anneal: int = SHORT_SCHEDULE.alpha_anneal
    alpha_targets: tuple = (0.0, 1.0, GOLDEN_RATIO, 3.0)
    ortho_weight: float = 1.0
    pet_kind: str = "l2"
    pet_max_lambda: float = SHORT_SCHEDULE.pet_max_lambda
    pet_warmup: int = SHORT_SCHEDULE.pet_warmup
    pet_main: int = SHORT_SCHEDULE.pet_main
    pet_anneal: int = SHORT_SCHEDULE.pet_anneal
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    eval_docs: int = 200
    n_facts: int = 100  # known facts the remap and format tasks ask about
    fact_min_count: int = 2  # a fact is known when notebook 00's corpus states it this often
    n_train: int = 2000
    n_dev: int = 400
    n_test: int = 400
    a_steps: int = 60  # tier A: steps, minibatch of answer positions, test seeds 1..a_seeds, dev learning rates
    a_batch: int = 128
    a_seeds: int = 5
    a_lrs: tuple = (3e-3, 1e-2, 3e-2)
    b_steps: int = 40  # tier B: steps, items per step, test seeds 1..b_seeds, dev learning rates
    b_batch: int = 8
    b_seeds: int = 5
    b_lrs: tuple = (1e-3, 3e-3, 1e-2)
    alpha_grid: tuple = (-2.0, 0.0, 1.0, 1.5, GOLDEN_RATIO, 1.75, 2.0, 3.0)
    retention_docs: int = 40  # held-out pretraining documents for retention (tier B)
    n_boot: int = 1000
    torch_threads: int = 0  # 0 keeps torch's default (all cores); see Stage

    SOUL_FIELDS = (
        "map",
        "init_std",
        "alpha_start",
        "alpha_target",
        "alpha_warmup",
        "alpha_anneal",
        "ortho_weight",
        "pet_kind",
        "pet_max_lambda",
        "pet_warmup",
        "pet_main",
        "pet_anneal",
    )

    def soul_fields(self) -> dict:
        """The fields this stage passes on to ``so8t_core.gate.soul.SoulConfig`` (same names there)."""
        return {k: getattr(self, k) for k in self.SOUL_FIELDS}

    def __post_init__(self) -> None:
        for name in ("alpha_targets", "a_lrs", "b_lrs", "alpha_grid"):
            object.__setattr__(self, name, tuple(float(a) for a in getattr(self, name)))
        _positive(
            self, "steps", "batch_size", "seq_len", "lr", "soul_lr", "grad_accum", "lora_r", "lora_alpha", "eval_docs"
        )
        _positive(self, "n_facts", "n_train", "n_dev", "n_test", "a_steps", "a_batch", "b_steps", "b_batch")
        _positive(self, "retention_docs", "n_boot", "fact_min_count")
        _threads(self)
        for name in ("a_seeds", "b_seeds"):
            check(getattr(self, name) >= 2, name, getattr(self, name), "need at least 2 seeds for an interval")
        for name in ("a_lrs", "b_lrs"):
            rates = getattr(self, name)
            check(len(rates) > 0 and min(rates) > 0, name, rates, "need at least one rate, all > 0")
        check(len(set(self.alpha_grid)) >= 3, "alpha_grid", self.alpha_grid, "need 3 distinct values for a parabola")
        check(self.map in MAPS, "map", self.map, f"must be one of {MAPS}")
        check(self.seq_len >= 8, "seq_len", self.seq_len, "must be >= 8")
        check(self.alpha_target > self.alpha_start, "alpha_target", self.alpha_target, "must exceed alpha_start")
        check(
            all(a > self.alpha_start for a in self.alpha_targets),
            "alpha_targets",
            self.alpha_targets,
            "each must exceed alpha_start",
        )


@dataclass(frozen=True)
class VisualStageConfig(StageConfig):
    """Stage 05: vision tower pretraining, visual adapter + fusion training, and the held-out comparison."""

    seed: int = 0
    vision_tower: str = ""  # "" = the embedded tiny SigLIP pretrained in the notebook; else a folder or cached hub id
    image_size: int = 32
    patch_size: int = 8
    tower_hidden: int = 64
    tower_layers: int = 2
    tower_heads: int = 4
    render_size: int = 64
    n_train: int = 1500
    n_heldout: int = 200
    word_fraction: float = 0.3
    pretrain_steps: int = 600
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    adapter_steps: int = 450
    adapter_batch: int = 32
    adapter_lr: float = 1e-2
    map: str = "cayley"
    fusion_heads: int = 4
    init_visual_weight: float = 0.1
    ocr_lang: str = "jpn+eng"
    run_ocr: bool = True
    run_ablations: bool = True
    n_examples: int = 8
    torch_threads: int = 0  # 0 keeps torch's default (all cores); see Stage

    def __post_init__(self) -> None:
        _positive(
            self,
            "image_size",
            "patch_size",
            "tower_hidden",
            "tower_layers",
            "tower_heads",
            "n_train",
            "n_heldout",
            "pretrain_batch",
            "pretrain_lr",
            "adapter_steps",
            "adapter_batch",
            "adapter_lr",
            "fusion_heads",
        )
        check(self.pretrain_steps >= 0, "pretrain_steps", self.pretrain_steps, "must be >= 0")
        check(self.n_examples >= 0, "n_examples", self.n_examples, "must be >= 0")
        check(
            self.image_size % self.patch_size == 0,
            "image_size",
            self.image_size,
            f"must be a multiple of patch_size={self.patch_size}",
        )
        check(
            self.tower_hidden % self.tower_heads == 0,
            "tower_heads",
            self.tower_heads,
            f"must divide tower_hidden={self.tower_hidden}",
        )
        check(self.render_size >= 32, "render_size", self.render_size, "must be >= 32 pixels")
        check(0.0 <= self.word_fraction <= 1.0, "word_fraction", self.word_fraction, "must be in [0, 1]")
        check(0.0 < self.init_visual_weight < 1.0, "init_visual_weight", self.init_visual_weight, "must be in (0, 1)")
        check(self.map in MAPS, "map", self.map, f"must be one of {MAPS}")
        _threads(self)


GGUF_TYPE_NAMES = ("f32", "f16", "q8_0", "q4_k_m")  # equals gguf.GGUF_TYPES (kept literal: no torch import here)


@dataclass(frozen=True)
class FusionStageConfig(StageConfig):
    """Stage 04: fuse LoRA and the soul into the base, export GGUF, check parity and speed, and the tied case."""

    seed: int = 0
    seq_len: int = 128  # tokens per held-out document (also llama.cpp's context)
    check_docs: int = 16  # held-out documents for the fused-vs-wrapper check
    eval_docs: int = 100  # held-out documents for GGUF parity and perplexity
    gguf_types: tuple = GGUF_TYPE_NAMES
    latency_type: str = "f32"  # GGUF type of the llama.cpp speed comparison
    latency_prompt: int = 32
    latency_new_tokens: int = 64
    latency_repeats: int = 7
    n_threads: int = 1  # llama.cpp threads; 0 = its default (see latency.llama_cpp_speed for why 1)
    tied_hidden: int = 64
    tied_layers: int = 2
    tied_heads: int = 4
    tied_init_range: float = 0.2  # large enough that logits are O(1) and a wrong fusion shows
    tied_soul_std: float = 0.3
    tied_alpha: float = GOLDEN_RATIO

    def __post_init__(self) -> None:
        object.__setattr__(self, "gguf_types", tuple(self.gguf_types))
        _positive(
            self,
            "check_docs",
            "eval_docs",
            "latency_prompt",
            "latency_new_tokens",
            "latency_repeats",
            "tied_hidden",
            "tied_layers",
            "tied_heads",
            "tied_init_range",
        )
        check(self.seq_len >= 8, "seq_len", self.seq_len, "must be >= 8")
        check(
            self.latency_prompt + self.latency_new_tokens <= 512,
            "latency_new_tokens",
            self.latency_new_tokens,
            "prompt + new tokens must fit the 512-token context",
        )
        unknown = [t for t in self.gguf_types if t not in GGUF_TYPE_NAMES]
        check(bool(self.gguf_types) and not unknown, "gguf_types", self.gguf_types, f"each one of {GGUF_TYPE_NAMES}")
        check("f32" in self.gguf_types, "gguf_types", self.gguf_types, "must include f32 (the parity reference)")
        check(self.latency_type in self.gguf_types, "latency_type", self.latency_type, "must be one of gguf_types")
        check(self.n_threads >= 0, "n_threads", self.n_threads, "must be >= 0 (0: llama.cpp's default)")
        check(self.tied_hidden % 8 == 0, "tied_hidden", self.tied_hidden, "must be a multiple of 8 (SO(8) blocks)")
        check(self.tied_soul_std >= 0, "tied_soul_std", self.tied_soul_std, "must be >= 0")


@dataclass(frozen=True)
class SafetyEvalStageConfig(StageConfig):
    """Stage 06: every safety system (baselines, probes, heads trained inside the soul and their controls) scored
    by one dev rule on the hand-written test set, and the served decision source chosen on dev."""

    seed: int = 0
    seeds: int = 3  # seeds of every trained family
    steps: int = 100  # joint training steps of each family (LM + lam * heads)
    batch_size: int = 32
    lr: float = 5e-3  # LoRA / OFT
    soul_lr: float = 2e-2
    head_lr: float = 1e-2
    lam: float = 1.0  # weight of the head losses against the LM loss
    alpha: float = 0.0  # fixed gate logit of the soul families (sigmoid(0) = 0.5)
    head_steps: int = 300  # full-batch AdamW steps of the heads on frozen models (probes)
    weight_decay: float = 1e-2
    max_over_refusal: float = 0.05  # the dev rule: cap on dev over-refusal
    max_trap_refused: float = 0.10  # the verdict's cap on refused ALLOW traps (test)
    max_length: int = 512  # tokens kept per prompt (the server pools with the same cut)
    batch_eval: int = 64  # prompts per forward pass when pooling
    n_boot: int = 500  # bootstrap resamples of translation pairs
    examples_per_label: int = 2  # test prompts per gold label answered with respond()
    max_new_tokens: int = 96
    # 0 keeps torch's default. The embedded model's matrices are too small to split across threads, and on a busy
    # machine extra threads only wait for each other; a real checkpoint on CPU wants 0.
    torch_threads: int = 1

    def __post_init__(self) -> None:
        _positive(
            self,
            "seeds",
            "steps",
            "batch_size",
            "lr",
            "soul_lr",
            "head_lr",
            "head_steps",
            "max_length",
            "batch_eval",
            "n_boot",
            "examples_per_label",
            "max_new_tokens",
        )
        _threads(self)
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.lam >= 0, "lam", self.lam, "must be >= 0")
        for name in ("max_over_refusal", "max_trap_refused"):
            check(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "must be in [0, 1]")


@dataclass(frozen=True)
class QuadRLStageConfig(StageConfig):
    """Stage 07: GRPO (TRL) over notebook 03's soul-injected model with rule-based rewards, soul frozen vs trained,
    measured before/after on the generated dev split and the hand-written test set."""

    seed: int = 0
    seeds: int = 3  # GRPO runs per arm
    steps: int = 17  # GRPO steps per run (3 seeds x 17 keep about 50 per arm)
    num_generations: int = 8  # completions per prompt (the group)
    prompts_per_step: int = 2
    max_completion_length: int = 96
    lr: float = 5e-4  # LoRA
    soul_lr: float = 5e-3  # rotation generators and alpha (the soul_trained arm)
    temperature: float = 1.0
    w_structure: float = 1.0
    w_consistency: float = 1.0
    w_correctness: float = 2.0
    w_stability: float = 0.1
    dev_prompts: int = 64  # generated dev prompts evaluated (whole translation pairs); 0 = all
    test_prompts: int = 0  # hand-written test prompts evaluated (whole pairs); 0 = all 330
    eval_max_new_tokens: int = 96
    eval_batch: int = 64
    n_boot: int = 500  # bootstrap resamples of translation pairs
    n_examples: int = 3  # highest- and lowest-reward completions shown
    load_in_4bit: bool = False  # a real checkpoint on a GPU: notebook 03's soul trained on a 4-bit base
    # The embedded model's matrices are too small to split across threads (as in stage 06); a real one wants 0.
    torch_threads: int = 1

    def reward_weights(self) -> tuple[float, float, float, float]:
        """Weights of structure, consistency, correctness, stability (``rl.training.REWARDS`` order)."""
        return (self.w_structure, self.w_consistency, self.w_correctness, self.w_stability)

    def __post_init__(self) -> None:
        _positive(
            self,
            "seeds",
            "steps",
            "prompts_per_step",
            "max_completion_length",
            "lr",
            "soul_lr",
            "temperature",
            "eval_max_new_tokens",
            "eval_batch",
            "n_boot",
        )
        _threads(self)
        check(self.num_generations >= 2, "num_generations", self.num_generations, "must be >= 2 (a group)")
        for name in ("w_structure", "w_consistency", "w_correctness", "w_stability"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        for name in ("dev_prompts", "test_prompts", "n_examples"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0 (0: all / none)")
