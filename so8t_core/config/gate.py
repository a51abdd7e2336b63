"""Stage 01's and 02's configs: the SO(8) rotation math and alpha annealing."""

from __future__ import annotations

from dataclasses import dataclass

from so8t_core.config.common import DESIGN_SCHEDULE, MAPS, StageConfig, check, require_positive


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
        require_positive(self, "n_samples", "max_norm", "n_norms", "width", "timing_width", "tokens", "timing_repeats")
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
    exp_seeds: int = 3  # runs per teacher and mode (student init and input stream); >= 3 for a verdict
    exp_init_std: float = 0.05  # spread of the student's initial generators, so seeds vary the initialisation
    exp_eval: int = 256  # held-out inputs every run is scored on (the crossed test's shared items)
    n_boot: int = 1000
    map: str = "cayley"

    def __post_init__(self) -> None:
        require_positive(self, "warmup_steps", "anneal_steps", "exp_hidden", "exp_steps", "exp_batch", "exp_lr")
        require_positive(self, "exp_seeds", "exp_eval", "n_boot")
        check(self.exp_init_std >= 0, "exp_init_std", self.exp_init_std, "must be >= 0")
        check(self.pet_max_lambda >= 0, "pet_max_lambda", self.pet_max_lambda, "must be >= 0")
        check(self.exp_hidden % 8 == 0, "exp_hidden", self.exp_hidden, "must be a multiple of 8")
        check(self.map in MAPS, "map", self.map, f"must be one of {MAPS}")
        check(self.alpha_target > self.alpha_start, "alpha_target", self.alpha_target, "must exceed alpha_start")
