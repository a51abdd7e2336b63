"""Tasks a real chat model (SmolLM2-135M-Instruct) can be measured on, for notebook 03's real-model tier A.

Every item is a chat: a system prompt and a user question through the tokenizer's chat template, then the start
of the assistant's reply written for it (``"The capital of France is"``, ``"3 + 4 = "``). The tokens after that
prefix are the *answer tokens*, the only positions the heads predict. A chat model asked bare answers in a
sentence ("The capital of France is Paris."), so without the prefix its first token is "The" and nothing about
the answer could be read off its states; with the prefix the base's greedy next token is its answer.

* ``shift``  country -> capital facts the model knows (``data/real_tasks/capitals.tsv``), answered with a fixed
  remapping (France -> the capital of another country, a derangement): the base is wrong by construction and a
  head change can learn the relabelling;
* ``format`` the same facts, the answer in upper case (``" PARIS"``): a new form of a known answer;
* ``arith``  sums and differences with a one-digit result (``3 + 4``, ``17 - 9``: one answer token); test
  problems never occur in training or dev: a skill the body has to supply.

A template is (system prompt x phrasing); test templates never occur in training or dev (``tasks.template_split``),
so a test score is transfer to unseen phrasings, and templates are the clusters a bootstrap resamples. Each item
also carries ``known``: the answer the base should give if it knows the fact (the true capital; for ``arith`` the
answer itself), so the precondition "the model knows what the task shifts" is measured, not assumed.

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from so8t_core.batching import right_pad
from so8t_core.config import DATA_DIR, check
from so8t_core.data.tasks import SPLITS, derangement, template_split

REAL_TASKS = ("shift", "format", "arith")
FACTS_FILE = DATA_DIR / "real_tasks" / "capitals.tsv"
SYSTEMS = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",  # SmolLM2's own default
    "You are a concise assistant.",
    "Answer the user's question.",
    "You are a patient tutor.",
)
FACT_PHRASINGS = (
    "What is the capital of {c}?",
    "Name the capital city of {c}.",
    "Which city is the capital of {c}?",
    "Tell me the capital of {c}.",
)
FACT_PREFIX = "The capital of {c} is"
ARITH_PHRASINGS = (
    "What is {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "Work out {a} {op} {b} for me.",
    "How much is {a} {op} {b}?",
)
ARITH_PREFIX = "{a} {op} {b} = "  # the trailing space is its own token, as in " = 7"; the digit is the answer
MIN_KNOWN = 0.5  # the base must give the true (unshifted) answer on at least this share of test items
MAX_BASE_EM = 0.9  # above this the base already does the task: nothing left to measure
MIN_ARITH_EM = 0.05  # below this the base cannot do the sums at all: no state to read the skill from


@dataclass(frozen=True)
class RealItem:
    """One chat item: system prompt, user question, the assistant's written prefix, the answer, its template, and
    the answer the base gives if it knows the fact (``known``; the answer itself when nothing is shifted)."""

    system: str
    question: str
    prefix: str
    answer: str
    template: int
    known: str


def load_facts(path: str | Path = FACTS_FILE) -> list[tuple[str, str]]:
    """The hand-written ``country<TAB>capital`` facts (``#`` lines are comments).

    Args:
        path: the TSV file.
    Returns:
        ``[(country, capital), ...]`` in file order, each capital once (a remapping must change every answer).
    Raises:
        FileNotFoundError: no such file; ValueError: a malformed line or a repeated capital.
    """
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        check(len(parts) == 2 and all(p.strip() for p in parts), f"{path}:{n}", line, "need country<TAB>capital")
        rows.append((parts[0].strip(), parts[1].strip()))
    capitals = [c for _, c in rows]
    check(len(set(capitals)) == len(capitals), "capitals", path, "each capital must appear once")
    return rows


def n_templates(task: str) -> int:
    """Templates of ``task``: every system prompt with every phrasing."""
    return len(SYSTEMS) * len(ARITH_PHRASINGS if task == "arith" else FACT_PHRASINGS)


def _split_phrasing(t: int, phrasings: Sequence[str]) -> tuple[str, str]:
    return SYSTEMS[t // len(phrasings)], phrasings[t % len(phrasings)]


def fact_items(facts: Sequence[tuple[str, str]], task: str, seed: int) -> dict[int, list[RealItem]]:
    """Every (fact, template) item of ``shift`` or ``format``, grouped by template id."""
    perm = derangement(len(facts), seed)
    out: dict[int, list[RealItem]] = {}
    for t in range(n_templates(task)):
        system, phrasing = _split_phrasing(t, FACT_PHRASINGS)
        rows = []
        for i, (country, capital) in enumerate(facts):
            answer = facts[perm[i]][1] if task == "shift" else capital.upper()
            q, prefix = phrasing.format(c=country), FACT_PREFIX.format(c=country)
            rows.append(RealItem(system, q, prefix, " " + answer, t, " " + capital))
        out[t] = rows
    return out


def arith_problems() -> list[tuple[int, str, int]]:
    """Every ``(a, op, b)`` with a one-digit result (0..9): sums of one-digit numbers, differences of a number
    below 20 and a one-digit number (``17 - 9``: harder, so the base is not at its ceiling)."""
    plus = [(a, "+", b) for a in range(10) for b in range(10) if a + b <= 9]
    minus = [(a, "-", b) for a in range(20) for b in range(10) if 0 <= a - b <= 9]
    return plus + minus


def _arith_item(a: int, op: str, b: int, t: int) -> RealItem:
    system, phrasing = _split_phrasing(t, ARITH_PHRASINGS)
    answer = str(a + b if op == "+" else a - b)
    return RealItem(system, phrasing.format(a=a, op=op, b=b), ARITH_PREFIX.format(a=a, op=op, b=b), answer, t, answer)


def make_real_task(
    task: str,
    seed: int,
    facts: Sequence[tuple[str, str]] = (),
    n_train: int = 240,
    n_dev: int = 64,
    n_test: int = 80,
) -> dict[str, list[RealItem]]:
    """Train / dev / test items of one real task, a pure function of its arguments.

    Args:
        task: one of ``REAL_TASKS``.
        seed: the only source of randomness (template split, remapping, sampling).
        facts: ``load_facts()``; needed by ``shift`` and ``format``.
        n_train, n_dev, n_test: items per split (sampled without replacement while the split's pool allows).
    Returns:
        ``{"train": [...], "dev": [...], "test": [...]}``; test templates (and, for ``arith``, test problems)
        never occur in train or dev.
    """
    check(task in REAL_TASKS, "task", task, f"must be one of {REAL_TASKS}")
    for name, n in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        check(n > 0, name, n, "must be > 0")
    rng = random.Random(f"real:{task}:{seed}")
    split = template_split(n_templates(task), seed)
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    if task == "arith":
        problems = arith_problems()
        rng.shuffle(problems)
        held = problems[: len(problems) // 5]  # test problems: never in train or dev
        pools = {"test": held, "train": problems[len(held) :], "dev": problems[len(held) :]}
        by_split = {s: [_arith_item(*p, t) for t in split[s] for p in pools[s]] for s in SPLITS}
    else:
        check(len(facts) >= 2, "facts", len(facts), f"task {task!r} needs at least 2 facts")
        items = fact_items(facts, task, seed)
        by_split = {s: [it for t in split[s] for it in items[t]] for s in SPLITS}
    return {s: _sample(rng, by_split[s], sizes[s]) for s in SPLITS}


def _sample(rng: random.Random, pool: list[RealItem], n: int) -> list[RealItem]:
    return rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]


def prompt_text(tokenizer: Any, item: RealItem) -> str:
    """The chat-templated conversation up to the assistant's turn, then the assistant's written prefix."""
    messages = [{"role": "system", "content": item.system}, {"role": "user", "content": item.question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + item.prefix


def encode_chat(tokenizer: Any, items: Sequence[RealItem]) -> dict[str, torch.Tensor]:
    """Each item as ``chat prompt + prefix + answer``, right-padded, labels on the answer tokens only.

    Prompt and answer are tokenized apart and joined, so an answer has the same tokens whatever the prompt.

    Args:
        tokenizer: a tokenizer with a chat template.
        items: ``make_real_task`` items.
    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (-100 outside the answer), each ``(N, T)``, and
        ``known_first`` ``(N,)``: the first token of each item's ``known`` answer.
    """
    check(getattr(tokenizer, "chat_template", None) is not None, "tokenizer", tokenizer, "needs a chat template")
    prompts = tokenizer([prompt_text(tokenizer, it) for it in items], add_special_tokens=False)["input_ids"]
    answers = tokenizer([it.answer for it in items], add_special_tokens=False)["input_ids"]
    known = tokenizer([it.known for it in items], add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = right_pad([[*p, *a] for p, a in zip(prompts, answers, strict=True)], pad)  # (N, T) each
    labels, _ = right_pad([[-100] * len(p) + a for p, a in zip(prompts, answers, strict=True)], -100)  # (N, T)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "known_first": torch.tensor([k[0] for k in known], dtype=torch.long)}  # fmt: skip


def measurable(task: str, base_em: float, known_first: float) -> dict[str, Any]:
    """Whether the base's test accuracy leaves ``task`` something to measure, and why not.

    A shifted task (``shift``, ``format``) needs the base to know the facts it shifts (``known_first`` >=
    ``MIN_KNOWN``: its greedy first answer token is the true capital's); every task needs room to improve
    (``base_em`` <= ``MAX_BASE_EM``); ``arith`` needs some skill to read (``base_em`` >= ``MIN_ARITH_EM``).

    Args:
        task: one of ``REAL_TASKS``.
        base_em: the base's exact match on the task's answers (every answer token greedy).
        known_first: share of items whose greedy first answer token is the first token of ``known``.
    Returns:
        ``{"measurable": bool, "reason": str}`` (reason empty when measurable).
    """
    reasons = []
    if task != "arith" and known_first < MIN_KNOWN:
        reasons.append(f"the base knows too few facts (first-token accuracy {known_first:.2f} < {MIN_KNOWN})")
    if base_em > MAX_BASE_EM:
        reasons.append(f"the base already does it (exact match {base_em:.2f} > {MAX_BASE_EM})")
    if task == "arith" and base_em < MIN_ARITH_EM:
        reasons.append(f"the base cannot do it at all (exact match {base_em:.2f} < {MIN_ARITH_EM})")
    return {"measurable": not reasons, "reason": "; ".join(reasons)}
