"""Adapter-only training step of the visual LM: step time, images/s and peak GPU memory, beside plain QLoRA.

    python bench/visual_step.py [--methods weighted attention] [--text-tokens 64] [--steps 20] [--out r.json]
    python bench/visual_step.py --tiny --steps 3                  # CPU dry run of the same code on tiny models

A Phi-3.5-mini-shaped LM (``bench/soul_step.py``'s config and loader: random weights, NF4 double quantization, bf16
compute) with LoRA r=16 and a soul, all frozen, reads 196 prefix tokens from a SigLIP-base-shaped tower (hidden 768,
12 layers, 224 px, patch 16; random weights, frozen, bf16). Only the adapter and the fusion layer train (AdamW),
batch 1 (one random image + ``--text-tokens`` ids, the second half labelled), gradient checkpointing on the decoder.
The plain QLoRA step of the same LM (LoRA trainable, no image, same text) runs first as the memory reference.
Target: peak allocated memory <= 5 GiB (the plain QLoRA step measured 3.4-3.6 GiB).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from soul_step import build, step_fn

from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.lora import LoraSettings, apply_lora
from so8t_core.vision.model import METHODS, VisualConfig, VisualLM, build_vision_tower, freeze, tiny_siglip_config

SIGLIP_BASE = {
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 768,
    "num_layers": 12,
    "num_heads": 12,
    "intermediate_size": 3072,
}
TARGET_GIB = 5.0


def timed(run, warmup: int, steps: int, cuda: bool) -> dict[str, float | None]:
    """Median seconds of ``steps`` calls after ``warmup``; peak memory (GiB) over the timed calls only."""
    for _ in range(warmup):
        run()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    peak = [torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30] if cuda else [None] * 2
    return {"median_ms": 1e3 * med, "steps_per_s": 1 / med, "peak_alloc_gib": peak[0], "peak_reserved_gib": peak[1]}


def fresh(cuda: bool) -> None:
    gc.collect()  # the previous row's optimizer state and cached blocks must not count in this row's peak
    if cuda:
        torch.cuda.empty_cache()


def plain_row(wrapper: SoulWrapper, ids: torch.Tensor, args, cuda: bool) -> dict:
    """The plain QLoRA step (LoRA trainable, gate off, no image), as in bench/soul_step.py."""
    lora = [p for n, p in wrapper.model.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    wrapper.use_gate = False
    wrapper.train()  # from_pretrained gave eval mode, where gradient checkpointing is silently skipped
    fresh(cuda)
    row = timed(step_fn(wrapper, torch.optim.AdamW(lora, lr=1e-5), ids), args.warmup, args.steps, cuda)
    freeze(wrapper)
    wrapper.use_gate = True
    for p in lora:
        p.grad = None
    return {"method": "plain QLoRA", "trainable_params": sum(p.numel() for p in lora), "images_per_s": None, **row}


def visual_row(wrapper: SoulWrapper, tower: torch.nn.Module, method: str, ids, labels, args, device: str) -> dict:
    """Adapter + fusion training step of ``method``; fails loudly if the adapter does not change in a step."""
    H = wrapper.config.hidden_size
    adapter, fusion = VisualConfig(int(tower.config.hidden_size), H, H, method=method).build()
    vlm = VisualLM(wrapper, tower, adapter, fusion).train()  # also puts the checkpointed decoder layers in train
    params = vlm.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    px = torch.randn(1, 3, vlm.spec.size, vlm.spec.size, device=device)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        vlm(ids, None, px, labels).loss.backward()
        opt.step()

    before = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    run()  # the first warm-up step; with "attention" the fusion's output projection starts at zero, so the
    # adapter's first update comes only through the decoder, the checkpointed path
    stale = [n for n, p in adapter.named_parameters() if torch.equal(p.detach(), before[n])]
    if stale:
        sys.exit(f"visual_step ({method}): adapter {stale} unchanged after a step: no gradient reaches the prefix")
    del before
    fresh(device == "cuda")
    row = timed(run, args.warmup - 1, args.steps, device == "cuda")
    vlm.eval()
    return {
        "method": method,
        "trainable_params": sum(p.numel() for p in params),
        "images_per_s": row["steps_per_s"],
        **row,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1: the first checks gradients)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-plain", action="store_true", help="skip the plain QLoRA reference step")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run on tiny models (checks the code, no figures)")
    ap.add_argument("--cache", default=None, help="folder for the random-weight LM checkpoint (default: a temp dir)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench/visual_step.py needs a CUDA GPU for 4-bit NF4 (bitsandbytes); use --tiny for a CPU dry run")
    if args.warmup < 1 or args.steps < 1 or args.text_tokens < 2:
        sys.exit("--warmup and --steps must be >= 1 and --text-tokens >= 2")
    device, cuda = ("cpu", False) if args.tiny else ("cuda", True)
    model = build(args.tiny, Path(args.cache or tempfile.mkdtemp(prefix="visual_step_")))
    model = apply_lora(model, LoraSettings(r=16, alpha=32, dropout=0.05))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapper = SoulWrapper.build(model, SoulConfig(hidden_size=model.config.hidden_size, alpha_mode="learned"))
    wrapper.rotation.to(device), wrapper.alpha.to(device)
    tower = build_vision_tower(tiny_siglip_config(**({} if args.tiny else SIGLIP_BASE)))
    tower = freeze(tower.to(device, torch.float32 if args.tiny else torch.bfloat16))
    torch.manual_seed(0)
    T = args.text_tokens
    ids = torch.randint(3, model.config.vocab_size - 1, (1, T), device=device)
    labels = ids.clone()
    labels[:, : T // 2] = -100  # the prompt half is not scored, as encode_row does
    n_vis = (tower.config.image_size // tower.config.patch_size) ** 2
    name = torch.cuda.get_device_name() if cuda else "cpu (dry run)"
    print(
        f"{name}: {'tiny LM + tiny SigLIP' if args.tiny else 'Phi-3.5-mini shape NF4 + SigLIP-base shape bf16'}, "
        f"LoRA r=16 + soul frozen, batch 1, {n_vis} visual + {T} text tokens, gradient checkpointing, "
        f"{args.warmup} warm-up + {args.steps} timed steps"
    )
    rows = [] if args.no_plain else [plain_row(wrapper, ids, args, cuda)]
    rows += [visual_row(wrapper, tower, m, ids, labels, args, device) for m in args.methods]
    gib = lambda x: "n/a" if x is None else f"{x:.2f}"
    print(
        f"{'step':<13}{'trainable':>12}{'ms/step':>10}{'img/s':>8}{'alloc GiB':>11}{'reserved GiB':>14}"
        f"{f'<= {TARGET_GIB:g} GiB':>10}"
    )
    for r in rows:
        r["fits_target"] = None if r["peak_alloc_gib"] is None else r["peak_alloc_gib"] <= TARGET_GIB
        img = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.2f}"
        fits = "n/a" if r["fits_target"] is None else ("yes" if r["fits_target"] else "NO")
        print(
            f"{r['method']:<13}{r['trainable_params']:>12,}{r['median_ms']:>10.1f}{img:>8}"
            f"{gib(r['peak_alloc_gib']):>11}{gib(r['peak_reserved_gib']):>14}{fits:>10}"
        )
    if cuda and args.methods:
        ok = all(r["fits_target"] for r in rows if r["images_per_s"] is not None)
        print(f"target peak <= {TARGET_GIB:g} GiB for the adapter step: {'holds' if ok else 'MISSED'}")
    if args.out:
        meta = {
            "device": name,
            "tiny": args.tiny,
            "visual_tokens": n_vis,
            "text_tokens": T,
            "warmup": args.warmup,
            "steps": args.steps,
            "target_gib": TARGET_GIB,
        }
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
