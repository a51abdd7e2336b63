"""Fine-tuning tasks with a shift from pretraining, for notebook 03's soul study.

Each task asks something the base has not been trained to answer *in this way*:

* ``remap``  known questions ("what does the Japanese word 歩行 mean?") whose answers are a fixed permutation of
  the true ones (歩行 -> the gloss of another word): a relabelling of outputs, where an output-side gate has its
  best chance;
* ``format`` the same known facts with the answer in a new format (upper case, e.g. ``WALK``);
* ``arith``  two-step arithmetic ``(a + b) x c`` on operand pairs that never occur in training: a skill that needs
  changes inside the model, where an output-side gate should not help.

Facts are read from notebook 00's training corpus (EDICT sentences the base saw at least ``min_count`` times), so
"known" means seen in pretraining. Every item carries its template (framing x phrasing); the test templates are
disjoint from the training and dev templates, so a test score measures transfer to unseen phrasings, and
templates are the clusters a bootstrap resamples. Retention (held-out pretraining perplexity) is scored on
notebook 00's held-out documents, not generated here.

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from so8t_core.batching import right_pad
from so8t_core.config import check
from so8t_core.think import chat_turn

TASKS = ("remap", "format", "arith")
SPLITS = ("train", "dev", "test")
_FACT_EN = re.compile(r'The Japanese word (\S+) \((\S+)\) means "([^"]+)"')
_FACT_JA = re.compile(r"「([^」]+)」（([^）]+)）は英語で「([^」]+)」という意味です")
_ONE_WORD = re.compile(r"[a-z]{3,12}")

FRAMINGS = (
    "Q: {q} A:",
    "質問：{q} 答え：",
    chat_turn("{q}"),
    "{q}\nAnswer:",
)
FACT_PHRASINGS = (
    "What does the Japanese word {w} mean?",
    "What is the English for {w} ({r})?",
    "「{w}」は英語で何と言いますか？",
    "Translate {w} into English.",
)
ARITH_PHRASINGS = (
    "What is ({a} + {b}) × {c}?",
    "Add {a} and {b}, then multiply by {c}.",
    "({a} + {b}) × {c} = ?",
    "{a}と{b}を足して{c}をかけるといくつですか？",
)


@dataclass(frozen=True)
class Fact:
    """A Japanese word, its reading and its one-word English gloss."""

    word: str
    reading: str
    gloss: str


@dataclass(frozen=True)
class Item:
    """One task example: the prompt, the answer the model must produce, and the template it was phrased with."""

    prompt: str
    answer: str
    template: int


def known_facts(documents: Iterable[str], min_count: int = 2, limit: int = 100) -> list[Fact]:
    """EDICT facts with a one-word gloss that occur at least ``min_count`` times in ``documents``.

    Args:
        documents: notebook 00's training documents.
        min_count: how often a fact must have been seen.
        limit: at most this many, most frequent first (ties in order of first appearance).
    Returns:
        The facts, one per word and one per gloss (a permutation of answers must change every answer).
    """
    counts: Counter[tuple[str, str, str]] = Counter()
    for doc in documents:
        counts.update(_FACT_EN.findall(doc))
        counts.update(_FACT_JA.findall(doc))
    out: list[Fact] = []
    words: set[str] = set()
    glosses: set[str] = set()
    for (w, r, g), n in counts.most_common():
        if n >= min_count and _ONE_WORD.fullmatch(g) and w not in words and g not in glosses:
            out.append(Fact(w, r, g))
            words.add(w)
            glosses.add(g)
        if len(out) == limit:
            break
    return out


def template_split(n_templates: int, seed: int) -> dict[str, list[int]]:
    """Template ids shuffled by ``seed`` and split half / quarter / quarter into train / dev / test (disjoint)."""
    check(n_templates >= 4, "n_templates", n_templates, "need at least 4 to give every split one")
    ids = list(range(n_templates))
    random.Random(seed).shuffle(ids)
    n_train, n_dev = n_templates // 2, n_templates // 4
    return {"train": ids[:n_train], "dev": ids[n_train : n_train + n_dev], "test": ids[n_train + n_dev :]}


def derangement(n: int, seed: int) -> list[int]:
    """A fixed permutation of ``range(n)`` with no fixed point (a cyclic shift of a shuffled order)."""
    check(n >= 2, "n", n, "need at least 2 to permute")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = [0] * n
    for i, j in enumerate(order):
        perm[j] = order[(i + 1) % n]  # each element maps to the next one in the shuffled cycle
    return perm


def _fact_items(facts: Sequence[Fact], task: str, seed: int) -> dict[int, list[Item]]:
    """Every (fact, template) item of a fact task, grouped by template id."""
    perm = derangement(len(facts), seed)
    out: dict[int, list[Item]] = {}
    for t, (framing, phrasing) in enumerate((f, p) for f in FRAMINGS for p in FACT_PHRASINGS):
        rows = []
        for i, f in enumerate(facts):
            answer = facts[perm[i]].gloss if task == "remap" else f.gloss.upper()
            rows.append(Item(framing.format(q=phrasing.format(w=f.word, r=f.reading)), answer, t))
        out[t] = rows
    return out


def _arith_item(a: int, b: int, c: int, t: int) -> Item:
    framing, phrasing = FRAMINGS[t // len(ARITH_PHRASINGS)], ARITH_PHRASINGS[t % len(ARITH_PHRASINGS)]
    return Item(framing.format(q=phrasing.format(a=a, b=b, c=c)), str((a + b) * c), t)


def make_task(
    task: str, seed: int, facts: Sequence[Fact] = (), n_train: int = 2000, n_dev: int = 400, n_test: int = 400
) -> dict[str, list[Item]]:
    """Train / dev / test items of one task, a pure function of its arguments.

    Args:
        task: one of ``TASKS``.
        seed: the only source of randomness (template split, permutation, sampling).
        facts: the known facts (``known_facts``); needed by ``remap`` and ``format``.
        n_train: training items.
        n_dev: dev items (dev templates).
        n_test: test items (test templates; for ``arith`` also operand pairs never seen in train or dev).
    Returns:
        ``{"train": [...], "dev": [...], "test": [...]}``; items are sampled with replacement when a split has
        fewer distinct (fact, template) pairs than asked for.
    """
    check(task in TASKS, "task", task, f"must be one of {TASKS}")
    for name, n in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        check(n > 0, name, n, "must be > 0")
    rng = random.Random(f"{task}:{seed}")
    n_templates = len(FRAMINGS) * (len(FACT_PHRASINGS) if task != "arith" else len(ARITH_PHRASINGS))
    split = template_split(n_templates, seed)
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    if task == "arith":
        pairs = [(a, b) for a in range(2, 30) for b in range(2, 30)]
        rng.shuffle(pairs)
        unseen = set(pairs[: len(pairs) // 5])  # test operand pairs: never in train or dev
        pools = {"test": sorted(unseen), "train": sorted(set(pairs) - unseen), "dev": sorted(set(pairs) - unseen)}
        return {
            s: [_arith_item(*rng.choice(pools[s]), rng.randint(2, 9), rng.choice(split[s])) for _ in range(sizes[s])]
            for s in SPLITS
        }
    check(len(facts) >= 2, "facts", len(facts), f"task {task!r} needs at least 2 known facts")
    by_template = _fact_items(facts, task, seed)
    out = {}
    for s in SPLITS:
        pool = [it for t in split[s] for it in by_template[t]]
        out[s] = rng.sample(pool, sizes[s]) if sizes[s] <= len(pool) else [rng.choice(pool) for _ in range(sizes[s])]
    return out


def encode_items(tokenizer, items: Sequence[Item]) -> dict[str, torch.Tensor]:
    """``<s> prompt answer <|endoftext|>`` per item, right-padded, with labels only on the answer and the end.

    Prompt and answer are encoded separately and joined, so the answer's tokens are the same whatever the prompt.

    Args:
        tokenizer: the base's tokenizer.
        items: task items.
    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside the answer), each ``(N, T)``.
    """
    prompts = tokenizer([it.prompt for it in items], add_special_tokens=False)["input_ids"]
    answers = tokenizer([" " + it.answer for it in items], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [([*bos, *p], [*a, tokenizer.eos_token_id]) for p, a in zip(prompts, answers)]
    ids, mask = right_pad([[*p, *a] for p, a in rows], tokenizer.pad_token_id)  # (N, T) each
    labels, _ = right_pad([[-100] * len(p) + a for p, a in rows], -100)  # (N, T): the answer and its end only
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
