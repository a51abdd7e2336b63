"""Shared fixtures: isolated outputs, the tiny-LM and tiny-model factories, the shared tokenizer, the server tests'
model and audit log, and automatic skips for GPU and Tesseract tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests skip themselves without CUDA; ``@pytest.mark.tesseract`` without Tesseract."""
    import torch

    no_cuda = pytest.mark.skip(reason="needs a CUDA device (the real check lives in bench/)")
    no_tesseract = pytest.mark.skip(reason=tesseract_missing() or "")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "tesseract" in item.keywords and tesseract_missing():
            item.add_marker(no_tesseract)


def tesseract_missing() -> str | None:
    """Why OCR tests cannot run here (``make setup`` installs Tesseract with jpn+eng), or None when they can."""
    if shutil.which("tesseract") is None:
        return "tesseract is not installed (make setup installs tesseract-ocr)"
    langs = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout.split()
    missing = [lang for lang in ("eng", "jpn") if lang not in langs]
    return f"Tesseract language data missing: {missing} (make setup)" if missing else None


@pytest.fixture(autouse=True)
def _no_repo_outputs(tmp_path_factory, monkeypatch):
    """No test reads or writes the checkout's artifacts/ and reports/: a finished `make pipeline` there must not
    change what a test sees (a test wanting outputs asks for ``isolated_outputs``)."""
    root = tmp_path_factory.mktemp("outputs")
    monkeypatch.setenv("SO8T_ARTIFACTS", str(root / "artifacts"))
    monkeypatch.setenv("SO8T_REPORTS", str(root / "reports"))


@pytest.fixture
def isolated_outputs(tmp_path, monkeypatch):
    """Point artifacts/ and reports/ into a temporary folder for this test."""
    monkeypatch.setenv("SO8T_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("SO8T_REPORTS", str(tmp_path / "reports"))
    return tmp_path


def run_module(module: str, *args: str, env_extra: dict | None = None, timeout: int = 900):
    """Run ``python -m module args`` from the repo root; returns the CompletedProcess."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass(frozen=True)
class TinyLM:
    """A tiny SentencePiece tokenizer, a random Phi-3 on it, and the folder both are saved in."""

    model: Any
    tok: Any
    dir: Path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Callable[..., TinyLM]:
    """The one tiny-LM factory of the suite: ``tiny_lm(texts, vocab_size=..., hidden=..., layers=..., heads=...)``.

    The tokenizer is the project's own (``lm.base_model.train_tokenizer``: Phi-3 chat tokens and quad tags as
    single pieces), the model ``lm.base_model.build_model`` on ``tiny_phi3_config``, saved with ``save_model``
    like a real checkpoint. Built once per set of arguments per session; tests must not train it in place (use
    ``copy.deepcopy`` or reload from ``.dir``).
    """
    from so8t_core.lm.base_model import build_model, tiny_phi3_config
    from so8t_core.lm.loading import save_model
    from so8t_core.lm.tokenizer import MIN_VOCAB, special_ids, train_tokenizer

    cache: dict[tuple, TinyLM] = {}

    def make(
        texts: Sequence[str],
        vocab_size: int = MIN_VOCAB,
        hidden: int = 32,
        layers: int = 1,
        heads: int = 2,
        seed: int = 0,
        max_positions: int = 512,
    ) -> TinyLM:
        key = (tuple(texts), vocab_size, hidden, layers, heads, seed, max_positions)
        if key not in cache:
            d = tmp_path_factory.mktemp("tiny_lm")
            tok = train_tokenizer(list(texts), d / "tok", vocab_size=vocab_size)
            cfg = tiny_phi3_config(
                len(tok),
                hidden_size=hidden,
                num_layers=layers,
                num_heads=heads,
                max_positions=max_positions,
                **special_ids(tok),
            )
            model = build_model(cfg, seed=seed)
            cache[key] = TinyLM(model, tok, save_model(model, tok, d / "model"))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def corpus_tok(tmp_path_factory):
    """``(tokenizer, corpus)``: the project's tokenizer trained on a small generated corpus (120 documents)."""
    from so8t_core.data.corpus import build_corpus
    from so8t_core.lm.tokenizer import train_tokenizer

    corpus = build_corpus(seed=0, n_docs=120, heldout_fraction=0.1)
    return train_tokenizer(corpus.train, tmp_path_factory.mktemp("corpus_tok"), vocab_size=2500), corpus


@pytest.fixture(scope="session")
def tok(corpus_tok):
    """The tokenizer of ``corpus_tok`` alone."""
    return corpus_tok[0]


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., Any]:
    """A random tiny Phi-3 on a tokenizer the test brings:
    ``tiny_model(tok, hidden=32, layers=2, heads=2, seed=0, max_positions=None, stop_ids=())``.

    ``max_positions=None`` keeps ``tiny_phi3_config``'s default. A new model each call (tests may train it).
    """
    from so8t_core.lm.base_model import build_model, tiny_phi3_config
    from so8t_core.lm.tokenizer import special_ids

    def make(
        tok: Any,
        hidden: int = 32,
        layers: int = 2,
        heads: int = 2,
        seed: int = 0,
        max_positions: int | None = None,
        stop_ids: Sequence[int] = (),
    ) -> Any:
        extra = {} if max_positions is None else {"max_positions": max_positions}
        cfg = tiny_phi3_config(
            len(tok), hidden_size=hidden, num_layers=layers, num_heads=heads, **extra, **special_ids(tok)
        )
        return build_model(cfg, seed=seed, stop_ids=stop_ids)

    return make


@pytest.fixture(scope="module")
def serve_lm_dir(tiny_lm) -> Path:
    """The server tests' tiny tokenizer (trained on ``tests.serving.SERVE_TEXTS``) and random 1-layer Phi-3 with
    512 positions, saved as one HF folder."""
    from tests.serving import SERVE_TEXTS

    return tiny_lm(SERVE_TEXTS).dir


@pytest.fixture(scope="module")
def serve_lm(serve_lm_dir):
    """``(model, tok)`` loaded back from ``serve_lm_dir`` the way the server loads a model; deep-copy the model
    before adding hooks."""
    from so8t_core.lm.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(serve_lm_dir, local_files_only=True)


@pytest.fixture
def audit(tmp_path):
    """A fresh audit log in this test's temporary folder."""
    from so8t_core.serving.audit import AuditLog

    with AuditLog(tmp_path / "audit.db") as log:
        yield log


CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the sandbox needs user namespaces, which a container or root session may not give
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--window-size=1400,1000",
    # no network for the page: every host name but the loopback address fails to resolve
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def chromium_paths() -> tuple[str, str] | str:
    """``(browser, driver)`` of the Debian packages ``chromium`` and ``chromium-driver``, or why they are missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    gone = [name for name, path in (("chromium", browser), ("chromium-driver", driver)) if not path]
    return f"{' and '.join(gone)} not installed (make setup installs them: scripts/setup_system.sh)"


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    """A headless Chromium driven through Selenium, with no network but 127.0.0.1 (see ``CHROMIUM_FLAGS``).

    Debian's browser with Debian's chromedriver (same version), never a downloaded one: Selenium Manager is told
    it is offline. Skips, naming the reason, only when Chromium cannot start here; anything after that fails.
    """
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    found = chromium_paths()
    if isinstance(found, str):
        pytest.skip(found)
    monkeypatch.setenv("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=opts, service=Service(found[1]))
    except WebDriverException as exc:
        pytest.skip(f"Chromium ({found[0]}) cannot start here: {exc.msg or exc}")
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
