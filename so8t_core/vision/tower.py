"""The vision tower (SigLIP or CLIP, frozen): the embedded tiny one, loading a real one offline, and the frozen
soul LM of notebook 03 that the visual adapter feeds.

Explained in notebooks/05_visual_adapter.ipynb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from so8t_core.config import check
from so8t_core.gate.soul import SoulWrapper
from so8t_core.vision.data import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, ImageSpec

TOWER_TYPES = ("siglip_vision_model", "clip_vision_model")


class VisionTowerUnavailable(OSError):
    """A vision tower that is neither a local folder nor in the Hugging Face cache."""


def image_spec(tower: nn.Module) -> ImageSpec:
    """The ``ImageSpec`` of a SigLIP or CLIP vision model (size from its config, its family's mean/std)."""
    cfg = tower.config
    mean, std = (CLIP_MEAN, CLIP_STD) if cfg.model_type.startswith("clip") else (SIGLIP_MEAN, SIGLIP_STD)
    return ImageSpec(int(cfg.image_size), mean, std)


def tiny_siglip_config(
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
):
    """A small ``SiglipVisionConfig`` for the embedded default tower (notebook 05 pretrains it)."""
    from transformers import SiglipVisionConfig

    check(image_size % patch_size == 0, "image_size", image_size, f"must be a multiple of patch_size={patch_size}")
    return SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
    )


def build_vision_tower(config: Any, seed: int = 0) -> nn.Module:
    """A ``SiglipVisionModel`` with random weights drawn under ``seed``."""
    from transformers import SiglipVisionModel

    torch.manual_seed(seed)
    return SiglipVisionModel(config)


def load_vision_tower(source: str | Path, local_files_only: bool = True) -> nn.Module:
    """Load a SigLIP or CLIP vision tower from a folder or a hub id, never touching the network by default.

    Args:
        source: a model folder, or a hub id present in the Hugging Face cache (``hf download <id>``).
        local_files_only: keep True on the offline real path.
    Returns:
        ``SiglipVisionModel`` or ``CLIPVisionModel`` (a full SigLIP/CLIP checkpoint gives its vision half).
    Raises:
        VisionTowerUnavailable: not a folder and not cached (names the fix).
        ValueError: the checkpoint is neither SigLIP nor CLIP.
    Explained in notebooks/05_visual_adapter.ipynb.
    """
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    src = str(Path(source).expanduser()) if Path(source).expanduser().exists() else str(source)
    try:
        cfg = AutoConfig.from_pretrained(src, local_files_only=local_files_only)
    except OSError as exc:
        raise VisionTowerUnavailable(
            f"vision tower {str(source)!r} is not a local folder and not in the Hugging Face cache: download it "
            f"where there is network (`hf download {source}`) or pass a local folder ({exc})"
        ) from exc
    kind = cfg.model_type
    check(kind in ("siglip", "clip", *TOWER_TYPES), "vision tower model_type", kind, f"expected SigLIP or CLIP ({src})")
    cls = SiglipVisionModel if kind.startswith("siglip") else CLIPVisionModel
    return cls.from_pretrained(src, local_files_only=local_files_only)


def load_soul_lm(stage00: str | Path, soul_dir: str | Path) -> tuple[SoulWrapper, Any]:
    """Notebook 00's base with notebook 03's LoRA adapter and soul applied, all frozen; and the tokenizer.

    Args:
        stage00: notebook 00's stage folder (``require("00_base_model")``).
        soul_dir: notebook 03's ``soul/`` folder (adapter files + ``soul.safetensors``).
    Returns:
        ``(SoulWrapper, tokenizer)``.
    """
    from peft import PeftModel

    from so8t_core.lm.loading import load_base

    base, tok, _ = load_base(Path(stage00))
    soul_dir = Path(soul_dir)
    model = PeftModel.from_pretrained(base, soul_dir) if (soul_dir / "adapter_config.json").exists() else base
    return freeze(SoulWrapper.load(soul_dir, model)), tok


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients into ``module`` and put it in eval mode (dropout off); returns it."""
    module.requires_grad_(False)
    return module.eval()
