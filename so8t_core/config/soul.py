"""Stage 03's and 04's configs: soul injection, and fusing the soul into the base with its GGUF export."""

from __future__ import annotations

from dataclasses import dataclass

from so8t_core.config.common import (
    GOLDEN_RATIO,
    MAPS,
    SHORT_SCHEDULE,
    StageConfig,
    check,
    check_threads,
    require_positive,
)


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
    a_steps: int = 45  # tier A: steps, minibatch of answer positions, test seeds 1..a_seeds, dev learning rates
    a_batch: int = 128
    a_seeds: int = 5
    a_lrs: tuple = (3e-3, 1e-2, 3e-2)
    b_steps: int = 30  # tier B: steps, items per step, test seeds 1..b_seeds, dev learning rates
    b_batch: int = 8
    b_seeds: int = 3
    b_lrs: tuple = (1e-3, 3e-3, 1e-2)
    alpha_grid: tuple = (0.0, 1.0, 1.5, GOLDEN_RATIO, 1.75, 3.0)
    retention_docs: int = 20  # held-out pretraining documents for retention (tier B)
    n_boot: int = 1000
    real_models: tuple = ("smollm2-135m-instruct",)  # tier A on these real models' cached states; () skips it
    real_n_train: int = 160  # items per real task and split (chat prompts through the real model once)
    real_n_dev: int = 64
    real_n_test: int = 80
    # real tier A's dev rates, a ratio of about 3 so the top can extend to 0.9 (tier A never tries a rate >= 1):
    # on SmolLM2's head OFT and LoRA choose about 1e-2, the soul, BOFT and the temperature 1e-1 or more
    real_a_lrs: tuple = (0.01, 0.03, 0.1, 0.3)
    torch_threads: int = 0  # 0 keeps torch's default (all cores); see Stage

    def __post_init__(self) -> None:
        for name in ("alpha_targets", "a_lrs", "b_lrs", "alpha_grid", "real_a_lrs"):
            object.__setattr__(self, name, tuple(float(a) for a in getattr(self, name)))
        object.__setattr__(self, "real_models", tuple(str(m) for m in self.real_models))
        require_positive(self, "real_n_train", "real_n_dev", "real_n_test")
        require_positive(
            self, "steps", "batch_size", "seq_len", "lr", "soul_lr", "grad_accum", "lora_r", "lora_alpha", "eval_docs"
        )
        require_positive(self, "n_facts", "n_train", "n_dev", "n_test", "a_steps", "a_batch", "b_steps", "b_batch")
        require_positive(self, "retention_docs", "n_boot", "fact_min_count")
        check_threads(self)
        for name in ("a_seeds", "b_seeds"):
            check(getattr(self, name) >= 2, name, getattr(self, name), "need at least 2 seeds for an interval")
        for name in ("a_lrs", "b_lrs", "real_a_lrs"):
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
    real_models: tuple = ("smollm2-135m-instruct",)  # real models whose notebook-03 soul is fused; () skips
    real_gguf_types: tuple = ("f32", "f16", "q8_0")
    real_keep_gguf: tuple = ("q8_0",)  # GGUF files kept after parity (an f32 file of a 135M model is ~600 MB)
    real_seq_len: int = 128
    real_check_docs: int = 4  # held-out documents (+ real_check_chats chat turns) for the fusion checks
    real_check_chats: int = 2
    real_eval_docs: int = 8  # held-out documents (+ real_eval_chats chat turns) for llama.cpp parity
    real_eval_chats: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "gguf_types", tuple(self.gguf_types))
        for name in ("real_models", "real_gguf_types", "real_keep_gguf"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        bad = [t for t in self.real_gguf_types if t not in GGUF_TYPE_NAMES]
        check(
            not bad and "f32" in self.real_gguf_types,
            "real_gguf_types",
            self.real_gguf_types,
            f"must include f32 (the parity reference) and be among {GGUF_TYPE_NAMES}",
        )
        check(
            set(self.real_keep_gguf) <= set(self.real_gguf_types),
            "real_keep_gguf",
            self.real_keep_gguf,
            "must be among real_gguf_types",
        )
        check(self.real_seq_len >= 8, "real_seq_len", self.real_seq_len, "must be >= 8")
        require_positive(self, "real_check_docs", "real_eval_docs")
        check(
            self.real_check_chats >= 0 and self.real_eval_chats >= 0,
            "real_eval_chats",
            self.real_eval_chats,
            "chat turn counts must be >= 0",
        )
        require_positive(
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
