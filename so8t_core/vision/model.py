"""Visual adapter: a frozen vision tower's patch features become prefix tokens of the frozen soul LM.

    pixels --tower (frozen)--> F (B, N, Dv) --adapter--> P (B, N, H)
    adapter(F) = R_so8( LayerNorm( W2 GELU(W1 F) ) )            (the last step is an exact block rotation)
    h      = decoder(inputs_embeds = [P ; E(text)], mask = [1 ; text mask])[:, N:]   (as LLaVA does)
    t      = h + sigmoid(alpha) R_soul h                        (the text soul of notebook 03, frozen)
    logits = lm_head( fusion(t, P) )

``AdapterFusionLayer`` sits where the soul already acts, between the final norm and ``lm_head``: it fuses each text
position's soul-mixed state ``t`` with a summary of the visual prefix pooled by attention with ``t`` as the query
(so a colour question and a count question read different visual features). That placement is well
defined for any causal LM (it needs only the final hidden state), leaves the decoder untouched, and gives the
visual path a direct route to the logits besides the decoder's own attention to the prefix. Without an image (or
with an empty prefix) the fusion is skipped and the logits are exactly the soul LM's. Only the adapter and the
fusion layer train; the LM, its LoRA, the soul and the tower stay frozen.

Explained in notebooks/05_visual_adapter.ipynb.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from so8t_core.artifacts import atomic_path, write_json_atomic
from so8t_core.config import check
from so8t_core.gate.rotation import MAPS, BlockSO8Rotation
from so8t_core.gate.soul import SoulWrapper, _causal_lm, causal_lm_loss
from so8t_core.vision.data import ImageInputError, ImageSpec, to_pixels
from so8t_core.vision.tower import (
    VisionTowerUnavailable,
    build_vision_tower,
    freeze,
    image_spec,
    load_soul_lm,
    load_vision_tower,
    tiny_siglip_config,
)

__all__ = [
    "AdapterFusionLayer",
    "ImageInputError",
    "ImageSpec",
    "VisionTowerUnavailable",
    "VisualConfig",
    "VisualLM",
    "VisualOutput",
    "VisualProjectionAdapter",
    "build_vision_tower",
    "freeze",
    "image_spec",
    "load_soul_lm",
    "load_vision_tower",
    "load_visual",
    "save_visual",
    "tiny_siglip_config",
    "to_pixels",
]

METHODS = ("weighted", "attention")
VISUAL_FILE, VISUAL_CONFIG = "visual.safetensors", "visual_config.json"


# --- adapter and fusion ---


class VisualProjectionAdapter(nn.Module):
    """Linear -> GELU -> Linear -> LayerNorm -> block SO(8) rotation, from tower width to LM width.

    Args:
        vision_hidden: width Dv of the tower's patch features.
        lm_hidden: the language model's hidden size H (a multiple of 8).
        mlp_hidden: width of the middle layer (default H).
        map: rotation map, "cayley" or "exp".
        out_scale: initial LayerNorm gain; set it to the LM's embedding RMS so prefix tokens start at the scale of
            the text embeddings they sit beside (LayerNorm alone would make them ~50x larger on a tiny LM).

    Explained in notebooks/05_visual_adapter.ipynb.
    """

    def __init__(
        self,
        vision_hidden: int,
        lm_hidden: int,
        mlp_hidden: int | None = None,
        map: str = "cayley",
        out_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check(vision_hidden > 0, "vision_hidden", vision_hidden, "must be > 0")
        check(lm_hidden > 0 and lm_hidden % 8 == 0, "lm_hidden", lm_hidden, "must be a positive multiple of 8")
        check(out_scale > 0, "out_scale", out_scale, "must be > 0")
        self.vision_hidden, self.lm_hidden = vision_hidden, lm_hidden
        self.fc1 = nn.Linear(vision_hidden, mlp_hidden or lm_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_hidden or lm_hidden, lm_hidden)
        self.norm = nn.LayerNorm(lm_hidden)
        nn.init.constant_(self.norm.weight, out_scale)
        self.rotation = BlockSO8Rotation(lm_hidden, map)

    def normed(self, features: Tensor) -> Tensor:
        """The LayerNorm output before the rotation, (B, N, H)."""
        if features.ndim != 3 or features.shape[-1] != self.vision_hidden:
            raise ValueError(
                f"vision features of shape {tuple(features.shape)}: this adapter was built for "
                f"(batch, tokens, {self.vision_hidden}); rebuild it for the tower's hidden size"
            )
        return self.norm(self.fc2(self.act(self.fc1(features.float()))))

    def forward(self, features: Tensor) -> Tensor:
        return self.rotation(self.normed(features))


class AdapterFusionLayer(nn.Module):
    """Fuses the soul-mixed text state with an attention-pooled visual summary, before ``lm_head``.

    Each text position pools the visual prefix P (B, N, H) with itself as the query, s_t = MHA(t, P, P) (queries
    and keys layer-normed); then
    ``weighted``: fused = w_text t + w_vis s, (w_text, w_vis) = softmax(two learned logits), summing to 1;
    ``attention``: per position, multi-head attention with query t over the two paths {t, s_t} (AdapterFusion's
    query-over-adapters form), fused = t + MHA(t, [t, s_t]); its output projection starts at zero, so the layer
    starts as the identity.

    Args:
        hidden_size: H.
        method: "weighted" or "attention".
        num_heads: heads of the pooling and fusion attention (divides H).
        init_visual_weight: starting w_vis of the weighted sum (small, so training starts near the text model).

    Explained in notebooks/05_visual_adapter.ipynb.
    """

    def __init__(
        self, hidden_size: int, method: str = "weighted", num_heads: int = 4, init_visual_weight: float = 0.1
    ) -> None:
        super().__init__()
        check(method in METHODS, "method", method, f"must be one of {METHODS}")
        check(num_heads > 0 and hidden_size % num_heads == 0, "num_heads", num_heads, f"must divide {hidden_size}")
        check(0.0 < init_visual_weight < 1.0, "init_visual_weight", init_visual_weight, "must be in (0, 1)")
        self.hidden_size, self.method = hidden_size, method
        # queries and keys are layer-normed: the LM's final states have norms of ~sqrt(H) and would otherwise
        # saturate the attention softmax (one path or one token gets all the weight, and no gradient flows)
        self.norm_text, self.norm_visual = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
        # a small LM's final states share one large common direction (cosine ~0.999 between question types on the
        # embedded default); ``calibrate`` stores their mean so queries see only the part that varies
        self.register_buffer("text_mean", torch.zeros(hidden_size))
        self.pool = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        if method == "weighted":
            w = init_visual_weight
            self.path_logits = nn.Parameter(torch.tensor([math.log(1 - w), math.log(w)]))
        else:
            self.norm_paths = nn.LayerNorm(hidden_size)
            self.fuse = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
            nn.init.zeros_(self.fuse.out_proj.weight)
            nn.init.zeros_(self.fuse.out_proj.bias)

    @torch.no_grad()
    def calibrate(self, text: Tensor, mask: Tensor | None = None) -> None:
        """Store the mean soul-mixed text state over the unmasked positions of a sample batch, (B, T, H)."""
        keep = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if mask is None else mask.bool()
        self.text_mean.copy_(text[keep].float().mean(0))

    def summary(self, text: Tensor, visual: Tensor) -> Tensor:
        """Visual summary per text position, s_t = MHA(LN(t - mean), LN(P), LN(P)), (B, T, H)."""
        kv = self.norm_visual(visual.to(text.dtype))
        return self.pool(self.norm_text(text - self.text_mean), kv, kv, need_weights=False)[0]

    def _attend_paths(self, text: Tensor, visual: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        B, T, H = text.shape
        centred = text - self.text_mean
        paths = torch.stack([centred, self.summary(text, visual)], dim=2).reshape(B * T, 2, H)  # (B*T, paths, H)
        q = self.norm_text(centred).reshape(B * T, 1, H)  # (B*T, 1, H)
        out, w = self.fuse(q, self.norm_paths(paths), paths, need_weights=need_weights)
        return out.reshape(B, T, H), None if w is None else w.reshape(B, T, 2)

    def path_weights(self, text: Tensor, visual: Tensor) -> Tensor:
        """Weights of (text, visual) per position, (B, T, 2); rows sum to 1 (head-averaged for attention)."""
        B, T, _ = text.shape
        if self.method == "weighted":
            return torch.softmax(self.path_logits, 0).expand(B, T, 2)
        return self._attend_paths(text, visual, need_weights=True)[1]

    def forward(self, text: Tensor, visual: Tensor | None = None) -> Tensor:
        if visual is None or visual.shape[1] == 0:
            return text  # the text-only model, unchanged
        check(
            visual.ndim == 3 and visual.shape[0] == text.shape[0] and visual.shape[-1] == self.hidden_size,
            "visual.shape",
            tuple(visual.shape),
            f"expected ({text.shape[0]}, tokens, {self.hidden_size})",
        )
        if self.method == "weighted":
            w = torch.softmax(self.path_logits, 0)
            return w[0] * text + w[1] * self.summary(text, visual)
        return text + self._attend_paths(text, visual, need_weights=False)[0]


# --- the combined model ---


@dataclass
class VisualOutput:
    """``VisualLM.forward``: LM loss (None without labels) and logits of the text positions (B, T, V)."""

    loss: Tensor | None
    logits: Tensor


class VisualLM(nn.Module):
    """The frozen soul LM with a frozen tower, a trainable adapter and a trainable fusion layer.

    Args:
        soul: notebook 03's ``SoulWrapper`` (base + LoRA + soul); frozen here.
        tower: a SigLIP/CLIP vision model; frozen here.
        adapter: built for the tower's hidden size and the LM's.
        fusion: built for the LM's hidden size.

    Explained in notebooks/05_visual_adapter.ipynb.
    """

    def __init__(
        self, soul: SoulWrapper, tower: nn.Module, adapter: VisualProjectionAdapter, fusion: AdapterFusionLayer
    ) -> None:
        super().__init__()
        H, Dv = soul.config.hidden_size, int(tower.config.hidden_size)
        check(
            adapter.vision_hidden == Dv,
            "adapter.vision_hidden",
            adapter.vision_hidden,
            f"the vision tower's hidden size is {Dv}: build the adapter for it",
        )
        check(adapter.lm_hidden == H, "adapter.lm_hidden", adapter.lm_hidden, f"the LM's hidden size is {H}")
        check(fusion.hidden_size == H, "fusion.hidden_size", fusion.hidden_size, f"the LM's hidden size is {H}")
        self.soul, self.tower = freeze(soul), freeze(tower)
        device = _causal_lm(soul.model).get_input_embeddings().weight.device
        self.adapter, self.fusion, self.spec = adapter.to(device), fusion.to(device), image_spec(tower)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.adapter.parameters(), *self.fusion.parameters()]

    def train(self, mode: bool = True) -> VisualLM:
        """Only the adapter and fusion change mode; the frozen parts stay in eval (no dropout).

        Exception: when the LM has gradient checkpointing on, its decoder layers (those modules alone, not their
        dropout children) follow ``mode``, because transformers only checkpoints a layer in training mode, and
        a frozen LM still carries the prefix's gradient through every layer's activations.
        """
        self.training = mode
        self.adapter.train(mode), self.fusion.train(mode)
        for layer in _causal_lm(self.soul.model).get_decoder().layers:
            if getattr(layer, "gradient_checkpointing", False):  # set by gradient_checkpointing_enable()
                layer.training = mode
        return self

    def visual_prefix(self, pixel_values: Tensor) -> Tensor:
        """Adapter output for a pixel batch, (B, N, H) in float32.

        Raises:
            ValueError: ``pixel_values`` is not (B, 3, S, S) at the tower's size (``to_pixels`` converts any image).
        """
        S = self.spec.size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, S, S) or pixel_values.shape[0] == 0:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)}: expected (batch >= 1, 3, {S}, {S}); "
                "convert images with so8t_core.vision.data.to_pixels(images, vlm.spec)"
            )
        with torch.no_grad():
            p = next(self.tower.parameters())
            feats = self.tower(pixel_values=pixel_values.to(p.device, p.dtype)).last_hidden_state
        return self.adapter(feats.float())

    def text_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The fusion layer's inputs: soul-mixed text states (B, T, H) in float32, computed by the decoder with the
        visual prefix in front, and that prefix (B, N, H) in float32 (N = 0 without an image)."""
        lm = _causal_lm(self.soul.model)
        embed = lm.get_input_embeddings()
        input_ids = input_ids.to(embed.weight.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
        text = embed(input_ids)  # (B, T, H)
        if prefix is None and pixel_values is not None:
            prefix = self.visual_prefix(pixel_values)
        if prefix is None:
            prefix = text.new_zeros(text.shape[0], 0, text.shape[-1])
        N = prefix.shape[1]
        embeds = torch.cat([prefix.to(text.device, text.dtype), text], dim=1)  # (B, N + T, H)
        full_mask = torch.cat([mask.new_ones(mask.shape[0], N), mask], dim=1)
        h = lm.get_decoder()(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state[:, N:]
        return self.soul.mix(h), prefix.to(text.device).float()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> VisualOutput:
        t, prefix = self.text_states(input_ids, attention_mask, pixel_values, prefix)
        fused = self.fusion(t, prefix if prefix.shape[1] else None)
        head = _causal_lm(self.soul.model).get_output_embeddings()
        logits = head(fused.to(head.weight.dtype)).float()
        loss = causal_lm_loss(logits, labels.to(logits.device)) if labels is not None else None
        return VisualOutput(loss, logits)


# --- saving ---


@dataclass(frozen=True)
class VisualConfig:
    """What rebuilds an adapter + fusion pair (saved as ``visual_config.json``)."""

    vision_hidden: int
    lm_hidden: int
    mlp_hidden: int
    map: str = "cayley"
    method: str = "weighted"
    num_heads: int = 4
    init_visual_weight: float = 0.1
    out_scale: float = 1.0
    tower: str = "vision_tower"  # folder (relative to the stage) or hub id of the frozen tower

    def __post_init__(self) -> None:
        check(self.map in MAPS, "map", self.map, f"must be one of {MAPS}")
        check(self.method in METHODS, "method", self.method, f"must be one of {METHODS}")

    def build(self) -> tuple[VisualProjectionAdapter, AdapterFusionLayer]:
        """Fresh (untrained) adapter and fusion layer of this shape."""
        return (
            VisualProjectionAdapter(self.vision_hidden, self.lm_hidden, self.mlp_hidden, self.map, self.out_scale),
            AdapterFusionLayer(self.lm_hidden, self.method, self.num_heads, self.init_visual_weight),
        )


def save_visual(
    out_dir: str | Path, adapter: VisualProjectionAdapter, fusion: AdapterFusionLayer, config: VisualConfig
) -> Path:
    """Write ``visual.safetensors`` (adapter.* and fusion.* tensors) and ``visual_config.json``, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {f"adapter.{k}": v.detach().float().cpu().contiguous() for k, v in adapter.state_dict().items()}
    state |= {f"fusion.{k}": v.detach().float().cpu().contiguous() for k, v in fusion.state_dict().items()}
    with atomic_path(out / VISUAL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "so8t-visual-v1"})
    write_json_atomic(out / VISUAL_CONFIG, asdict(config))
    return out


def load_visual(visual_dir: str | Path) -> tuple[VisualProjectionAdapter, AdapterFusionLayer, VisualConfig]:
    """Rebuild a saved adapter and fusion layer.

    Raises:
        FileNotFoundError: a file is missing (named). ValueError: the tensors do not fit the config (named).
    """
    d = Path(visual_dir)
    for f in (VISUAL_FILE, VISUAL_CONFIG):
        if not (d / f).exists():
            raise FileNotFoundError(f"{d / f} is missing: not a visual adapter folder (save_visual writes it)")
    raw = json.loads((d / VISUAL_CONFIG).read_text(encoding="utf-8"))
    known = {f.name for f in fields(VisualConfig)}
    check(set(raw) <= known, "visual_config keys", sorted(set(raw) - known), f"unknown in {d / VISUAL_CONFIG}")
    config = VisualConfig(**raw)
    adapter, fusion = config.build()
    state = load_file(d / VISUAL_FILE)
    for prefix, module in (("adapter.", adapter), ("fusion.", fusion)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{d / VISUAL_FILE} does not fit {d / VISUAL_CONFIG}: {exc}") from exc
    return adapter, fusion, config
