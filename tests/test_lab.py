"""JupyterLab in a real browser: notebook 02 runs on the ``so8t`` kernel and its alpha slider redraws the figure.

A headless JupyterLab (token auth, a free port on 127.0.0.1) serves a copy of notebook 02 with the smoke profile's
parameters injected the way papermill does; headless Chromium opens it, runs every cell from the Run menu, drags the
slider of the last widget and waits for the interactive output to change. Artifacts go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from so8t_core import pipeline
from tests.conftest import REPO

STAGE = "02_alpha_annealing"
KERNEL = "so8t"
RUN_LIMIT = 150  # seconds for every cell of the notebook (smoke parameters)

PROMPTS = "return [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());"
ERRORS = """const stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';
return [...document.querySelectorAll(stderr)].map(e => e.innerText).filter(t => /Error|Traceback/.test(t));"""
INTERACT = """const box = [...document.querySelectorAll('.widget-interact')].pop();
if (!box) return null;
const img = box.querySelector('.widget-output img'), readout = box.querySelector('.widget-readout');
return {img: img ? img.src : null, readout: readout ? readout.textContent.trim() : null};"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_copy(folder: Path) -> Path:
    """Notebook 02 with the smoke profile's parameters injected (papermill's own parameterisation)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(pipeline.discover()[STAGE]))
    nb = parameterize_notebook(nb, pipeline.load_profile("smoke").get(STAGE, {}), kernel_name=KERNEL, language="python")
    nbformat.write(nb, folder / f"{STAGE}.ipynb")
    return folder / f"{STAGE}.ipynb"


def lab_settings(folder: Path) -> Path:
    """User settings: every cell attached to the page (no windowing), no news or update checks."""
    tracker = folder / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    news = folder / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return folder


def api(port: int, token: str, path: str, method: str = "GET") -> object:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    """A running JupyterLab on a free port: ``(port, token, notebook name)``; shut down (kernels too) afterwards."""
    from jupyter_client.kernelspec import find_kernel_specs

    assert KERNEL in find_kernel_specs(), f"no Jupyter kernel {KERNEL!r}: make setup installs it"
    root = tmp_path / "lab"
    root.mkdir()
    nb = smoke_copy(root)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "SO8T_ARTIFACTS": str(tmp_path / "artifacts"),
        "SO8T_REPORTS": str(tmp_path / "reports"),
        "JUPYTERLAB_SETTINGS_DIR": str(lab_settings(tmp_path / "settings")),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),  # nobody's own Jupyter config
    }
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 (closed below)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}"]
    cmd += ["--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    cmd += ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    cmd += ["--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.geteuid() == 0 else [])  # CI is root
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api(port, token, "/api/status")
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "JupyterLab did not answer in 60 s"
                time.sleep(0.5)
        yield port, token, nb.name
    finally:
        try:
            api(port, token, "/api/shutdown", "POST")
            proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(10)
        log.close()


def number(readout: str) -> float:
    """A slider's readout as a number (d3-format writes minus as U+2212)."""
    return float(readout.replace("\u2212", "-"))


def wait_for(what: str, check, timeout: float, poll: float = 0.5):
    """``check()`` until it returns something truthy; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)
    return got


@pytest.mark.browser
@pytest.mark.slow
def test_jupyterlab_runs_notebook_02_and_the_alpha_slider_redraws(chromium, lab, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    port, token, name = lab
    try:
        chromium.get(f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}")
        sessions = wait_for(
            f"a {KERNEL} kernel for {name}",
            lambda: [s for s in api(port, token, "/api/sessions") if s["path"] == name],
            90,
        )
        assert sessions[0]["kernel"]["name"] == KERNEL
        wait_for("the notebook's cells", lambda: len(chromium.execute_script(PROMPTS)) > 10, 60)
        wait_for(
            "an idle kernel", lambda: api(port, token, "/api/sessions")[0]["kernel"]["execution_state"] == "idle", 60
        )

        menu_item = lambda text: [
            e
            for e in chromium.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item, .lm-Menu-item")
            if e.text.split("\n")[0] == text
        ]
        wait_for("the Run menu", lambda: menu_item("Run"), 10)[0].click()
        wait_for("Run All Cells", lambda: menu_item("Run All Cells"), 10)[0].click()

        wait_for("cells to start", lambda: any(p != "[ ]:" for p in chromium.execute_script(PROMPTS)), 30)
        prompts = wait_for(
            "every cell to finish", lambda: (p := chromium.execute_script(PROMPTS)) and "[*]:" not in p and p, RUN_LIMIT
        )
        assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), (prompts, chromium.execute_script(ERRORS))

        before = wait_for(
            "the interactive figure", lambda: (s := chromium.execute_script(INTERACT)) and s["img"] and s, 30
        )
        assert number(before["readout"]) == pytest.approx(1.618, abs=0.05)  # starts at alpha_target, on a 0.05 step
        handle = chromium.find_element(By.CSS_SELECTOR, ".widget-interact .widget-slider .noUi-handle")
        chromium.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
        ActionChains(chromium).click_and_hold(handle).move_by_offset(-60, 0).release().perform()
        after = wait_for(
            "the figure to redraw",
            lambda: (s := chromium.execute_script(INTERACT)) and s["img"] and s["img"] != before["img"] and s,
            30,
        )
        assert number(after["readout"]) < number(before["readout"])  # dragged left: a smaller alpha
        assert (tmp_path / "artifacts" / STAGE / "manifest.json").exists()  # the notebook ran to stage.finish()
    except BaseException:
        chromium.save_screenshot(str(tmp_path / "lab.png"))
        print(f"screenshot: {tmp_path / 'lab.png'}; JupyterLab log: {tmp_path / 'lab.log'}")
        raise
