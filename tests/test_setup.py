"""System setup as on a bare machine: the apt-get line `scripts/setup_system.sh` would run there must resolve.

The script's dry run prints its apt-get line; with SO8T_ASSUME_MISSING=1 every package check reports "missing"
(the Node.js check stays real, as on a machine of CI's kind). `apt-get install -s` then resolves that line against
this machine's installed packages and package lists, which is where a conflict (Debian's npm beside a Node.js from
another source) shows."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from so8t_core.config import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "setup_system.sh"
APT_LISTS = Path("/var/lib/apt/lists")

needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian machine (no apt-get)")


def _dry_run(**env: str) -> list[str]:
    """The packages of the apt-get line the script would run (empty when it would run none)."""
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.strip()
    if not out:
        return []
    head = "apt-get install -y --no-install-recommends "
    assert out.startswith(head), out
    return out[len(head) :].split()


def _apt_resolves(packages: list[str]) -> subprocess.CompletedProcess[str]:
    if not any(APT_LISTS.glob("*_Packages*")):
        if os.geteuid() != 0:
            pytest.skip("apt's package lists are empty and only root can run apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    return subprocess.run(
        ["apt-get", "install", "-s", "--no-install-recommends", *packages],
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
    )


@needs_apt
def test_bare_machine_line_resolves_in_apt():
    packages = _dry_run(SO8T_ASSUME_MISSING="1")
    assert {"tesseract-ocr", "tesseract-ocr-jpn", "chromium", "chromium-driver", "wordnet-base", "edict"} <= set(
        packages
    )
    sim = _apt_resolves(packages)
    assert sim.returncode == 0, sim.stdout[-2000:] + sim.stderr[-2000:]


@needs_apt
@pytest.mark.skipif(shutil.which("node") is None, reason="no Node.js on this machine")
def test_debian_npm_beside_this_nodejs_is_what_the_script_avoids():
    """The old script's failure, reproduced: with this machine's Node.js, a line that adds Debian's npm does not
    resolve when that Node.js comes from elsewhere, and the script's own line never contains npm or nodejs."""
    packages = _dry_run(SO8T_ASSUME_MISSING="1")
    assert "npm" not in packages
    assert "nodejs" not in packages
    npm_ours = subprocess.run(["dpkg", "-S", shutil.which("npm") or "/nonexistent"], capture_output=True, text=True)
    if npm_ours.returncode == 0 and npm_ours.stdout.startswith("npm:"):
        pytest.skip("this machine's npm is Debian's own package: no conflict to show")
    assert _apt_resolves([*packages, "npm"]).returncode != 0


def test_without_node_the_line_brings_debians_nodejs_and_npm():
    packages = _dry_run(SO8T_ASSUME_MISSING="1", SO8T_ASSUME_NO_NODE="1")
    assert packages[-2:] == ["nodejs", "npm"]


def test_present_things_are_not_asked_for():
    """On this machine: every package the line names is one whose check fails here (nothing present is asked for)."""
    everything = set(_dry_run(SO8T_ASSUME_MISSING="1"))
    here = _dry_run()
    assert set(here) <= everything
    if shutil.which("chromium"):
        assert "chromium" not in here
    if shutil.which("tesseract"):
        assert "tesseract-ocr" not in here


def test_unknown_argument_is_refused():
    run = subprocess.run(["bash", str(SCRIPT), "--dry"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "usage" in run.stderr


def test_step_reports_what_and_how_long(tmp_path):
    step = REPO_ROOT / "scripts" / "step.sh"
    ok = subprocess.run(["bash", str(step), "say hi", "echo", "hi"], capture_output=True, text=True)
    assert ok.returncode == 0
    lines = ok.stdout.splitlines()  # whole seconds: a loaded machine can cross a second boundary
    assert lines[:2] == ["==> say hi", "hi"]
    assert re.fullmatch(r"<== say hi: \d+ s", lines[2]), lines
    assert len(lines) == 3
    bad = subprocess.run(["bash", str(step), "fail", "false"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert re.search(r"<== fail: failed after \d+ s \(exit 1\)", bad.stderr), bad.stderr
