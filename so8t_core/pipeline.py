"""Run the notebooks in order with papermill, render each to self-contained HTML, and index the results.

    python -m so8t_core.pipeline [--profile default|smoke|gpu] [--only 01,02] [-p key=value ...]

A profile is ``params/<profile>.yaml``: a mapping from stage name (the notebook's stem) to parameter overrides.
``-p key=value`` overrides ``key`` in every selected notebook that declares it; ``-p 03.key=value`` only in
stage 03. Values are parsed as YAML (``-p steps=10`` is an int). Names a notebook does not declare in its
``parameters`` cell are refused before anything runs. The first failing stage stops the run (later stages read
its artifacts); the index still shows what ran, and the process exits non-zero naming the notebook and cell.
While a cell runs longer than ``--heartbeat`` seconds, one line at a time says which cell and how far its training
loop is (``so8t_core.progress``). Reports and the index are drawn by ``so8t_core.report``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from so8t_core import report
from so8t_core.artifacts import write_json_atomic
from so8t_core.config import NOTEBOOKS_DIR, PARAMS_DIR, artifacts_dir, reports_dir
from so8t_core.progress import DEFAULT_INTERVAL

STAGE_RE = re.compile(r"^(\d\d)_[a-z0-9_]+$")
KERNEL = "so8t"


@dataclass
class StageRun:
    """What happened to one stage in a pipeline run."""

    stage: str
    params: dict[str, Any]
    status: str = "pending"  # pending | ok | failed | skipped
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def discover(notebooks_dir: Path = NOTEBOOKS_DIR) -> dict[str, Path]:
    """Stage name -> notebook path for every ``NN_name.ipynb``, in order."""
    found = {p.stem: p for p in sorted(notebooks_dir.glob("*.ipynb")) if STAGE_RE.match(p.stem)}
    return dict(sorted(found.items()))


def profiles(params_dir: Path = PARAMS_DIR) -> list[str]:
    return sorted(p.stem for p in params_dir.glob("*.yaml"))


def load_profile(name: str, params_dir: Path = PARAMS_DIR) -> dict[str, dict[str, Any]]:
    """Stage -> overrides from ``params/<name>.yaml``; an unknown profile names the ones that exist."""
    path = params_dir / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"profile={name!r}: no {path.relative_to(params_dir.parent)}; known: {profiles(params_dir)}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of stage name -> {{parameter: value}}")
    return data


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """Names (and default source text) in the notebook's cell tagged ``parameters``."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def select(stages: dict[str, Path], only: str | None) -> dict[str, Path]:
    """Keep the stages named by ``--only`` (``"01,02"`` or full names), in pipeline order."""
    if not only:
        return stages
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    by_number = {s[:2]: s for s in stages}
    chosen = set()
    for w in wanted:
        name = by_number.get(w, w if w in stages else None)
        if name is None:
            raise ValueError(f"--only {w!r}: no such stage; available: {', '.join(stages)}")
        chosen.add(name)
    return {s: p for s, p in stages.items() if s in chosen}


def parse_overrides(items: list[str]) -> list[tuple[str | None, str, Any]]:
    """``["steps=10", "03.lr=1e-3"]`` -> ``[(None, "steps", 10), ("03", "lr", 0.001)]``."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"-p {item!r}: expected key=value")
        stage, _, name = key.rpartition(".")
        if not name.isidentifier():
            raise ValueError(f"-p {item!r}: {name!r} is not a parameter name")
        value = yaml.safe_load(raw) if raw else ""
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", raw, re.I):
            value = float(raw)  # YAML 1.1 reads "1e-3" as a string
        out.append((stage or None, name, value))
    return out


def plan(profile: str, only: str | None = None, overrides: Sequence[str] = ()) -> list[tuple[str, Path, dict]]:
    """Resolve stages and their parameters; every name is checked against the notebook's declarations."""
    stages = select(discover(), only)
    prof = load_profile(profile)
    unknown = sorted(set(prof) - set(discover()))
    if unknown:
        raise ValueError(f"params/{profile}.yaml names unknown stages {unknown}")
    declared = {s: declared_parameters(p) for s, p in stages.items()}
    params = {s: dict(prof.get(s, {})) for s in stages}
    for s in stages:
        bad = sorted(set(params[s]) - set(declared[s]))
        if bad:
            raise ValueError(f"params/{profile}.yaml: {s} does not declare {bad}; it declares {sorted(declared[s])}")
    for stage_key, name, value in parse_overrides(list(overrides)):
        targets = [s for s in stages if stage_key in (None, s[:2], s) and name in declared[s]]
        if not targets:
            where = f"stage {stage_key}" if stage_key else "any selected notebook"
            raise ValueError(f"-p {name}: not a parameter of {where}")
        for s in targets:
            params[s][name] = value
    return [(s, p, params[s]) for s, p in stages.items()]


def _kernel_name() -> str:
    from jupyter_client.kernelspec import find_kernel_specs

    if KERNEL in find_kernel_specs():
        return KERNEL
    print(f"note: Jupyter kernel {KERNEL!r} not installed (make setup installs it); using python3", file=sys.stderr)
    return "python3"


def _describe_failure(stage: str, exc: Exception) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return (
            f"notebooks/{stage}.ipynb failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
            f"{exc.ename}: {exc.evalue}"
        )
    return f"notebooks/{stage}.ipynb failed: {type(exc).__name__}: {exc}"


def run_stage(
    stage: str, notebook: Path, params: dict[str, Any], kernel: str, heartbeat: float = DEFAULT_INTERVAL
) -> StageRun:
    """Execute one notebook into ``reports/`` and render it; never raises for a failing notebook.

    Args:
        stage: the stage name.
        notebook: its notebook.
        params: papermill parameters.
        kernel: the Jupyter kernel to run it with.
        heartbeat: seconds between progress lines inside a long cell; 0 for none.
    Returns:
        What happened.
    """
    import papermill

    from so8t_core import progress

    run = StageRun(stage, params)
    rep = reports_dir()
    rep.mkdir(parents=True, exist_ok=True)
    executed = rep / f"{stage}.ipynb"
    t0 = time.time()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=params,
            kernel_name=kernel,
            cwd=str(notebook.parent),
            progress_bar=True,
            **(
                {"engine_name": progress.engine(), "heartbeat_label": stage, "heartbeat_seconds": heartbeat}
                if heartbeat
                else {}
            ),
        )
        run.status = "ok"
    except Exception as exc:  # the notebook's own error, reported with its cell
        run.status, run.error = "failed", _describe_failure(stage, exc)
    run.seconds = round(time.time() - t0, 2)
    if executed.exists():
        report.render_html(executed, rep / f"{stage}.html")
    metrics_file = artifacts_dir() / stage / "metrics.json"
    if metrics_file.exists():
        run.metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    return run


def write_index(runs: list[StageRun], profile: str) -> Path:
    """``reports/index.html`` (and ``index.json``): every stage with status, duration, its declared verdicts and
    headline figure (``Stage.verdict``, ``Stage.headline``), linking to its report."""
    rep, art = reports_dir(), artifacts_dir()
    rep.mkdir(parents=True, exist_ok=True)
    rows = [
        report.stage_row(
            r.stage,
            r.status,
            r.seconds,
            r.error,
            r.metrics,
            art / r.stage,
            f"{r.stage}.html" if (rep / f"{r.stage}.html").exists() else None,
        )
        for r in runs
    ]
    (rep / "index.html").write_text(report.index_page(profile, rows, art), encoding="utf-8")
    write_json_atomic(rep / "index.json", {"profile": profile, "stages": [r.__dict__ for r in runs]})
    return rep / "index.html"


def run(
    profile: str = "default",
    only: str | None = None,
    overrides: Sequence[str] = (),
    heartbeat: float = DEFAULT_INTERVAL,
) -> list[StageRun]:
    """Run the selected stages in order; stop at the first failure and mark the rest skipped.

    Args:
        profile: name of a file in ``params/``.
        only: comma-separated stage numbers or names, or None for all.
        overrides: ``key=value`` or ``NN.key=value`` strings.
        heartbeat: seconds between progress lines inside a long cell; 0 for none.
    Returns:
        One ``StageRun`` per selected stage (the index is written either way).
    """
    planned = plan(profile, only, overrides)
    kernel = _kernel_name()
    runs: list[StageRun] = []
    failed = False
    for stage, nb, params in planned:
        if failed:
            runs.append(StageRun(stage, params, status="skipped"))
            continue
        print(f"== {stage} ({profile}) {params if params else ''}", flush=True)
        r = run_stage(stage, nb, params, kernel, heartbeat)
        runs.append(r)
        print(f"   {r.status} in {r.seconds:.1f} s" + (f": {r.error}" if r.error else ""), flush=True)
        failed = r.status == "failed"
        write_index(runs, profile)
    write_index(runs, profile)
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m so8t_core.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", help=f"one of {profiles()}")
    ap.add_argument("--only", help="comma-separated stage numbers or names, e.g. 01,02")
    ap.add_argument(
        "-p",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter override (NN.KEY=VALUE for one stage); repeatable",
    )
    ap.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"a progress line every SECONDS inside a long cell (default {DEFAULT_INTERVAL:g}; 0: none)",
    )
    args = ap.parse_args(argv)
    if args.heartbeat < 0:
        ap.error(f"--heartbeat {args.heartbeat:g}: must be >= 0 seconds")
    try:
        runs = run(args.profile, args.only, args.overrides, args.heartbeat)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"index: {reports_dir() / 'index.html'}")
    failed = [r for r in runs if r.status == "failed"]
    for r in failed:
        print(f"FAILED {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
