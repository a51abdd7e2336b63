"""Forward+backward cost of the SO(8) block gate vs a dense orthogonal Linear and an elementwise floor.

    python bench/gate.py [--width 3072] [--tokens 2048] [--repeats 10] [--no-dense]

Runs on the CPU, and on CUDA where present (bf16 there). All gates are timed interleaved in one run and reported
as ratios to the floor (one multiply of h), the figure to quote. Target: block gate within 3x the floor on GPU.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from so8t_core.studies.gate_studies import gate_timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cpu-tokens", type=int, default=512, help="tokens on the CPU (dense gate is slow there)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense orthogonal gate")
    args = ap.parse_args()
    runs = [("cpu", torch.float32, args.cpu_tokens)]
    if torch.cuda.is_available():
        runs.append(("cuda", torch.bfloat16, args.tokens))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    for device, dtype, tokens in runs:
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(
            f"\n{name}: width {args.width}, {tokens} tokens, {str(dtype).removeprefix('torch.')}, "
            f"median of {args.repeats} interleaved forward+backward"
        )
        print(f"{'gate':<20}{'params':>12}{'ms':>12}{'x floor':>10}")
        for r in gate_timings(args.width, tokens, args.repeats, device, dtype, dense=not args.no_dense):
            print(f"{r['gate']:<20}{r['params']:>12,}{r['ms']:>12.3f}{r['ratio_to_floor']:>10.2f}")


if __name__ == "__main__":
    main()
