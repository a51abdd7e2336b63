"""QLoRA training step with and without the soul gate: step time and peak GPU memory, side by side.

    python bench/soul_step.py [--seq 512 2048] [--pairs 10]      # CUDA: Phi-3.5-mini shape, NF4, LoRA r=16
    python bench/soul_step.py --tiny                             # CPU dry run of the same code on a tiny model

A Phi-3.5-mini-shaped model (hidden 3072, 32 layers, 32 heads, intermediate 8192, vocab 32064) is built from its
config with random weights, saved once, and reloaded in 4-bit NF4 with double quantization (bf16 compute) +
LoRA r=16 on qkv_proj/o_proj/gate_up_proj/down_proj, gradient checkpointing, batch 1. The "gate" and "plain"
steps run the same SoulWrapper code path with the gate on or off, in alternating pairs; the figures to quote are
the median ratios. Targets: the gate adds <= 2 % step time and <= 5 % peak memory; sequence 2048 fits in 8 GiB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.lora import LoraSettings, apply_lora

PHI35 = {
    "vocab_size": 32064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "pad_token_id": 32000,
    "bos_token_id": 1,
    "eos_token_id": 32000,
}
TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def build(tiny: bool, folder: Path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(**(TINY if tiny else PHI35))
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        Phi3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)  # random weights, saved once
    if tiny:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    from peft import prepare_model_for_kbit_training

    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)


def step_fn(wrapper: SoulWrapper, opt, ids: torch.Tensor):
    def run() -> None:
        opt.zero_grad(set_to_none=True)
        wrapper(ids, torch.ones_like(ids), ids).loss.backward()
        opt.step()

    return run


def measure(wrapper: SoulWrapper, seq: int, pairs: int, device: str) -> dict[str, list[float]]:
    """Alternate gate-on / gate-off steps; per step: seconds and peak memory (GiB)."""
    ids = torch.randint(3, wrapper.model.config.vocab_size - 1, (1, seq), device=device)
    opt = torch.optim.AdamW([p for p in wrapper.parameters() if p.requires_grad], lr=1e-5)
    run = step_fn(wrapper, opt, ids)
    out: dict[str, list[float]] = {"gate_s": [], "plain_s": [], "gate_gib": [], "plain_gib": []}
    for i in range(pairs + 1):  # the first pair warms up and is dropped
        for name in ("gate", "plain") if i % 2 else ("plain", "gate"):
            wrapper.use_gate = name == "gate"
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                out[f"{name}_s"].append(time.perf_counter() - t0)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
                out[f"{name}_gib"].append(peak)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="CPU dry run on a tiny model (checks the code, no figures)")
    ap.add_argument("--cache", default=None, help="folder for the random-weight checkpoint (default: a temp dir)")
    args = ap.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench/soul_step.py needs a CUDA GPU for 4-bit NF4 (bitsandbytes); use --tiny for a CPU dry run")
    device = "cpu" if args.tiny else "cuda"
    folder = Path(args.cache or tempfile.mkdtemp(prefix="soul_step_"))
    model = build(args.tiny, folder)
    model = apply_lora(model, LoraSettings(r=16, alpha=32, dropout=0.05))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapper = SoulWrapper.build(model, SoulConfig(hidden_size=model.config.hidden_size, alpha_mode="learned"))
    wrapper.rotation.to(device), wrapper.alpha.to(device)
    wrapper.train()  # from_pretrained gave eval mode, where gradient checkpointing is silently skipped
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    print(
        f"{name}: {'tiny' if args.tiny else 'Phi-3.5-mini shape'} NF4={not args.tiny} LoRA r=16, batch 1, "
        f"gradient checkpointing, {args.pairs} alternating pairs"
    )
    print(f"{'seq':>6}{'plain ms':>11}{'gate ms':>10}{'time x':>9}{'plain GiB':>11}{'gate GiB':>10}{'mem x':>8}")
    for seq in args.seq:
        r = measure(wrapper, seq, args.pairs, device)
        med = {k: statistics.median(v) for k, v in r.items()}
        ratio_t = statistics.median(g / p for g, p in zip(r["gate_s"], r["plain_s"]))
        ratio_m = med["gate_gib"] / med["plain_gib"] if med["plain_gib"] else float("nan")
        print(
            f"{seq:>6}{1e3 * med['plain_s']:>11.1f}{1e3 * med['gate_s']:>10.1f}{ratio_t:>9.3f}"
            f"{med['plain_gib']:>11.2f}{med['gate_gib']:>10.2f}{ratio_m:>8.3f}"
        )


if __name__ == "__main__":
    main()
