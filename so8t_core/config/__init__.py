"""Paths and one frozen, validated dataclass per notebook stage.

``common`` holds what every stage shares (paths, ``check``, the ``StageConfig`` mixin, the gate schedules); one
module per stage or pair of stages holds their configs. Everything is re-exported here, so
``from so8t_core.config import SoulStageConfig`` names the one place a knob's default is written. The rooms'
own settings (``InjectConfig``, ``PillarSettings``, ``GRPOSettings``, ...) are built from these with their
``from_stage`` class methods and carry no second default for a knob a stage exposes.
"""

from so8t_core.config.base_model import BaseModelConfig
from so8t_core.config.common import (
    COMPUTE_DTYPES,
    DATA_DIR,
    DESIGN_SCHEDULE,
    GOLDEN_RATIO,
    MAPS,
    MIN_VOCAB,
    NOTEBOOKS_DIR,
    PACKAGE_ROOT,
    PARAMS_DIR,
    REPO_ROOT,
    SHORT_SCHEDULE,
    STAGE_CORES_ENV,
    GateSchedule,
    StageConfig,
    artifacts_dir,
    check,
    check_threads,
    reports_dir,
    require_positive,
    stage_cores,
    stage_fields,
)
from so8t_core.config.evaluation import QuadRLStageConfig, SafetyEvalStageConfig
from so8t_core.config.gate import AlphaStageConfig, RotationMathConfig
from so8t_core.config.soul import GGUF_TYPE_NAMES, FusionStageConfig, SoulStageConfig
from so8t_core.config.visual import VisualStageConfig

__all__ = [
    "COMPUTE_DTYPES",
    "DATA_DIR",
    "DESIGN_SCHEDULE",
    "GGUF_TYPE_NAMES",
    "GOLDEN_RATIO",
    "MAPS",
    "MIN_VOCAB",
    "NOTEBOOKS_DIR",
    "PACKAGE_ROOT",
    "PARAMS_DIR",
    "REPO_ROOT",
    "SHORT_SCHEDULE",
    "STAGE_CORES_ENV",
    "AlphaStageConfig",
    "BaseModelConfig",
    "FusionStageConfig",
    "GateSchedule",
    "QuadRLStageConfig",
    "RotationMathConfig",
    "SafetyEvalStageConfig",
    "SoulStageConfig",
    "StageConfig",
    "VisualStageConfig",
    "artifacts_dir",
    "check",
    "check_threads",
    "reports_dir",
    "require_positive",
    "stage_cores",
    "stage_fields",
]
