"""Stage 06's and 07's configs: the safety evaluation and GRPO over the soul."""

from __future__ import annotations

from dataclasses import dataclass

from so8t_core.config.common import StageConfig, check, check_threads, require_positive


@dataclass(frozen=True)
class SafetyEvalStageConfig(StageConfig):
    """Stage 06: every safety system (baselines, probes, heads trained inside the soul and their controls) scored
    by one dev rule on the hand-written test set, and the served decision source chosen on dev."""

    seed: int = 0
    seeds: int = 3  # seeds of every trained family
    steps: int = 80  # joint training steps of each family (LM + lam * heads)
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
    # heads on real models' frozen pooled states (lm.real_models); smoke runs none
    real_models: tuple = ("smollm2-135m-instruct", "gemma3-270m")
    real_layers: tuple = (0.5, 1.0)  # depth fractions pooled (middle, last); the layer is chosen on dev
    real_train: int = 450  # generated train prompts pooled per model (seeded sample; 0 = all)
    real_dev: int = 0  # generated dev prompts pooled (0 = all: every source is chosen on the same dev rows)
    # a seeded sample of the generated dev split that every source is tuned, thresholded and chosen on (0 = all);
    # pooling dev is most of the real models' cost
    dev_max: int = 600
    real_max_length: int = 512  # tokens kept per prompt (the generated prompts are shorter: no cost)
    real_seeds: int = 5
    real_steps: int = 300  # the one recipe of every real-model family: minibatch steps, batch, weight_decay
    real_batch: int = 64
    real_eval_every: int = 25  # dev loss read every so many steps; the best state is kept (early stopping)
    real_lrs: tuple = (1e-3, 3e-3, 1e-2, 3e-2)  # learning-rate grid, extended by choose_interior until interior
    real_min_effect: float = 0.02  # smallest AUPRC difference that counts in the primary family

    def __post_init__(self) -> None:
        object.__setattr__(self, "real_models", tuple(str(m) for m in self.real_models))
        for name in ("real_layers", "real_lrs"):
            object.__setattr__(self, name, tuple(float(a) for a in getattr(self, name)))
        check(bool(self.real_layers) and all(0 < f <= 1 for f in self.real_layers), "real_layers", self.real_layers,
              "need depth fractions in (0, 1]")  # fmt: skip
        check(len(self.real_lrs) >= 2 and min(self.real_lrs) > 0, "real_lrs", self.real_lrs, "need >= 2 rates > 0")
        check(self.real_seeds >= 2, "real_seeds", self.real_seeds, "need at least 2 seeds for an interval")
        check(self.real_train >= 0 and self.real_dev >= 0, "real_train", (self.real_train, self.real_dev), ">= 0")
        check(self.dev_max >= 0, "dev_max", self.dev_max, "must be >= 0 (0 = the whole dev split)")
        check(self.real_min_effect >= 0, "real_min_effect", self.real_min_effect, "must be >= 0")
        require_positive(self, "real_max_length", "real_steps", "real_batch", "real_eval_every")
        require_positive(
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
        check_threads(self)
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
    steps: int = 10  # GRPO steps per run
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
        require_positive(
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
        check_threads(self)
        check(self.num_generations >= 2, "num_generations", self.num_generations, "must be >= 2 (a group)")
        for name in ("w_structure", "w_consistency", "w_correctness", "w_stability"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        for name in ("dev_prompts", "test_prompts", "n_examples"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0 (0: all / none)")
