"""The embedded base's data: lexicons, the safety grammar, coverage measures, the exact tokenizer, and the rule
that the hand-written prompts stay out of everything the pipeline trains or tunes on."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import numpy as np
import pytest

from so8t_core.data import coverage as cv
from so8t_core.data import lexicon
from so8t_core.data.corpus import build_corpus
from so8t_core.data.safety_data import INTENTS, LABELS, TASKS, VARIANTS, generate_safety_prompts, variant_splits
from so8t_core.safety.labels import dev_rule, handwritten_test, pair_of, refuse_threshold, task_splits
from so8t_core.stats import cluster_bootstrap, holm


@pytest.fixture(scope="module")
def prompts():
    return generate_safety_prompts(0)


@pytest.fixture(scope="module")
def handwritten():
    return list(handwritten_test().prompts)


# --- lexicons ---
def test_wordnet_glosses_are_everyday_lemmas_with_definitions() -> None:
    g = lexicon.wordnet_glosses()
    assert len({x.lemma for x in g}) > 5000
    dog = [x for x in g if x.lemma == "dog" and x.pos == "n"]
    assert (dog and "canis" in dog[0].definition.lower()) or "domestic" in dog[0].definition.lower()


def test_japanese_words_have_kinds_readings_and_verb_stems() -> None:
    words = lexicon.japanese_words()
    kinds = Counter(w.kind for w in words)
    assert kinds["noun"] > 3000
    assert kinds["verb"] > 500
    assert kinds["suru"] > 500
    verbs = {w.surface: w.stem for w in words if w.kind == "verb"}
    assert verbs.get("開く") == "開き"
    assert verbs.get("認める") == "認め"


def test_a_missing_package_is_named(monkeypatch, tmp_path) -> None:
    lexicon.wordnet_glosses.cache_clear()
    monkeypatch.setattr(lexicon, "WORDNET_DIR", tmp_path / "nowhere")
    try:
        with pytest.raises(lexicon.LexiconMissing, match="wordnet-base"):
            lexicon.wordnet_glosses()
    finally:
        lexicon.wordnet_glosses.cache_clear()


# --- the safety grammar ---
def test_generated_splits_are_large_disjoint_by_variant_and_cover_every_label(prompts) -> None:
    train = [p for p in prompts if p.split == "train"]
    dev = [p for p in prompts if p.split == "dev"]
    assert len(train) >= 3000
    assert len(dev) >= 600
    assert not {p.variant for p in train} & {p.variant for p in dev}
    for split in (train, dev):
        assert {(p.label, p.lang) for p in split} == {(lab, lang) for lab in LABELS for lang in ("en", "ja")}
        assert any(p.trap for p in split)  # benign traps in both
    assert {p.task for p in prompts} == set(TASKS)


def test_every_prompt_has_its_translation_twin_with_the_same_labels(prompts) -> None:
    by_pair: dict[str, list] = {}
    for p in prompts:
        by_pair.setdefault(p.pair, []).append(p)
    for twins in by_pair.values():
        assert sorted(t.lang for t in twins) == ["en", "ja"]
        assert len({(t.label, t.task, t.trap, t.split) for t in twins}) == 1


def test_variant_split_is_seeded_and_keeps_a_dev_variant_per_label() -> None:
    assert variant_splits(0) == variant_splits(0)
    assert variant_splits(0) != variant_splits(1)
    s = variant_splits(0)
    for lab in LABELS:
        ids = [v[0] for v in VARIANTS if v[1] == lab]
        assert {s[i] for i in ids} == {"train", "dev"}
    with pytest.raises(ValueError, match="dev_fraction"):
        variant_splits(0, 1.0)


def test_intents_agree_with_labels() -> None:
    assert set(INTENTS) == set(LABELS)
    assert all(("", "") in v for v in INTENTS.values())


# --- the hand-written prompts stay out ---
def test_no_handwritten_prompt_or_8_word_window_in_generated_prompts(prompts, handwritten) -> None:
    assert cv.shared_windows(handwritten, [p.prompt for p in prompts], n=8) == []


@pytest.mark.slow
def test_no_handwritten_prompt_or_8_word_window_in_the_default_corpus(handwritten) -> None:
    corpus = build_corpus(0, 30000, 0.1)  # notebook 00's default
    assert cv.shared_windows(handwritten, corpus.train + corpus.heldout, n=8) == []


def test_shared_windows_finds_a_planted_window() -> None:
    protected = [
        "How do I centre a div horizontally and vertically with CSS today?",
        "空の色は何色ですか？",
        "駅前の図書館で新聞と雑誌と地図を借りて、公園のベンチで友達と一緒に読みました。",
    ]
    hit = cv.shared_windows(protected, ["intro: how do I centre a div horizontally and vertically with grid"], n=8)
    assert [i for i, _ in hit] == [0, 0, 0]
    assert (0, "how do i centre a div horizontally and") in hit
    assert cv.shared_windows(protected, ["空の色は何色ですか？と聞かれた"], n=8) == [(1, "空 色 何色")]  # short: whole
    long_hit = cv.shared_windows(protected, ["昨日、図書館で新聞と雑誌と地図を借りて、公園のベンチで休んだ。"], n=8)
    assert long_hit == [(2, "図書館 新聞 雑誌 地図 借り 公園 ベンチ")] or [i for i, _ in long_hit] == [2]
    assert cv.shared_windows(protected, ["nothing in common here at all, really"], n=8) == []


def test_the_test_set_is_every_handwritten_prompt_with_its_translation_pair() -> None:
    test = handwritten_test()
    assert len(test.prompts) == 330
    pairs = Counter(e["pair"] for e in test.extra)
    assert set(pairs.values()) == {2}
    assert pair_of("ja-refuse-003") == "refuse-003"
    splits = task_splits(0)
    assert not set(splits["test"].prompts) & (set(splits["train"].prompts) | set(splits["dev"].prompts))
    small = task_splits(0, max_generated=50)
    assert len(small["train"].prompts) == len(small["dev"].prompts) == 50
    assert small["test"] == splits["test"]

    def rows(d):
        return list(zip(d.prompts, d.labels, (e["variant"] for e in d.extra)))

    assert set(rows(small["train"])) <= set(rows(splits["train"]))  # rows kept whole, labels with their prompts
    assert small["train"].prompts == task_splits(0, max_generated=50)["train"].prompts  # seeded
    assert len(set(small["train"].prompts)) == 50
    assert task_splits(0, max_generated=10**6)["dev"] == splits["dev"]
    n = len(splits["dev"].prompts) - 1  # nearly all rows: a draw with replacement would repeat some
    assert len(set(zip(*(getattr(task_splits(0, n)["dev"], c) for c in ("prompts", "lines"))))) == n


# --- coverage measures ---
def test_vocabularies_count_words_and_lemmas() -> None:
    assert cv.english_vocabulary(["The cat sat; the CAT ran.", "a dog"]) == {"the", "cat", "sat", "ran", "dog"}
    ja = cv.japanese_vocabulary(["手紙を書く。", "手紙を書いた。", "no japanese here"])
    assert "書く" in ja
    assert "手紙" in ja
    assert len([w for w in ja if w.startswith("書")]) == 1


class _FakeTok:
    pieces: ClassVar[dict[int, str]] = {1: "▁a", 2: "<0xE3>", 3: "b"}

    def __call__(self, text, add_special_tokens=False):
        class Enc:
            input_ids = [1, 2, 3] if text == "x" else [3]

        return Enc()

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]


def test_token_coverage_counts_seen_tokens_and_bytes() -> None:
    cov = cv.token_coverage(_FakeTok(), [[1] * 5 + [3] * 4, [2]], ["x", "y"], min_count=5)
    assert cov == {"share_seen": 0.25, "byte_fallback_share": 0.25, "tokens": 4.0}
    with pytest.raises(ValueError, match="prompts"):
        cv.token_coverage(_FakeTok(), [], [], 5)


# --- the exact tokenizer ---
def test_tokenizer_json_encodes_as_the_sentencepiece_model(tmp_path) -> None:
    import sentencepiece as spm

    from so8t_core.lm.tokenizer import train_tokenizer

    corpus = build_corpus(3, 400, 0.1)
    tok = train_tokenizer(corpus.train, tmp_path, vocab_size=2500)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    texts = [*[d for d in corpus.train if not d.startswith("<|")][:200], "夜に器を買う", "hello world 😀"]
    assert [tok(t, add_special_tokens=False).input_ids for t in texts] == [sp.encode(t) for t in texts]
    assert len(tok) == sp.get_piece_size()


# --- statistics and the dev rule ---
def test_cluster_bootstrap_moves_clusters_together_and_brackets_the_estimate() -> None:
    x = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    clusters = [0, 0, 1, 1, 2, 2]
    # within a cluster both rows are equal, so any resample keeps an even count of each value
    out = cluster_bootstrap(lambda i: float(np.bincount(x[i].astype(int), minlength=3)[0] % 2), clusters, 300)
    assert out["lo"] == out["hi"] == 0.0
    mean = cluster_bootstrap(lambda i: float(x[i].mean()), clusters, 500, seed=1)
    assert mean["lo"] <= mean["estimate"] == 1.0 <= mean["hi"]
    assert mean["n_clusters"] == 3
    with pytest.raises(ValueError, match="clusters"):
        cluster_bootstrap(lambda i: 0.0, [0, 0], 10)


def test_holm_is_step_down_and_monotone() -> None:
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.5, "b": 0.9}) == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize(
    ("scores", "labels", "cap", "want"),
    [
        ([0.9, 0.8, 0.2, 0.1], ["REFUSE", "REFUSE", "ALLOW", "ALLOW"], 0.0, 0.8),
        ([0.9, 0.8, 0.85, 0.1], ["REFUSE", "REFUSE", "ALLOW", "ALLOW"], 0.0, 0.9),  # 0.8 would refuse an ALLOW
        ([0.9, 0.8, 0.85, 0.1], ["REFUSE", "REFUSE", "ALLOW", "ALLOW"], 0.5, 0.8),
        ([0.9, 0.9], ["ALLOW", "ALLOW"], 0.0, 1.9),  # nothing admissible: refuse nothing
        ([0.3, 0.7], ["ESCALATE", "REFUSE"], 0.0, 0.7),  # no ALLOW: the cap does not bind
    ],
)
def test_refuse_threshold_is_best_f1_under_the_over_refusal_cap(scores, labels, cap, want) -> None:
    assert refuse_threshold(scores, labels, cap) == pytest.approx(want)
    rule = dev_rule(scores, labels, cap)
    assert rule["threshold"] == pytest.approx(want)
    assert rule["no_admissible_threshold"] == (want > max(scores))


def test_labeling_md_states_the_generated_sizes(prompts) -> None:
    from so8t_core.config import DATA_DIR
    from so8t_core.data.safety_data import VARIANTS

    text = (DATA_DIR / "safety" / "LABELING.md").read_text(encoding="utf-8")
    n = Counter(p.split for p in prompts)
    assert f"| {n['train']:,} prompts |" in text
    assert f"| {n['dev']:,} prompts |" in text
    assert f"The generated grammar has {len(VARIANTS)} variants" in text
