"""Stage outputs: one folder per notebook with config, metrics and a manifest that marks it complete.

A stage folder is only trusted once ``manifest.json`` exists: ``Stage`` deletes it when a stage starts and
writes it last, so a notebook that crashed half-way leaves a folder that ``require`` refuses, by name.
``metrics.json`` is rewritten on every ``log`` so nothing measured is lost on a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

from so8t_core.config import artifacts_dir

MANIFEST = "manifest.json"
VERDICTS = "verdicts"  # metrics.json key: names of the metrics that are the stage's findings, in order
HEADLINE = "headline"  # metrics.json key: the stage's headline figure, a file in its folder
HEADLINE_SUFFIXES = (".png", ".jpg", ".jpeg")
_VERSIONED = ("torch", "transformers", "peft", "safetensors", "numpy", "sentencepiece")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``; on success its file is fsynced and renamed over ``path``.

    The one way this package writes a file that readers may open at any time: they see the old file or the
    whole new one, never half of one, and the data is on disk before the name points at it. On an exception
    the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to (re)write; its folder is created.
    Yields:
        The temporary path to write (by this process or another, e.g. a converter).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text through ``atomic_path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``json_ready(obj)`` as indented strict JSON through ``atomic_path``."""
    write_text_atomic(path, json.dumps(json_ready(obj), indent=2, ensure_ascii=False, allow_nan=False))


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> None:
    """One ``json_ready`` row per line, through ``atomic_path``."""
    write_text_atomic(path, "".join(json.dumps(json_ready(r), ensure_ascii=False) + "\n" for r in rows))


def json_ready(x: Any) -> Any:
    """Plain JSON values, recursively: NaN/inf -> None, numpy/torch scalars and arrays -> numbers and lists,
    tuples -> lists, paths -> strings, mapping keys -> strings. Raises TypeError on anything else."""
    if isinstance(x, Mapping):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy / torch arrays and scalars
        return json_ready(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (str, int, bool)):
        return x
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def model_fingerprint(model_dir: str | Path) -> dict[str, str]:
    """SHA-256 of a model folder's ``config.json`` and each of its weight files, by file name.

    Weight files are the ``*.safetensors`` files except safety heads saved next to the model
    (``safety_heads*``), so saving heads beside a model does not change its identity. Content, not path or
    size: a base and a fused model share a config and file sizes but not weights.

    Args:
        model_dir: a folder with ``config.json`` and ``*.safetensors``.
    Returns:
        ``{file name: sha256}``.
    Raises:
        FileNotFoundError: not a model folder.
    """
    folder = Path(model_dir)
    weights = sorted(p.name for p in folder.glob("*.safetensors") if not p.name.startswith("safety_heads"))
    if not (folder / "config.json").is_file() or not weights:
        raise FileNotFoundError(f"{folder} is not a model folder (config.json and *.safetensors expected)")
    return {name: sha256_file(folder / name) for name in ["config.json", *weights]}


def fingerprint_id(fingerprint: Mapping[str, str]) -> str:
    """A short hex id (16 characters) of a ``model_fingerprint``."""
    return hashlib.sha256(json.dumps(dict(sorted(fingerprint.items()))).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        with suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
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

    Numbers go through ``log``; findings (booleans, one-line conclusions) through ``verdict`` and the figure that
    sums the stage up through ``headline``: the pipeline's index shows those two. Explained in every notebook's
    first cells.
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

    def verdict(self, **findings: Any) -> None:
        """Log findings and mark them as the stage's verdicts: what the pipeline's index shows for this stage.

        A finding is what the stage concludes, not a measurement: a boolean, a one-line conclusion or a name, a
        number that is itself the conclusion, None for "not measured", or a list or a one-level mapping of those
        (a group of checks). Each is logged like ``log`` and its name appended to the ``verdicts`` list.

        Args:
            findings: name -> value, usually the output of a package verdict function.
        Raises:
            ValueError: a reserved name (``verdicts``, ``headline``), a text of more than one line, or a value that
                is not a finding (a table, a nested structure).
        """
        ready = {}
        for name, value in findings.items():
            if name in (VERDICTS, HEADLINE):
                raise ValueError(f"verdict {name!r}: the name is reserved")
            ready[name] = json_ready(value)
            if not _is_finding(ready[name]):
                raise ValueError(
                    f"verdict {name!r}: {value!r:.80} is not a finding (a bool, a number, one line of text, None, "
                    "or a list or one-level mapping of those)"
                )
        names = list(self.metrics.get(VERDICTS, []))
        self.log(**ready, verdicts=names + [n for n in ready if n not in names])

    def headline(self, filename: str) -> None:
        """Name the figure that sums the stage up; the index embeds a thumbnail of it.

        Args:
            filename: an image (PNG or JPEG) the stage already wrote into its folder, e.g. ``"phase_transition.png"``.
        Raises:
            ValueError: not a PNG or JPEG name.
            FileNotFoundError: the stage folder has no such file (save the figure first).
        """
        if Path(filename).suffix.lower() not in HEADLINE_SUFFIXES:
            raise ValueError(f"headline {filename!r}: expected an image file ({', '.join(HEADLINE_SUFFIXES)})")
        if not self.path(filename).is_file():
            raise FileNotFoundError(f"headline {filename!r}: no such file in {self.dir} (save the figure first)")
        self.log(headline=filename)

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


def _is_finding(value: Any, depth: int = 0) -> bool:
    """A JSON-ready value fit for the index: a scalar or one line of text, or a list / mapping of those."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return "\n" not in value.strip()
    if depth == 0 and isinstance(value, list):
        return all(_is_finding(v, 1) for v in value)
    if depth == 0 and isinstance(value, dict):
        return all(_is_finding(v, 1) for v in value.values())
    return False


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
