"""Image data for the visual adapter: synthetic image / caption / question sets, and any image -> pixel values.

Each image is one *scene*: either 1-4 identical shapes of one colour on a light background (a single shape sits
at the left, right, top or bottom), or one rendered English or Japanese word. Every caption and answer is computed
from the scene, never sampled separately, so "how many circles?" always matches the circles drawn. Shapes never
overlap and keep a gap between them, so a connected-component count of the image recovers the count (the tests
check exactly that). The same ``seed`` and ``n`` always give the same images.

``to_pixels`` turns any batch a user may pass (grey, RGBA, channels-first, uint8/uint16/float, any size) into the
tower's normalised square input, or refuses it with an ``ImageInputError`` that says what was wrong.

Explained in notebooks/05_visual_adapter.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from so8t_core.config import check
from so8t_core.text import find_cjk_font

# (English, Japanese, RGB) -- hues far apart so a 32-pixel image still tells them apart
COLOURS = (
    ("red", "赤", (220, 30, 30)),
    ("green", "緑", (30, 150, 40)),
    ("blue", "青", (30, 60, 220)),
    ("yellow", "黄色", (235, 200, 0)),
    ("black", "黒", (25, 25, 25)),
    ("purple", "紫", (140, 40, 170)),
)
_COLOUR_ADJ_JA = {"赤": "赤い", "緑": "緑の", "青": "青い", "黄色": "黄色い", "黒": "黒い", "紫": "紫の"}
SHAPES = (("circle", "丸"), ("square", "四角"), ("triangle", "三角"))
POSITIONS = (("left", "左"), ("right", "右"), ("top", "上"), ("bottom", "下"))
WORDS = {
    "en": ("cat", "dog", "sun", "map", "car", "pen", "box", "sky"),
    "ja": ("猫", "犬", "山", "川", "空", "花", "本", "水"),
}
NUMBERS_EN = ("zero", "one", "two", "three", "four")
MAX_COUNT = 4
KINDS = ("colour", "count", "shape", "position", "word")
CAPTION_PROMPTS = {"en": "Describe the image.", "ja": "画像を説明してください。"}
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class ImageInputError(ValueError):
    """An image (or batch) the visual path cannot use: names what is wrong and what is accepted."""


@dataclass(frozen=True)
class Scene:
    """What one image shows. ``kind`` is ``"shapes"`` (shape, colour, count, position when count == 1)
    or ``"word"`` (word, word_lang)."""

    kind: str
    shape: str = ""
    colour: str = ""
    count: int = 0
    position: str = ""
    word: str = ""
    word_lang: str = ""


class QA(NamedTuple):
    """One question about an image with its exact answer; ``kind`` is one of ``KINDS``, ``lang`` en or ja."""

    question: str
    answer: str
    kind: str
    lang: str


class VisualSample(NamedTuple):
    """An RGB ``image`` (S, S, 3) uint8, its ``scene``, captions in both languages and its questions."""

    image: np.ndarray
    scene: Scene
    caption_en: str
    caption_ja: str
    qa: tuple[QA, ...]


def _ja(table: tuple, en: str) -> str:
    return next(row[1] for row in table if row[0] == en)


def sample_scene(rng: np.random.Generator, word_fraction: float = 0.3) -> Scene:
    """A random scene: a word with probability ``word_fraction``, else shapes (a quarter of them single)."""
    if rng.random() < word_fraction:
        lang = str(rng.choice(("en", "ja")))
        return Scene("word", word=str(rng.choice(WORDS[lang])), word_lang=lang)
    shape, colour = SHAPES[int(rng.integers(len(SHAPES)))][0], COLOURS[int(rng.integers(len(COLOURS)))][0]
    count = int(rng.integers(1, MAX_COUNT + 1))
    position = POSITIONS[int(rng.integers(len(POSITIONS)))][0] if count == 1 else ""
    return Scene("shapes", shape=shape, colour=colour, count=count, position=position)


def _region(position: str, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) where a single shape's centre may fall for a position (the middle band of that side)."""
    a, b, c = size // 5, size // 2 - size // 10, size // 2 + size // 10
    return {
        "left": (a, b, a + size // 10, c),
        "right": (size - a - size // 10, b, size - a, c),
        "top": (b, a, c, a + size // 10),
        "bottom": (b, size - a - size // 10, c, size - a),
    }[position]


def _centres(rng: np.random.Generator, scene: Scene, size: int, r: int) -> list[tuple[int, int]]:
    if scene.position:
        x0, y0, x1, y1 = _region(scene.position, size)
        return [(int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1)))]
    gap = 2 * r + max(3, size // 16)  # centre distance that keeps the shapes apart by a visible margin
    for _ in range(1000):  # rejection sampling; at 4 shapes this succeeds within a few tries
        pts = rng.integers(r + 2, size - r - 2, size=(scene.count, 2))
        d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1) + np.eye(scene.count) * 1e9
        if d.min() >= gap:
            return [(int(x), int(y)) for x, y in pts]
    raise RuntimeError(f"could not place {scene.count} shapes of radius {r} in {size} px")


def _draw_shape(img: np.ndarray, shape: str, centre: tuple[int, int], r: int, rgb: tuple[int, int, int]) -> None:
    x, y = centre
    if shape == "circle":
        cv2.circle(img, (x, y), r, rgb, thickness=-1, lineType=cv2.LINE_AA)
    elif shape == "square":
        s = round(r * 0.85)
        cv2.rectangle(img, (x - s, y - s), (x + s, y + s), rgb, thickness=-1)
    else:
        pts = np.array([[x, y - r], [x - r, y + int(0.8 * r)], [x + r, y + int(0.8 * r)]], np.int32)
        cv2.fillPoly(img, [pts], rgb, lineType=cv2.LINE_AA)


def _draw_word(img: np.ndarray, word: str, rng: np.random.Generator, font_path: str) -> None:
    size = img.shape[0]
    px = int(rng.integers(int(size * 0.32), int(size * 0.42) + 1))
    font = ImageFont.truetype(font_path, px, index=0)
    left, top, right, bottom = font.getbbox(word)
    w, h = right - left, bottom - top
    x = int(rng.integers(2, max(3, size - w - 2))) - left
    y = int(rng.integers(2, max(3, size - h - 2))) - top
    canvas = Image.fromarray(img)
    ImageDraw.Draw(canvas).text((x, y), word, font=font, fill=(0, 0, 0))
    img[:] = np.asarray(canvas)


def render_scene(scene: Scene, rng: np.random.Generator, size: int = 64, font_path: str | None = None) -> np.ndarray:
    """Draw ``scene`` on a light background.

    Args:
        scene: what to draw.
        rng: draws the background shade, placement and text size.
        size: image side in pixels (>= 32).
        font_path: font for words (default ``find_cjk_font()``).
    Returns:
        (size, size, 3) uint8 RGB image.
    """
    check(size >= 32, "size", size, "must be >= 32 pixels")
    shade = int(rng.integers(235, 256))
    img: np.ndarray = np.full((size, size, 3), shade, np.uint8)
    if scene.kind == "word":
        _draw_word(img, scene.word, rng, font_path or find_cjk_font())
        return img
    rgb = next(c[2] for c in COLOURS if c[0] == scene.colour)
    r = max(3, int(size * (0.11 if scene.count > 1 else 0.14)))
    for centre in _centres(rng, scene, size, r):
        _draw_shape(img, scene.shape, centre, r, rgb)
    return img


def captions(scene: Scene) -> tuple[str, str]:
    """English and Japanese captions, computed from the scene ("three red circles" / "赤い丸が3つ")."""
    if scene.kind == "word":
        return f'the word "{scene.word}"', f"「{scene.word}」という文字"
    noun = scene.shape + ("s" if scene.count > 1 else "")
    colour_ja, shape_ja = _ja(COLOURS, scene.colour), _ja(SHAPES, scene.shape)
    en = f"{NUMBERS_EN[scene.count]} {scene.colour} {noun}"
    ja = f"{_COLOUR_ADJ_JA[colour_ja]}{shape_ja}が{scene.count}つ"
    if scene.position:
        en, ja = f"{en} on the {scene.position}", f"{_ja(POSITIONS, scene.position)}に{ja}"
    return en, ja


def questions(scene: Scene) -> tuple[QA, ...]:
    """Every question the scene answers, in English and Japanese, with exact answers."""
    if scene.kind == "word":
        return (
            QA("What word is written?", scene.word, "word", "en"),
            QA("何と書いてありますか？", scene.word, "word", "ja"),
        )
    s_ja, c_ja = _ja(SHAPES, scene.shape), _ja(COLOURS, scene.colour)
    plural = scene.shape + "s"
    out = [
        QA(
            f"What colour are the {plural}?" if scene.count > 1 else f"What colour is the {scene.shape}?",
            scene.colour,
            "colour",
            "en",
        ),
        QA(f"{s_ja}は何色ですか？", c_ja, "colour", "ja"),
        QA(f"How many {plural} are there?", str(scene.count), "count", "en"),
        QA(f"{s_ja}はいくつありますか？", str(scene.count), "count", "ja"),
        QA("What shape is drawn?", scene.shape, "shape", "en"),
        QA("何の形ですか？", s_ja, "shape", "ja"),
    ]
    if scene.position:
        out += [
            QA(f"Where is the {scene.shape}?", scene.position, "position", "en"),
            QA(f"{s_ja}はどこにありますか？", _ja(POSITIONS, scene.position), "position", "ja"),
        ]
    return tuple(out)


def generate(seed: int = 0, n: int = 256, size: int = 64, word_fraction: float = 0.3) -> list[VisualSample]:
    """``n`` samples drawn with ``numpy.random.default_rng(seed)``: identical for identical arguments.

    Args:
        seed: seeds scenes, shades, placements and text sizes.
        n: number of images (>= 1).
        size: image side in pixels.
        word_fraction: share of word scenes.
    Returns:
        ``VisualSample`` list.
    Explained in notebooks/05_visual_adapter.ipynb.
    """
    check(n >= 1, "n", n, "must be >= 1")
    check(0.0 <= word_fraction <= 1.0, "word_fraction", word_fraction, "must be in [0, 1]")
    rng, font = np.random.default_rng(seed), find_cjk_font()
    out = []
    for _ in range(n):
        scene = sample_scene(rng, word_fraction)
        out.append(VisualSample(render_scene(scene, rng, size, font), scene, *captions(scene), questions(scene)))
    return out


def text_tasks(samples: list[VisualSample], with_captions: bool = True) -> list[tuple[int, str, str, str]]:
    """Flatten samples into ``(image index, prompt, target, kind)`` rows: every question, plus both captions
    (kind ``"caption"``) under ``CAPTION_PROMPTS`` when ``with_captions``."""
    rows = []
    for i, s in enumerate(samples):
        rows += [(i, q.question, q.answer, q.kind) for q in s.qa]
        if with_captions:
            rows += [
                (i, CAPTION_PROMPTS["en"], s.caption_en, "caption"),
                (i, CAPTION_PROMPTS["ja"], s.caption_ja, "caption"),
            ]
    return rows


# --- any image -> pixel values for a tower ---


@dataclass(frozen=True)
class ImageSpec:
    """What a tower expects: a square side in pixels and per-channel mean/std for normalisation."""

    size: int
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD

    def __post_init__(self) -> None:
        check(self.size >= 8, "size", self.size, "must be >= 8 pixels")
        check(len(self.mean) == 3 and len(self.std) == 3, "mean/std", (self.mean, self.std), "need 3 channels")
        check(all(s > 0 for s in self.std), "std", self.std, "must be > 0")


def _channels_last(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3:
        raise ImageInputError(f"image of shape {a.shape}: expected (H, W), (H, W, C) or (C, H, W)")
    if a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        return np.moveaxis(a, 0, -1)  # (C, H, W) as torch and CHW exporters write it
    return a


def _unit_range(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ImageInputError(f"image dtype {a.dtype}: expected uint8, uint16 or float in [0, 1]")
    if not np.isfinite(a).all():
        raise ImageInputError("image holds NaN or inf values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        raise ImageInputError(
            f"float image values span [{lo:.3g}, {hi:.3g}]: expected [0, 1] (divide 0-255 floats by 255, or pass uint8)"
        )
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def to_rgb(image: Any) -> np.ndarray:
    """One image as (H, W, 3) float32 in [0, 1].

    Grey (H, W) or (H, W, 1) is repeated to three channels; RGBA is composited onto white (transparent pixels
    would otherwise read as black); channels-first (C, H, W) is transposed.

    Args:
        image: numpy array, PIL image or torch tensor; uint8, uint16 or float in [0, 1].
    Returns:
        (H, W, 3) float32.
    Raises:
        ImageInputError: empty, wrong rank, 2 or >4 channels, boolean/integer/complex dtype, NaN, floats out of range.
    """
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.dtype == bool or a.dtype == object:
        raise ImageInputError(f"image dtype {a.dtype}: expected uint8, uint16 or float in [0, 1]")
    a = _channels_last(a)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageInputError(f"image of shape {a.shape} is empty")
    if a.shape[-1] not in (1, 3, 4):
        raise ImageInputError(f"image with {a.shape[-1]} channels: expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    a = _unit_range(a)
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:
        alpha = a[..., 3:]
        return a[..., :3] * alpha + (1.0 - alpha)
    return a


def to_pixels(images: Sequence[Any], spec: ImageSpec) -> Tensor:
    """A batch of images as normalised pixel values for the tower.

    Args:
        images: a non-empty sequence of images (anything ``to_rgb`` accepts, any size; each is resized to
            ``spec.size`` square with area interpolation, as the SigLIP processor resizes without cropping).
        spec: the tower's ``ImageSpec``.
    Returns:
        (B, 3, S, S) float32.
    Raises:
        ImageInputError: an empty batch, or a bad image (names its index).
    Explained in notebooks/05_visual_adapter.ipynb.
    """
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 3:
        raise ImageInputError(f"got one image of shape {tuple(images.shape)}: pass a list of images (a batch)")
    if len(images) == 0:
        raise ImageInputError("empty batch: pass at least one image")
    out = []
    for i, im in enumerate(images):
        try:
            rgb = to_rgb(im)
        except ImageInputError as exc:
            raise ImageInputError(f"image {i}: {exc}") from None
        if rgb.shape[:2] != (spec.size, spec.size):
            rgb = cv2.resize(rgb, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
        out.append((rgb - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)
