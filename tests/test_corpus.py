"""The generated corpus: deterministic, split into distinct documents, consistent answers, quad layout."""

from __future__ import annotations

import calendar
import json
import operator
import re

import pytest

from so8t_core.data.corpus import Corpus, build_corpus, generate_documents, load_text_files, split_documents
from so8t_core.think import chat_turn


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus(seed=7, n_docs=600, heldout_fraction=0.2)


def all_docs(c: Corpus) -> list[str]:
    return c.train + c.heldout


@pytest.fixture(scope="module")
def templates() -> list[str]:
    """The computed-answer template documents alone (a sixth of the embedded corpus)."""
    return generate_documents(7, 600)


def test_same_seed_same_corpus_other_seed_other_corpus(corpus):
    assert build_corpus(seed=7, n_docs=600, heldout_fraction=0.2) == corpus
    assert build_corpus(seed=8, n_docs=600, heldout_fraction=0.2) != corpus


def test_heldout_is_distinct_documents_of_the_right_size(corpus):
    assert len(corpus.heldout) == 120
    assert len(corpus.train) == 480
    assert len(set(all_docs(corpus))) == 600
    train_text = "\n".join(corpus.train)
    assert not [h for h in corpus.heldout if h in train_text]  # not even inside a longer training document


def test_corpus_mixes_both_languages_and_all_kinds(corpus):
    docs = all_docs(corpus)
    japanese = [d for d in docs if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", d)]
    assert 0.3 < len(japanese) / len(docs) < 0.7
    assert any(d.startswith("Q: ") for d in docs)
    assert any(d.startswith("質問：") for d in docs)
    assert sum(d.startswith("<|user|>") for d in docs) > 50
    assert any("WordNet" not in d and re.search(r"\(noun\)|means", d) for d in docs)  # English glosses
    assert any("という意味です" in d for d in docs)  # EDICT glosses in Japanese


CHAT = re.compile(
    r"<\|user\|>\n([^<]+)<\|end\|>\n<\|assistant\|>\n"
    r"<think-observation>([^<]+)</think-observation><think-deduction>([^<]+)</think-deduction>"
    r"<think-abduction>([^<]+)</think-abduction><think-integration>([^<]+)</think-integration>"
    r"<final>([^<]+)</final><\|end\|>"
)


def test_chat_documents_follow_phi3_turns_and_the_quad_layout(corpus):
    chats = [d for d in all_docs(corpus) if "<|" in d or "<think" in d]
    assert chats
    for doc in chats:
        assert CHAT.fullmatch(doc), doc


def test_chat_turn_prompt_is_the_reply_prefix():
    assert chat_turn("hi") == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert chat_turn("hi", "yo") == "<|user|>\nhi<|end|>\n<|assistant|>\nyo<|end|>"


OPS = {
    "+": operator.add,
    "-": operator.sub,
    "×": operator.mul,
    "plus": operator.add,
    "minus": operator.sub,
    "times": operator.mul,
    "たす": operator.add,
    "ひく": operator.sub,
    "かける": operator.mul,
}
EQUATIONS = (
    re.compile(r"(\d+) ([+\-×]) (\d+) = (\d+)"),
    re.compile(r"(\d+) (plus|minus|times) (\d+) is (\d+)"),
    re.compile(r"(\d+)(たす|ひく|かける)(\d+)は(\d+)"),
)


def test_every_stated_equation_is_true(templates):
    seen = 0
    for doc in templates:
        for pattern in EQUATIONS:
            for a, op, b, r in pattern.findall(doc):
                assert OPS[op](int(a), int(b)) == int(r), doc
                seen += 1
    assert seen > 100


def test_chat_arithmetic_answers_the_question_asked(templates):
    seen = 0
    for doc in templates:
        m = CHAT.fullmatch(doc)
        q = m and re.fullmatch(r"(?:What is )?(\d+) ([+\-×]) (\d+)(?:\?|はいくつですか？)", m.group(1))
        if q:
            final = re.match(r"\d+", m.group(6)).group()
            assert OPS[q.group(2)](int(q.group(1)), int(q.group(3))) == int(final), doc
            seen += 1
    assert seen > 5


def test_counting_stories_add_up(templates):
    gets = re.compile(r"has (\d+) (\w+)\. Then (\w+) (gets (\d+) more|gives (\d+) away)\..*?has (\d+) \2")
    seen = 0
    for doc in templates:
        for a, _, _, _, more, away, r in gets.findall(doc):
            assert int(a) + int(more or 0) - int(away or 0) == int(r), doc
            seen += 1
    assert seen > 10


def test_days_follow_the_calendar(templates):
    days = list(calendar.day_name)  # Monday first, independent of the generator's table
    seen = 0
    for doc in templates:
        for a, b in re.findall(r"After (\w+day) comes (\w+day)", doc):
            assert days[(days.index(a) + 1) % 7] == b
            seen += 1
        for a, b in re.findall(r"The day before (\w+day) is (\w+day)", doc):
            assert days[(days.index(a) - 1) % 7] == b
            seen += 1
    assert seen > 10


def test_save_load_round_trip_keeps_newlines(tmp_path, corpus):
    paths = corpus.save(tmp_path)
    assert Corpus.load(tmp_path) == corpus
    lines = paths["train"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(corpus.train)  # one document per line, newlines escaped by JSON
    assert json.loads(lines[0])["text"] == corpus.train[0]


def test_split_drops_duplicates_and_validates():
    c = split_documents(["a", "b", "a", "c", "b", "d"], 0.5, seed=0)
    assert sorted(c.train + c.heldout) == ["a", "b", "c", "d"]
    assert len(c.heldout) == 2
    c = split_documents(["x", "x y", "z", "w"], 0.5, seed=0)
    assert "x" in c.train  # it is part of "x y", so holding it out would test memory, not modelling
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_documents(["a", "a b", "a b c"], 0.5, seed=0)  # only "a b c" is inside no other document
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_documents(["a", "b"], 1.0, seed=0)
    with pytest.raises(ValueError, match="docs"):
        split_documents(["a", "a"], 0.5, seed=0)
    with pytest.raises(ValueError, match="n_docs"):
        generate_documents(0, 0)


def test_load_text_files_reads_paragraphs_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first doc\nstill first\n\n\nsecond doc\n", encoding="utf-8")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"text": "third\ndoc"}) + "\n", encoding="utf-8")
    assert load_text_files([txt, jsonl]) == ["first doc\nstill first", "second doc", "third\ndoc"]
    assert load_text_files(f"{txt}, {jsonl}") == load_text_files([txt, jsonl])


def test_empty_corpus_errors_name_the_files(tmp_path):
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_text("", encoding="utf-8")
    blank.write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty.txt.*blank.txt"):
        load_text_files([empty, blank])
    with pytest.raises(ValueError, match="paths"):
        load_text_files([])
    with pytest.raises(ValueError, match="paths"):
        load_text_files("")
    with pytest.raises(FileNotFoundError, match=r"missing.txt"):
        load_text_files([tmp_path / "missing.txt"])


def test_coverage_targets_follow_each_measurement() -> None:
    from so8t_core.data.coverage import coverage_targets

    met = {"distinct_words_en": 3000, "distinct_words_ja": 3100, "prompt_tokens_seen5_en": 0.95,
           "prompt_tokens_seen5_ja": 0.9, "byte_fallback_ja": 0.1}  # fmt: skip
    assert all(coverage_targets(met).values())
    assert not coverage_targets(met | {"distinct_words_ja": 2999})["words_ja_ge_3000"]
    assert not coverage_targets(met | {"prompt_tokens_seen5_en": 0.89})["prompt_tokens_seen5_ge_90pct"]
    assert not coverage_targets(met | {"byte_fallback_ja": 0.11})["byte_fallback_ja_le_10pct"]
    with pytest.raises(KeyError, match="byte_fallback_ja"):
        coverage_targets({k: v for k, v in met.items() if k != "byte_fallback_ja"})
