"""The OCR benchmark set: deterministic rendered pages in many fonts, layouts, backgrounds and degradations.

Built so that a pipeline tuned on one part cannot look good by chance on the other: every page is drawn from its
own seeded random stream, even-numbered pages form the ``dev`` split (tune here) and odd-numbered pages the
``test`` split (report here), and each degradation ``KIND`` appears equally often in both.

* fonts: serif, sans and mono families from Debian packages (``FONTS``; ``make setup`` installs them); Japanese
  and mixed text only in the CJK-capable ones;
* text: English, Japanese and mixed Japanese/English (``LANGS``), generated from word lists and templates;
* layouts: one line, a paragraph, a receipt (item left, price right, read row by row) and two columns (read
  left column first), ``LAYOUTS``;
* kinds: ``clean``, four backgrounds (``speckle``, ``gradient``, ``texture``, ``photo``), ``jpeg``, ``blur``,
  ``rotated`` (up to ±10°), ``low_contrast`` and ``small`` text.

Nothing is downloaded. bench/ocr_bench.py reads this set with ``ocr_summary`` and with plain Tesseract.
"""

from __future__ import annotations

import io
from functools import cache
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from so8t_core.serving.ocr_eval import EN_WORDS, JA_OBJECT, JA_PLACE, JA_TOPIC, JA_VERB, rotate_image
from so8t_core.text import find_font

KINDS = ("clean", "speckle", "gradient", "texture", "photo", "jpeg", "blur", "rotated", "low_contrast", "small")
LANGS = ("en", "ja", "mixed")
LAYOUTS = ("line", "paragraph", "receipt", "columns")
SPLITS = ("dev", "test")
# style -> (family, Debian package, draws Japanese); every style has a Latin-only and a CJK-capable family.
FONTS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "serif": (
        ("Liberation Serif", "fonts-liberation2", False),
        ("DejaVu Serif", "fonts-dejavu-core", False),
        ("Noto Serif CJK JP", "fonts-noto-cjk", True),
        ("IPAMincho", "fonts-ipafont-mincho", True),
    ),
    "sans": (
        ("Liberation Sans", "fonts-liberation2", False),
        ("DejaVu Sans", "fonts-dejavu-core", False),
        ("Noto Sans CJK JP", "fonts-noto-cjk", True),
        ("IPAGothic", "fonts-ipafont-gothic", True),
    ),
    "mono": (
        ("Liberation Mono", "fonts-liberation2", False),
        ("DejaVu Sans Mono", "fonts-dejavu-core", False),
        ("Noto Sans Mono CJK JP", "fonts-noto-cjk", True),
    ),
}
_LAYOUT_P = (0.5, 0.2, 0.15, 0.15)  # lines are most common; blocks cost more time per page
_EN_ITEMS = ("Coffee", "Green tea", "Bread", "Milk", "Apples", "Rice", "Soap", "Paper", "Batteries", "Eggs")
_JA_ITEMS = ("コーヒー", "緑茶", "食パン", "牛乳", "りんご", "お米", "石けん", "ノート", "電池", "卵")


class Page(NamedTuple):
    """One benchmark page: ``image`` (H, W) uint8, ground-truth ``text`` (lines joined by newlines, in reading
    order), ``kind`` (``KINDS``), ``lang`` (``LANGS``), ``layout`` (``LAYOUTS``), font ``style`` and ``family``,
    ``split`` (``SPLITS``) and the page ``number`` that seeds it."""

    image: np.ndarray
    text: str
    kind: str
    lang: str
    layout: str
    style: str
    family: str
    split: str
    number: int


# ---------------------------------------------------------------------------------------------- text
def _en_sentence(rng: np.random.Generator, lo: int = 4, hi: int = 9) -> str:
    words = [str(w) for w in rng.choice(EN_WORDS, size=int(rng.integers(lo, hi)))]
    if rng.random() < 0.5:
        words.insert(int(rng.integers(0, len(words))), str(int(rng.integers(2, 2000))))
    return " ".join(words).capitalize() + ("." if rng.random() < 0.5 else "")


def _ja_sentence(rng: np.random.Generator, mixed: bool = False) -> str:
    t, p, o, v = (str(rng.choice(pool)) for pool in (JA_TOPIC, JA_PLACE, JA_OBJECT, JA_VERB))
    if not mixed:
        return f"{t}は{p}で{o}を{v}。"
    latin = str(rng.choice(EN_WORDS)).capitalize()
    code = f"{chr(65 + int(rng.integers(0, 26)))}{int(rng.integers(1, 100))}"
    return str(rng.choice([f"{t}は{p}で{latin}の{o}を{v}。", f"{t}は{code}番の{o}を{p}で{v}。"]))


def sentence(rng: np.random.Generator, lang: str) -> str:
    """One random sentence in ``lang`` ("en", "ja" or "mixed": Japanese with a Latin word or code)."""
    if lang not in LANGS:
        raise ValueError(f"lang={lang!r}: must be one of {LANGS}")
    return _en_sentence(rng) if lang == "en" else _ja_sentence(rng, mixed=lang == "mixed")


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    # Latin wraps at spaces; Japanese (no spaces) at any character.
    tokens = text.split(" ") if " " in text else list(text)
    sep = " " if " " in text else ""
    lines, cur = [], ""
    for tok in tokens:
        cand = f"{cur}{sep}{tok}" if cur else tok
        if cur and font.getlength(cand) > width:
            lines.append(cur)
            cand = tok
        cur = cand
    return [*lines, cur] if cur else lines


# ---------------------------------------------------------------------------------------------- layout
def _font(family: str, package: str, px: int) -> ImageFont.FreeTypeFont:
    path, index = _font_file(family, package)
    return ImageFont.truetype(path, px, index=index)


@cache
def _font_file(family: str, package: str) -> tuple[str, int]:
    return find_font(family, package)


def _draw(
    rows: list[list[tuple[float, str]]], font: ImageFont.FreeTypeFont, px: int, rng: np.random.Generator
) -> np.ndarray:
    """Black-on-white canvas with each row's (x, text) pieces drawn on one baseline."""
    pitch = int(px * rng.uniform(1.35, 1.7))
    margin = int(rng.integers(10, 30))
    width = int(max(x + font.getlength(t) for row in rows for x, t in row)) + 2 * margin
    canvas = Image.new("L", (width, pitch * len(rows) + 2 * margin), 255)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for x, t in row:
            draw.text((margin + x, margin + r * pitch), t, font=font, fill=0)
    return np.asarray(canvas).copy()


def _layout(
    rng: np.random.Generator, layout: str, lang: str, font: ImageFont.FreeTypeFont, px: int
) -> tuple[np.ndarray, str]:
    """(image, ground truth) for one layout."""
    if layout == "line":
        text = sentence(rng, lang)
        return _draw([[(0.0, text)]], font, px, rng), text
    if layout == "paragraph":
        body = (" " if lang == "en" else "").join(sentence(rng, lang) for _ in range(int(rng.integers(2, 4))))
        lines = _wrap(body, font, px * rng.uniform(14, 22))
        return _draw([[(0.0, x)] for x in lines], font, px, rng), "\n".join(lines)
    if layout == "receipt":
        items = _EN_ITEMS if lang == "en" else _JA_ITEMS
        picked = [str(x) for x in rng.choice(items, size=int(rng.integers(3, 7)), replace=False)]
        prices = [
            f"{rng.integers(1, 40)}.{rng.integers(0, 100):02d}" if lang == "en" else f"{rng.integers(1, 90) * 10}円"
            for _ in picked
        ]
        right = max(font.getlength(x) for x in picked) + px * rng.uniform(3, 8) + max(map(font.getlength, prices))
        cells = [[(0.0, a), (right - font.getlength(b), b)] for a, b in zip(picked, prices, strict=True)]
        return _draw(cells, font, px, rng), "\n".join(f"{a} {b}" for a, b in zip(picked, prices, strict=True))
    if layout == "columns":
        col = px * rng.uniform(9, 13)
        sep = " " if lang == "en" else ""
        left, right = (_wrap(sep.join(sentence(rng, lang) for _ in range(2)), font, col) for _ in range(2))
        gap = col + px * rng.uniform(2, 4)
        rows: list[list[tuple[float, str]]] = [[] for _ in range(max(len(left), len(right)))]
        for x, col_lines in ((0.0, left), (gap, right)):
            for i, line in enumerate(col_lines):
                rows[i].append((x, line))
        return _draw(rows, font, px, rng), "\n".join(left + right)
    raise ValueError(f"layout={layout!r}: must be one of {LAYOUTS}")


# ---------------------------------------------------------------------------------------------- degradations
def _field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field in [-1, 1]: white noise blurred at ``sigma`` pixels, rescaled."""
    f = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return f / max(float(np.abs(f).max()), 1e-6)


def _compose(text: np.ndarray, background: np.ndarray, ink: float) -> np.ndarray:
    """Lay dark text (coverage = 1 - text / 255) in grey level ``ink`` over a float background."""
    cover = 1.0 - text.astype(np.float32) / 255.0
    return np.clip(background * (1 - cover) + ink * cover, 0, 255).astype(np.uint8)


def degrade(rng: np.random.Generator, kind: str, image: np.ndarray) -> np.ndarray:
    """Apply degradation ``kind`` to a black-on-white page.

    Args:
        rng: the page's random stream.
        kind: one of ``KINDS`` (``small`` is a font size, chosen by the caller; here it is left clean).
        image: (H, W) uint8 page.
    Returns:
        (H', W') uint8 page (``rotated`` grows the canvas).
    """
    h, w = image.shape
    if kind in ("clean", "small"):
        return image
    if kind == "speckle":  # light paper with dark dust and grey spots
        bg = np.full((h, w), rng.uniform(215, 245), np.float32)
        dots = rng.random((h, w)) < rng.uniform(0.01, 0.05)
        bg[dots] = rng.uniform(90, 190, int(dots.sum()))
        return _compose(image, bg, rng.uniform(0, 50))
    if kind == "gradient":  # uneven light: one side much darker than the other
        ramp = np.linspace(0, 1, w if rng.random() < 0.7 else h, dtype=np.float32)
        ramp = ramp[None, :] if len(ramp) == w else ramp[:, None]
        lo, hi = rng.uniform(110, 160), rng.uniform(225, 255)
        bg = np.broadcast_to(lo + (hi - lo) * (ramp if rng.random() < 0.5 else 1 - ramp), (h, w))
        return _compose(image, bg.astype(np.float32), rng.uniform(0, 40))
    if kind == "texture":  # paper grain plus faint ruled lines
        bg = 225 + 18 * _field(rng, (h, w), 1.5) + 12 * _field(rng, (h, w), 12)
        pitch = int(rng.integers(14, 40))
        bg[int(rng.integers(0, pitch)) :: pitch, :] -= rng.uniform(30, 70)
        return _compose(image, bg, rng.uniform(0, 60))
    if kind == "photo":  # blotchy lighting, sensor noise, vignetting; sometimes light text on dark
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        vignette = 1 - 0.35 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 2
        bg = (200 + 35 * _field(rng, (h, w), max(h, w) / 8)) * vignette
        noisy = _compose(image, bg, rng.uniform(10, 70)) + rng.normal(0, rng.uniform(6, 18), (h, w))
        photo = np.clip(noisy, 0, 255).astype(np.uint8)
        return 255 - photo if rng.random() < 0.25 else photo
    if kind == "jpeg":
        small = cv2.resize(image, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
        buf = io.BytesIO()
        Image.fromarray(small).save(buf, format="JPEG", quality=int(rng.integers(8, 25)))
        return np.asarray(Image.open(buf).convert("L")).copy()
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.9, 1.8))
    if kind == "rotated":
        return rotate_image(image, float(rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 10.0)))
    if kind == "low_contrast":
        level = rng.uniform(170, 235)
        return _compose(image, np.full((h, w), level, np.float32), level - rng.uniform(30, 60))
    raise ValueError(f"kind={kind!r}: must be one of {KINDS}")


# ---------------------------------------------------------------------------------------------- the set
def render_page(seed: int, index: int) -> Page:
    """Page ``index`` of the benchmark set drawn with ``seed``: the same pair always gives the same page, whatever
    else is rendered. Kind cycles with ``index // 2`` (so both splits hold every kind equally); language, layout,
    font and the degradation's strength come from the page's own random stream."""
    rng = np.random.default_rng([seed, index])
    kind, split = KINDS[(index // 2) % len(KINDS)], SPLITS[index % 2]
    lang = LANGS[int(rng.integers(0, len(LANGS)))]
    layout = LAYOUTS[int(rng.choice(len(LAYOUTS), p=_LAYOUT_P))]
    style = str(rng.choice(list(FONTS)))
    choices = [f for f in FONTS[style] if f[2] or lang == "en"]
    family, package, _ = choices[int(rng.integers(0, len(choices)))]
    px = int(rng.integers(9, 14)) if kind == "small" else int(rng.integers(18, 40))
    image, text = _layout(rng, layout, lang, _font(family, package, px), px)
    return Page(degrade(rng, kind, image), text, kind, lang, layout, style, family, split, number=index)


def render_bench_set(seed: int = 0, n: int = 400, split: str | None = None) -> list[Page]:
    """The benchmark set: pages ``0 .. n-1`` of ``render_page(seed, i)``, optionally one split only.

    Args:
        seed: the set's seed.
        n: pages in both splits together (>= 1); ``n=400`` gives 200 dev and 200 test pages.
        split: "dev", "test" or None for both.
    Returns:
        ``Page`` list in index order.
    """
    if n < 1:
        raise ValueError(f"n={n!r}: must be >= 1")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS} or None")
    return [render_page(seed, i) for i in range(n) if split is None or SPLITS[i % 2] == split]
