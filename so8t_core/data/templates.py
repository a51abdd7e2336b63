"""Template documents whose answers are computed, not sampled: facts about colours, shapes, numbers, arithmetic
and days, counting stories, Q&A pairs and quad-thinking chats in the Phi-3 turn layout. A sum is always right and a
colour always matches its object, so a model can lower its perplexity on them only by learning the patterns.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from so8t_core.config import check
from so8t_core.think import chat_turn, format_quad

# (English thing, Japanese thing, English colour, Japanese colour)
COLOURS = (
    ("the sky", "空", "blue", "青"),
    ("a banana", "バナナ", "yellow", "黄色"),
    ("grass", "草", "green", "緑"),
    ("snow", "雪", "white", "白"),
    ("a strawberry", "いちご", "red", "赤"),
    ("a crow", "カラス", "black", "黒"),
    ("a tomato", "トマト", "red", "赤"),
    ("a lemon", "レモン", "yellow", "黄色"),
    ("a leaf", "葉っぱ", "green", "緑"),
    ("milk", "牛乳", "white", "白"),
    ("an orange", "みかん", "orange", "オレンジ色"),
    ("coal", "石炭", "black", "黒"),
)
# (English shape, Japanese shape, number of sides)
SHAPES = (
    ("a triangle", "三角形", 3),
    ("a square", "四角形", 4),
    ("a pentagon", "五角形", 5),
    ("a hexagon", "六角形", 6),
    ("an octagon", "八角形", 8),
)
DAYS_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAYS_JA = ("月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日", "日曜日")
NAMES = (("Taro", "太郎"), ("Hanako", "花子"), ("Ken", "健"), ("Aiko", "愛子"), ("Sora", "そら"))
# (English plural, Japanese noun, Japanese counter)
ITEMS = (
    ("apples", "りんご", "個"),
    ("books", "本", "冊"),
    ("pencils", "鉛筆", "本"),
    ("cards", "カード", "枚"),
)
ABDUCTIONS_EN = (
    "The user probably wants a short, direct answer.",
    "This looks like a simple practice question.",
    "The user may be checking a basic fact.",
)
ABDUCTIONS_JA = (
    "短い答えが求められていると考えられます。",
    "簡単な練習問題のようです。",
    "基本的な事実を確かめたいのでしょう。",
)
_OPS = {"+": ("plus", "たす"), "-": ("minus", "ひく"), "×": ("times", "かける")}


# --- fact sentences: each returns (English, Japanese) so a document can stay in one language ---


def _colour_fact(rng: random.Random) -> tuple[str, str]:
    en, ja, c_en, c_ja = rng.choice(COLOURS)
    return f"The colour of {en} is {c_en}.", f"{ja}の色は{c_ja}です。"


def _shape_fact(rng: random.Random) -> tuple[str, str]:
    en, ja, n = rng.choice(SHAPES)
    return f"{en[0].upper()}{en[1:]} has {n} sides.", f"{ja}には辺が{n}本あります。"


def _number_fact(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(0, 30), 2)
    kind = rng.randrange(3)
    if kind == 0:
        return f"After {a} comes {a + 1}.", f"{a}の次は{a + 1}です。"
    if kind == 1:
        big, small = max(a, b), min(a, b)
        return f"{big} is bigger than {small}.", f"{big}は{small}より大きいです。"
    parity_en, parity_ja = ("even", "偶数") if a % 2 == 0 else ("odd", "奇数")
    return f"{a} is an {parity_en} number.", f"{a}は{parity_ja}です。"


def _arithmetic(rng: random.Random) -> tuple[int, str, int, int]:
    op = rng.choice(tuple(_OPS))
    a, b = (rng.randint(0, 20), rng.randint(0, 20)) if op != "×" else (rng.randint(0, 9), rng.randint(0, 9))
    if op == "-" and b > a:
        a, b = b, a  # keep answers non-negative so the Japanese reading stays simple
    return a, op, b, {"+": a + b, "-": a - b, "×": a * b}[op]


def _arithmetic_fact(rng: random.Random) -> tuple[str, str]:
    a, op, b, r = _arithmetic(rng)
    word_en, word_ja = _OPS[op]
    if rng.random() < 0.5:
        return f"{a} {op} {b} = {r}.", f"{a} {op} {b} = {r}です。"
    return f"{a} {word_en} {b} is {r}.", f"{a}{word_ja}{b}は{r}です。"


def _day_fact(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(7)
    if rng.random() < 0.5:
        nxt = (i + 1) % 7
        return f"After {DAYS_EN[i]} comes {DAYS_EN[nxt]}.", f"{DAYS_JA[i]}の次は{DAYS_JA[nxt]}です。"
    return (
        f"The day before {DAYS_EN[i]} is {DAYS_EN[i - 1]}.",
        f"{DAYS_JA[i]}の前の日は{DAYS_JA[i - 1]}です。",
    )


_FACTS: tuple[Callable[[random.Random], tuple[str, str]], ...] = (
    _colour_fact,
    _shape_fact,
    _number_fact,
    _arithmetic_fact,
    _day_fact,
)


def _facts_doc(rng: random.Random) -> str:
    ja = rng.random() < 0.5
    sentences = [rng.choice(_FACTS)(rng)[ja] for _ in range(rng.randint(1, 4))]
    return ("" if ja else " ").join(dict.fromkeys(sentences))  # no sentence twice in one document


def _story(rng: random.Random) -> dict[str, tuple[str, str]]:
    """A counting story as (English, Japanese) pairs: setup, question, sum, answer sentence, short answer."""
    (n_en, n_ja), (i_en, i_ja, ctr) = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(3, 9)
    gains = rng.random() < 0.5
    b = rng.randint(1, 9) if gains else rng.randint(1, a - 2)  # at least 2 left keeps English plurals right
    r, op = (a + b, "+") if gains else (a - b, "-")
    change = (
        (f"Then {n_en} gets {b} more.", f"それから{b}{ctr}もらいました。")
        if gains
        else (f"Then {n_en} gives {b} away.", f"それから{b}{ctr}あげました。")
    )
    return {
        "setup": (f"{n_en} has {a} {i_en}. {change[0]}", f"{n_ja}は{i_ja}を{a}{ctr}持っています。{change[1]}"),
        "question": (f"How many {i_en} does {n_en} have now?", f"今、{n_ja}は{i_ja}を何{ctr}持っていますか？"),
        "sum": (f"{a} {op} {b} = {r}.", f"{a} {op} {b} = {r}です。"),
        "answer": (f"Now {n_en} has {r} {i_en}.", f"今、{n_ja}は{i_ja}を{r}{ctr}持っています。"),
        "short": (f"{r} {i_en}", f"{r}{ctr}"),
    }


def _story_doc(rng: random.Random) -> str:
    ja = rng.random() < 0.5
    story = _story(rng)
    return ("" if ja else " ").join((story["setup"][ja], story["answer"][ja]))


# --- question/answer material shared by plain Q&A documents and chat documents ---
# Each returns (question, observation, deduction, short answer) in one language; the short answer is a bare
# phrase ("blue", "青") that the callers wrap into a sentence.


def _qa_arithmetic(rng: random.Random, ja: bool) -> tuple[str, str, str, str]:
    a, op, b, r = _arithmetic(rng)
    word_en, word_ja = _OPS[op]
    if ja:
        observation = f"{a}{word_ja}{b}の計算を聞かれています。"
        return f"{a} {op} {b}はいくつですか？", observation, f"{a} {op} {b} = {r}です。", str(r)
    return f"What is {a} {op} {b}?", f"The question asks for {a} {word_en} {b}.", f"{a} {op} {b} = {r}.", str(r)


def _qa_colour(rng: random.Random, ja: bool) -> tuple[str, str, str, str]:
    en, jp, c_en, c_ja = rng.choice(COLOURS)
    if ja:
        return f"{jp}の色は何ですか？", f"{jp}の色を聞かれています。", f"{jp}の色は{c_ja}です。", c_ja
    return f"What colour is {en}?", f"The question asks for the colour of {en}.", f"The colour of {en} is {c_en}.", c_en


def _qa_day(rng: random.Random, ja: bool) -> tuple[str, str, str, str]:
    i = rng.randrange(7)
    day, nxt = (DAYS_JA[i], DAYS_JA[(i + 1) % 7]) if ja else (DAYS_EN[i], DAYS_EN[(i + 1) % 7])
    if ja:
        return f"{day}の次は何曜日ですか？", f"{day}の次の曜日を聞かれています。", f"{day}の次は{nxt}です。", nxt
    observation = f"The question asks for the day after {day}."
    return f"What day comes after {day}?", observation, f"After {day} comes {nxt}.", nxt


def _qa_shape(rng: random.Random, ja: bool) -> tuple[str, str, str, str]:
    en, jp, n = rng.choice(SHAPES)
    if ja:
        observation = f"{jp}の辺の数を聞かれています。"
        return f"{jp}には辺が何本ありますか？", observation, f"{jp}には辺が{n}本あります。", f"{n}本"
    deduction = f"{en[0].upper()}{en[1:]} has {n} sides."
    return f"How many sides does {en} have?", f"The question asks for the sides of {en}.", deduction, f"{n} sides"


def _qa_story(rng: random.Random, ja: bool) -> tuple[str, str, str, str]:
    story = _story(rng)
    question = ("" if ja else " ").join((story["setup"][ja], story["question"][ja]))
    obs = "持っている数の変化を聞かれています。" if ja else "The question asks how a count changes."
    return question, obs, story["sum"][ja], story["short"][ja]


_QAS = (_qa_arithmetic, _qa_colour, _qa_day, _qa_shape, _qa_story)


def _answer_sentence(short: str, ja: bool) -> str:
    return f"{short}です。" if ja else f"{short[0].upper()}{short[1:]}."


def _qa_doc(rng: random.Random) -> str:
    ja = rng.random() < 0.5
    question, _, _, short = rng.choice(_QAS)(rng, ja)
    answer = _answer_sentence(short, ja)
    return f"質問：{question} 答え：{answer}" if ja else f"Q: {question} A: {answer}"


def _chat_doc(rng: random.Random) -> str:
    ja = rng.random() < 0.5
    question, observation, deduction, short = rng.choice(_QAS)(rng, ja)
    abduction = rng.choice(ABDUCTIONS_JA if ja else ABDUCTIONS_EN)
    integration = f"したがって答えは{short}です。" if ja else f"So the answer is {short}."
    final = _answer_sentence(short, ja)
    return chat_turn(question, format_quad(observation, deduction, abduction, integration, final))


# kind -> (generator, weight); chat documents are a third of the corpus so the layout is learnt early
DOC_KINDS: dict[str, tuple[Callable[[random.Random], str], float]] = {
    "facts": (_facts_doc, 0.3),
    "story": (_story_doc, 0.15),
    "qa": (_qa_doc, 0.2),
    "chat": (_chat_doc, 0.35),
}


def generate_documents(seed: int, n_docs: int) -> list[str]:
    """``n_docs`` distinct documents, a mix of facts, stories, Q&A and quad-thinking chats.

    Args:
        seed: the only source of randomness (same seed, same list).
        n_docs: how many distinct documents to return.
    Returns:
        The documents, in generation order.
    Explained in notebooks/00_base_model.ipynb.
    """
    check(n_docs > 0, "n_docs", n_docs, "must be > 0")
    rng = random.Random(seed)
    makers, weights = zip(*DOC_KINDS.values())
    seen: dict[str, None] = {}  # insertion-ordered set
    for _ in range(50 * n_docs):
        if len(seen) == n_docs:
            break
        seen.setdefault(rng.choices(makers, weights)[0](rng), None)
    check(len(seen) == n_docs, "n_docs", n_docs, f"the templates gave only {len(seen)} distinct documents")
    return list(seen)
