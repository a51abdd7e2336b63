"""Real vocabulary for the generated corpus, read from two freely licensed Debian packages (``make setup``
installs both; nothing is downloaded at run time):

* ``wordnet-base`` (WordNet 3.0, Princeton University; WordNet 3.0 licence: use, copy, modify and distribute
  without fee, keeping its notice): English lemmas with their most frequent sense's definition and examples.
  Only lemmas tagged in WordNet's sense-tagged corpus (``tagsense_cnt`` > 0) are kept: the everyday words.
* ``mecab-ipadic`` (IPAdic 2.7.0, NAIST; a BSD-style licence): Japanese verbs and adjectives with readings and
  the verb stem that takes ～ます, chosen by the dictionary's own word cost (lower = more common).
* ``edict`` (EDICT, the Electronic Dictionary Research and Development Group; CC BY-SA 4.0 under the EDRDG
  licence): the common Japanese words (entries marked ``(P)``) with readings and English glosses.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
IPADIC_DIR = Path("/usr/share/mecab/dic/ipadic")
EDICT_FILE = Path("/usr/share/edict/edict")
WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
_JA_WORD = re.compile(r"[\u3041-\u30ff\u4e00-\u9fff]{2,6}")
_EN_LEMMA = re.compile(r"[a-z]{3,14}")


class LexiconMissing(FileNotFoundError):
    """A Debian package with the corpus vocabulary is not installed (``make setup`` installs it)."""


@dataclass(frozen=True)
class Gloss:
    """An English lemma, its part of speech, its most frequent sense's definition and example sentences."""

    lemma: str
    pos: str
    definition: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class JaWord:
    """A Japanese word: surface (dictionary form), katakana reading, kind (``noun``, ``suru``, ``verb``,
    ``adj``) and, for verbs, the continuative stem that takes ``ます``."""

    surface: str
    reading: str
    kind: str
    stem: str = ""


def _need(folder: Path, package: str) -> Path:
    if not folder.is_dir():
        raise LexiconMissing(
            f"{folder} not found: install the Debian package {package} (sudo apt-get install -y "
            f"{package}) or run `make setup`"
        )
    return folder


@cache
def wordnet_glosses() -> tuple[Gloss, ...]:
    """Every tagged single-word lemma (3-14 lowercase letters) with its first (most frequent) sense's gloss.

    Returns:
        Glosses sorted by lemma then part of speech.
    Raises:
        LexiconMissing: ``wordnet-base`` is not installed.
    """
    root = _need(WORDNET_DIR, "wordnet-base")
    out = []
    for pos, tag in WORDNET_POS.items():
        offsets = {}
        with open(root / f"index.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith(" "):
                    continue  # licence header
                parts = line.split()
                lemma, p_cnt = parts[0], int(parts[3])
                tagged, first = int(parts[5 + p_cnt]), parts[6 + p_cnt]
                if tagged > 0 and _EN_LEMMA.fullmatch(lemma):
                    offsets[first] = lemma
        with open(root / f"data.{pos}", encoding="latin-1") as f:
            for line in f:
                off = line[:8]
                if off in offsets and " | " in line:
                    gloss = line.split(" | ", 1)[1].strip()
                    examples = tuple(e.strip() for e in re.findall(r'"([^"]+)"', gloss))
                    definition = gloss.split('"', 1)[0].strip(" ;")
                    if definition:
                        out.append(Gloss(offsets[off], tag, definition, examples))
    return tuple(sorted(out, key=lambda g: (g.lemma, g.pos)))


def _ipadic_rows(name: str) -> list[list[str]]:
    with open(_need(IPADIC_DIR, "mecab-ipadic") / name, encoding="euc-jp", errors="replace") as f:
        return list(csv.reader(f))


@cache
def japanese_words(n_suru: int = 1500, n_verbs: int = 1500, n_adj: int = 300) -> tuple[JaWord, ...]:
    """EDICT's common nouns, and the most common IPAdic words of each other kind (lowest word cost first).

    Args:
        n_suru: verbal nouns that take する (名詞,サ変接続).
        n_verbs: verbs (自立, with their 連用形 stem for ～ます).
        n_adj: i-adjectives (自立, dictionary form).
    Returns:
        The words, each kind in cost order.
    Raises:
        LexiconMissing: ``mecab-ipadic`` is not installed.
    """

    def best(rows: list[list[str]], n: int) -> list[list[str]]:
        seen: dict[str, list[str]] = {}
        for r in sorted(rows, key=lambda r: int(r[3])):
            if _JA_WORD.fullmatch(r[0]) and r[0] not in seen:
                seen[r[0]] = r
            if len(seen) == n:
                break
        return list(seen.values())

    suru = best(_ipadic_rows("Noun.verbal.csv"), n_suru)
    verb_rows = [r for r in _ipadic_rows("Verb.csv") if r[5] == "自立"]
    stems = {r[10]: r[0] for r in verb_rows if r[9] == "連用形"}  # base form -> 連用形 surface
    verbs = best([r for r in verb_rows if r[9] == "基本形" and r[10] in stems], n_verbs)
    adjs = best([r for r in _ipadic_rows("Adj.csv") if r[5] == "自立" and r[9] == "基本形"], n_adj)
    out = [JaWord(e.surface, e.reading, "noun") for e in edict_common() if e.noun and _JA_WORD.fullmatch(e.surface)]
    out += [JaWord(r[0], r[11], "suru") for r in suru]
    out += [JaWord(r[0], r[11], "verb", stems[r[10]]) for r in verbs]
    out += [JaWord(r[0], r[11], "adj") for r in adjs]
    return tuple(out)


@dataclass(frozen=True)
class EdictEntry:
    """A common Japanese word from EDICT: surface, hiragana/katakana reading, its first English gloss, and whether
    EDICT marks it as a noun."""

    surface: str
    reading: str
    gloss: str
    noun: bool


_EDICT_LINE = re.compile(r"^(\S+) \[(\S+)\] /(.*)/$")
_HAS_KANJI = re.compile(r"[\u4e00-\u9fff]")


@cache
def edict_common() -> tuple[EdictEntry, ...]:
    """EDICT's common words (``(P)``) written with at least one kanji (1-6 characters), with a short first gloss.

    Returns:
        Entries in EDICT's order.
    Raises:
        LexiconMissing: ``edict`` is not installed.
    """
    if not EDICT_FILE.is_file():
        _need(EDICT_FILE.parent / "missing", "edict")
    out = []
    with open(EDICT_FILE, encoding="euc-jp", errors="replace") as f:
        for line in f:
            m = _EDICT_LINE.match(line.strip())
            if not m or "(P)" not in m.group(3) or not _HAS_KANJI.search(m.group(1)) or len(m.group(1)) > 6:
                continue
            senses = [s for s in m.group(3).split("/") if s and s != "(P)"]
            first = re.sub(r"\([^)]*\)|\{[^}]*\}", "", senses[0]).strip()
            if first and len(first.split()) <= 6 and first.isascii():
                out.append(EdictEntry(m.group(1).split(";")[0], m.group(2).split(";")[0], first, "(n" in senses[0]))
    return tuple(out)
