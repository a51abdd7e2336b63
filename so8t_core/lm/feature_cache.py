"""Features computed once per model and input set, kept on disk as safetensors.

A real model's forward pass over a few thousand prompts costs minutes on two cores; every study that reads its
states (pooled prompt states for the safety heads, final states at answer positions for the head study) reads
them from here instead. The key is everything the features depend on: the model's weights (the sha256 the
real-model manifest records, or of the weight files), the inputs (hashed), and how the features were taken (e.g.
layer, pooling, ``max_length``). A changed model, prompt set or recipe is a different file; nothing is ever
updated in place. Files are written atomically, so a crash leaves either the whole entry or none.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from so8t_core.config import REPO_ROOT

Features = dict[str, torch.Tensor]


def cache_dir() -> Path:
    """Where features live: ``$SO8T_FEATURES_DIR`` or the git-ignored ``.cache/features``."""
    return Path(os.environ.get("SO8T_FEATURES_DIR", REPO_ROOT / ".cache" / "features")).resolve()


def model_fingerprint(model_dir: str | Path) -> str:
    """The sha256 of a model folder's weights: the real-model manifest's record, else hashed from the files.

    Args:
        model_dir: a folder holding ``*.safetensors`` (and, for converted real models, ``manifest.json``).
    Returns:
        A hex digest that changes whenever any weight file changes.
    Raises:
        FileNotFoundError: the folder holds no safetensors file.
    """
    d = Path(model_dir)
    manifest = d / "manifest.json"
    if manifest.is_file():
        weights = json.loads(manifest.read_text(encoding="utf-8")).get("weights")
        if weights:
            return digest(weights)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{d} holds no *.safetensors file to fingerprint")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def digest(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys); lists of prompts, dicts of settings, ..."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def entry_path(kind: str, key: Mapping[str, Any], root: str | Path | None = None) -> Path:
    """The file that holds features of ``kind`` (a short name, e.g. ``pooled``) for ``key``."""
    if not kind.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"feature kind {kind!r} must be a short name of letters, digits, '-' and '_'")
    return Path(root or cache_dir()) / kind / f"{digest(dict(key))[:32]}.safetensors"


def cached(
    kind: str,
    key: Mapping[str, Any],
    compute: Callable[[], Mapping[str, torch.Tensor]],
    root: str | Path | None = None,
) -> tuple[Features, bool]:
    """Features for ``key``, from disk when present, else computed once and stored.

    Args:
        kind: a short name for the kind of feature (a sub-folder).
        key: everything the features depend on (JSON-serialisable); stored beside them and checked on read.
        compute: returns named tensors; they are stored contiguous on the CPU.
        root: cache folder (default ``cache_dir()``).
    Returns:
        ``(features, hit)``, ``hit`` True when they came from disk.
    """
    path = entry_path(kind, key, root)
    meta = {"key": json.dumps(dict(key), sort_keys=True, ensure_ascii=False, default=str)}
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            stored = (fh.metadata() or {}).get("key")
        if stored == meta["key"]:
            return load_file(str(path)), True
    feats = {k: v.detach().to("cpu").contiguous() for k, v in compute().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(feats, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return feats, False
