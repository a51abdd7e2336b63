"""Text helpers shared by OCR, its evaluation and the visual stage: normalisation, summaries, the CJK font.

At the bottom of the package (it imports nothing from it), so both ``ops.ocr`` (run time) and ``vision`` (which
renders words and compares OCR answers) can use it without depending on each other.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import unicodedata

FONT_PACKAGE = "fonts-noto-cjk"
_FONT_GLOBS = (
    "/usr/share/fonts/**/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/**/NotoSansCJK*.otf",
    "/usr/share/fonts/**/NotoSansCJK*.ttc",
    "/usr/local/share/fonts/**/NotoSansCJK*",
)


class FontMissingError(RuntimeError):
    """A font is not installed (Noto Sans CJK: Debian package ``fonts-noto-cjk``; ``make setup``)."""


def find_cjk_font() -> str:
    """Path of the Noto Sans CJK Regular font file.

    Returns:
        A ``.ttc``/``.otf`` path (the ``.ttc`` face 0 is the Japanese one).
    Raises:
        FontMissingError: naming the Debian package and ``make setup``.
    """
    for pattern in _FONT_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return hits[0]
    if shutil.which("fc-list"):
        out = subprocess.run(["fc-list", ":family=Noto Sans CJK JP", "file"], capture_output=True, text=True)
        files = sorted(line.split(":")[0] for line in out.stdout.splitlines() if line.strip())
        if files:
            return files[0]
    raise FontMissingError(
        f"Noto Sans CJK font not found: install Debian package {FONT_PACKAGE} "
        f"(sudo apt-get install -y {FONT_PACKAGE}) or run `make setup`"
    )


def find_font(family: str, package: str) -> tuple[str, int]:
    """The regular face of an installed font family, found with fontconfig.

    Args:
        family: the exact fontconfig family name ("Liberation Serif", "Noto Serif CJK JP").
        package: the Debian package that installs it, named in the error.
    Returns:
        (font file, face index inside it: a ``.ttc`` holds several faces).
    Raises:
        FontMissingError: naming the Debian package and ``make setup``.
    """
    if shutil.which("fc-list"):
        for style in ("Regular", "Book"):
            out = subprocess.run(
                ["fc-list", "--format", "%{file}|%{index}\\n", f":family={family}:style={style}"],
                capture_output=True,
                text=True,
            )
            faces = sorted(line.split("|") for line in out.stdout.splitlines() if "|" in line)
            if faces:
                return faces[0][0], int(faces[0][1] or 0)
    raise FontMissingError(
        f"font {family!r} not found: install Debian package {package} (sudo apt-get install -y {package}) "
        "or run `make setup`"
    )


def normalize_text(text: str) -> str:
    """NFKC (full-width Latin → ASCII), every whitespace run → one space, trimmed, and no space next to a CJK
    character (Japanese has no word spaces; Tesseract's ``jpn`` model emits some). CER is computed on this.

    Args:
        text: any OCR output or reference.
    Returns:
        The normalised single-line string.
    """
    out: list[str] = []
    for w in unicodedata.normalize("NFKC", text).split():
        if out and not (_is_cjk(out[-1][-1]) or _is_cjk(w[0])):
            out.append(" ")
        out.append(w)
    return "".join(out)


def _is_cjk(ch: str) -> bool:
    # Hiragana, katakana, CJK punctuation, ideographs, compatibility ideographs and full-width forms.
    cp = ord(ch)
    return (
        0x3000 <= cp <= 0x30FF
        or 0x3400 <= cp <= 0x4DBF
        or 0x4E00 <= cp <= 0x9FFF
        or 0xF900 <= cp <= 0xFAFF
        or 0xFF01 <= cp <= 0xFF9F
    )


def summarize(text: str, max_chars: int = 120) -> str:
    """Flatten ``text`` with ``normalize_text`` and cut it to at most ``max_chars`` characters.

    A cut ends in "…" and, when a space lies in the last 40 % of the kept part, at that word boundary.
    """
    flat = normalize_text(text)
    if len(flat) <= max_chars:
        return flat
    cut = flat[: max(max_chars - 1, 0)]
    space = cut.rfind(" ")
    if space >= 0.6 * len(cut):
        cut = cut[:space]
    return cut.rstrip() + "…"
