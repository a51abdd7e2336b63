"""Local OCR: decode safely, clean the image with OpenCV, read it with Tesseract, return only text.

``ocr_summary`` is the one entry point. The pipeline, each step measured in notebooks/05_visual_adapter.ipynb and
bench/ocr_bench.py:

1. decode (``ops.ocr_image``: Pillow reads the header first, so a decompression bomb is refused before any pixel
   is decoded; truncated or non-image bytes raise ``InvalidImageError``), flatten alpha onto white, grey;
2. measure and clean (``ops.ocr_prep``): cap the size, make the text dark, flatten the background, denoise when
   noisy, estimate skew, line height and columns, and make the candidate pages ``raw``, ``level`` and ``clean``;
3. read every candidate with Tesseract, all of them in one Tesseract process per page segmentation mode
   (``--psm 7`` for one line, ``--psm 6`` for a block, each column of a two-column page read as its own block);
4. keep, line by line where the candidates agree on the lines and else page by page, the reading Tesseract's own
   word confidences rate best (``choose``); when even that is weak, read again with the other mode and choose
   among all readings;
5. say what happened: ``OCRResult.status`` is ``ok``, ``blank`` (no marks), ``no_text`` (marks, but nothing
   read) or ``low_confidence``, and ``warnings`` says the last two in words, so nobody mistakes an unread
   image for an empty one.

Privacy: only text and numbers leave ``ocr_summary``. The candidate pages exist in memory and, for the length of
one Tesseract call, in a temporary file that is deleted afterwards; nothing else keeps them.

Errors (all subclass ``OCRError``): ``InvalidImageError`` (not an image, empty, truncated, unsupported type;
``ImageTooLargeError`` for bombs), ``TesseractMissingError`` (no binary; ``LanguageMissingError`` for missing
traineddata), ``TesseractFailedError`` (Tesseract ran but failed or timed out).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytesseract
from PIL import Image

from so8t_core.config import check
from so8t_core.serving.ocr_image import (
    CANDIDATES,
    ImageTooLargeError,
    InvalidImageError,
    LanguageMissingError,
    OCRConfig,
    OCRError,
    TesseractFailedError,
    TesseractMissingError,
    load_gray,
)
from so8t_core.serving.ocr_prep import (
    Prepared,
    estimate_noise,
    estimate_skew,
    find_columns,
    foreground_mask,
    has_ink,
    preprocess,
    text_lines,
)
from so8t_core.text import normalize_text, summarize

__all__ = [
    "CANDIDATES",
    "STATUSES",
    "ImageTooLargeError",
    "InvalidImageError",
    "LanguageMissingError",
    "Line",
    "OCRConfig",
    "OCRError",
    "OCRResult",
    "Prepared",
    "Reading",
    "TesseractFailedError",
    "TesseractMissingError",
    "check_languages",
    "choose",
    "estimate_noise",
    "estimate_skew",
    "find_columns",
    "foreground_mask",
    "has_ink",
    "load_gray",
    "ocr_summary",
    "preprocess",
    "read_pages",
    "run_tesseract",
    "text_lines",
]

SETUP_HINT = "run `make setup` (scripts/setup_system.sh)"
STATUSES = ("ok", "blank", "no_text", "low_confidence")
_LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\+[A-Za-z][A-Za-z0-9_]*)*$")
_WARNINGS = {
    "no_text": "the image has marks but OCR read no text from them: it may hold text OCR cannot read",
    "low_confidence": "OCR read the image with low confidence: the text may be wrong or incomplete",
}


@dataclass(frozen=True)
class OCRResult:
    """What ``ocr_summary`` returns: text and numbers only, never pixels.

    ``image_sha256``: for a path or bytes, the SHA-256 of the original file bytes (equal to ``sha256sum``);
    for a numpy array, the SHA-256 of ``f"{dtype.str}{shape}"`` (ASCII) followed by the C-order array bytes, so
    two arrays with the same bytes but a different shape or dtype hash differently.
    """

    text: str  # one line per text line in reading order, each passed through normalize_text
    summary: str  # the text flattened to one line and cut to max_summary_chars (with "…" when cut)
    mean_confidence: float  # mean Tesseract word confidence of the kept words, 0-100 (0.0 when none was read)
    image_sha256: str
    lang: str
    n_words: int
    skew_deg: float  # estimated skew that was rotated away (counter-clockwise positive, as displayed)
    scale: float  # resize of the decoded page: cap downscale x small-text upscale (huge JPEGs decode at 1/2-1/8 first)
    psm: int  # page segmentation mode of the winning reading
    status: str = "ok"  # one of STATUSES
    warnings: tuple[str, ...] = ()  # plain-language warnings for no_text and low_confidence
    candidate: str = ""  # the winning reading, "<candidate>/psm<N>" (the one most lines came from)
    line_candidates: tuple[str, ...] = ()  # where each line of ``text`` came from


@dataclass(frozen=True)
class Line:
    """One text line as Tesseract read it: the words and their confidences (0-100)."""

    words: tuple[str, ...]
    confs: tuple[float, ...]

    @property
    def text(self) -> str:
        return normalize_text(" ".join(self.words))

    def score(self, min_conf: float) -> float:
        """Characters weighted by how far each word's confidence lies above ``min_conf``: with calibrated
        confidences and ``min_conf=50`` this is expected right minus expected wrong characters."""
        return sum((c - min_conf) / 100.0 * len(w) for w, c in zip(self.words, self.confs, strict=True))


@dataclass(frozen=True)
class Reading:
    """One candidate page read with one page segmentation mode: its ``lines`` in reading order."""

    name: str  # "<candidate>/psm<N>"
    psm: int
    lines: tuple[Line, ...]

    def score(self, min_conf: float) -> float:
        return sum(x.score(min_conf) for x in self.lines)

    @property
    def confs(self) -> list[float]:
        return [c for x in self.lines for c in x.confs]


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


def read_pages(pages: list[np.ndarray], lang: str, psm: int, timeout_s: float) -> list[tuple[Line, ...]]:
    """Read several pages in one Tesseract process (a multi-page TIFF): starting Tesseract and loading its
    language models costs more than reading a few lines, so candidates share one start.

    Args:
        pages: (H, W) uint8 pages.
        lang: e.g. "jpn+eng" (checked by ``check_languages`` first).
        psm: page segmentation mode (7 = one line, 6 = one block, 3 = automatic layout).
        timeout_s: kill Tesseract after this long.
    Returns:
        Per page, its text lines in Tesseract's order (words with confidence >= 0; empty words dropped).
    Raises:
        TesseractMissingError, TesseractFailedError.
    """
    # Tesseract's OpenMP threads fight each other when pages run in parallel; one thread each is faster.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    with tempfile.TemporaryDirectory(prefix="so8t_ocr_") as tmp:  # deleted, pixels and all, on leaving
        path = Path(tmp) / "pages.tif"
        first, *rest = (Image.fromarray(p) for p in pages)
        first.save(path, format="TIFF", save_all=True, append_images=rest)
        try:
            data = pytesseract.image_to_data(
                str(path),
                lang=lang,
                config=f"--oem 1 --psm {psm}",
                timeout=timeout_s,
                output_type=pytesseract.Output.DICT,
            )
        except pytesseract.TesseractNotFoundError as e:
            raise _missing_binary(pytesseract.pytesseract.tesseract_cmd) from e
        except pytesseract.TesseractError as e:
            raise TesseractFailedError(f"tesseract exited with status {e.status}: {e.message}") from e
        except RuntimeError as e:  # pytesseract's timeout
            raise TesseractFailedError(f"tesseract: {e} (timeout_s={timeout_s})") from e
    return _lines_by_page(data, len(pages))


def _lines_by_page(data: dict[str, list], n_pages: int) -> list[tuple[Line, ...]]:
    pages_col = data.get("page_num") or [1] * len(data["text"])
    keys = zip(pages_col, data["block_num"], data["par_num"], data["line_num"])
    lines: dict[tuple[int, int, int, int], list[tuple[str, float]]] = {}
    for word, conf, (page, block, par, ln) in zip(data["text"], data["conf"], keys):
        if float(conf) >= 0 and str(word).strip():
            lines.setdefault((int(page), int(block), int(par), int(ln)), []).append((str(word), float(conf)))
    out: list[list[Line]] = [[] for _ in range(n_pages)]
    for key, words in lines.items():
        out[min(max(key[0], 1), n_pages) - 1].append(Line(tuple(w for w, _ in words), tuple(c for _, c in words)))
    return [tuple(x) for x in out]


def run_tesseract(binary: np.ndarray, lang: str, psm: int, timeout_s: float) -> tuple[list[str], list[float]]:
    """Tesseract's lines and word confidences on one page (``read_pages`` for a single page).

    Returns:
        (lines of text, confidences 0-100 of every word; Tesseract's -1 rows for blocks and lines are dropped).
    """
    (lines,) = read_pages([binary], lang, psm, timeout_s)
    return [x.text for x in lines], [c for x in lines for c in x.confs]


# ---------------------------------------------------------------------------------------------- choosing
def read_candidates(prep: Prepared, names: tuple[str, ...], psm: int, lang: str, timeout_s: float) -> list[Reading]:
    """Read the candidate pages ``names`` of ``prep`` with one mode, all in one Tesseract process (two processes
    at once, each with part of the pages, measured slower on a busy 2-core machine: each loads the models).

    On a two-column page (``prep.columns``) each column of ``level`` and ``clean`` is read as its own page and
    the columns' lines are joined left column first; ``raw`` (not levelled, so the columns do not line up with
    the measured ones) is then left out.
    """
    names = tuple(n for n in names if not (prep.columns and n == "raw")) or ("clean",)
    spans = prep.columns or ((0, prep.candidates["clean"].shape[1]),)
    pages = [prep.candidates[n][:, x0:x1] for n in names for x0, x1 in spans]
    per_page = read_pages(pages, lang, psm, timeout_s)
    k = len(spans)
    return [
        Reading(f"{n}/psm{psm}", psm, tuple(line for page in per_page[i * k : (i + 1) * k] for line in page))
        for i, n in enumerate(names)
    ]


def choose(readings: list[Reading], min_conf: float) -> tuple[list[Line], list[str], Reading]:
    """The best reading by ``Reading.score``, then line by line among the readings with as many lines.

    Ties go to the reading listed first. Lines are compared by position, so only readings that found the
    same number of lines are mixed; they nearly always split the page the same way.

    Args:
        readings: at least one.
        min_conf: the confidence at which a word counts neither for nor against a reading.
    Returns:
        (kept lines, the reading each came from, the best whole reading).
    """
    check(len(readings) > 0, "readings", readings, "must hold at least one reading")
    best = max(readings, key=lambda r: r.score(min_conf))
    peers = [r for r in readings if len(r.lines) == len(best.lines)]
    lines, names = [], []
    for i in range(len(best.lines)):
        r = max(peers, key=lambda r: r.lines[i].score(min_conf))
        lines.append(r.lines[i])
        names.append(r.name)
    return lines, names, best


def _status(lines: list[Line], ink: bool, config: OCRConfig) -> str:
    confs = [c for x in lines for c in x.confs]
    if not "".join(x.text for x in lines).strip():
        return "no_text" if ink else "blank"
    return "low_confidence" if np.mean(confs) < config.low_confidence_below else "ok"


def ocr_summary(image: Any, lang: str = "jpn+eng", config: OCRConfig = OCRConfig()) -> OCRResult:
    """Read the text in an image locally and return it with a short summary; the image itself never leaves.

    Args:
        image: a path, the bytes of an image file, or a numpy array (see ``load_gray``).
        lang: Tesseract languages joined by "+", most likely first.
        config: ``OCRConfig`` (candidates, modes, confidence thresholds, size caps, timeout).
    Returns:
        ``OCRResult`` (text, summary, status and warnings, mean_confidence, which reading won, image_sha256 and
        what preprocessing measured).
    Raises:
        OCRError subclasses, see the module docstring; ValueError for a malformed ``lang``.

    Explained in notebooks/05_visual_adapter.ipynb.
    """
    check_languages(lang)
    gray, sha = load_gray(image, config)
    prep = preprocess(gray, config)
    del gray  # only text and numbers are kept from here on
    first = config.psm if config.psm is not None else (7 if prep.n_lines <= 1 else 6)
    if not prep.ink:  # an even page holds no text; Tesseract would only make some up from nothing
        readings = [Reading("none", first, ())]
    else:
        readings = read_candidates(prep, config.candidates, first, lang, config.timeout_s)
    lines, names, best = choose(readings, config.min_word_conf)
    if prep.ink and config.psm is None and _weak(best, config):
        second = 6 if first == 7 else 3
        readings += read_candidates(prep, config.candidates, second, lang, config.timeout_s)
        lines, names, best = choose(readings, config.min_word_conf)
    status = _status(lines, prep.ink, config)
    text = "\n".join(x.text for x in lines if x.text)
    confs = [c for x in lines for c in x.confs]
    return OCRResult(
        text=text,
        summary=summarize(text, config.max_summary_chars),
        mean_confidence=float(np.mean(confs)) if confs else 0.0,
        image_sha256=sha,
        lang=lang,
        n_words=len(confs),
        skew_deg=prep.skew_deg,
        scale=prep.scale,
        psm=best.psm,
        status=status,
        warnings=tuple(_WARNINGS[status] for _ in range(status in _WARNINGS)),
        candidate=Counter(names).most_common(1)[0][0] if names else best.name,
        line_candidates=tuple(names),
    )


def _weak(best: Reading, config: OCRConfig) -> bool:
    confs = best.confs
    return not confs or float(np.mean(confs)) < config.fallback_below
