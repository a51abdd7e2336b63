"""The character error rate and the OCR evaluation set the project renders (text helpers: ``so8t_core.text``).

Nothing is downloaded: text lines are generated from small hand-written word lists (seeded), drawn with the
Noto Sans CJK font that ``make setup`` installs (Debian package ``fonts-noto-cjk``), then degraded in one of four
ways (``KINDS``). The same ``seed`` and ``n`` always give the same images, so CER numbers compare across runs.
This small one-font set serves quick tests; the benchmark (many fonts, layouts and backgrounds, a dev/test split)
is ``ops.ocr_synth``, scored with ``cer_by_group``.

Explained in notebooks/05_visual_adapter.ipynb.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from so8t_core.text import find_cjk_font, normalize_text

KINDS = ("clean", "rotated", "noisy", "small")
LANGS = ("en", "ja")

EN_WORDS = (
    "the quick brown fox jumps over lazy dog river stone paper window garden market winter summer light "
    "morning evening station ticket coffee letter number house table chair yellow green purple silver "
    "simple model rotation signal report safety audit notebook image reader better small large during "
    "before after under across every seven twelve forty north south clear quiet strong gentle"
).split()
# Japanese lines follow "<topic>は<place>で<object>を<verb>" style templates so that the text mixes kanji,
# hiragana and katakana the way ordinary prose does.
JA_TOPIC = ("私", "先生", "学生", "母", "友達", "会社員", "子供たち", "田中さん", "猫", "研究者")
JA_PLACE = ("東京", "駅前", "図書館", "公園", "大学", "台所", "京都", "病院", "会議室", "海辺")
JA_OBJECT = ("新聞", "手紙", "コーヒー", "写真", "日本語", "地図", "お茶", "ノート", "果物", "資料")
JA_VERB = (
    "読みます",
    "書きました",
    "飲みます",
    "撮りました",
    "勉強します",
    "探しています",
    "買いました",
    "見ました",
    "作ります",
    "届けます",
)


class EvalSample(NamedTuple):
    """One rendered line: ``image`` (H, W) uint8, black text on white, its ground-truth ``text``,
    the degradation ``kind`` (one of ``KINDS``), ``lang`` (one of ``LANGS``) and the rotation applied in degrees
    (counter-clockwise as displayed; 0 unless ``kind == "rotated"``)."""

    image: np.ndarray
    text: str
    kind: str
    lang: str
    angle_deg: float


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two strings.

    One row of the dynamic-programming table at a time, so memory is O(len(b)).
    """
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def character_error_rate(ref: str, hyp: str) -> float:
    """CER = Levenshtein(ref, hyp) / len(ref), both after ``normalize_text``.

    Args:
        ref: the ground truth.
        hyp: the OCR output.
    Returns:
        0.0 for a perfect read; can exceed 1 when ``hyp`` is much longer. An empty ``ref`` divides by 1, so the
        result is then the number of inserted characters.
    """
    r, h = normalize_text(ref), normalize_text(hyp)
    return levenshtein(r, h) / max(len(r), 1)


def random_line(rng: np.random.Generator, lang: str) -> str:
    """A random English (4-7 words) or Japanese (template sentence) line drawn with ``rng``."""
    if lang == "en":
        words = [str(w) for w in rng.choice(EN_WORDS, size=int(rng.integers(4, 8)))]
        if rng.random() < 0.5:
            words.insert(int(rng.integers(0, len(words))), str(int(rng.integers(2, 2000))))
        return " ".join(words).capitalize()
    if lang == "ja":
        t, p, o, v = (str(rng.choice(pool)) for pool in (JA_TOPIC, JA_PLACE, JA_OBJECT, JA_VERB))
        return f"{t}は{p}で{o}を{v}。"
    raise ValueError(f"lang={lang!r}: must be one of {LANGS}")


def render_line(text: str, font_px: int = 36, margin: int = 16, font_path: str | None = None) -> np.ndarray:
    """Draw one line of text, black on white, with Noto Sans CJK.

    Args:
        text: the line.
        font_px: font size in pixels (roughly the height of a kanji).
        margin: white border on every side in pixels.
        font_path: a font file; defaults to ``find_cjk_font()``.
    Returns:
        (H, W) uint8 image.
    """
    font = ImageFont.truetype(font_path or find_cjk_font(), font_px, index=0)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 255)
    ImageDraw.Draw(canvas).text((margin - left, margin - top), text, font=font, fill=0)
    return np.asarray(canvas).copy()


def rotate_image(image: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate counter-clockwise (as displayed) by ``angle_deg`` about the centre, growing the canvas so nothing
    is cut off and filling the new corners with white."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * cos + h * sin)), int(np.ceil(w * sin + h * cos))
    m[:, 2] += (nw - w) / 2, (nh - h) / 2  # keep the centre in the centre of the larger canvas
    return cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_CUBIC, borderValue=255)


def _degrade(rng: np.random.Generator, kind: str, text: str, font: str) -> tuple[np.ndarray, float]:
    if kind == "small":
        return render_line(text, int(rng.integers(8, 13)), margin=6, font_path=font), 0.0
    image = render_line(text, int(rng.integers(20, 41)), font_path=font)
    if kind == "rotated":
        angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0))
        return rotate_image(image, angle), angle
    if kind == "noisy":
        noisy = image.astype(np.float32) + rng.normal(0.0, rng.uniform(50.0, 90.0), image.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8), 0.0
    return image, 0.0


def render_eval_set(seed: int = 0, n: int = 48) -> list[EvalSample]:
    """The rendered evaluation set: ``n`` lines cycling through every (kind, lang) pair.

    Kinds: ``clean`` (20-40 px text), ``rotated`` (clean, then turned 3-8 degrees either way), ``noisy`` (clean
    plus Gaussian pixel noise, sigma 50-90 grey levels), ``small`` (8-12 px text). The degradations are strong
    enough that Tesseract alone misreads many of them (bench/ocr_bench.py prints both).

    Args:
        seed: seeds the text, sizes, angles and noise (same seed and n → identical images).
        n: number of samples (>= 1).
    Returns:
        ``EvalSample`` list; sample i has kind ``KINDS[i % 4]`` and lang ``LANGS[(i // 4) % 2]``.
    """
    if n < 1:
        raise ValueError(f"n={n!r}: must be >= 1")
    rng, font = np.random.default_rng(seed), find_cjk_font()
    samples = []
    for i in range(n):
        kind, lang = KINDS[i % len(KINDS)], LANGS[(i // len(KINDS)) % len(LANGS)]
        text = random_line(rng, lang)
        image, angle = _degrade(rng, kind, text, font)
        samples.append(EvalSample(image, text, kind, lang, angle))
    return samples


def cer_table(samples: Iterable[EvalSample], hyps: Iterable[str]) -> dict[str, float]:
    """Micro-averaged CER (total edits / total reference characters) per kind, per language, per kind and
    language, and overall; a long line weighs more than a short one, as in the usual corpus CER.

    Args:
        samples: the rendered samples.
        hyps: the OCR text for each sample, in the same order.
    Returns:
        ``{"clean": .., ..., "en": .., "ja": .., "clean/en": .., ..., "all": ..}`` (only groups that occur).
    """
    edits: dict[str, int] = {}
    chars: dict[str, int] = {}
    for s, hyp in zip(samples, hyps, strict=True):
        ref = normalize_text(s.text)
        d = levenshtein(ref, normalize_text(hyp))
        for group in (s.kind, s.lang, f"{s.kind}/{s.lang}", "all"):
            edits[group] = edits.get(group, 0) + d
            chars[group] = chars.get(group, 0) + len(ref)
    order = [*KINDS, *LANGS, *(f"{k}/{lang}" for k in KINDS for lang in LANGS), "all"]
    return {g: edits[g] / max(chars[g], 1) for g in order if g in edits}


def cer_by_group(refs: list[str], hyps: list[str], groups: list[list[str]]) -> dict[str, dict[str, float]]:
    """CER per group, both ways: ``mean`` (the mean of each image's CER, every image counts once) and ``micro``
    (total edits / total reference characters), with the group's image count ``n``.

    Args:
        refs: ground truths.
        hyps: OCR texts, in the same order.
        groups: for each image, the groups it belongs to (e.g. ``["kind:blur", "lang:ja", "all"]``).
    Returns:
        ``{group: {"mean": .., "micro": .., "n": ..}}`` in order of first appearance.
    """
    stats: dict[str, list[float]] = {}  # group -> [sum of CERs, edits, characters, images]
    for ref, hyp, gs in zip(refs, hyps, groups, strict=True):
        r = normalize_text(ref)
        d = levenshtein(r, normalize_text(hyp))
        for g in gs:
            s = stats.setdefault(g, [0.0, 0.0, 0.0, 0.0])
            s[0] += d / max(len(r), 1)
            s[1] += d
            s[2] += len(r)
            s[3] += 1
    return {g: {"mean": s[0] / s[3], "micro": s[1] / max(s[2], 1), "n": s[3]} for g, s in stats.items()}
