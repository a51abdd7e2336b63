"""Two text-only safety baselines: keyword lists and character n-gram TF-IDF + logistic regression.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from so8t_core.safety.labels import KEYWORDS, LABELS, confusion, generated_set


def _pattern(words: Sequence[str]) -> re.Pattern:
    # English words match at a word start ("hack" also finds "hacking"); Japanese has no spaces, so substring.
    parts = [rf"\b{re.escape(w)}" if w.isascii() else re.escape(w) for w in words]
    return re.compile("|".join(parts), re.IGNORECASE)


class KeywordBaseline:
    """REFUSE if any refusal word occurs, else ESCALATE if any escalation word occurs, else ALLOW.

    The default word lists are ``data/safety/keywords.json`` (generic ja+en moderation words; their note says
    why this baseline over-refuses the trap prompts). ``fit`` learns nothing (kept for the common API).
    ``predict_proba`` turns hit counts r, e into P(REFUSE) = 1 - 0.4^r, P(ESCALATE) = (1 - P(REFUSE))
    (1 - 0.4^e), P(ALLOW) = the rest, whose argmax agrees with ``predict``.

    Explained in notebooks/06_safety_eval.ipynb.
    """

    name = "keyword"

    def __init__(self, refuse_words: Sequence[str] | None = None, escalate_words: Sequence[str] | None = None) -> None:
        words = json.loads(KEYWORDS.read_text(encoding="utf-8")) if None in (refuse_words, escalate_words) else {}
        self._refuse = _pattern(words["refuse"] if refuse_words is None else refuse_words)
        self._escalate = _pattern(words["escalate"] if escalate_words is None else escalate_words)

    def fit(self, prompts: Sequence[str], labels: Sequence[str]) -> KeywordBaseline:
        return self

    def predict_proba(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, 3) probabilities in ``LABELS`` order."""
        hits = np.array(
            [[len(self._refuse.findall(p)), len(self._escalate.findall(p))] for p in prompts], dtype=float
        ).reshape(-1, 2)
        p_ref = 1 - 0.4 ** hits[:, 0]
        p_esc = (1 - p_ref) * (1 - 0.4 ** hits[:, 1])
        return np.stack([1 - p_ref - p_esc, p_esc, p_ref], axis=1)

    def predict(self, prompts: Sequence[str]) -> list[str]:
        return [LABELS[int(i)] for i in self.predict_proba(prompts).argmax(1)]


class _FittedPipeline:
    """What the trained baselines share: a scikit-learn pipeline ``self._pipe`` fitted on labelled prompts, with
    probabilities mapped to ``LABELS`` order."""

    _pipe: Any

    def fit(self, prompts: Sequence[str], labels: Sequence[str]) -> Self:
        confusion(labels, labels)  # validates the labels
        self._pipe.fit(list(prompts), list(labels))
        return self

    def predict_proba(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, 3) probabilities in ``LABELS`` order (a label unseen in training gets 0)."""
        p = self._pipe.predict_proba(list(prompts))
        out = np.zeros((len(prompts), 3))
        for j, lab in enumerate(self._pipe.classes_):
            out[:, LABELS.index(lab)] = p[:, j]
        return out

    def predict(self, prompts: Sequence[str]) -> list[str]:
        return [LABELS[int(i)] for i in self.predict_proba(prompts).argmax(1)]


class TfidfBaseline(_FittedPipeline):
    """Character n-gram TF-IDF + logistic regression (char n-grams need no Japanese tokenizer).

    Args:
        ngram_range: character n-gram lengths.
        C: inverse regularisation strength; classes are balanced by weight.
    Defaults picked on the dev split from analyzer char/char_wb x n-grams (1-3 ... 1-6) x C (1, 10, 100).

    Explained in notebooks/06_safety_eval.ipynb.
    """

    name = "tfidf"

    def __init__(self, ngram_range: tuple[int, int] = (1, 3), C: float = 10.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self._pipe = make_pipeline(
            TfidfVectorizer(analyzer="char", ngram_range=ngram_range, sublinear_tf=True),
            LogisticRegression(C=C, class_weight="balanced", max_iter=5000),
        )


BASELINES = ("keyword", "tfidf", "bow_ids")


def make_baseline(name: str, tokenizer: Any = None) -> KeywordBaseline | TfidfBaseline | TokenBagBaseline:
    """A baseline by name (``BASELINES``), fitted on the generated train split (never on the hand-written
    prompts, which are test only). ``bow_ids`` needs the model's ``tokenizer``."""
    if name not in BASELINES:
        raise ValueError(f"baseline={name!r}: use one of {list(BASELINES)}")
    if name == "bow_ids" and tokenizer is None:
        raise ValueError("baseline='bow_ids' needs the model's tokenizer")
    base = {"keyword": KeywordBaseline, "tfidf": TfidfBaseline}[name]() if name != "bow_ids" else None
    train = generated_set("train")
    return (base or TokenBagBaseline(tokenizer)).fit(list(train.prompts), list(train.labels))


class TokenBagBaseline(_FittedPipeline):
    """Logistic regression on bags of the tokenizer's ids (counts, class-balanced): what the model's own
    vocabulary separates without any of its layers.

    Args:
        tokenizer: a callable returning ``{"input_ids": [...]}`` (the served model's tokenizer).
        C: inverse regularisation strength.

    Explained in notebooks/06_safety_eval.ipynb.
    """

    name = "bow_ids"

    def __init__(self, tokenizer: Any, C: float = 1.0) -> None:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self._tok = tokenizer
        self._pipe = make_pipeline(
            CountVectorizer(analyzer=self._ids, lowercase=False),
            LogisticRegression(C=C, class_weight="balanced", max_iter=5000),
        )

    def _ids(self, text: str) -> list[str]:
        return [str(i) for i in self._tok(text)["input_ids"]]
