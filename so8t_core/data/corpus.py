"""The embedded base's pretraining corpus, deterministic from a seed, in English and Japanese.

``build_corpus`` mixes the families of ``MIXTURE``: computed templates (``templates``), WordNet glosses, Japanese
sentences and requests on common words, EDICT glosses (``documents``, on ``lexicon``), and the safety domain from
the train variants of ``safety_data``. Held-out documents come from entries training never sees. A user's own
files replace all of it (``load_text_files``).

Storage: one JSON object ``{"text": ...}`` per line (JSONL), UTF-8, so newlines inside a chat document survive
without an escaping scheme of our own.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from so8t_core.artifacts import write_jsonl_atomic
from so8t_core.config import check
from so8t_core.data.templates import generate_documents

TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"


@dataclass(frozen=True)
class Corpus:
    """Documents for training and a held-out split of different documents.

    Args:
        train: training documents.
        heldout: documents never seen in training (used for perplexity).
    """

    train: list[str]
    heldout: list[str]

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``train.jsonl`` and ``heldout.jsonl`` into ``folder``. Returns their paths by split name."""
        folder = Path(folder)
        out = {"train": folder / TRAIN_FILE, "heldout": folder / HELDOUT_FILE}
        _write_jsonl(out["train"], self.train)
        _write_jsonl(out["heldout"], self.heldout)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> Corpus:
        """Read a corpus written by ``save``."""
        folder = Path(folder)
        return cls(train=_read_jsonl(folder / TRAIN_FILE), heldout=_read_jsonl(folder / HELDOUT_FILE))


def _write_jsonl(path: Path, docs: Iterable[str]) -> None:
    write_jsonl_atomic(path, ({"text": d} for d in docs))


def _read_jsonl(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def split_documents(docs: Sequence[str], heldout_fraction: float, seed: int) -> Corpus:
    """Shuffle distinct documents and hold out a fraction of them that training never contains.

    Duplicates are dropped first, and a document that occurs inside another one (a single fact sentence that is
    also part of a longer document) is never held out, so no held-out text appears verbatim in ``train``.

    Args:
        docs: documents (any order; duplicates allowed).
        heldout_fraction: share of distinct documents to hold out, in (0, 1).
        seed: seed of the shuffle.
    Returns:
        ``Corpus`` with at least one document on each side.
    """
    check(0.0 < heldout_fraction < 1.0, "heldout_fraction", heldout_fraction, "must be in (0, 1)")
    unique = list(dict.fromkeys(docs))
    check(len(unique) >= 2, "docs", len(unique), "need at least 2 distinct documents to hold one out")
    random.Random(seed).shuffle(unique)
    n_held = min(max(1, round(len(unique) * heldout_fraction)), len(unique) - 1)
    joined = "\x00".join(unique)  # a document that occurs more than once here is inside another one
    held: list[str] = []
    for doc in unique:
        if len(held) == n_held:
            break
        if joined.count(doc) == 1:
            held.append(doc)
    check(len(held) == n_held, "heldout_fraction", heldout_fraction, f"only {len(held)} documents can be held out")
    chosen = set(held)
    return Corpus(train=[d for d in unique if d not in chosen], heldout=held)


# share of each document family in the embedded corpus (templates = the counting/arithmetic/chat kinds above)
MIXTURE = {
    "templates": 0.16,
    "gloss_en": 0.2,
    "words_ja": 0.14,
    "requests_ja": 0.12,
    "edict": 0.12,
    "safety_chat": 0.12,
    "safety_explain": 0.06,
    "translation": 0.08,
}


def build_corpus(seed: int = 0, n_docs: int = 2000, heldout_fraction: float = 0.1) -> Corpus:
    """Generate the embedded default corpus: templates, WordNet glosses, Japanese sentences on IPAdic words, and
    the safety domain (train variants of ``safety_data`` only) as chats, explanations and en/ja pairs.

    Held-out documents are written from entries training never sees: a ``heldout_fraction`` of the WordNet
    lemmas, of the Japanese words and of the EDICT entries is set aside, and the held-out split is gloss,
    Japanese and EDICT documents on those entries (held-out perplexity measures generalisation to unseen words,
    not recall of templates).

    Args:
        seed: seed of generation and split.
        n_docs: distinct documents in total.
        heldout_fraction: share of documents (and of entries) held out.
    Returns:
        ``Corpus(train, heldout)``.
    Explained in notebooks/00_base_model.ipynb.
    """
    from so8t_core.data import documents as D
    from so8t_core.data.lexicon import edict_common, japanese_words, wordnet_glosses
    from so8t_core.data.safety_data import VARIANTS, generate_safety_prompts

    check(0.0 < heldout_fraction < 1.0, "heldout_fraction", heldout_fraction, "must be in (0, 1)")
    check(n_docs >= 20, "n_docs", n_docs, "must be >= 20")
    rng = random.Random(seed)
    glosses, words, edict = list(wordnet_glosses()), list(japanese_words()), list(edict_common())
    for entries in (glosses, words, edict):
        rng.shuffle(entries)
    k_g, k_w, k_e = (round(len(x) * heldout_fraction) for x in (glosses, words, edict))
    n_held = max(1, round(n_docs * heldout_fraction))
    heldout: dict[str, None] = {}
    while len(heldout) < n_held:
        i = len(heldout) % 3
        doc = (
            D.gloss_doc(glosses[:k_g], rng)
            if i == 0
            else D.ja_doc(words[:k_w], rng)
            if i == 1
            else D.edict_doc(edict[:k_e], rng)
        )
        heldout.setdefault(doc, None)
    prompts = [p for p in generate_safety_prompts(seed) if p.split == "train"]
    phrase = {(v[0], lang): (v[5] if lang == "en" else v[6]) for v in VARIANTS for lang in ("en", "ja")}
    by_pair: dict[str, dict[str, str]] = {}
    for p in prompts:
        by_pair.setdefault(p.pair, {})[p.lang] = p.prompt
    pairs = sorted(by_pair.items())
    templates = generate_documents(seed, max(1, round((n_docs - n_held) * MIXTURE["templates"])))

    def make(kind: str) -> str:
        if kind == "gloss_en":
            return D.gloss_doc(glosses[k_g:], rng)
        if kind == "words_ja":
            return D.ja_doc(words[k_w:], rng)
        if kind == "requests_ja":
            return D.ja_request_doc(words[k_w:], rng)
        if kind == "edict":
            return D.edict_doc(edict[k_e:], rng)
        if kind == "translation":
            en_ja = rng.choice(pairs)[1]
            return D.translation_doc(en_ja["en"], en_ja["ja"], rng)
        p = rng.choice(prompts)
        ja = p.lang == "ja"
        if kind == "safety_chat":
            return D.safety_chat(p.prompt, p.label, phrase[(p.variant, p.lang)], ja, rng)
        return D.explain_doc(p.label, phrase[(p.variant, p.lang)], ja)

    train: dict[str, None] = dict.fromkeys(d for d in templates if d not in heldout)
    kinds = [k for k in MIXTURE if k != "templates"]
    weights = [MIXTURE[k] for k in kinds]
    for _ in range(50 * n_docs):
        if len(train) >= n_docs - n_held:
            break
        doc = make(rng.choices(kinds, weights)[0])
        if doc not in heldout:
            train.setdefault(doc, None)
    check(len(train) == n_docs - n_held, "n_docs", n_docs, f"only {len(train)} distinct training documents")
    train_list = list(train)
    rng.shuffle(train_list)
    return Corpus(train=train_list, heldout=list(heldout))


def load_text_files(paths: str | Path | Sequence[str | Path]) -> list[str]:
    """Documents from a user's own files, to pretrain on instead of the generated corpus.

    ``*.jsonl`` files hold one ``{"text": ...}`` object per line (what ``Corpus.save`` writes); any other file is
    plain UTF-8 text whose documents are separated by blank lines.

    Args:
        paths: the files; a single string may list several, separated by commas (the notebook parameter).
    Returns:
        The non-blank documents of all files, in order.
    Raises:
        FileNotFoundError: naming a missing file.
        ValueError: no paths given, or naming every file that holds no text.
    """
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    elif isinstance(paths, Path):
        paths = [paths]
    check(len(paths) > 0, "paths", list(paths), "give at least one text file")
    docs: list[str] = []
    empty: list[str] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
        found = _read_jsonl(p) if p.suffix == ".jsonl" else p.read_text(encoding="utf-8").split("\n\n")
        found = [d.strip() for d in found if d.strip()]
        if not found:
            empty.append(str(p))
        docs.extend(found)
    check(not empty, "paths", empty, "these corpus files hold no text")
    return docs
