"""Does the pretraining corpus know the language of the tasks? Vocabulary size, coverage of the hand-written
prompts' tokens, byte fallback, and an overlap check that keeps the hand-written prompts out of the corpus.

How words are counted. English: lowercase runs of ASCII letters (``[a-z]+``, two letters or more). Japanese:
the lemmas that the morphological analyser MeCab (via ``fugashi``) with the UniDic-lite dictionary assigns to
tokens written in kana or kanji, punctuation and symbols excluded; conjugated forms of one verb count once.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from so8t_core.config import check

_EN_WORD = re.compile(r"[a-z]{2,}")
_JA_CHAR = re.compile(r"[\u3041-\u30ff\u4e00-\u9fff]")
_WORD_TOKEN = re.compile(r"[A-Za-z0-9']+|[^\sA-Za-z0-9]")


@cache
def _tagger() -> Any:
    import fugashi

    return fugashi.Tagger()  # UniDic-lite, from the unidic-lite package


def japanese_tokens(text: str) -> list[Any]:
    """MeCab/UniDic-lite tokens of ``text`` (each has ``.surface`` and ``.feature.lemma``)."""
    return list(_tagger()(text))


def english_vocabulary(texts: Iterable[str]) -> set[str]:
    """Distinct lowercase English words (``[a-z]{2,}``) in ``texts``."""
    out: set[str] = set()
    for t in texts:
        out.update(_EN_WORD.findall(t.lower()))
    return out


def japanese_vocabulary(texts: Iterable[str]) -> set[str]:
    """Distinct lemmas of the kana/kanji tokens of the Japanese-bearing ``texts`` (see the module docstring)."""
    out: set[str] = set()
    for t in texts:
        if not _JA_CHAR.search(t):
            continue
        for tok in japanese_tokens(t):
            if _JA_CHAR.search(tok.surface):
                lemma = getattr(tok.feature, "lemma", None) or tok.surface
                out.add(lemma.split("-")[0])  # UniDic marks readings of homographs as lemma-english
    return out


_JA_FUNCTION = ("助詞", "助動詞", "補助記号", "記号")


def word_tokens(text: str) -> list[str]:
    """Tokenizer-independent words for the overlap check: English/digit runs (lowercased) and, for Japanese runs,
    the MeCab surfaces of content tokens (particles, auxiliaries and punctuation dropped: a Japanese morpheme is
    about half an English word, and eight of them with their particles are a stock phrase such as
    「について教えてください」, not a copied prompt); other characters stand alone."""
    out: list[str] = []
    for chunk in re.split(r"([\u3041-\u30ff\u4e00-\u9fff\u3000-\u303f\uff01-\uff5e]+)", text):
        if _JA_CHAR.search(chunk):
            out += [t.surface for t in japanese_tokens(chunk) if t.feature.pos1 not in _JA_FUNCTION]
        else:
            out += [w.lower() for w in _WORD_TOKEN.findall(chunk)]
    return out


def shared_windows(protected: Sequence[str], texts: Iterable[str], n: int = 8) -> list[tuple[int, str]]:
    """Every ``n``-word window of a ``protected`` text that also occurs in ``texts``.

    Args:
        protected: texts that must not leak (the hand-written test prompts).
        texts: the documents to search (the corpus, generated prompts).
        n: window length in ``word_tokens``; a protected text shorter than ``n`` words counts as one window.
    Returns:
        ``(index of the protected text, the window joined by spaces)`` for each hit.
    """
    check(n > 0, "n", n, "must be > 0")
    windows: dict[tuple[str, ...], int] = {}
    for i, p in enumerate(protected):
        w = word_tokens(p)
        for k in range(max(1, len(w) - n + 1)):
            windows.setdefault(tuple(w[k : k + n]), i)
    sizes = sorted({len(k) for k in windows})
    hits: dict[tuple[str, ...], int] = {}
    for t in texts:
        w = word_tokens(t)
        for size in sizes:
            for k in range(len(w) - size + 1):
                key = tuple(w[k : k + size])
                if key in windows:
                    hits[key] = windows[key]
    return sorted((i, " ".join(k)) for k, i in hits.items())


def token_coverage(
    tokenizer: Any, corpus_ids: Sequence[Sequence[int]], prompts: Sequence[str], min_count: int = 5
) -> dict[str, float]:
    """How well the pretraining tokens cover ``prompts``.

    Args:
        tokenizer: the base's tokenizer.
        corpus_ids: the tokenized training documents.
        prompts: the hand-written prompts.
        min_count: how often a token must occur in pretraining to count as seen.
    Returns:
        ``share_seen`` (of the prompts' token occurrences, those whose id occurs >= ``min_count`` times in
        pretraining), ``byte_fallback_share`` (of the prompts' tokens, byte pieces ``<0x..>``) and ``tokens``.
    """
    counts = Counter(i for doc in corpus_ids for i in doc)
    ids = [i for p in prompts for i in tokenizer(p, add_special_tokens=False).input_ids]
    check(bool(ids), "prompts", len(prompts), "no tokens to measure")
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return {
        "share_seen": sum(counts[i] >= min_count for i in ids) / len(ids),
        "byte_fallback_share": sum(p.startswith("<0x") and p.endswith(">") for p in pieces) / len(ids),
        "tokens": float(len(ids)),
    }


# Targets the corpus must meet before notebook 03's tasks mean anything (the README's coverage section)
MIN_WORDS, MIN_SEEN_SHARE, MAX_BYTE_FALLBACK_JA = 3000, 0.9, 0.10


def coverage_targets(coverage: dict[str, Any]) -> dict[str, bool]:
    """Which coverage targets a corpus meets, from the measured ``coverage`` of notebook 00.

    Args:
        coverage: ``distinct_words_{en,ja}``, ``prompt_tokens_seen5_{en,ja}`` and ``byte_fallback_ja``.
    Returns:
        ``words_en_ge_3000``, ``words_ja_ge_3000``, ``prompt_tokens_seen5_ge_90pct``, ``byte_fallback_ja_le_10pct``.
    Raises:
        KeyError: a measurement is missing.
    """
    seen = min(coverage["prompt_tokens_seen5_en"], coverage["prompt_tokens_seen5_ja"])
    return {
        "words_en_ge_3000": coverage["distinct_words_en"] >= MIN_WORDS,
        "words_ja_ge_3000": coverage["distinct_words_ja"] >= MIN_WORDS,
        "prompt_tokens_seen5_ge_90pct": seen >= MIN_SEEN_SHARE,
        "byte_fallback_ja_le_10pct": coverage["byte_fallback_ja"] <= MAX_BYTE_FALLBACK_JA,
    }
