"""Run the notebooks in order with papermill, render each to self-contained HTML, and index the results.

    python -m so8t_core.pipeline [--profile default|smoke|gpu] [--only 01,02] [-p key=value ...] [--jobs N]

A profile is ``params/<profile>.yaml``: a mapping from stage name (the notebook's stem) to parameter overrides.
``-p key=value`` overrides ``key`` in every selected notebook that declares it; ``-p 03.key=value`` only in
stage 03. Values are parsed as YAML (``-p steps=10`` is an int). Names a notebook does not declare in its
``parameters`` cell are refused before anything runs. The first failing stage stops the run (later stages read
its artifacts); the index still shows what ran, and the process exits non-zero naming the notebook and cell.
With ``--jobs N`` (default 2 on a machine with 2 or more cores) up to N stages run side by side, each in its own
process, as soon as the stages it ``require``s have finished (``requirements``) and the cores allow: a stage uses
``torch_threads`` cores (its parameter; 0 or none: every core, so it runs alone). 05 and 07 need only 00 and 03,
so with one thread each they run beside 06. A stage's thread count is its own parameter, never the schedule's, so
its numbers do not depend on what ran beside it; after a failure no new stage starts.
While a cell runs longer than ``--heartbeat`` seconds, one line at a time says which cell and how far its training
loop is (``so8t_core.progress``). Reports and the index are drawn by ``so8t_core.report``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from so8t_core import report
from so8t_core.artifacts import write_json_atomic
from so8t_core.config import NOTEBOOKS_DIR, PARAMS_DIR, STAGE_CORES_ENV, artifacts_dir, reports_dir
from so8t_core.progress import DEFAULT_INTERVAL

STAGE_RE = re.compile(r"^(\d\d)_[a-z0-9_]+$")
REQUIRE_RE = re.compile(r"""\brequire\(\s*["'](\d\d_[a-z0-9_]+)["']""")
KERNEL = "so8t"
DEFAULT_JOBS = min(2, os.cpu_count() or 1)


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


def requirements(notebook: Path) -> set[str]:
    """The stages whose artifacts ``notebook`` reads: every ``require("NN_name", ...)`` in its code cells."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return {m for c in cells if c["cell_type"] == "code" for m in REQUIRE_RE.findall("".join(c["source"]))}


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
    stage: str,
    notebook: Path,
    params: dict[str, Any],
    kernel: str,
    heartbeat: float = DEFAULT_INTERVAL,
    progress_bar: bool = True,
    cores: int = 0,
) -> StageRun:
    """Execute one notebook into ``reports/`` and render it; never raises for a failing notebook.

    Args:
        stage: the stage name.
        notebook: its notebook.
        params: papermill parameters.
        kernel: the Jupyter kernel to run it with.
        heartbeat: seconds between progress lines inside a long cell; 0 for none.
        progress_bar: papermill's per-cell bar (off when stages run side by side: their bars would interleave).
        cores: the cores the stage may keep busy beside others (``SO8T_STAGE_CORES`` in its kernel); 0: every core.
    Returns:
        What happened.
    """
    import papermill

    from so8t_core import progress

    run = StageRun(stage, params)
    if cores:
        os.environ[STAGE_CORES_ENV] = str(cores)  # the kernel inherits it (config.stage_cores)
    else:
        os.environ.pop(STAGE_CORES_ENV, None)
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
            progress_bar=progress_bar,
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


def _die_with_parent() -> None:
    """Pool worker initializer: on Linux the worker is sent SIGTERM when the pipeline process dies (killed or
    crashed), so no stage keeps running, and holding its kernel, after the run that started it is gone."""
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


StageRunner = Callable[[str, Path, dict[str, Any]], "Future[StageRun]"]


def cores_used(notebook: Path, params: dict[str, Any], cores: int) -> int:
    """The cores a stage keeps busy: its ``torch_threads`` (the profile's value, else the notebook's default), or
    every core when that is 0 or the notebook has no such parameter."""
    raw = params.get("torch_threads", declared_parameters(notebook).get("torch_threads", {}).get("default", "0"))
    n = int(raw)
    return min(n, cores) if n > 0 else cores


def schedule(
    planned: Sequence[tuple[str, Path, dict]],
    jobs: int,
    submit: StageRunner,
    on_done: Callable[[StageRun], None],
    cores: Mapping[str, int] | None = None,
    n_cores: int = 1,
) -> list[StageRun]:
    """Start each planned stage once the stages it requires (among the planned ones) are ``ok``, in plan order, at
    most ``jobs`` at a time and while the running stages' cores fit in ``n_cores`` (a stage always starts when
    nothing runs); after a failure start nothing new and mark what did not start skipped.

    Args:
        planned: ``plan()``'s list.
        jobs: stages running at once (>= 1).
        submit: ``(stage, notebook, params) -> Future[StageRun]``.
        on_done: called with each finished stage's run, as it finishes.
        cores: stage -> cores it uses (``cores_used``); None: none counted.
        n_cores: the machine's cores.
    Returns:
        One ``StageRun`` per planned stage, in plan order.
    """
    names = {s for s, _, _ in planned}
    needs = {s: requirements(nb) & names for s, nb, _ in planned}
    done: dict[str, StageRun] = {}
    pending = list(planned)
    running: dict[Future[StageRun], str] = {}
    failed = False
    while pending or running:
        for item in list(pending):
            if failed or len(running) >= jobs:
                break
            stage, nb, params = item
            busy = sum((cores or {}).get(s, 0) for s in running.values())
            fits = not running or busy + (cores or {}).get(stage, 0) <= n_cores
            if fits and all(done.get(d) is not None and done[d].status == "ok" for d in needs[stage]):
                pending.remove(item)
                running[submit(stage, nb, params)] = stage
        if failed:
            for stage, _, params in pending:
                done[stage] = StageRun(stage, params, status="skipped")
            pending = []
        if not running:
            if pending:  # cannot happen for a plan in pipeline order; a clear error rather than a hang
                raise RuntimeError(f"stages {[s for s, _, _ in pending]} wait on stages that never ran")
            break
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in finished:
            r = fut.result()
            del running[fut]
            done[r.stage] = r
            failed = failed or r.status == "failed"
            on_done(r)
    return [done[s] for s, _, _ in planned]


def run(
    profile: str = "default",
    only: str | None = None,
    overrides: Sequence[str] = (),
    heartbeat: float = DEFAULT_INTERVAL,
    jobs: int = DEFAULT_JOBS,
) -> list[StageRun]:
    """Run the selected stages, side by side where their requirements allow; stop starting new ones at the first
    failure and mark the rest skipped.

    Args:
        profile: name of a file in ``params/``.
        only: comma-separated stage numbers or names, or None for all.
        overrides: ``key=value`` or ``NN.key=value`` strings.
        heartbeat: seconds between progress lines inside a long cell; 0 for none.
        jobs: stages running at once; 1 runs them one after another in this process.
    Returns:
        One ``StageRun`` per selected stage (the index is written either way).
    """
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: must be >= 1")
    planned = plan(profile, only, overrides)
    kernel = _kernel_name()
    finished: list[StageRun] = []

    def on_done(r: StageRun) -> None:
        print(f"   {r.stage}: {r.status} in {r.seconds:.1f} s" + (f": {r.error}" if r.error else ""), flush=True)
        finished.append(r)
        order = [s for s, _, _ in planned]
        write_index(sorted(finished, key=lambda x: order.index(x.stage)), profile)

    def announce(stage: str, params: dict) -> None:
        print(f"== {stage} ({profile}) {params if params else ''}", flush=True)

    if jobs == 1:

        def submit_here(stage: str, nb: Path, params: dict) -> Future[StageRun]:
            announce(stage, params)
            fut: Future[StageRun] = Future()
            fut.set_result(run_stage(stage, nb, params, kernel, heartbeat))
            return fut

        runs = schedule(planned, 1, submit_here, on_done)
    else:
        import multiprocessing

        n_cores = os.cpu_count() or 1
        cores = {s: cores_used(nb, p, n_cores) for s, nb, p in planned}
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_die_with_parent) as pool:

            def submit_pool(stage: str, nb: Path, params: dict) -> Future[StageRun]:
                announce(stage, params)
                return pool.submit(run_stage, stage, nb, params, kernel, heartbeat, False, cores[stage])

            runs = schedule(planned, jobs, submit_pool, on_done, cores, n_cores)
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
    ap.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"stages run side by side when their requirements allow (default {DEFAULT_JOBS}; 1: one at a time)",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: must be >= 1")
    if args.heartbeat < 0:
        ap.error(f"--heartbeat {args.heartbeat:g}: must be >= 0 seconds")
    try:
        runs = run(args.profile, args.only, args.overrides, args.heartbeat, args.jobs)
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
