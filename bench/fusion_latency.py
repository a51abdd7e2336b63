"""Decoding speed of the fused model against its base, side by side, in transformers and in llama.cpp.

    python bench/fusion_latency.py [--type f32] [--prompt 32] [--new-tokens 64] [--repeats 9] [--threads 1]

Reads notebook 00's base and notebook 04's fused folder and GGUF files (run the pipeline up to 04 first), converts
the base to the same GGUF type in a temporary folder, and times greedy decoding of held-out text interleaved
(base, fused, fused, base, ...). The figure to quote is the ratio fused / base (1.0 = same speed: the fused model
runs the base's graph); absolute tokens/s depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from so8t_core.artifacts import require
from so8t_core.batching import encode_documents
from so8t_core.data.corpus import Corpus
from so8t_core.export import gguf, latency
from so8t_core.lm.loading import load_model_and_tokenizer, read_model_ref


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--type", default="f32", choices=gguf.GGUF_TYPES)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (0: its defaults)")
    args = ap.parse_args(argv)
    stage00, stage04 = require("00_base_model", "corpus"), require("04_fusion_and_gguf", "fused")
    ref = read_model_ref(stage00)
    fused, tok = load_model_and_tokenizer(stage04 / "fused", dtype=torch.float32)
    base, _ = load_model_and_tokenizer(ref["base_model"], dtype=torch.float32)
    n = args.prompt + args.new_tokens
    stream = [t for d in encode_documents(tok, Corpus.load(stage00 / "corpus").heldout) for t in d][:n]
    hf = latency.transformers_speed(base.eval(), fused.eval(), stream[: args.prompt], args.new_tokens, args.repeats)
    fused_gguf = stage04 / "gguf" / f"fused-{args.type}.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        if not fused_gguf.is_file():
            fused_gguf = gguf.export_gguf(stage04 / "fused", tmp, [args.type], stem="fused")[args.type]
        base_gguf = gguf.export_gguf(gguf.local_folder(ref["base_model"]), tmp, [args.type], stem="base")[args.type]
        lc = latency.llama_cpp_speed(base_gguf, fused_gguf, stream, args.prompt, args.repeats, args.threads or None)
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(),
                "args": vars(args),
                "transformers": hf,
                f"llama.cpp {args.type}": lc,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
