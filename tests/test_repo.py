"""Repository hygiene: notebooks committed clean and runnable by the pipeline; pins agree."""

import ast
import re

import nbformat
import pytest
import yaml

from so8t_core.artifacts import Stage, require
from so8t_core.config import NOTEBOOKS_DIR, REPO_ROOT

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parametrised(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "so8t"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged parameters"
    for node in ast.parse(code[0].source).body:  # only simple assignments of literals
        assert isinstance(node, ast.Assign), ast.dump(node)
        ast.literal_eval(node.value)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    assert f'Stage("{path.stem}"' in "".join(c.source for c in code), "writes its own artifact folder"
    assert ".from_namespace(globals())" in code[1].source, "the cell after parameters builds the stage config"


def _pins_pyproject() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return dict(d.split("==") for d in deps)


def test_llama_cpp_pin_is_the_one_setup_builds():
    """pyproject's `gguf` extra, the setup script and the converter check name one llama-cpp-python version."""
    from so8t_core.export.gguf import LLAMA_CPP_VERSION

    script = (REPO_ROOT / "scripts" / "setup_llama_cpp.sh").read_text()
    assert re.search(rf"^VERSION={re.escape(LLAMA_CPP_VERSION)}$", script, re.M)
    assert _pins_pyproject()["llama-cpp-python"] == LLAMA_CPP_VERSION


def test_environment_yml_pins_match_pyproject():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = dict(p.split("==") for p in pip if "==" in p)
    assert env_pins == _pins_pyproject()
    assert all(re.fullmatch(r"[\w.]+", v) for v in env_pins.values())


def test_require_names_the_notebook_and_incomplete_stage(isolated_outputs):
    with pytest.raises(FileNotFoundError, match=r"missing: run notebooks/00_base_model.ipynb first"):
        require("00_base_model")
    st = Stage("00_base_model", {"seed": 1}, seed=1)  # started, never finished: a crash
    with pytest.raises(FileNotFoundError, match="incomplete"):
        require("00_base_model")
    st.log(x=1.5)
    st.finish()
    assert require("00_base_model") == st.dir
    Stage("00_base_model", {"seed": 1})  # a re-run starts: the old manifest no longer vouches
    with pytest.raises(FileNotFoundError, match="incomplete"):
        require("00_base_model")


def test_stage_applies_and_logs_torch_threads(isolated_outputs):
    import json

    import torch

    before = torch.get_num_threads()
    try:
        st = Stage("00_base_model", {"torch_threads": 1})
        assert torch.get_num_threads() == 1
        assert json.loads(st.path("metrics.json").read_text())["torch_threads"] == 1
        torch.set_num_threads(2)
        st = Stage("00_base_model", {"torch_threads": 0})  # 0 leaves the count alone and records it
        assert torch.get_num_threads() == 2
        assert st.metrics["torch_threads"] == 2
    finally:
        torch.set_num_threads(before)


def _stage_configs() -> dict:
    from so8t_core import config

    return {
        "00_base_model": config.BaseModelConfig,
        "01_so8_rotation_math": config.RotationMathConfig,
        "02_alpha_annealing": config.AlphaStageConfig,
        "03_soul_injection": config.SoulStageConfig,
        "04_fusion_and_gguf": config.FusionStageConfig,
        "05_visual_adapter": config.VisualStageConfig,
        "06_safety_eval": config.SafetyEvalStageConfig,
        "07_quad_reinforcement": config.QuadRLStageConfig,
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_equals_the_stage_config_defaults(path):
    from dataclasses import fields

    cls = _stage_configs()[path.stem]
    code = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    params = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(code.source).body}
    defaults = {f.name: getattr(cls(), f.name) for f in fields(cls)}
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    assert params == defaults
