"""Stage outputs: one folder per notebook with config, metrics and a manifest that marks it complete.

A stage folder is only trusted once ``manifest.json`` exists: ``Stage`` deletes it when a stage starts and
writes it last, so a notebook that crashed half-way leaves a folder that ``require`` refuses, by name.
``metrics.json`` is rewritten on every ``log`` so nothing measured is lost on a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import NOTEBOOKS_DIR, artifacts_dir

MANIFEST = "manifest.json"
_VERSIONED = ("torch", "transformers", "peft", "safetensors", "numpy", "sentencepiece")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file and ``os.replace`` so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def notebook_for(stage: str) -> str:
    """The notebook that writes ``stage`` (for error messages)."""
    return f"notebooks/{stage}.ipynb"


class Stage:
    """The output folder of one notebook stage.

    Args:
        name: stage name, equal to the notebook's file stem (``"01_so8_rotation_math"``).
        config: the stage's frozen config dataclass (anything with ``to_dict``) or a plain dict.
        seed: the seed the stage ran with (recorded in the manifest).

    A config with a non-zero ``torch_threads`` field sets torch's intra-op thread count for the rest of the kernel
    (0 keeps torch's default). The count in use is logged as the ``torch_threads`` metric, so stage times can be
    read against it.

    Explained in every notebook's first cells.
    """

    def __init__(self, name: str, config: Any, seed: int | None = None) -> None:
        self.name = name
        self.dir = artifacts_dir() / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / MANIFEST).unlink(missing_ok=True)  # incomplete until finish()
        self.seed = seed
        self.started = time.time()
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        write_json_atomic(self.dir / "config.json", cfg)
        self.metrics: dict[str, Any] = {}
        threads = cfg.get("torch_threads", 0)
        if "torch" in sys.modules or threads:
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.metrics["torch_threads"] = torch.get_num_threads()
        write_json_atomic(self.dir / "metrics.json", self.metrics)

    def path(self, filename: str) -> Path:
        """Path of a file inside the stage folder."""
        return self.dir / filename

    def log(self, **metrics: Any) -> None:
        """Record metrics (numbers, lists, small dicts) and persist them at once."""
        self.metrics.update(metrics)
        write_json_atomic(self.dir / "metrics.json", self.metrics)

    def finish(self) -> dict[str, Any]:
        """Hash every file, write the manifest and so mark the stage complete. Returns the manifest."""
        files = {
            str(p.relative_to(self.dir)): sha256_file(p)
            for p in sorted(self.dir.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
        }
        manifest = {
            "stage": self.name,
            "seed": self.seed,
            "files": files,
            "versions": package_versions(),
            "argv": sys.argv[:1],
            "seconds": round(time.time() - self.started, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(self.dir / MANIFEST, manifest)
        return manifest


def require(stage: str, *files: str) -> Path:
    """Folder of a completed upstream stage; raises naming the notebook to run when it is missing.

    Args:
        stage: the upstream stage name, e.g. ``"00_base_model"``.
        files: files that must exist inside it.
    Returns:
        The stage folder.
    """
    d = artifacts_dir() / stage
    if not (d / MANIFEST).exists():
        state = "incomplete (it crashed or is still running)" if d.exists() else "missing"
        raise FileNotFoundError(
            f"artifact {d} is {state}: run {notebook_for(stage)} first "
            f"(python -m so8t_core.pipeline --only {stage[:2]})"
        )
    for f in files:
        if not (d / f).exists():
            raise FileNotFoundError(f"{d / f} is missing: re-run {notebook_for(stage)}")
    return d


def read_metrics(stage: str) -> dict[str, Any]:
    """``metrics.json`` of a completed stage."""
    return json.loads((require(stage) / "metrics.json").read_text(encoding="utf-8"))
