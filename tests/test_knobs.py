"""One source per knob: each room's settings dataclass is built from its stage config and keeps no default of its
own for a knob the stage exposes, and the notebooks build them with ``from_stage`` instead of copying fields."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from so8t_core.config import AlphaStageConfig, QuadRLStageConfig, SafetyEvalStageConfig, SoulStageConfig, stage_fields
from so8t_core.gate.soul import SoulConfig
from so8t_core.lm.inject import InjectConfig
from so8t_core.lm.lora import LoraSettings
from so8t_core.rl.training import GRPOSettings
from so8t_core.safety.pillars import PillarSettings
from so8t_core.studies.body_study import TierB
from so8t_core.studies.head_study import TierA

ROOT = Path(__file__).resolve().parents[1]

# room dataclass -> (its stage config, how the notebook builds it)
BUILDERS: dict[type, tuple[type, Callable[[Any], Any]]] = {
    InjectConfig: (SoulStageConfig, InjectConfig.from_stage),
    SoulConfig: (SoulStageConfig, lambda c: SoulConfig.from_stage(c, 64)),
    LoraSettings: (SoulStageConfig, LoraSettings.from_stage),
    TierA: (SoulStageConfig, TierA.from_stage),
    TierB: (SoulStageConfig, TierB.from_stage),
    PillarSettings: (SafetyEvalStageConfig, PillarSettings.from_stage),
    GRPOSettings: (QuadRLStageConfig, GRPOSettings.from_stage),
}


def exposed(room: type, stage: type) -> dict[str, str]:
    """room field -> the stage field it is filled from (same name, or the room's ``STAGE_NAMES``)."""
    renames = getattr(room, "STAGE_NAMES", {})
    names = {f.name for f in dataclasses.fields(stage)}
    out = {f.name: renames.get(f.name, f.name) for f in dataclasses.fields(room)}
    return {r: s for r, s in out.items() if s in names}


def perturbed(stage: type) -> Any:
    """The stage config with every number and switch moved off its default (still valid), so a builder that
    writes a constant instead of reading the stage is caught."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(stage):
        v = f.default
        if isinstance(v, bool):
            changes[f.name] = not v
        elif isinstance(v, int):
            changes[f.name] = v + 1
        elif isinstance(v, float):
            changes[f.name] = v + 0.25
        elif isinstance(v, tuple) and v and all(isinstance(x, float) for x in v):
            # fractions stay fractions; other grids grow upwards (both stay sorted)
            changes[f.name] = (v[0] / 2, *v) if all(0 < x <= 1 for x in v) else (*v, v[-1] * 2)
    return stage(**changes)


def unfilled(room_obj: Any, stage_obj: Any) -> list[str]:
    """The room fields whose value is not the stage's."""
    pairs = exposed(type(room_obj), type(stage_obj))
    return [r for r, s in sorted(pairs.items()) if getattr(room_obj, r) != getattr(stage_obj, s)]


@pytest.mark.parametrize("room", list(BUILDERS), ids=lambda r: r.__name__)
def test_every_exposed_field_comes_from_the_stage(room: type) -> None:
    stage, build = BUILDERS[room]
    assert exposed(room, stage), f"{room.__name__} shares no field with {stage.__name__}"
    for cfg in (stage(), perturbed(stage)):
        assert unfilled(build(cfg), cfg) == []


@pytest.mark.parametrize("room", [r for r in BUILDERS if r is not SoulConfig], ids=lambda r: r.__name__)
def test_rooms_keep_no_default_for_a_knob_the_stage_exposes(room: type) -> None:
    stage, _ = BUILDERS[room]
    with_default = [
        f.name
        for f in dataclasses.fields(room)
        if f.name in exposed(room, stage)
        and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
    ]
    assert with_default == []


def test_the_soul_defaults_are_the_design_schedule_of_stage_02() -> None:
    # SoulConfig keeps defaults (tests and benches build souls no stage describes); they must be stage 02's design
    # schedule, the one place those numbers are written, not a third copy.
    pairs = exposed(SoulConfig, AlphaStageConfig)
    assert {"alpha_start", "alpha_target", "pet_max_lambda", "map"} <= set(pairs)
    design = AlphaStageConfig()
    defaults = {f.name: f.default for f in dataclasses.fields(SoulConfig)}
    assert {r: defaults[r] for r in pairs} == {r: getattr(design, s) for r, s in pairs.items()}


def test_a_builder_that_drops_a_knob_is_caught() -> None:
    cfg = perturbed(SafetyEvalStageConfig)
    dropped = dataclasses.replace(PillarSettings.from_stage(cfg), max_length=64)  # a stale constant
    assert unfilled(dropped, cfg) == ["max_length"]
    grpo = dataclasses.replace(GRPOSettings.from_stage(perturbed(QuadRLStageConfig)), learning_rate=5e-4)
    assert unfilled(grpo, perturbed(QuadRLStageConfig)) == ["learning_rate"]  # a renamed field too


def test_extra_values_may_not_override_the_stage() -> None:
    with pytest.raises(ValueError, match="steps"):
        stage_fields(InjectConfig, SoulStageConfig(), steps=3)
    assert InjectConfig.from_stage(SoulStageConfig(), keep_checkpoints=1).keep_checkpoints == 1
    assert GRPOSettings.from_stage(QuadRLStageConfig(seed=4)).seed == 4
    assert GRPOSettings.from_stage(QuadRLStageConfig(seed=4), seed=7).seed == 7


def test_every_from_stage_builder_is_in_the_table() -> None:
    classes = set()
    for path in (ROOT / "so8t_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(f, ast.FunctionDef) and f.name == "from_stage" for f in node.body
            ):
                classes.add(node.name)
    assert classes == {r.__name__ for r in BUILDERS}


def test_notebooks_build_room_settings_from_the_stage_config() -> None:
    # SoulConfig is left out: notebook 04's tied toy soul is described by differently named fields on purpose.
    names = "|".join(r.__name__ for r in BUILDERS if r is not SoulConfig)
    copied = re.compile(rf"\b({names})\(")
    hits = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                hits += [f"{path.name}: {m.group(0)}" for m in copied.finditer(cell.source)]
    assert hits == []


def test_real_tier_a_reads_the_real_rate_grid() -> None:
    from so8t_core.studies.head_study import TierA

    cfg = perturbed(SoulStageConfig)
    real = TierA.for_real_models(cfg)
    assert real.lrs == tuple(cfg.real_a_lrs)
    assert real.lrs != TierA.from_stage(cfg).lrs
    assert dataclasses.replace(real, lrs=TierA.from_stage(cfg).lrs) == TierA.from_stage(cfg)
