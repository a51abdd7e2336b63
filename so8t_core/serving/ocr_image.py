"""The image side of local OCR: typed errors, ``OCRConfig``, and safe decoding into a grey page.

Decoding reads the header first, so a decompression bomb is refused before any pixel is decoded; truncated or
non-image bytes raise ``InvalidImageError``; alpha is flattened onto white. ``ops.ocr`` re-exports every public
name here.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from so8t_core.config import StageConfig, check

_PSMS = (3, 4, 6, 7, 11, 13)
CANDIDATES = ("raw", "level", "clean")  # the pages ops.ocr_prep.preprocess makes for Tesseract


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

    psm: int | None = None  # Tesseract page segmentation mode; None: 7 for one line, else 6, then a fallback
    candidates: tuple[str, ...] = CANDIDATES  # pages read, in order of preference when scores tie
    min_word_conf: float = 50.0  # a word above this confidence counts for its reading, below against it
    fallback_below: float = 70.0  # mean word confidence under which the other page segmentation mode is tried
    low_confidence_below: float = 50.0  # mean word confidence under which the result warns
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
        object.__setattr__(self, "candidates", tuple(self.candidates))  # a JSON list reads back as the tuple
        check(
            len(self.candidates) > 0 and set(self.candidates) <= set(CANDIDATES),
            "candidates",
            self.candidates,
            f"must be a non-empty tuple of {CANDIDATES}",
        )
        for name in ("min_word_conf", "fallback_below", "low_confidence_below"):
            check(0 <= getattr(self, name) <= 100, name, getattr(self, name), "must be in [0, 100]")
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
