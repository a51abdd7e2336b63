"""Measuring and cleaning a grey page before Tesseract reads it: polarity, background, noise, skew, lines, columns.

``preprocess`` makes the images Tesseract is shown (``Prepared.candidates``, in the order ``CANDIDATES``):

* ``raw``: the decoded grey page (size-capped), exactly what plain Tesseract would see;
* ``level``: the grey page with the text made the dark class, the skew rotated away and small text enlarged;
* ``clean``: the same geometry on the background-flattened, denoised page, binarised with Otsu.

``ops.ocr`` re-exports every public name here.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from so8t_core.serving.ocr_image import OCRConfig

CANDIDATES = ("raw", "level", "clean")


@dataclass(frozen=True)
class Prepared:
    """The preprocessed page and what was measured on the way (see ``preprocess``)."""

    binary: np.ndarray  # (H, W) uint8, 0 = text, 255 = background: the ``clean`` candidate
    skew_deg: float
    scale: float  # cap downscale x small-text upscale (of ``level`` and ``clean``; ``raw`` is only capped)
    line_px: float  # median text-line height before upscaling
    n_lines: int
    noise_sigma: float
    candidates: dict[str, np.ndarray]  # name -> (H, W) uint8 page, dark text on light (except maybe ``raw``)
    columns: tuple[tuple[int, int], ...]  # x ranges of text columns in level/clean coordinates; () = one block
    ink: bool  # the page has marks darker than their background (text or not)


def estimate_noise(gray: np.ndarray) -> float:
    """Pixel-noise sigma in grey levels (Immerkaer 1996: a Laplacian-difference filter that cancels smooth
    image content; edges still add a little, so clean text reads a few levels above 0)."""
    if min(gray.shape) < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(gray.astype(np.float32), -1, kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def foreground_mask(gray: np.ndarray) -> np.ndarray:
    """Otsu mask of the dark class (bool (H, W)), with isolated specks (< 3 pixels) removed."""
    _, mask = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= 3
    keep[0] = False  # label 0 is the background
    return keep[labels] if n > 1 else np.zeros(gray.shape, bool)


def _row_profiles(ys: np.ndarray, xs: np.ndarray, angles_deg: np.ndarray) -> list[np.ndarray]:
    # Row coordinate of every point after cv2.getRotationMatrix2D(angle) (y' = -sin(a) x + cos(a) y).
    a = np.deg2rad(angles_deg)
    rows = np.outer(ys, np.cos(a)) - np.outer(xs, np.sin(a))  # (points, angles)
    rows = np.rint(rows - rows.min(axis=0)).astype(np.int64)
    return [np.bincount(rows[:, j]) for j in range(len(angles_deg))]


def estimate_skew(mask: np.ndarray, max_deg: float = 10.0, max_points: int = 20_000) -> float:
    """Skew of the text in degrees, counter-clockwise positive as displayed, searched in [-max_deg, max_deg].

    Text lines are sharpest in the row profile (sum of squared row counts is largest) when they are
    horizontal; a 0.5-degree grid search is refined on a 0.05-degree grid. Works for one line or a block.

    Args:
        mask: bool (H, W) foreground (text) pixels.
        max_deg: search range.
        max_points: foreground pixels used (an even stride through them, so the result is deterministic).
    Returns:
        The angle; rotating by ``-angle`` (``cv2.getRotationMatrix2D(c, -angle, 1)``) levels the text.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < 10 or max_deg == 0:
        return 0.0
    step = max(1, len(ys) // max_points)
    ys, xs = ys[::step].astype(np.float64), xs[::step].astype(np.float64)
    best = 0.0
    for grid in (np.arange(-max_deg, max_deg + 1e-9, 0.5), np.arange(-0.5, 0.5 + 1e-9, 0.05)):
        angles = np.clip(best + grid, -max_deg, max_deg)
        score = [float((p.astype(np.float64) ** 2).sum()) for p in _row_profiles(ys, xs, angles)]
        best = float(angles[int(np.argmax(score))])
    return -best  # the levelling rotation undoes the skew


def text_lines(mask: np.ndarray, skew_deg: float) -> list[int]:
    """Heights in pixels of the text lines in ``mask`` once levelled by ``-skew_deg``.

    A line is a run of rows holding at least 5 % of the fullest row's pixels; runs under half the tallest
    are dropped as noise or stray marks.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    (profile,) = _row_profiles(ys.astype(np.float64), xs.astype(np.float64), np.array([-skew_deg]))
    on = np.concatenate([[0], (profile >= 0.05 * profile.max()).astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(on) == 1), np.flatnonzero(np.diff(on) == -1)
    heights = ends - starts
    return [int(h) for h in heights if h >= 0.5 * heights.max()]


def drop_specks(mask: np.ndarray, min_area: float) -> np.ndarray:
    """``mask`` without its connected components of fewer than ``min_area`` pixels (dust, noise, paper grain)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels] if n > 1 else np.zeros(mask.shape, bool)


def line_bands(mask: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges ``[y0, y1)`` of the text lines of a level page (same rule as ``text_lines``)."""
    profile = mask.sum(axis=1)
    if profile.max(initial=0) == 0:
        return []
    on = np.concatenate([[0], (profile >= 0.05 * profile.max()).astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(on) == 1), np.flatnonzero(np.diff(on) == -1)
    tallest = (ends - starts).max()
    return [(int(a), int(b)) for a, b in zip(starts, ends) if b - a >= 0.5 * tallest]


def find_columns(mask: np.ndarray, line_px: float) -> tuple[tuple[int, int], ...]:
    """Two text columns side by side, or ``()`` for one block (a receipt's price column is not a column).

    A column split needs a vertical gap with no ink across every text line, at least one line height wide,
    with at least a quarter of the text width on each side, and a right side whose lines all start at the
    same x (left-aligned text) while their ends vary no less: right-aligned prices start where they must.

    Args:
        mask: bool (H, W) text pixels of a level page.
        line_px: text-line height in the same pixels.
    Returns:
        ``((x0, x1), (x2, x3))`` column ranges, or ``()``.
    """
    bands = line_bands(mask)
    cols = np.flatnonzero(mask.any(axis=0))
    if len(bands) < 2 or len(cols) == 0 or line_px <= 0:
        return ()
    left, right = int(cols[0]), int(cols[-1]) + 1
    empty = ~mask[:, left:right].any(axis=0)
    on = np.concatenate([[0], empty.astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(on) == 1), np.flatnonzero(np.diff(on) == -1)
    width = right - left
    gaps = [(a, b) for a, b in zip(starts, ends) if b - a >= line_px and min(a, width - b) >= 0.25 * width]
    if not gaps:
        return ()
    a, b = max(gaps, key=lambda g: g[1] - g[0])
    starts_r, ends_r = [], []
    for y0, y1 in bands:
        xs = np.flatnonzero(mask[y0:y1, left + b : right].any(axis=0))
        if len(xs):
            starts_r.append(xs[0])
            ends_r.append(xs[-1])
    if len(starts_r) < 2 or np.std(starts_r) > 0.3 * line_px or np.std(ends_r) < np.std(starts_r):
        return ()
    return ((left, left + int(a)), (left + int(b), right))


def flatten_background(gray: np.ndarray, size: int = 31) -> np.ndarray:
    """Divide out uneven lighting: the background (a dilation wider than any stroke, then a blur) becomes white,
    dark text stays dark relative to its own surroundings.

    Args:
        gray: (H, W) uint8, dark text on a lighter background.
        size: dilation kernel side in pixels (several stroke widths).
    Returns:
        (H, W) uint8.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    bg = cv2.GaussianBlur(cv2.dilate(gray, kernel), (0, 0), size / 4).astype(np.float32)
    return np.clip(gray.astype(np.float32) * 255.0 / np.maximum(bg, 1.0), 0, 255).astype(np.uint8)


def has_ink(gray: np.ndarray, min_contrast: float = 24.0) -> bool:
    """Whether a page (dark marks on light) has marks at all: Otsu's two classes differ by ``min_contrast`` grey
    levels and the dark class holds more than specks."""
    if gray.size < 4 or int(gray.max()) - int(gray.min()) < min_contrast:
        return False
    t, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    dark, light = gray[gray <= t], gray[gray > t]
    if len(dark) == 0 or len(light) == 0 or float(light.mean()) - float(dark.mean()) < min_contrast:
        return False
    return bool(foreground_mask(gray).any())


def preprocess(gray: np.ndarray, config: OCRConfig = OCRConfig()) -> Prepared:
    """Grey page → the candidate pages for Tesseract and what was measured on the way.

    Steps: cap the pixel count; make the text the dark class (a page whose median is dark is inverted);
    flatten the background; denoise (non-local means) only when the estimated pixel noise is high; measure skew,
    text-line height and columns on the Otsu mask; rotate the skew away and enlarge small text in one affine
    warp of both the grey (``level``) and the flattened page (``clean``, then binarised with Otsu).

    Args:
        gray: (H, W) uint8 page from ``load_gray``.
        config: caps and thresholds.
    Returns:
        ``Prepared``.
    """
    scale = min(1.0, float(np.sqrt(config.max_pixels / gray.size)))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    raw = gray
    if np.median(gray) < 128:  # light text on a dark background: make the text the dark class
        gray = 255 - gray
    flat = flatten_background(gray)
    sigma = estimate_noise(flat)
    if sigma > config.denoise_above:
        flat = cv2.fastNlMeansDenoising(
            flat, None, h=float(np.clip(sigma, 10, 60)), templateWindowSize=7, searchWindowSize=21
        )
    mask = foreground_mask(flat)
    skew = estimate_skew(mask, config.max_skew_deg)
    lines = text_lines(mask, skew)
    line_px = float(np.median(lines)) if lines else 0.0
    up = _upscale_factor(line_px, gray.shape, config)
    # New border pixels take the page's own background level: white borders around a grey page would make
    # Tesseract's global threshold split border from page instead of text from page.
    fill = int(np.median(gray))
    level = _pad(_rotate_scale(gray, -skew, up, fill), fill)
    _, binary = cv2.threshold(_rotate_scale(flat, -skew, up), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    # Specks far smaller than a stroke are noise, not text; a full stop is still kept.
    ink = drop_specks(binary == 0, max(3.0, (0.08 * line_px * up) ** 2))
    binary = _pad(np.where(ink, 0, 255).astype(np.uint8))
    columns = find_columns(drop_specks(binary == 0, (0.15 * line_px * up) ** 2), line_px * up) if len(lines) > 1 else ()
    return Prepared(
        binary=binary,
        skew_deg=skew,
        scale=scale * up,
        line_px=line_px,
        n_lines=len(lines),
        noise_sigma=sigma,
        candidates={"raw": raw, "level": level, "clean": binary},
        columns=columns,
        ink=has_ink(flat),
    )


def _pad(page: np.ndarray, fill: int = 255) -> np.ndarray:
    return cv2.copyMakeBorder(page, 12, 12, 12, 12, cv2.BORDER_CONSTANT, value=fill)


def _upscale_factor(line_px: float, shape: tuple[int, ...], config: OCRConfig) -> float:
    if line_px <= 0 or line_px >= config.min_line_px:
        return 1.0
    want = min(config.target_line_px / line_px, config.max_upscale)
    # Tesseract refuses sides over 32767 px; the pixel cap bounds memory.
    room = min(30_000 / max(shape), float(np.sqrt(config.max_pixels / (shape[0] * shape[1]))))
    return max(1.0, min(want, room))


def _rotate_scale(gray: np.ndarray, angle_deg: float, scale: float, fill: int = 255) -> np.ndarray:
    if angle_deg == 0.0 and scale == 1.0:
        return gray
    h, w = gray.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)
    nw = int(np.ceil(abs(m[0, 0]) * w + abs(m[0, 1]) * h))  # bounding box of the turned, scaled page
    nh = int(np.ceil(abs(m[0, 1]) * w + abs(m[0, 0]) * h))
    m[:, 2] += (nw - w) / 2, (nh - h) / 2
    interp = cv2.INTER_CUBIC if scale > 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(gray, m, (nw, nh), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
