"""Stage 05's config: the vision tower, the visual adapter and its fusion."""

from __future__ import annotations

from dataclasses import dataclass

from so8t_core.config.common import MAPS, StageConfig, check, check_threads, require_positive


@dataclass(frozen=True)
class VisualStageConfig(StageConfig):
    """Stage 05: vision tower pretraining, visual adapter + fusion training, and the held-out comparison."""

    seed: int = 0
    vision_tower: str = ""  # "" = the embedded tiny SigLIP pretrained in the notebook; else a folder or cached hub id
    image_size: int = 32
    patch_size: int = 8
    tower_hidden: int = 64
    tower_layers: int = 2
    tower_heads: int = 4
    render_size: int = 64
    n_train: int = 1500
    n_heldout: int = 200
    word_fraction: float = 0.3
    pretrain_steps: int = 600
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    adapter_steps: int = 60
    adapter_batch: int = 32
    adapter_lr: float = 1e-2
    map: str = "cayley"
    fusion_heads: int = 4
    init_visual_weight: float = 0.1
    ocr_lang: str = "jpn+eng"
    run_ocr: bool = True
    run_ablations: bool = True
    n_examples: int = 8
    seeds: int = 3  # adapter trainings per variant (init and batch order; a random tower's weights); >= 3
    n_boot: int = 1000
    torch_threads: int = 0  # 0 keeps torch's default (all cores); see Stage

    def __post_init__(self) -> None:
        require_positive(
            self,
            "image_size",
            "patch_size",
            "tower_hidden",
            "tower_layers",
            "tower_heads",
            "n_train",
            "n_heldout",
            "pretrain_batch",
            "pretrain_lr",
            "adapter_steps",
            "adapter_batch",
            "adapter_lr",
            "fusion_heads",
            "seeds",
            "n_boot",
        )
        check(self.pretrain_steps >= 0, "pretrain_steps", self.pretrain_steps, "must be >= 0")
        check(self.n_examples >= 0, "n_examples", self.n_examples, "must be >= 0")
        check(
            self.image_size % self.patch_size == 0,
            "image_size",
            self.image_size,
            f"must be a multiple of patch_size={self.patch_size}",
        )
        check(
            self.tower_hidden % self.tower_heads == 0,
            "tower_heads",
            self.tower_heads,
            f"must divide tower_hidden={self.tower_hidden}",
        )
        check(self.render_size >= 32, "render_size", self.render_size, "must be >= 32 pixels")
        check(0.0 <= self.word_fraction <= 1.0, "word_fraction", self.word_fraction, "must be in [0, 1]")
        check(0.0 < self.init_visual_weight < 1.0, "init_visual_weight", self.init_visual_weight, "must be in (0, 1)")
        check(self.map in MAPS, "map", self.map, f"must be one of {MAPS}")
        check_threads(self)
