"""GGUF export with llama.cpp's own converter, and parity measured in llama.cpp itself.

The converter (``convert_hf_to_gguf.py`` with its ``conversion/`` package and bundled ``gguf-py``) comes from the
pinned llama-cpp-python source distribution, unpacked by ``scripts/setup_llama_cpp.sh`` into the git-ignored
``.cache/llama.cpp/`` and run as a subprocess; the runtime is the llama-cpp-python package. f32, f16 and q8_0 are
written by the converter (``--outtype``); q4_k_m by llama.cpp's quantizer (``llama_model_quantize``) from the f32
file. K-quants work on rows of 256 values: a tensor whose rows are shorter (a tiny model) is stored in a fallback
type chosen by llama.cpp, which ``tensor_types`` reports.

Parity feeds llama.cpp the token ids transformers saw (no re-tokenisation) with an f32 KV cache and all logits
kept, and compares logits position by position.

Explained in notebooks/04_fusion_and_gguf.ipynb.
"""

from __future__ import annotations

import ctypes
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from so8t_core.artifacts import atomic_path
from so8t_core.config import REPO_ROOT, check
from so8t_core.verdicts import need

LLAMA_CPP_VERSION = "0.3.36"
SETUP = "make setup (or: bash scripts/setup_llama_cpp.sh .venv/bin/python)"
CONVERTER_TYPES = ("f32", "f16", "q8_0")
QUANTIZER_TYPES = {"q4_k_m": 15}  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_K_M
GGUF_TYPES = CONVERTER_TYPES + tuple(QUANTIZER_TYPES)
GGML_TYPE_F32 = 0  # KV cache type for exact comparisons


class LlamaCppMissing(RuntimeError):
    """The GGUF converter cache or the llama-cpp-python runtime is not installed (the message says how)."""


class GGUFError(RuntimeError):
    """A conversion or quantisation that failed; no output file was left behind."""


def llama_cpp_dir() -> Path:
    """Where the converter is cached: ``$SO8T_LLAMA_CPP_DIR`` or ``.cache/llama.cpp`` in the repo."""
    return Path(os.environ.get("SO8T_LLAMA_CPP_DIR", REPO_ROOT / ".cache" / "llama.cpp")).resolve()


def converter_script() -> Path:
    """Path of ``convert_hf_to_gguf.py``; raises LlamaCppMissing naming the set-up command."""
    script = llama_cpp_dir() / "convert_hf_to_gguf.py"
    if not (script.is_file() and (script.parent / "gguf-py" / "gguf").is_dir()):
        raise LlamaCppMissing(f"llama.cpp's GGUF converter is not in {script.parent}: run {SETUP}")
    return script


def require_llama_cpp() -> Any:
    """The ``llama_cpp`` module; raises LlamaCppMissing naming the set-up command."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlamaCppMissing(f"llama-cpp-python=={LLAMA_CPP_VERSION} is not installed: run {SETUP}") from exc
    return llama_cpp


def missing_setup() -> str | None:
    """Why GGUF work cannot run here (converter or runtime missing), or None when it can."""
    try:
        converter_script()
        require_llama_cpp()
    except LlamaCppMissing as exc:
        return str(exc)
    return None


def _check_overwrite(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: refusing to overwrite it (pass overwrite=True)")


def local_folder(base_model: str | Path) -> Path:
    """A model folder the converter can read: ``base_model`` itself, or a hub id's snapshot in the local cache."""
    if Path(base_model).expanduser().is_dir():
        return Path(base_model).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(base_model), local_files_only=True))


def convert_to_gguf(hf_dir: str | Path, out_path: str | Path, outtype: str = "f32", overwrite: bool = False) -> Path:
    """Convert a Hugging Face folder to GGUF with llama.cpp's ``convert_hf_to_gguf.py``.

    Args:
        hf_dir: model folder (config, safetensors, tokenizer files incl. ``tokenizer.model``).
        out_path: the ``.gguf`` file to write.
        outtype: ``f32``, ``f16`` or ``q8_0``.
        overwrite: replace an existing ``out_path``.
    Returns:
        ``out_path``.
    Raises:
        LlamaCppMissing: the converter is not set up.
        GGUFError: the converter failed (its last output lines are in the message).
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    check(outtype in CONVERTER_TYPES, "outtype", outtype, f"must be one of {CONVERTER_TYPES}")
    script, out = converter_script(), Path(out_path)
    _check_overwrite(out, overwrite)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent / "gguf-py"), str(script.parent)])}
    with atomic_path(out) as tmp:
        cmd = [sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(tmp)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise GGUFError(f"convert_hf_to_gguf.py failed on {hf_dir} ({outtype}):\n{tail}")
    return out


def quantize_gguf(
    src: str | Path, out_path: str | Path, qtype: str = "q4_k_m", overwrite: bool = False, nthread: int = 0
) -> Path:
    """Quantise an f32/f16 GGUF with llama.cpp's quantizer (``llama_model_quantize``).

    Args:
        src: an f32 or f16 ``.gguf``.
        out_path: the file to write.
        qtype: ``q4_k_m``.
        overwrite: replace an existing ``out_path``.
        nthread: quantizer threads (0: all cores).
    Returns:
        ``out_path``.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    check(qtype in QUANTIZER_TYPES, "qtype", qtype, f"must be one of {tuple(QUANTIZER_TYPES)}")
    llama_cpp = require_llama_cpp()
    check(Path(src).is_file(), "src", str(src), "is not a file")
    out = Path(out_path)
    _check_overwrite(out, overwrite)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = QUANTIZER_TYPES[qtype], nthread
    with atomic_path(out) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise GGUFError(f"llama_model_quantize({src} -> {qtype}) returned {rc}")
    return out


def export_gguf(
    hf_dir: str | Path,
    out_dir: str | Path,
    types: Sequence[str] = GGUF_TYPES,
    stem: str = "model",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``<stem>-<type>.gguf`` for each type into ``out_dir``; q4_k_m is quantised from the f32 file.

    Args:
        hf_dir: the Hugging Face folder.
        out_dir: folder for the ``.gguf`` files.
        types: any of ``GGUF_TYPES``.
        stem: file name prefix.
        overwrite: replace existing files.
    Returns:
        type -> path.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    unknown = [t for t in types if t not in GGUF_TYPES]
    check(not unknown, "types", unknown, f"must be among {GGUF_TYPES}")
    out_dir = Path(out_dir)
    paths = {t: out_dir / f"{stem}-{t}.gguf" for t in types}
    if not overwrite and (taken := [str(p) for p in paths.values() if p.exists()]):
        raise FileExistsError(f"{taken} exist: refusing to overwrite them (pass overwrite=True)")
    f32 = paths.get("f32") or out_dir / f".{stem}-f32-for-quantizer.gguf"
    try:
        if "f32" in types or any(t in QUANTIZER_TYPES for t in types):
            convert_to_gguf(hf_dir, f32, "f32", overwrite=True)
        for t in types:
            if t in QUANTIZER_TYPES:
                quantize_gguf(f32, paths[t], t, overwrite=True)
            elif t != "f32":
                convert_to_gguf(hf_dir, paths[t], t, overwrite=True)
    finally:
        if "f32" not in types:
            f32.unlink(missing_ok=True)
    return paths


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type a ``.gguf`` holds (read with the converter's gguf-py)."""
    gguf_py = str(converter_script().parent / "gguf-py")
    if gguf_py not in sys.path:
        sys.path.insert(0, gguf_py)  # the reader that matches the writer that made the file
    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors))


# --- running in llama.cpp ---


def open_llama(path: str | Path, n_ctx: int, logits_all: bool = True, n_threads: int | None = None) -> Any:
    """A llama-cpp-python ``Llama`` for comparisons: f32 KV cache, every position's logits kept, quiet.

    Args:
        path: the ``.gguf`` file.
        n_ctx: context length (longest row evaluated).
        logits_all: keep logits of all positions (needed for parity and perplexity).
        n_threads: CPU threads (default: llama-cpp-python's).
    Returns:
        The ``Llama``.
    """
    llama_cpp = require_llama_cpp()
    kw = {} if n_threads is None else {"n_threads": n_threads, "n_threads_batch": n_threads}
    return llama_cpp.Llama(
        str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=logits_all,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
        seed=0,
        **kw,
    )


def llama_logits(llm: Any, ids: Sequence[int]) -> np.ndarray:
    """(T, V) float32 logits of ``ids`` in llama.cpp, from an empty context."""
    check(0 < len(ids) <= llm.n_ctx(), "ids", len(ids), f"must hold 1..{llm.n_ctx()} tokens")
    llm.reset()
    llm.eval(list(map(int, ids)))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def nll_from_logits(logits: np.ndarray, ids: Sequence[int]) -> tuple[float, int]:
    """Summed next-token NLL of ``ids`` under (T, V) ``logits`` (logits[t] predicts ids[t+1]), and its count."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float32))[:-1]  # (T-1, V)
    target = torch.as_tensor(list(ids[1:]), dtype=torch.long)  # (T-1,)
    nll = torch.nn.functional.cross_entropy(x.double(), target, reduction="sum")
    return nll.item(), len(target)


@torch.no_grad()
def hf_row_logits(model: Any, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """(T, V) float32 logits of each row in transformers, one unpadded row at a time."""
    device = next(model.parameters()).device
    return [model(input_ids=torch.tensor([list(r)], device=device)).logits[0].float().cpu().numpy() for r in rows]


def logit_parity(
    reference: Sequence[np.ndarray], other: Sequence[np.ndarray], rows: Sequence[Sequence[int]]
) -> dict[str, float]:
    """Max |Δlogit|, top-1 agreement and both perplexities over rows (reference = transformers).

    Returns:
        ``{"max_abs_diff", "top1_agreement", "ppl", "ppl_reference", "ppl_rel_diff", "positions"}``.
    """
    diff, agree, n_pos, nll, nll_ref, n_tgt = 0.0, 0, 0, 0.0, 0.0, 0
    for a, b, ids in zip(reference, other, rows, strict=True):
        diff = max(diff, float(np.abs(a - b).max()))
        agree, n_pos = agree + int((a.argmax(-1) == b.argmax(-1)).sum()), n_pos + len(ids)
        (s, n), (s_ref, _) = nll_from_logits(b, ids), nll_from_logits(a, ids)
        nll, nll_ref, n_tgt = nll + s, nll_ref + s_ref, n_tgt + n
    check(n_tgt > 0, "rows", len(rows), "hold no prediction targets (need rows of >= 2 tokens)")
    ppl, ppl_ref = math.exp(nll / n_tgt), math.exp(nll_ref / n_tgt)
    return {
        "max_abs_diff": diff,
        "top1_agreement": agree / n_pos,
        "ppl": ppl,
        "ppl_reference": ppl_ref,
        "ppl_rel_diff": ppl / ppl_ref - 1.0,
        "positions": n_pos,
    }


def gguf_parity(
    model: Any, gguf_paths: dict[str, Path], rows: Sequence[Sequence[int]], n_threads: int | None = None
) -> list[dict[str, Any]]:
    """One row per GGUF type: parity in llama.cpp against ``model`` in transformers on the same token ids.

    Args:
        model: the transformers model the files were converted from (float32 for the strictest comparison).
        gguf_paths: type -> ``.gguf`` (from ``export_gguf``).
        rows: token id lists (held-out documents, each at most the context length).
        n_threads: llama.cpp threads.
    Returns:
        ``[{"type", "file_mb", "max_abs_diff", "top1_agreement", "ppl", "ppl_reference", "ppl_rel_diff",
        "positions"}, ...]``.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    reference = hf_row_logits(model, rows)
    n_ctx = max(len(r) for r in rows)
    table = []
    for t, path in gguf_paths.items():
        llm = open_llama(path, n_ctx, n_threads=n_threads)
        got = [llama_logits(llm, r) for r in rows]
        del llm
        table.append({"type": t, "file_mb": Path(path).stat().st_size / 2**20, **logit_parity(reference, got, rows)})
    return table


def parity_targets(wrapper_parity: Mapping[str, float], table: Sequence[Mapping[str, Any]]) -> dict[str, bool | None]:
    """Notebook 04's parity targets from the fused-vs-wrapper check and ``gguf_parity``'s rows.

    Args:
        wrapper_parity: ``{"max_abs_diff", "top1_agreement"}`` of the fused model against the soul wrapper.
        table: ``gguf_parity`` rows (``type``, ``max_abs_diff``, ``top1_agreement``, ``ppl``); f32 is required,
            f16 and q8_0 are judged when exported (else ``None``: not measured).
    Returns:
        ``fused_vs_wrapper_max_abs_le_1e-4``, ``f32_max_abs_le_1e-3_and_top1_100``, ``f16_top1_ge_99``,
        ``q8_0_ppl_within_1pct_of_f32``.
    Raises:
        KeyError: no f32 row, or a row or the wrapper check lacks a field.
    """
    what = "parity_targets"
    by = {r["type"]: r for r in table}
    f32 = need(by, "f32", what)
    return {
        "fused_vs_wrapper_max_abs_le_1e-4": need(wrapper_parity, "max_abs_diff", what) <= 1e-4,
        "f32_max_abs_le_1e-3_and_top1_100": need(f32, "max_abs_diff", what) <= 1e-3
        and need(f32, "top1_agreement", what) == 1.0,
        "f16_top1_ge_99": need(by["f16"], "top1_agreement", what) >= 0.99 if "f16" in by else None,
        "q8_0_ppl_within_1pct_of_f32": abs(need(by["q8_0"], "ppl", what) / need(f32, "ppl", what) - 1.0) <= 0.01
        if "q8_0" in by
        else None,
    }
