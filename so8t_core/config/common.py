"""What every stage config shares: paths, the ``check`` that names a bad field, the ``StageConfig`` mixin, and
the design's gate schedules.

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

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
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
        return asdict(self)  # type: ignore[call-overload]  # a mixin: every subclass is a dataclass

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> Any:
        """The config from a notebook's ``globals()``: every field must be defined there (by the parameters cell,
        where papermill injects its values); other names are ignored. A missing field raises ``ValueError``."""
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]  # a mixin: every subclass is a dataclass
        missing = [n for n in names if n not in namespace]
        check(not missing, "parameters", missing, f"not defined in the notebook's parameters cell ({cls.__name__})")
        return cls(**{n: namespace[n] for n in names})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # a mixin: every subclass is a dataclass
        unknown = sorted(set(d) - names)
        check(not unknown, "keys", unknown, f"not fields of {cls.__name__}")
        return cls(**d)


def stage_fields(room: type, stage: Any, **extra: Any) -> dict[str, Any]:
    """The keyword arguments that build the settings dataclass ``room`` from a stage config: every field of
    ``room`` whose name (or its name in ``room.STAGE_NAMES``) is a field of ``stage`` takes the stage's value, so a
    room never keeps a second default for a knob the stage exposes.

    Args:
        room: the room's dataclass (``InjectConfig``, ``PillarSettings``, ...); an optional class attribute
            ``STAGE_NAMES`` maps a room field to the stage field of another name (``{"r": "lora_r"}``).
        stage: the stage config instance.
        **extra: values of room fields the stage does not expose.
    Returns:
        The keyword arguments of ``room``.
    Raises:
        ValueError: ``extra`` names a field the stage already sets (the stage's value is the only source).
    """
    renames = getattr(room, "STAGE_NAMES", {})
    exposed = {f.name for f in fields(stage)}
    kwargs = {}
    for f in fields(room):
        name = renames.get(f.name, f.name)
        if name in exposed:
            kwargs[f.name] = getattr(stage, name)
    clash = sorted(set(extra) & set(kwargs))
    check(not clash, "extra", clash, f"set by {type(stage).__name__}; change the stage config instead")
    return kwargs | extra


def require_positive(obj: Any, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value on ``obj`` is not > 0."""
    for n in names:
        v = getattr(obj, n)
        check(v > 0, n, v, "must be > 0")


def check_threads(obj: Any) -> None:
    """Raise ``ValueError`` unless ``obj.torch_threads`` is >= 0."""
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


STAGE_CORES_ENV = "SO8T_STAGE_CORES"


def stage_cores() -> int:
    """The cores the running stage may keep busy: ``SO8T_STAGE_CORES`` when the pipeline runs stages side by side
    (it sets it per stage), else every core."""
    raw = os.environ.get(STAGE_CORES_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else (os.cpu_count() or 1)
