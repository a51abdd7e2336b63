import html
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from so8t_core import pipeline
from so8t_core.config import REPO_ROOT
from tests.conftest import run_module


def test_parse_overrides_types_and_stage_prefix():
    got = pipeline.parse_overrides(["steps=10", "03.lr=1e-3", "name=abc", "flag=true", "x=2.5"])
    assert got == [
        (None, "steps", 10),
        ("03", "lr", 0.001),
        (None, "name", "abc"),
        (None, "flag", True),
        (None, "x", 2.5),
    ]
    for bad in ("steps", "=3", "3bad=1"):
        with pytest.raises(ValueError, match="-p"):
            pipeline.parse_overrides([bad])


def test_plan_rejects_bad_profile_stage_and_parameter():
    with pytest.raises(ValueError, match="profile='nope'"):
        pipeline.plan("nope")
    with pytest.raises(ValueError, match="--only '99'"):
        pipeline.plan("smoke", only="99")
    with pytest.raises(ValueError, match="-p no_such_knob"):
        pipeline.plan("smoke", only="01", overrides=["no_such_knob=1"])
    with pytest.raises(ValueError, match="stage 02"):
        pipeline.plan("smoke", only="01,02", overrides=["02.width=64"])  # width is 01's, not 02's


def test_plan_applies_profile_then_overrides():
    planned = {s: p for s, _, p in pipeline.plan("smoke", only="01,02", overrides=["seed=7", "01.tokens=32"])}
    assert planned["01_so8_rotation_math"]["seed"] == 7
    assert planned["02_alpha_annealing"]["seed"] == 7
    assert planned["01_so8_rotation_math"]["tokens"] == 32
    assert planned["01_so8_rotation_math"]["n_samples"] == 8  # from params/smoke.yaml


def test_cli_bad_input_exits_2_naming_the_value(isolated_outputs):
    r = run_module("so8t_core.pipeline", "--profile", "smoke", "--only", "01", "-p", "bogus=1")
    assert r.returncode == 2
    assert "bogus" in r.stderr
    assert not (isolated_outputs / "reports").exists()  # nothing ran, nothing written


def fake_stage(tmp_path, name: str, needs: tuple[str, ...]):
    nb = tmp_path / f"{name}.ipynb"
    cells = [{"cell_type": "code", "source": [f'x = require("{n}", "model")\n' for n in needs]}]
    nb.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ['require("99_not_code")']}, *cells]}))
    return (name, nb, {})


FAKE_PLAN = (("00_a", ()), ("01_b", ()), ("02_c", ("00_a",)), ("03_d", ("02_c", "00_a")), ("04_e", ("00_a",)))


def run_fake_schedule(tmp_path, jobs: int, fail: set[str], cores: dict[str, int] | None = None):
    """``pipeline.schedule`` over fake stages that sleep; returns the runs and each stage's (start, end) times."""
    planned = [fake_stage(tmp_path, name, needs) for name, needs in FAKE_PLAN]
    spans: dict[str, tuple[float, float]] = {}

    def work(stage: str) -> pipeline.StageRun:
        t0 = time.monotonic()
        time.sleep(0.05)
        spans[stage] = (t0, time.monotonic())
        return pipeline.StageRun(stage, {}, "failed" if stage in fail else "ok")

    with ThreadPoolExecutor(8) as pool:
        runs = pipeline.schedule(planned, jobs, lambda s, nb, p: pool.submit(work, s), lambda r: None, cores, 2)
    return runs, spans


def test_requirements_read_require_calls_in_code_cells(tmp_path):
    assert pipeline.requirements(fake_stage(tmp_path, "03_d", ("02_c", "00_a"))[1]) == {"02_c", "00_a"}
    nbs = pipeline.discover()
    assert pipeline.requirements(nbs["06_safety_eval"]) >= {"04_fusion_and_gguf"}
    for stage in ("05_visual_adapter", "07_quad_reinforcement"):  # what lets them run beside 04 and 06
        assert pipeline.requirements(nbs[stage]) == {"00_base_model", "03_soul_injection"}


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_schedule_starts_a_stage_after_its_requirements_and_at_most_jobs_at_once(tmp_path, jobs):
    runs, spans = run_fake_schedule(tmp_path, jobs, set())
    assert [r.stage for r in runs] == [name for name, _ in FAKE_PLAN]
    assert all(r.status == "ok" for r in runs)
    for name, needs in FAKE_PLAN:
        assert all(spans[name][0] >= spans[n][1] for n in needs), (name, spans)
    events = sorted([(t0, 1) for t0, _ in spans.values()] + [(t1, -1) for _, t1 in spans.values()])
    most = max(itertools.accumulate(d for _, d in events))
    assert most == jobs if jobs < 3 else most >= 2  # two ready stages ran side by side whenever jobs allowed


def overlaps(spans, a: str, b: str) -> bool:
    return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]


def test_schedule_runs_a_stage_that_uses_every_core_alone(tmp_path):
    _, spans = run_fake_schedule(tmp_path, 3, set(), {"00_a": 2, "01_b": 2, "02_c": 1, "03_d": 1, "04_e": 1})
    assert not overlaps(spans, "00_a", "01_b")
    assert overlaps(spans, "02_c", "04_e")  # one core each: side by side
    _, spans = run_fake_schedule(tmp_path, 3, set(), {"00_a": 1, "01_b": 1, "02_c": 2, "03_d": 1, "04_e": 1})
    assert overlaps(spans, "00_a", "01_b")
    assert not overlaps(spans, "02_c", "04_e")


def test_cores_used_reads_the_profile_then_the_notebook_default():
    planned = {s: (nb, p) for s, nb, p in pipeline.plan("default")}
    used = {s: pipeline.cores_used(nb, p, 2) for s, (nb, p) in planned.items()}
    assert used["05_visual_adapter"] == 1  # params/default.yaml pins it
    assert used["06_safety_eval"] == used["07_quad_reinforcement"] == 1  # the notebooks' own defaults
    assert used["03_soul_injection"] == used["04_fusion_and_gguf"] == 2  # 0, and no such parameter: every core
    nb, _ = planned["06_safety_eval"]
    assert pipeline.cores_used(nb, {"torch_threads": 8}, 2) == 2


def test_schedule_after_a_failure_starts_nothing_new(tmp_path):
    runs, spans = run_fake_schedule(tmp_path, 2, {"00_a"})
    status = {r.stage: r.status for r in runs}
    assert status == {"00_a": "failed", "01_b": "ok", "02_c": "skipped", "03_d": "skipped", "04_e": "skipped"}
    assert set(spans) == {"00_a", "01_b"}
    runs, _ = run_fake_schedule(tmp_path, 1, {"00_a"})
    assert [r.status for r in runs] == ["failed", "skipped", "skipped", "skipped", "skipped"]


@pytest.mark.slow
def test_smoke_pipeline_runs_01_02_and_writes_reports(isolated_outputs):
    r = run_module("so8t_core.pipeline", "--profile", "smoke", "--only", "01,02")
    assert r.returncode == 0, r.stderr[-3000:]
    rep, art = isolated_outputs / "reports", isolated_outputs / "artifacts"
    index = json.loads((rep / "index.json").read_text())
    assert [s["status"] for s in index["stages"]] == ["ok", "ok"]
    for stage in ("01_so8_rotation_math", "02_alpha_annealing"):
        manifest = json.loads((art / stage / "manifest.json").read_text())
        assert "metrics.json" in manifest["files"]
        assert manifest["versions"]["torch"]
        page = (rep / f"{stage}.html").read_text()
        assert "data:image/png;base64" in page  # images embedded: self-contained
        assert f'href="{stage}.html"' in (rep / "index.html").read_text()
    m1 = json.loads((art / "01_so8_rotation_math" / "metrics.json").read_text())
    assert m1["block_params"] == 10752
    assert m1["orth_err_cayley_float32"] <= 1e-5
    assert m1["maps_orthogonal_float32"] is True
    assert "maps_orthogonal_float32" in m1["verdicts"]
    m2 = json.loads((art / "02_alpha_annealing" / "metrics.json").read_text())
    rows = index_rows((rep / "index.html").read_text())
    assert '<b>maps_orthogonal_float32</b>: <span class="yes">yes</span>' in rows["01_so8_rotation_math"]
    assert f"<b>conclusion</b>: {html.escape(m2['conclusion'])}" in rows["02_alpha_annealing"]
    for stage, figure in (
        ("01_so8_rotation_math", "orthogonality_error.png"),
        ("02_alpha_annealing", "phase_transition.png"),
    ):
        assert '<img src="data:image/png;base64,' in rows[stage]
        assert f'alt="{figure}"' in rows[stage]
        assert '<script id="so8t-mathjax">' in (rep / f"{stage}.html").read_text()  # math renders offline


def index_rows(page: str) -> dict[str, str]:
    """Stage name -> its row of ``index.html``."""
    return {row.split('.html">')[1].split("<")[0]: row for row in page.split('<tr class="')[1:] if '.html">' in row}


@pytest.mark.slow
def test_failing_stage_exits_nonzero_names_cell_and_index_shows_it(isolated_outputs):
    r = run_module("so8t_core.pipeline", "--profile", "smoke", "--only", "01,02", "-p", "01.n_samples=0", "--jobs", "1")
    assert r.returncode == 1
    assert "notebooks/01_so8_rotation_math.ipynb failed in cell" in r.stderr
    assert "n_samples=0" in r.stderr
    index = json.loads((isolated_outputs / "reports" / "index.json").read_text())
    assert [s["status"] for s in index["stages"]] == ["failed", "skipped"]
    assert "failed" in (isolated_outputs / "reports" / "index.html").read_text()
    assert not (isolated_outputs / "artifacts" / "01_so8_rotation_math" / "manifest.json").exists()


@pytest.mark.slow
def test_smoke_pipeline_model_stages_00_03_04_05_06_07(isolated_outputs):
    r = run_module("so8t_core.pipeline", "--profile", "smoke", "--only", "00,03,04,05,06,07")
    assert r.returncode == 0, r.stderr[-3000:]
    art = isolated_outputs / "artifacts"
    m3 = json.loads((art / "03_soul_injection" / "metrics.json").read_text())
    tier_a = {(r["task"], r["variant"]): r for r in m3["tier_a"]}
    tier_b = {(r["task"], r["variant"]): r for r in m3["tier_b"]}
    assert {"oft", "boft", "ia3", "lora_r1", "soul_learned", "soul_composed_learned", "soul_a1.618"} <= {
        v for _, v in tier_a
    }
    assert {"lora", "soul", "soul_pet", "soul_frozen_r", "oft_all", "lora_matched"} <= {v for _, v in tier_b}
    assert tier_a[("arith", "oft")]["params"] > 0
    assert tier_a[("arith", "soul_learned")]["seeds"] == 2
    assert 0 <= tier_b[("remap", "soul")]["vs_lora"]["p"] <= tier_b[("remap", "soul")]["vs_lora"]["p_holm"] <= 1
    assert set(m3["validity"]["A"]) == {"remap", "format", "arith"}
    assert "phi_special" in m3["verdicts"]
    assert (art / "03_soul_injection" / "soul" / "soul.safetensors").exists()
    rows = (art / "03_soul_injection" / "soul_weights.jsonl").read_text().splitlines()
    assert len(rows) == json.loads((art / "03_soul_injection" / "config.json").read_text())["steps"]
    assert (art / "04_fusion_and_gguf" / "fused" / "config.json").exists()
    assert (art / "04_fusion_and_gguf" / "manifest.json").exists()
    m5 = json.loads((art / "05_visual_adapter" / "metrics.json").read_text())
    assert m5["frozen_lm_unchanged"]
    assert {
        "visual_weighted",
        "visual_attention",
        "text_only_blind_weighted",
        "text_only_blind_attention",
    } <= set(m5["results"])
    assert (art / "05_visual_adapter" / "visual_weighted" / "visual.safetensors").exists()
    assert (art / "05_visual_adapter" / "manifest.json").exists()
    m6 = json.loads((art / "06_safety_eval" / "metrics.json").read_text())
    assert m6["n_test"] > 0
    assert (art / "06_safety_eval" / "manifest.json").exists()
    m7 = json.loads((art / "07_quad_reinforcement" / "metrics.json").read_text())
    assert {"soul_frozen/test", "soul_trained/test", "soul_frozen/dev"} <= set(m7["before_after"])
    assert m7["no_thinking_leaks"] is True
    assert isinstance(m7["reward_hacking"], bool)
    assert all(len(c["structure"]) == 3 for c in m7["reward_curves"].values())
    assert len(m7["reward_curves"]) == 4
    assert (art / "07_quad_reinforcement" / "fused" / "config.json").exists()
    assert (art / "07_quad_reinforcement" / "manifest.json").exists()
    rows = index_rows((isolated_outputs / "reports" / "index.html").read_text())
    stages = ("00_base_model", "03_soul_injection", "04_fusion_and_gguf", "05_visual_adapter", "06_safety_eval")
    for stage in (*stages, "07_quad_reinforcement"):
        m = json.loads((art / stage / "metrics.json").read_text())
        assert m["verdicts"], stage
        assert all(f"<b>{v}</b>" in rows[stage] for v in m["verdicts"]), stage
        assert f'alt="{m["headline"]}"' in rows[stage], stage


def test_stage_cores_reads_what_the_pipeline_sets(monkeypatch):
    from so8t_core.config import STAGE_CORES_ENV, stage_cores

    monkeypatch.setenv(STAGE_CORES_ENV, "1")
    assert stage_cores() == 1
    for unset in ("", "0", "x"):
        monkeypatch.setenv(STAGE_CORES_ENV, unset)
        assert stage_cores() == (os.cpu_count() or 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_pool_workers_end_when_the_pipeline_process_is_killed(tmp_path):
    """A killed pipeline must not leave stage workers behind: the parent below starts a pool as ``run`` does,
    reports its worker's pid, and is killed with SIGKILL (no cleanup runs)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from so8t_core import pipeline\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                               initializer=pipeline._die_with_parent)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 60)\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _proc_state(worker) not in (None, "Z"):
        time.sleep(0.1)
    alive = _proc_state(worker) not in (None, "Z")
    assert not alive, f"worker {worker} outlived its killed pipeline"


def _proc_state(pid: int) -> str | None:
    """The process's state letter from /proc (``Z``: a zombie, already dead), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return None
