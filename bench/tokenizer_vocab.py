"""How the tokenizer's vocabulary size trades coverage of the hand-written prompts (never trained on).

For each vocabulary size, on the default corpus (notebook 00: seed 0, 30,000 documents): the share of the prompts'
token occurrences whose token occurs >= 5 times in pretraining, and the byte-fallback share, per language. This
is how notebook 00's default vocab_size was chosen.

    .venv/bin/python bench/tokenizer_vocab.py [--sizes 4000 5000 6000 8000] [--n-docs 30000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from so8t_core.batching import encode_documents
from so8t_core.data.corpus import build_corpus
from so8t_core.data.coverage import token_coverage
from so8t_core.lm.tokenizer import train_tokenizer
from so8t_core.safety.labels import handwritten_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 5000, 6000, 8000])
    ap.add_argument("--n-docs", type=int, default=30000)
    a = ap.parse_args()
    corpus = build_corpus(0, a.n_docs, 0.1)
    test = handwritten_test()
    by_lang = {lang: [p for p, e in zip(test.prompts, test.extra) if e["lang"] == lang] for lang in ("en", "ja")}
    rows = []
    for size in a.sizes:
        with tempfile.TemporaryDirectory() as d:
            tok = train_tokenizer(corpus.train, d, vocab_size=size)
            ids = encode_documents(tok, corpus.train)
            row = {"vocab_size": size, "train_tokens": sum(map(len, ids))}
            for lang, prompts in by_lang.items():
                c = token_coverage(tok, ids, prompts, min_count=5)
                row |= {f"seen5_{lang}": round(c["share_seen"], 4), f"bytes_{lang}": round(c["byte_fallback_share"], 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
