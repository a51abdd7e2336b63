"""Local OCR: decode safely, clean the image with OpenCV, read it with Tesseract, return only text.

``ocr_summary`` is the one entry point. The pipeline, each step measured in notebooks/05_visual_adapter.ipynb:

1. decode (Pillow reads the header first, so a decompression bomb is refused before any pixel is decoded;
   truncated or non-image bytes raise ``InvalidImageError``), flatten alpha onto white, convert to grey;
2. cap the pixel count (``OCRConfig.max_pixels``) by downscaling, and make the text the dark class;
3. denoise (non-local means) only when the estimated pixel noise is high, so clean scans are not blurred;
4. estimate the skew from the row-profile sharpness of the foreground pixels, and the text-line height;
5. rotate the skew away and upscale small text in one affine warp, then binarise with Otsu;
6. run Tesseract through pytesseract (``--psm 7`` when one text line was found, else ``--psm 6``).

Privacy: only text and numbers leave ``ocr_summary``. The binarised image exists in memory and, for the length
of one Tesseract call, in the temporary file pytesseract writes and deletes; nothing else keeps it.

Errors (all subclass ``OCRError``): ``InvalidImageError`` (not an image, empty, truncated, unsupported type;
``ImageTooLargeError`` for bombs), ``TesseractMissingError`` (no binary; ``LanguageMissingError`` for missing
traineddata), ``TesseractFailedError`` (Tesseract ran but failed or timed out).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytesseract
from PIL import Image

from so8t_core.config import StageConfig, check
from so8t_core.text import normalize_text, summarize

SETUP_HINT = "run `make setup` (scripts/setup_system.sh)"
_LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\+[A-Za-z][A-Za-z0-9_]*)*$")
_PSMS = (3, 4, 6, 7, 11, 13)


class OCRError(Exception):
    """Base of every error ``ocr_summary`` raises on purpose."""


class InvalidImageError(OCRError, ValueError):
    """The input is not a decodable, non-empty image (or not a path, bytes or numpy array)."""


class ImageTooLargeError(InvalidImageError):
    """The header (or file size) announces more than ``OCRConfig.max_decode_pixels`` / ``max_file_bytes``."""


class TesseractMissingError(OCRError, RuntimeError):
    """The tesseract binary is missing (Debian package ``tesseract-ocr``)."""


class LanguageMissingError(TesseractMissingError):
    """A requested language has no traineddata (Debian package ``tesseract-ocr-<lang>``)."""


class TesseractFailedError(OCRError, RuntimeError):
    """Tesseract started but exited with an error or ran past ``OCRConfig.timeout_s``."""


@dataclass(frozen=True)
class OCRConfig(StageConfig):
    """Knobs of ``ocr_summary``; the defaults are what bench/ocr_bench.py measures."""

    psm: int | None = None  # Tesseract page segmentation mode; None: 7 for one detected line, else 6
    max_summary_chars: int = 120
    max_pixels: int = 12_000_000  # larger images are downscaled to this many pixels before anything else
    max_decode_pixels: int = 80_000_000  # headers announcing more are refused (decompression-bomb guard)
    max_file_bytes: int = 256 << 20
    max_skew_deg: float = 10.0  # deskew searches [-max, +max]
    min_line_px: int = 28  # lines shorter than this are upscaled ...
    target_line_px: int = 44  # ... to about this height
    max_upscale: float = 6.0
    denoise_above: float = 10.0  # estimated noise sigma (grey levels) that switches denoising on
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        check(self.psm is None or self.psm in _PSMS, "psm", self.psm, f"must be None or one of {_PSMS}")
        for name in (
            "max_summary_chars",
            "max_pixels",
            "max_decode_pixels",
            "max_file_bytes",
            "min_line_px",
            "target_line_px",
            "timeout_s",
        ):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        check(
            self.max_decode_pixels >= self.max_pixels,
            "max_decode_pixels",
            self.max_decode_pixels,
            "must be >= max_pixels",
        )
        check(0 <= self.max_skew_deg <= 45, "max_skew_deg", self.max_skew_deg, "must be in [0, 45]")
        check(self.target_line_px >= self.min_line_px, "target_line_px", self.target_line_px, "must be >= min_line_px")
        check(self.max_upscale >= 1, "max_upscale", self.max_upscale, "must be >= 1")
        check(self.denoise_above >= 0, "denoise_above", self.denoise_above, "must be >= 0")


@dataclass(frozen=True)
class OCRResult:
    """What ``ocr_summary`` returns: text and numbers only, never pixels.

    ``image_sha256``: for a path or bytes, the SHA-256 of the original file bytes (equal to ``sha256sum``);
    for a numpy array, the SHA-256 of ``f"{dtype.str}{shape}"`` (ASCII) followed by the C-order array bytes, so
    two arrays with the same bytes but a different shape or dtype hash differently.
    """

    text: str  # one line per Tesseract text line, each passed through normalize_text
    summary: str  # the text flattened to one line and cut to max_summary_chars (with "…" when cut)
    mean_confidence: float  # mean Tesseract word confidence, 0-100 (0.0 when no word was read)
    image_sha256: str
    lang: str
    n_words: int
    skew_deg: float  # estimated skew that was rotated away (counter-clockwise positive, as displayed)
    scale: float  # resize of the decoded page: cap downscale x small-text upscale (huge JPEGs decode at 1/2-1/8 first)
    psm: int


@dataclass(frozen=True)
class Prepared:
    """The preprocessed page and what was measured on the way (see ``preprocess``)."""

    binary: np.ndarray  # (H, W) uint8, 0 = text, 255 = background
    skew_deg: float
    scale: float
    line_px: float  # median text-line height before upscaling
    n_lines: int
    noise_sigma: float


# ---------------------------------------------------------------------------------------------- decoding
def load_gray(image: Any, config: OCRConfig = OCRConfig()) -> tuple[np.ndarray, str]:
    """Decode a path, bytes or numpy array into a grey uint8 page, refusing anything unsafe or broken.

    Args:
        image: a path (str or Path), bytes-like file contents, or an (H, W), (H, W, 1|3|4) array
            (3/4 channels read as RGB/RGBA; bool, integer and float dtypes accepted, floats in [0, 1] scaled).
        config: the size caps.
    Returns:
        (grey (H, W) uint8 array, image_sha256 as documented on ``OCRResult``).
    Raises:
        InvalidImageError, ImageTooLargeError.
    """
    if isinstance(image, (str, Path)):
        return _decode_bytes(_read_file(Path(image), config.max_file_bytes), config)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(image), config)
    if isinstance(image, np.ndarray):
        return _array_to_gray(image), _array_sha256(image)
    raise InvalidImageError(f"unsupported image type {type(image).__name__}: pass a path, bytes or a numpy array")


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(f"{path}: {size} bytes exceeds max_file_bytes={max_bytes}")
        return path.read_bytes()
    except OSError as e:
        raise InvalidImageError(f"cannot read image file {path}: {e.strerror or e}") from e


def _array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode("ascii"))
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _decode_bytes(data: bytes, config: OCRConfig) -> tuple[np.ndarray, str]:
    if not data:
        raise InvalidImageError("empty image bytes (0 bytes)")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # parses the header only (Pillow refuses zero sizes)
                if im.width * im.height > config.max_decode_pixels:
                    raise ImageTooLargeError(
                        f"header announces {im.width}x{im.height} pixels > max_decode_pixels={config.max_decode_pixels}"
                    )
                return _pil_to_gray(im, config.max_pixels), sha
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {e}") from e
    except OCRError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        # Pillow signals unknown formats, truncated data and corrupt chunks with these.
        raise InvalidImageError(f"not a decodable image ({len(data)} bytes): {e}") from e


def _pil_to_gray(im: Image.Image, max_pixels: int) -> np.ndarray:
    if im.format == "JPEG" and im.width * im.height > 4 * max_pixels:
        k = np.sqrt(im.width * im.height / max_pixels)  # let libjpeg decode at 1/2, 1/4 or 1/8 scale
        im.draft("L", (int(im.width / k), int(im.height / k)))
    im.load()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _array_to_gray(np.asarray(im))
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(im.convert("L")).copy()


def _array_to_gray(a: np.ndarray) -> np.ndarray:
    if a.size == 0 or a.ndim not in (2, 3):
        raise InvalidImageError(f"empty or not an image array: shape {a.shape} (want (H, W) or (H, W, C))")
    if a.ndim == 3 and a.shape[2] not in (1, 3, 4):
        raise InvalidImageError(f"array has {a.shape[2]} channels (want 1, 3 or 4)")
    u8 = _to_uint8(a)
    if u8.ndim == 2 or u8.shape[2] == 1:
        return np.ascontiguousarray(u8.reshape(u8.shape[:2]))
    if u8.shape[2] == 4:  # flatten transparency onto white so transparent text backgrounds stay light
        alpha = u8[..., 3:].astype(np.float32) / 255.0
        u8 = (u8[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise InvalidImageError(f"unsupported array dtype {a.dtype}")
    f: np.ndarray = a.astype(np.float64)
    if not np.isfinite(f).all():
        raise InvalidImageError("image array contains NaN or infinity")
    if a.dtype == np.bool_ or (np.issubdtype(a.dtype, np.floating) and f.max() <= 1.0):
        f *= 255.0  # [0, 1] data
    elif a.dtype == np.uint16 or f.max() > 255:
        f /= 257.0  # 16-bit data (65535 / 257 = 255)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- preprocessing
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


def preprocess(gray: np.ndarray, config: OCRConfig = OCRConfig()) -> Prepared:
    """Grey page → binarised, levelled, resized page ready for Tesseract (steps 2-5 of the module docstring).

    Args:
        gray: (H, W) uint8 page from ``load_gray``.
        config: caps and thresholds.
    Returns:
        ``Prepared`` with the binary image and the measured skew, scale, line height, line count and noise.
    """
    scale = min(1.0, float(np.sqrt(config.max_pixels / gray.size)))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if foreground_mask(gray).mean() > 0.5:  # light text on a dark background: make the text the dark class
        gray = 255 - gray
    sigma = estimate_noise(gray)
    if sigma > config.denoise_above:
        gray = cv2.fastNlMeansDenoising(
            gray, None, h=float(np.clip(sigma, 10, 60)), templateWindowSize=7, searchWindowSize=21
        )
    mask = foreground_mask(gray)
    skew = estimate_skew(mask, config.max_skew_deg)
    lines = text_lines(mask, skew)
    line_px = float(np.median(lines)) if lines else 0.0
    up = _upscale_factor(line_px, gray.shape, config)
    warped = _rotate_scale(gray, -skew, up)
    _, binary = cv2.threshold(warped, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    binary = cv2.copyMakeBorder(binary, 12, 12, 12, 12, cv2.BORDER_CONSTANT, value=255)
    return Prepared(binary, skew, scale * up, line_px, len(lines), sigma)


def _upscale_factor(line_px: float, shape: tuple[int, ...], config: OCRConfig) -> float:
    if line_px <= 0 or line_px >= config.min_line_px:
        return 1.0
    want = min(config.target_line_px / line_px, config.max_upscale)
    # Tesseract refuses sides over 32767 px; the pixel cap bounds memory.
    room = min(30_000 / max(shape), float(np.sqrt(config.max_pixels / (shape[0] * shape[1]))))
    return max(1.0, min(want, room))


def _rotate_scale(gray: np.ndarray, angle_deg: float, scale: float) -> np.ndarray:
    if angle_deg == 0.0 and scale == 1.0:
        return gray
    h, w = gray.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)
    nw = int(np.ceil(abs(m[0, 0]) * w + abs(m[0, 1]) * h))  # bounding box of the turned, scaled page
    nh = int(np.ceil(abs(m[0, 1]) * w + abs(m[0, 0]) * h))
    m[:, 2] += (nw - w) / 2, (nh - h) / 2
    interp = cv2.INTER_CUBIC if scale > 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(gray, m, (nw, nh), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=255)


# ---------------------------------------------------------------------------------------------- tesseract
_LANG_CACHE: dict[str, frozenset[str]] = {}


def check_languages(lang: str) -> None:
    """Raise unless ``lang`` ("jpn+eng") is well formed and every part is installed for the current
    ``pytesseract.pytesseract.tesseract_cmd``.

    Raises:
        ValueError (malformed), TesseractMissingError (no binary), LanguageMissingError (no traineddata).
    """
    check(bool(_LANG_RE.match(lang)), "lang", lang, "must be Tesseract language codes joined by '+'")
    cmd = pytesseract.pytesseract.tesseract_cmd
    wanted = lang.split("+")
    for refresh in (False, True):  # the cache is re-read once, in case a package was installed meanwhile
        if refresh or cmd not in _LANG_CACHE:
            try:
                _LANG_CACHE[cmd] = frozenset(pytesseract.get_languages())
            except pytesseract.TesseractNotFoundError as e:
                raise _missing_binary(cmd) from e
        missing = [x for x in wanted if x not in _LANG_CACHE[cmd]]
        if not missing:
            return
    pkgs = " ".join(f"tesseract-ocr-{x.lower().replace('_', '-')}" for x in missing)
    raise LanguageMissingError(
        f"Tesseract has no language data for {'+'.join(missing)} (installed: {', '.join(sorted(_LANG_CACHE[cmd]))})"
        f": install Debian package(s) {pkgs} (sudo apt-get install -y {pkgs}) or {SETUP_HINT}"
    )


def _missing_binary(cmd: str) -> TesseractMissingError:
    return TesseractMissingError(
        f"tesseract binary not found ({cmd!r}): install Debian packages tesseract-ocr tesseract-ocr-jpn "
        f"(sudo apt-get install -y tesseract-ocr tesseract-ocr-jpn) or {SETUP_HINT}"
    )


def run_tesseract(binary: np.ndarray, lang: str, psm: int, timeout_s: float) -> tuple[list[str], list[float]]:
    """Tesseract's words and their confidences on a preprocessed page.

    Args:
        binary: (H, W) uint8 page.
        lang: e.g. "jpn+eng" (checked by ``check_languages`` first).
        psm: page segmentation mode (7 = one line, 6 = one block).
        timeout_s: kill Tesseract after this long.
    Returns:
        (lines of text, confidences 0-100 of every word; Tesseract's -1 rows for blocks and lines are dropped).
    """
    # Tesseract's OpenMP threads fight each other when pages run in parallel; one thread each is faster.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        data = pytesseract.image_to_data(
            binary, lang=lang, config=f"--oem 1 --psm {psm}", timeout=timeout_s, output_type=pytesseract.Output.DICT
        )
    except pytesseract.TesseractNotFoundError as e:
        raise _missing_binary(pytesseract.pytesseract.tesseract_cmd) from e
    except pytesseract.TesseractError as e:
        raise TesseractFailedError(f"tesseract exited with status {e.status}: {e.message}") from e
    except RuntimeError as e:  # pytesseract's timeout
        raise TesseractFailedError(f"tesseract: {e} (timeout_s={timeout_s})") from e
    lines: dict[tuple[int, int, int], list[str]] = {}
    confs = []
    for word, conf, *key in zip(data["text"], data["conf"], data["block_num"], data["par_num"], data["line_num"]):
        if float(conf) >= 0 and word.strip():
            lines.setdefault(tuple(key), []).append(word)
            confs.append(float(conf))
    return [normalize_text(" ".join(ws)) for ws in lines.values()], confs


def ocr_summary(image: Any, lang: str = "jpn+eng", config: OCRConfig = OCRConfig()) -> OCRResult:
    """Read the text in an image locally and return it with a short summary; the image itself never leaves.

    Args:
        image: a path, the bytes of an image file, or a numpy array (see ``load_gray``).
        lang: Tesseract languages joined by "+", most likely first.
        config: ``OCRConfig`` (summary length, size caps, page segmentation mode, timeout).
    Returns:
        ``OCRResult`` (text, summary, mean_confidence, image_sha256 and what preprocessing measured).
    Raises:
        OCRError subclasses, see the module docstring; ValueError for a malformed ``lang``.

    Explained in notebooks/05_visual_adapter.ipynb.
    """
    check_languages(lang)
    gray, sha = load_gray(image, config)
    prep = preprocess(gray, config)
    del gray  # only text and numbers are kept from here on
    psm = config.psm if config.psm is not None else (7 if prep.n_lines == 1 else 6)
    lines, confs = run_tesseract(prep.binary, lang, psm, config.timeout_s)
    text = "\n".join(x for x in lines if x)
    return OCRResult(
        text=text,
        summary=summarize(text, config.max_summary_chars),
        mean_confidence=float(np.mean(confs)) if confs else 0.0,
        image_sha256=sha,
        lang=lang,
        n_words=len(confs),
        skew_deg=prep.skew_deg,
        scale=prep.scale,
        psm=psm,
    )
