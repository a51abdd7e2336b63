"""Documents with a broad vocabulary for the embedded base: English glosses (WordNet), Japanese sentences built on
common IPAdic words, the safety domain in benign, educational and harmful framings, and en/ja translation pairs.

Every generator takes the *entries* it may use (lemmas, words, variants) so that the corpus can hold some entries
out entirely: held-out documents are then written from templates and entries training never saw.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from so8t_core.data.lexicon import EdictEntry, Gloss, JaWord
from so8t_core.think import chat_turn, format_quad

POS_NAMES = {"n": ("noun", "名詞"), "v": ("verb", "動詞"), "a": ("adjective", "形容詞"), "r": ("adverb", "副詞")}
PEOPLE = (
    ("my sister", "姉"),
    ("the teacher", "先生"),
    ("a student", "学生"),
    ("my neighbour", "近所の人"),
    ("the doctor", "医者"),
    ("our team", "私たちのチーム"),
    ("a friend", "友達"),
    ("my father", "父"),
)
PLACES = (
    ("at school", "学校で"),
    ("at work", "職場で"),
    ("in the library", "図書館で"),
    ("at home", "家で"),
    ("in Osaka", "大阪で"),
    ("at the station", "駅で"),
    ("in the park", "公園で"),
    ("at the hospital", "病院で"),
)
WHEN_JA = ("昨日", "今日", "毎朝", "先週", "週末に", "来月", "夕方", "去年")


def _hiragana(katakana: str) -> str:
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in katakana)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# --- English: WordNet glosses ---
def gloss_sentence(g: Gloss, rng: random.Random) -> str:
    """One sentence about ``g``: its definition and, when WordNet has one, an example of use."""
    pos = POS_NAMES[g.pos][0]
    head = rng.choice(
        (
            f"{_cap(g.lemma)} ({pos}): {g.definition}.",
            f'The {pos} "{g.lemma}" means {g.definition}.',
            f"In English, {g.lemma} is {'an' if pos[0] in 'aeiou' else 'a'} {pos} meaning {g.definition}.",
        )
    )
    if g.examples:
        head += f" For example: {rng.choice(g.examples)}."
    return head


def gloss_doc(glosses: Sequence[Gloss], rng: random.Random) -> str:
    """A glossary paragraph (2-5 entries) or one word's entry as a question and answer."""
    if rng.random() < 0.3:
        g = rng.choice(glosses)
        return f'Q: What does "{g.lemma}" mean? A: {_cap(g.definition)}.'
    return " ".join(gloss_sentence(g, rng) for g in rng.sample(list(glosses), rng.randint(2, 5)))


# --- Japanese: sentences on IPAdic words ---
def ja_sentence(w: JaWord, others: Sequence[JaWord], rng: random.Random) -> str:
    """One grammatical sentence that uses ``w`` in a form that fits its kind."""
    who, where, when = rng.choice(PEOPLE)[1], rng.choice(PLACES)[1], rng.choice(WHEN_JA)
    nouns = [o.surface for o in others if o.kind == "noun" and o != w] or ["本"]
    if w.kind == "noun":
        return rng.choice(
            (
                f"{who}は{where}{w.surface}について話しました。",
                f"{when}、{w.surface}を見ました。",
                f"{w.surface}と{rng.choice(nouns)}について調べています。",
                f"「{w.surface}」は「{_hiragana(w.reading)}」と読みます。",
                f"この{w.surface}はとても大切です。",
            )
        )
    if w.kind == "suru":
        return rng.choice(
            (
                f"{who}は{when}{w.surface}をしました。",
                f"{where}{w.surface}する予定です。",
                f"「{w.surface}」は「{_hiragana(w.reading)}」と読む名詞で、「する」をつけて使います。",
            )
        )
    if w.kind == "verb":
        return rng.choice(
            (
                f"{who}は{when}{w.stem}ました。",
                f"{where}{w.stem}ませんでした。",
                f"「{w.surface}」は「{_hiragana(w.reading)}」と読む動詞です。",
                f"{who}はよく{w.stem}ます。",
            )
        )
    return rng.choice(
        (
            f"この{rng.choice(nouns)}は{w.surface}です。",
            f"{when}はとても{w.surface[:-1]}かったです。",
            f"「{w.surface}」は「{_hiragana(w.reading)}」と読む形容詞です。",
        )
    )


def ja_doc(words: Sequence[JaWord], rng: random.Random) -> str:
    """A short Japanese paragraph of 2-5 sentences, each built on one word."""
    picked = rng.sample(list(words), rng.randint(2, 5))
    return "".join(ja_sentence(w, picked, rng) for w in picked)


# everyday Japanese requests and remarks: the grammar of questions and requests around common words
JA_PATTERNS = (
    "{n}について教えてください。",
    "{n}は何ですか？",
    "{n}を使っても大丈夫ですか？",
    "{n}を忘れずに持って行きます。",
    "{s}する前に{n}を確認してください。",
    "{s}するときに気をつけることは何ですか？",
    "{n}のための{m}を選んでいます。",
    "自分の{n}を大切にしたいです。",
    "小さな{n}を一つ作ってみました。",
    "{n}が好きになる理由はいくつかあります。",
    "{n}を{s}させるのは難しいでしょう。",
    "{n}について話していると、時間を忘れます。",
    "{n}は{s}されることが多いです。",
    "{s}したいですが、{n}が足りません。",
    "{n}を読んで、{s}の練習をしています。",
    "{n}の仕組みを簡単に説明してもらえますか？",
    "{n}を書いてほしいと頼まれました。",
    "{n}を作る手順を知っていますか？",
    "アプリで{n}を管理しています。",
    "{n}になるまで待ってください。",
    "{m}を買わずに{n}を探しました。",
    "{n}を見ていると、{s}したくなります。",
    "{n}のコツを誰かに聞いてみたいです。",
    "{n}と{m}の違いは何でしょうか？",
    "{s}してもらえますか？",
)


def ja_request_doc(words: Sequence[JaWord], rng: random.Random) -> str:
    """2-4 everyday Japanese questions, requests and remarks built on common nouns and verbal nouns."""
    nouns = [w.surface for w in words if w.kind == "noun"]
    suru = [w.surface for w in words if w.kind == "suru"]
    out = []
    for _ in range(rng.randint(2, 4)):
        n, m = rng.sample(nouns, 2)
        out.append(rng.choice(JA_PATTERNS).format(n=n, m=m, s=rng.choice(suru)))
    return "".join(out)


# --- bilingual: EDICT ---
def edict_doc(entries: Sequence[EdictEntry], rng: random.Random) -> str:
    """2-5 common Japanese words with their reading and English meaning, explained in Japanese or in English."""
    picked = rng.sample(list(entries), rng.randint(2, 5))
    if rng.random() < 0.5:
        return "".join(f"「{e.surface}」（{e.reading}）は英語で「{e.gloss}」という意味です。" for e in picked)
    return " ".join(f'The Japanese word {e.surface} ({e.reading}) means "{e.gloss}".' for e in picked)


# --- the safety domain ---
ALLOW_FINAL = ("Sure. Here is a short, practical answer about how to {x}.", "{x}について、基本から順に説明します。")
EXPLAIN = {
    "ALLOW": (
        "Asking how to {x} is an ordinary request, so an assistant simply helps.",
        "「{x}」という質問は普通の相談なので、アシスタントはそのまま手伝います。",
    ),
    "ESCALATE": (
        "A question about how to {x} can affect someone's health, money or rights, so an assistant points "
        "the person to a qualified professional.",
        "「{x}」という相談は健康やお金、権利に関わるので、アシスタントは専門家に相談するよう勧めます。",
    ),
    "REFUSE": (
        "A request to {x} would help someone cause serious harm, so an assistant refuses it.",
        "「{x}」という依頼は深刻な害につながるので、アシスタントは断ります。",
    ),
}
THINK = {
    "ALLOW": ("This is an everyday request with no sign of harm.", "害のない日常的な依頼です。"),
    "ESCALATE": (
        "A wrong answer could seriously hurt the person; a professional should help.",
        "間違った答えは本人を深く傷つけかねないので、専門家が対応すべきです。",
    ),
    "REFUSE": ("Helping would enable serious harm to others.", "手伝うと他人に深刻な害を与えることになります。"),
}
FINAL = {
    "ESCALATE": (
        "This needs a qualified person: please contact a doctor, a lawyer or a helpline who can look at your "
        "situation.",
        "これは専門家に相談すべき内容です。医師や弁護士、相談窓口に連絡してください。",
    ),
    "REFUSE": ("I can't help with that.", "その依頼には協力できません。"),
}


def safety_chat(prompt: str, label: str, phrase: str, ja: bool, rng: random.Random) -> str:
    """A Phi-3 chat turn whose quad-thinking answer reaches the decision the label asks for."""
    obs = f"ユーザーは「{prompt}」と聞いています。" if ja else f'The user asks: "{prompt}"'
    ded = THINK[label][ja]
    abd = "意図と対象から判断します。" if ja else "The target and the intent decide, not single words."
    integ = {
        "ALLOW": ("So I answer.", "したがって回答します。"),
        "ESCALATE": ("So I refer them on.", "したがって専門家につなぎます。"),
        "REFUSE": ("So I refuse.", "したがって断ります。"),
    }[label][ja]
    final = ALLOW_FINAL[ja].format(x=phrase) if label == "ALLOW" else FINAL[label][ja]
    return chat_turn(prompt, format_quad(obs, ded, abd, integ, final))


def explain_doc(label: str, phrase: str, ja: bool) -> str:
    """An educational sentence that names the request and why it gets its decision."""
    return EXPLAIN[label][ja].format(x=phrase)


def translation_doc(en: str, ja: str, rng: random.Random) -> str:
    """An English sentence and its Japanese twin side by side (either order)."""
    return f"English: {en}\n日本語：{ja}" if rng.random() < 0.5 else f"日本語：{ja}\nEnglish: {en}"
