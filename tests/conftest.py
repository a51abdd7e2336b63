import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated_outputs(tmp_path, monkeypatch):
    """Point artifacts/ and reports/ into a temporary folder for this test."""
    monkeypatch.setenv("SO8T_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("SO8T_REPORTS", str(tmp_path / "reports"))
    return tmp_path


def run_module(module: str, *args: str, env_extra: dict | None = None, timeout: int = 900):
    """Run ``python -m module args`` from the repo root; returns the CompletedProcess."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
