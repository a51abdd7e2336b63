"""How often a chat model writes the quad layout when asked to, with and without a one-shot example.

    python bench/quad_layout.py [--model smollm2-135m-instruct] [--n 40] [--max-new-tokens 160] [--batch 8]

The questions are the generated quad chats of ``lm.templates`` (English and Japanese, as in the corpus); the
one-shot example is another generated chat of the same kind. Each prompt goes through the model's own chat
template with one of these system set-ups:

- ``plain``: the template's default system prompt, no quad instruction (what a final-only policy serves);
- ``zero_shot``: ``think.QUAD_SYSTEM`` as the system prompt;
- ``one_shot_turn``: ``QUAD_SYSTEM`` and one example user/assistant turn before the question;
- ``one_shot_system``: ``QUAD_SYSTEM`` with the example written into the system prompt.

Per set-up it reports the share of greedy outputs in the exact layout (``think.in_quad_layout``), the share whose
final part the server would let out (``extract_final`` is not the fallback), thinking leaks in that final, and
how often the served text holds the expected short answer (for ``plain``: the raw output). Figures are for
deciding how to serve the model, not for quoting: the lead re-times and re-runs on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from so8t_core.data.templates import generate_documents
from so8t_core.lm.loading import load_model_and_tokenizer
from so8t_core.think import (
    FALLBACK_MESSAGE,
    QUAD_SYSTEM,
    extract_final,
    in_quad_layout,
    leaks_thinking,
)

_CHAT = re.compile(r"<\|user\|>\n(.*?)<\|end\|>\n<\|assistant\|>\n(.*?)<\|end\|>", re.S)
SETUPS = ("plain", "zero_shot", "one_shot_turn", "one_shot_system")


def quad_chats(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n + 1`` generated ``(question, quad answer)`` pairs, alternating English and Japanese where possible."""
    pairs = [m.groups() for d in generate_documents(seed, 40 * n) if (m := _CHAT.fullmatch(d))]
    ja = [p for p in pairs if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", p[0])]
    en = [p for p in pairs if p not in ja]
    mixed = [p for pair in zip(en, ja) for p in pair]
    return mixed[: n + 1]


def expected_short(quad: str) -> str:
    """The short answer of a final part: ``"3 sides."`` -> ``"3 sides"``, ``"金曜日です。"`` -> ``"金曜日"``."""
    return re.sub(r"(です。|\.)$", "", extract_final(quad)).strip()


def messages(setup: str, question: str, example: tuple[str, str]) -> list[dict[str, str]]:
    """The chat of one set-up (see the module docstring)."""
    if setup == "plain":
        return [{"role": "user", "content": question}]
    if setup == "zero_shot":
        return [{"role": "system", "content": QUAD_SYSTEM}, {"role": "user", "content": question}]
    if setup == "one_shot_turn":
        return [
            {"role": "system", "content": QUAD_SYSTEM},
            {"role": "user", "content": example[0]},
            {"role": "assistant", "content": example[1]},
            {"role": "user", "content": question},
        ]
    system = f"{QUAD_SYSTEM}\nExample.\nUser: {example[0]}\nAssistant: {example[1]}"
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def generate(model, tok, chats: list[list[dict[str, str]]], max_new_tokens: int, batch: int) -> list[str]:
    """Greedy completions (new tokens, special tokens dropped) of the chats, left-padded in batches."""
    tok.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(chats), batch):
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats[i : i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)  # (B, new)
    return out


def score(setup: str, raws: list[str], golds: list[str], langs: list[str]) -> dict[str, object]:
    """Rates over all prompts and per language."""
    rows = []
    for raw, gold in zip(raws, golds, strict=True):
        final = raw if setup == "plain" else extract_final(raw)
        served = setup == "plain" or final != FALLBACK_MESSAGE
        rows.append(
            {
                "layout": in_quad_layout(raw),
                "served": served,
                "leak": served and leaks_thinking(final),
                "correct": served and gold.lower() in final.lower(),
            }
        )

    def rates(idx: list[int]) -> dict[str, object]:
        return {k: f"{sum(rows[i][k] for i in idx)}/{len(idx)}" for k in ("layout", "served", "leak", "correct")}

    out: dict[str, object] = {"all": rates(list(range(len(rows))))}
    for lang in sorted(set(langs)):
        out[lang] = rates([i for i, g in enumerate(langs) if g == lang])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--setups", nargs="*", default=list(SETUPS), choices=SETUPS)
    p.add_argument("--show", type=int, default=2, help="print this many raw outputs per set-up")
    args = p.parse_args()
    model, tok = load_model_and_tokenizer(args.model)
    pairs = quad_chats(args.n)
    example, items = pairs[0], pairs[1:]
    golds = [expected_short(a) for _, a in items]
    langs = ["ja" if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", q) else "en" for q, _ in items]
    report = {}
    for setup in args.setups:
        t0 = time.perf_counter()
        raws = generate(model, tok, [messages(setup, q, example) for q, _ in items], args.max_new_tokens, args.batch)
        report[setup] = {**score(setup, raws, golds, langs), "seconds": round(time.perf_counter() - t0, 1)}
        for raw in raws[: args.show]:
            print(f"--- {setup}: {raw!r}", flush=True)
        print(setup, json.dumps(report[setup], ensure_ascii=False), flush=True)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
