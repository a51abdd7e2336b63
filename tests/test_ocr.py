"""serving.ocr and serving.ocr_eval: CER by hand, deskew geometry, typed errors for bad input, read-back."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections import Counter

import numpy as np
import pytesseract
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from so8t_core.serving import ocr
from so8t_core.serving.ocr import (
    ImageTooLargeError,
    InvalidImageError,
    LanguageMissingError,
    Line,
    OCRConfig,
    OCRError,
    Reading,
    TesseractFailedError,
    TesseractMissingError,
    choose,
    estimate_skew,
    foreground_mask,
    load_gray,
    ocr_summary,
    preprocess,
)
from so8t_core.serving.ocr_eval import (
    KINDS,
    EvalSample,
    cer_by_group,
    cer_table,
    character_error_rate,
    levenshtein,
    render_eval_set,
    render_line,
    rotate_image,
)
from so8t_core.serving.ocr_synth import KINDS as SYNTH_KINDS
from so8t_core.serving.ocr_synth import SPLITS, degrade, render_bench_set, render_page
from so8t_core.text import normalize_text, summarize
from so8t_core.timing import interleaved_map

EN_LINE = "The quick brown fox reads 1234 letters"
JA_LINE = "東京の図書館で新聞を読みます。"


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- CER
@pytest.mark.parametrize(
    ("ref", "hyp", "want"),
    [
        ("kitten", "sitting", 3 / 6),  # k→s, e→i, +g
        ("abc", "abc", 0.0),
        ("abc", "", 1.0),  # three deletions / three characters
        ("", "ab", 2.0),  # empty reference divides by 1
        ("flaw", "lawn", 2 / 4),  # -f, +n
        ("a  b\n c", "a b c", 0.0),  # whitespace runs collapse
        ("日本語です", "日 本 語 で す", 0.0),  # spaces next to CJK characters are dropped
        ("ABC 12", "ＡＢＣ　１２", 0.0),  # NFKC: full-width Latin and ideographic space
        ("東京都", "京都", 1 / 3),
        ("ab cd", "abcd", 1 / 5),  # a lost Latin word space counts
    ],
)
def test_cer_hand_computed(ref: str, hyp: str, want: float) -> None:
    assert character_error_rate(ref, hyp) == pytest.approx(want)


def test_cer_table_micro_averages_each_group() -> None:
    blank = np.zeros((1, 1), np.uint8)
    samples = [
        EvalSample(blank, "abcd", "clean", "en", 0.0),
        EvalSample(blank, "日本", "clean", "ja", 0.0),
        EvalSample(blank, "xy", "noisy", "en", 0.0),
    ]
    table = cer_table(samples, ["abXd", "日本", ""])  # 1, 0 and 2 edits over 4, 2 and 2 characters
    assert table == pytest.approx(
        {
            "clean": 1 / 6,
            "noisy": 1.0,
            "en": 3 / 6,
            "ja": 0.0,
            "clean/en": 1 / 4,
            "clean/ja": 0.0,
            "noisy/en": 1.0,
            "all": 3 / 8,
        }
    )
    assert list(table)[:2] == ["clean", "noisy"]
    assert list(table)[-1] == "all"


@settings(max_examples=60, deadline=None)
@given(st.text("abcあい ", max_size=8), st.text("abcあい ", max_size=8), st.text("abcあい ", max_size=8))
def test_levenshtein_is_a_metric(a: str, b: str, c: str) -> None:
    d = levenshtein(a, b)
    assert d == levenshtein(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)
    assert levenshtein(a, c) <= d + levenshtein(b, c)


def test_summarize_cuts_at_a_word_and_marks_it() -> None:
    text = "alpha beta gamma\ndelta   epsilon"
    assert summarize(text, 100) == "alpha beta gamma delta epsilon"
    assert summarize(text, 14) == "alpha beta…"  # "alpha beta ga" → back to the space
    assert summarize("あいうえおかきくけこ", 5) == "あいうえ…"
    assert len(summarize("x" * 500, 120)) == 120


# ---------------------------------------------------------------------------------------- eval set
def test_eval_set_is_deterministic_and_covers_every_kind() -> None:
    a, b, c = render_eval_set(3, 8), render_eval_set(3, 8), render_eval_set(4, 8)
    assert [s.kind for s in a] == list(KINDS) * 2
    assert {(s.kind, s.lang) for s in a} == {(k, lang) for k in KINDS for lang in ("en", "ja")}
    assert all(np.array_equal(x.image, y.image) and x.text == y.text for x, y in zip(a, b))
    assert any(x.text != y.text for x, y in zip(a, c))
    assert all(s.image.dtype == np.uint8 and s.image.ndim == 2 for s in a)
    assert all((s.angle_deg != 0) == (s.kind == "rotated") for s in a)


# ------------------------------------------------------------------------------- deskew (no tesseract)
@pytest.mark.parametrize("angle", [-7.0, -3.0, 2.5, 6.0])
def test_estimate_skew_recovers_the_rendered_rotation(angle: float) -> None:
    image = rotate_image(render_line(EN_LINE, 32), angle)
    assert estimate_skew(foreground_mask(image)) == pytest.approx(angle, abs=0.3)


def test_estimate_skew_on_a_rotated_block_of_lines() -> None:
    lines = [render_line(t, 26) for t in (EN_LINE, JA_LINE, "second paragraph 42")]
    width = max(x.shape[1] for x in lines)
    block = np.vstack([np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=255) for x in lines])
    mask = foreground_mask(rotate_image(block, -4.0))
    assert estimate_skew(mask) == pytest.approx(-4.0, abs=0.3)
    assert len(ocr.text_lines(mask, -4.0)) == 3


def test_preprocess_levels_the_line_and_upscales_small_text() -> None:
    prep = preprocess(rotate_image(render_line(JA_LINE, 32), 5.0))
    assert prep.skew_deg == pytest.approx(5.0, abs=0.3)
    assert estimate_skew(prep.binary < 128) == pytest.approx(0.0, abs=0.3)  # level after the warp
    assert set(np.unique(prep.binary)) <= {0, 255}
    assert prep.n_lines == 1
    small = preprocess(render_line(EN_LINE, 10))
    assert small.line_px < 28
    assert small.scale > 2
    assert preprocess(render_line(EN_LINE, 40)).scale == 1.0


def test_text_lines_counts_runs_and_drops_specks() -> None:
    mask = np.zeros((100, 200), bool)
    mask[10:30, 20:180] = True  # a 20-row line
    mask[50:74, 20:100] = True  # a 24-row line, half as dense
    mask[90:92, 0:200] = True  # a 2-row rule: more than 5 % of the fullest row, but under half the tallest run
    assert ocr.text_lines(mask, 0.0) == [20, 24]
    assert ocr.text_lines(np.zeros((5, 5), bool), 0.0) == []


def test_preprocess_makes_light_on_dark_text_dark_on_light() -> None:
    image = render_line(EN_LINE, 32)
    inverted = preprocess(255 - image).binary
    assert (inverted == 255).mean() > 0.8  # background white, like the original's
    assert np.array_equal(inverted, preprocess(image).binary)


def test_preprocess_denoises_before_measuring() -> None:
    clean = render_line(EN_LINE, 32)
    rng = np.random.default_rng(1)
    noisy = np.clip(clean + rng.normal(0, 70, clean.shape), 0, 255).astype(np.uint8)
    ref, got = preprocess(clean), preprocess(noisy)
    assert got.noise_sigma > 40 > 10 > ref.noise_sigma
    # Specks would inflate the line height and trigger a wrong upscale; the denoised page measures like the clean.
    assert (got.n_lines, got.scale) == (ref.n_lines, ref.scale)
    assert ref.n_lines == 1
    assert got.line_px == pytest.approx(ref.line_px, abs=3)
    assert got.skew_deg == pytest.approx(0.0, abs=0.3)


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad",
    [
        b"definitely not an image",
        b"",
        bytearray(b"\x89PNG\r\n\x1a\n"),  # a PNG signature and nothing else
        np.zeros((0, 10), np.uint8),
        np.zeros((10, 0, 3), np.uint8),
        np.zeros((4, 4, 5), np.uint8),  # five channels
        np.full((4, 4), np.nan, np.float32),
        np.zeros(7, np.uint8),  # 1-D
        [[0, 255], [255, 0]],  # a list, not an array
        "/nonexistent/dir/page.png",
    ],
)
def test_bad_input_raises_invalid_image(bad: object) -> None:
    with pytest.raises(InvalidImageError):
        load_gray(bad)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_invalid_image(fmt: str) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (300, 300), dtype=np.uint8)).save(buf, format=fmt)
    with pytest.raises(InvalidImageError, match="not a decodable image"):
        load_gray(buf.getvalue()[: len(buf.getvalue()) // 2])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    # A PNG whose IHDR announces a huge greyscale image but whose IDAT holds a few bytes: a bomb's header.
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def test_zero_size_header_is_invalid() -> None:
    with pytest.raises(InvalidImageError):
        load_gray(_png_header_only(0, 10))


def test_decompression_bomb_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match="pixels"):
        load_gray(_png_header_only(9_000, 9_000), OCRConfig(max_decode_pixels=50_000_000))
    with pytest.raises(ImageTooLargeError):  # Pillow's own limit, far beyond ours, is mapped too
        load_gray(_png_header_only(100_000, 100_000))


def test_huge_image_is_downscaled_not_refused() -> None:
    big = np.full((4000, 4000), 255, np.uint8)
    big[1800:2200, 500:3500] = 0
    prep = preprocess(load_gray(_png(big))[0], OCRConfig(max_pixels=1_000_000))
    assert prep.scale == pytest.approx(0.25, rel=0.01)
    assert prep.binary.size <= 1_000_000 + 4 * 12 * 1100  # cap plus the white border


def test_huge_jpeg_is_decoded_at_reduced_scale() -> None:
    buf = io.BytesIO()
    Image.new("L", (4000, 4000), 255).save(buf, format="JPEG")
    # 16 MP > 4 x 0.5 MP: libjpeg's largest reduction still >= 4000 / sqrt(32) = 707 px per side is 1/4.
    assert load_gray(buf.getvalue(), OCRConfig(max_pixels=500_000))[0].shape == (1000, 1000)


@pytest.mark.parametrize(
    "convert",
    [
        lambda g: g.astype(np.uint16) * 257,  # 16-bit
        lambda g: g.astype(np.float32) / 255,  # float in [0, 1]
        lambda g: g.astype(np.float64),  # float in [0, 255]
        lambda g: np.repeat(g[..., None], 3, axis=2),  # RGB
        lambda g: g[..., None],  # (H, W, 1)
        lambda g: g.astype(np.int32),
    ],
)
def test_array_dtypes_and_layouts_give_the_same_grey(convert) -> None:
    g = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    assert np.abs(load_gray(convert(g))[0].astype(int) - g).max() <= 1
    assert load_gray(g > 127)[0].max() == 255


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    g = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    buf = io.BytesIO()
    Image.fromarray(g.astype(np.uint16) * 257).save(buf, format="PNG")
    assert np.abs(load_gray(buf.getvalue())[0].astype(int) - g).max() <= 1


def test_alpha_is_flattened_onto_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black ...
    rgba[2:4, 2:6, 3] = 255  # ... except an opaque black bar
    gray = load_gray(rgba)[0]
    assert gray[0, 0] == 255
    assert gray[2, 2] == 0
    assert load_gray(_png(rgba))[0][0, 0] == 255


def test_sha256_is_of_the_original_bytes_or_of_dtype_shape_and_array_bytes(tmp_path) -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = _png(a)
    (tmp_path / "a.png").write_bytes(data)
    assert load_gray(data)[1] == load_gray(tmp_path / "a.png")[1] == hashlib.sha256(data).hexdigest()
    assert load_gray(a)[1] == hashlib.sha256(b"|u1(3, 4)" + a.tobytes()).hexdigest()
    assert load_gray(a.reshape(4, 3))[1] != load_gray(a)[1]


def test_errors_are_typed_and_config_is_validated() -> None:
    assert issubclass(InvalidImageError, OCRError)
    assert issubclass(LanguageMissingError, TesseractMissingError)
    with pytest.raises(ValueError, match="psm"):
        OCRConfig(psm=5)
    with pytest.raises(ValueError, match="max_decode_pixels"):
        OCRConfig(max_pixels=10, max_decode_pixels=5)


# ------------------------------------------------------------------------------------ tesseract
def test_missing_binary_names_the_package(monkeypatch) -> None:
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/bin/tesseract")
    with pytest.raises(TesseractMissingError, match=r"tesseract-ocr .*make setup"):
        ocr_summary(render_line("abc", 20))


def test_words_lines_and_confidence_from_tesseract_data(monkeypatch) -> None:
    data = {  # the shape of pytesseract's image_to_data dict: -1 rows are pages, blocks, paragraphs, lines
        "text": ["", "", "Hello", "ｗｏｒｌｄ", " ", "", "日", "本", "x"],
        "conf": [-1, -1, 90, 70.0, 95, -1, 80, 60, -1],
        "block_num": [0, 1, 1, 1, 1, 1, 1, 1, 1],
        "par_num": [0, 0, 1, 1, 1, 1, 1, 1, 1],
        "line_num": [0, 0, 1, 1, 1, 2, 2, 2, 2],
    }
    monkeypatch.setattr(pytesseract, "image_to_data", lambda *a, **k: data)
    lines, confs = ocr.run_tesseract(np.zeros((4, 4), np.uint8), "eng", 6, 5.0)
    assert lines == ["Hello world", "日本"]
    assert confs == [90, 70, 80, 60]


@pytest.mark.parametrize(
    ("raised", "match"),
    [
        (pytesseract.TesseractError(1, "Error in pixReadMem"), "status 1"),
        (RuntimeError("Tesseract process timeout"), "timeout_s=5.0"),
    ],
)
def test_tesseract_failures_are_typed(monkeypatch, raised: Exception, match: str) -> None:
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(pytesseract, "image_to_data", fail)
    with pytest.raises(TesseractFailedError, match=match):
        ocr.run_tesseract(np.zeros((4, 4), np.uint8), "eng", 7, 5.0)


@pytest.mark.tesseract
def test_missing_language_names_the_package() -> None:
    with pytest.raises(LanguageMissingError, match=r"tesseract-ocr-xyz.*make setup"):
        ocr_summary(render_line("abc", 20), lang="eng+xyz")
    with pytest.raises(ValueError, match="lang"):
        ocr_summary(render_line("abc", 20), lang="eng; rm -rf /")


@pytest.mark.tesseract
@pytest.mark.parametrize(("text", "px"), [(EN_LINE, 32), (JA_LINE, 32), (JA_LINE, 11)])
def test_clean_line_reads_back(text: str, px: int) -> None:
    image = render_line(text, px)
    result = ocr_summary(image)
    assert character_error_rate(text, result.text) <= 0.05, result.text
    assert 50 < result.mean_confidence <= 100
    assert result.psm == 7
    assert result.summary == normalize_text(result.text)
    assert result.image_sha256 == load_gray(image)[1]


@pytest.mark.tesseract
def test_two_lines_are_read_as_a_block() -> None:
    a, b = render_line(EN_LINE, 30), render_line(JA_LINE, 30)
    width = max(a.shape[1], b.shape[1])
    page = np.vstack([np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=255) for x in (a, b)])
    result = ocr_summary(page)
    assert result.psm == 6
    assert result.text.count("\n") == 1
    assert ocr_summary(page, config=OCRConfig(psm=7)).psm == 7  # the caller's mode wins
    assert character_error_rate(EN_LINE + " " + JA_LINE, result.text) <= 0.05, result.text


@pytest.mark.tesseract
@pytest.mark.parametrize(("shape", "value"), [((50, 200), 255), ((50, 200), 0), ((1, 1), 0)])
def test_blank_page_reads_as_no_text(shape: tuple[int, int], value: int) -> None:
    result = ocr_summary(np.full(shape, value, np.uint8))
    assert (result.text, result.summary, result.n_words, result.mean_confidence) == ("", "", 0, 0.0)


@pytest.mark.tesseract
def test_rotated_line_is_recovered_by_deskew() -> None:
    image = rotate_image(render_line(JA_LINE, 32), -7.0)
    result = ocr_summary(image)
    assert result.skew_deg == pytest.approx(-7.0, abs=0.3)
    assert character_error_rate(JA_LINE, result.text) <= 0.1, result.text


@pytest.mark.tesseract
def test_bytes_path_and_inverted_input_read_the_same(tmp_path) -> None:
    image = render_line(EN_LINE, 28)
    (tmp_path / "line.png").write_bytes(_png(image))
    from_path = ocr_summary(tmp_path / "line.png", lang="eng")
    assert ocr_summary(_png(image), lang="eng").text == from_path.text
    assert character_error_rate(EN_LINE, ocr_summary(255 - image, lang="eng").text) <= 0.05
    assert character_error_rate(EN_LINE, from_path.text) <= 0.05


@pytest.mark.tesseract
def test_noisy_line_is_denoised() -> None:
    rng = np.random.default_rng(1)
    clean = render_line(EN_LINE, 32).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 70, clean.shape), 0, 255).astype(np.uint8)
    assert character_error_rate(EN_LINE, ocr_summary(noisy).text) <= 0.1


# ------------------------------------------------------------------------- choosing among readings (no tesseract)
def _line(*pairs: tuple[str, float]) -> Line:
    return Line(tuple(w for w, _ in pairs), tuple(float(c) for _, c in pairs))


def test_line_score_counts_characters_above_the_confidence_floor() -> None:
    line = _line(("abcd", 90), ("ef", 20))
    assert line.score(50) == pytest.approx(4 * 0.4 + 2 * -0.3)
    assert line.text == "abcd ef"
    assert _line(("日本", 90), ("語", 90)).text == "日本語"


def test_choose_mixes_lines_only_among_readings_that_split_alike() -> None:
    a = Reading("raw/psm6", 6, (_line(("Helo", 60)), _line(("world", 95))))
    b = Reading("level/psm6", 6, (_line(("Hello", 90)), _line(("wor1d", 40))))
    c = Reading("clean/psm3", 3, (_line(("Hello", 55), ("world", 55)),))  # one line: not mixed, and weaker
    lines, names, best = choose([a, b, c], 50)
    assert [x.text for x in lines] == ["Hello", "world"]
    assert names == ["level/psm6", "raw/psm6"]
    assert best is a  # the best whole reading: 4 x 0.1 + 5 x 0.45 beats 5 x 0.4 - 5 x 0.1 and 10 x 0.05
    lines, names, best = choose([a, Reading("clean/psm6", 6, (_line(("Hello world", 99)),))], 50)
    assert (len(lines), names, best.name) == (1, ["clean/psm6"], "clean/psm6")  # counts differ: whole reading
    tie = Reading("level/psm7", 7, a.lines)
    assert choose([a, tie], 50)[1] == ["raw/psm6", "raw/psm6"]  # ties go to the reading listed first
    with pytest.raises(ValueError, match="readings"):
        choose([], 50)


def _tiff_pages(path: str) -> int:
    with Image.open(path) as im:
        return im.n_frames


@pytest.fixture
def fake_tesseract(monkeypatch):
    """Replace Tesseract by a script ``{psm: [page 1 lines, page 2 lines, ...]}`` (lines: lists of (word, conf));
    returns the (psm, pages) of every call. Page order is ``OCRConfig.candidates`` (x columns)."""
    script: dict[int, list[list[list[tuple[str, float]]]]] = {}
    calls: list[tuple[int, int]] = []

    def image_to_data(path, lang, config, timeout, output_type):
        psm, n = int(config.split("--psm ")[1]), _tiff_pages(path)
        calls.append((psm, n))
        data: dict[str, list] = {k: [] for k in ("text", "conf", "page_num", "block_num", "par_num", "line_num")}
        for page, lines in enumerate(script.get(psm, [])[:n], 1):
            for number, words in enumerate(lines, 1):
                for word, conf in words:
                    for k, v in zip(data, (word, conf, page, 1, 1, number)):
                        data[k].append(v)
        return data

    monkeypatch.setattr(pytesseract, "image_to_data", image_to_data)
    monkeypatch.setattr(ocr, "check_languages", lambda lang: None)
    return script, calls


def _two_lines() -> np.ndarray:
    a, b = render_line(EN_LINE, 30), render_line("second line 42", 30)
    width = max(a.shape[1], b.shape[1])
    return np.vstack([np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=255) for x in (a, b)])


def test_summary_keeps_the_best_line_of_each_candidate_and_says_which(fake_tesseract) -> None:
    script, calls = fake_tesseract
    script[6] = [
        [[("Helo", 60)], [("world", 95)]],  # raw
        [[("Hello", 90)], [("wor1d", 40)]],  # level
        [[("Hallo", 50)], [("world", 90)]],  # clean
    ]
    result = ocr_summary(_two_lines())
    assert result.text == "Hello\nworld"
    assert result.line_candidates == ("level/psm6", "raw/psm6")
    assert result.candidate == "level/psm6"
    assert result.psm == 6
    assert (result.status, result.warnings, result.n_words) == ("ok", (), 2)
    assert result.mean_confidence == pytest.approx(92.5)
    assert calls == [(6, 3)]  # one Tesseract process for all three candidates; confident, so no second mode


def test_a_weak_reading_tries_the_other_mode(fake_tesseract) -> None:
    script, calls = fake_tesseract
    script[7] = [[[("Tne", 40), ("qvick", 30)]]] * 3
    script[6] = [[[("The", 95), ("quick", 90)]], [], []]
    result = ocr_summary(render_line(EN_LINE, 30))
    assert calls == [(7, 3), (6, 3)]
    assert (result.text, result.psm, result.candidate) == ("The quick", 6, "raw/psm6")
    calls.clear()
    ocr_summary(render_line(EN_LINE, 30), config=OCRConfig(psm=7))  # the caller's mode only
    assert calls == [(7, 3)]
    calls.clear()
    ocr_summary(render_line(EN_LINE, 30), config=OCRConfig(candidates=("clean",), fallback_below=0))
    assert calls == [(7, 1)]


@pytest.mark.parametrize(
    ("words", "status"),
    [
        ([], "no_text"),  # marks on the page, nothing read: never a silent empty result
        ([("sorne", 30.0), ("fext", 25.0)], "low_confidence"),
        ([("some", 96.0), ("text", 91.0)], "ok"),
    ],
)
def test_ink_without_confident_text_warns(fake_tesseract, words, status: str) -> None:
    script, _ = fake_tesseract
    script[7] = script[6] = [[words] if words else []] * 3
    result = ocr_summary(render_line(EN_LINE, 30))
    assert result.status == status
    assert bool(result.warnings) == (status != "ok")
    assert result.text == " ".join(w for w, _ in words)


def test_an_even_page_is_blank_without_asking_tesseract(fake_tesseract) -> None:
    script, calls = fake_tesseract
    script[7] = script[6] = [[[("ーー", 50.0)]]] * 3  # what Tesseract makes up on a 1x1 black page
    for page in (np.full((50, 200), 255, np.uint8), np.zeros((1, 1), np.uint8), np.full((40, 40), 128, np.uint8)):
        result = ocr_summary(page)
        assert (result.text, result.status, result.warnings, result.n_words) == ("", "blank", (), 0)
    assert calls == []


# ------------------------------------------------------------------------------------------ reading order
def _side_by_side(left: list[np.ndarray], right: list[np.ndarray], gap: int) -> np.ndarray:
    rows = []
    for a, b in zip(left, right, strict=True):
        row = np.full((max(a.shape[0], b.shape[0]), 2000), 255, np.uint8)
        row[: a.shape[0], : a.shape[1]] = a
        row[: b.shape[0], gap : gap + b.shape[1]] = b
        rows.append(row)
    page = np.vstack(rows)
    return page[:, : np.flatnonzero((page < 128).any(axis=0))[-1] + 20]


def _columns_page() -> np.ndarray:
    left = [render_line(t, 24) for t in ("Rivers carry", "stones down to", "the sea 1984")]
    right = [render_line(t, 24) for t in ("Morning trains", "leave the station", "every seven")]
    return _side_by_side(left, right, 300)


def _receipt_page() -> np.ndarray:
    items = [render_line(t, 24) for t in ("Coffee", "Green tea", "Batteries")]
    prices = [render_line(t, 24) for t in ("4.50", "12.00", "7.25")]
    width = max(p.shape[1] for p in prices)
    padded = [np.pad(p, ((0, 0), (width - p.shape[1], 0)), constant_values=255) for p in prices]  # right-aligned
    return _side_by_side(items, padded, 320)


def test_two_columns_are_found_and_a_receipt_is_not() -> None:
    cols = preprocess(_columns_page())
    assert cols.n_lines == 3
    assert len(cols.columns) == 2
    (x0, x1), (x2, x3) = cols.columns
    assert x0 < x1 < x2 < x3 <= cols.binary.shape[1]
    assert preprocess(_receipt_page()).columns == ()
    assert preprocess(render_line(EN_LINE, 30)).columns == ()


def test_columns_are_read_left_column_first(fake_tesseract) -> None:
    script, calls = fake_tesseract
    # Pages: level-left, level-right, clean-left, clean-right (raw is not levelled, so it sits columns out).
    script[6] = [[[("L1", 90)], [("L2", 90)]], [[("R1", 90)], [("R2", 90)]]] * 2
    result = ocr_summary(_columns_page())
    assert calls == [(6, 4)]
    assert result.text == "L1\nL2\nR1\nR2"
    assert result.candidate == "level/psm6"


def test_lines_are_grouped_by_page_and_kept_in_tesseract_order() -> None:
    data = {
        "text": ["b", "a", "c", "", "d"],
        "conf": [90, 80, 70, -1, 60],
        "page_num": [2, 1, 1, 2, 2],
        "block_num": [1, 1, 1, 1, 1],
        "par_num": [1, 1, 1, 1, 1],
        "line_num": [1, 1, 2, 2, 2],
    }
    pages = ocr._lines_by_page(data, 2)
    assert [[x.text for x in p] for p in pages] == [["a", "c"], ["b", "d"]]


# ------------------------------------------------------------------------------------------ benchmark set
def test_bench_set_is_deterministic_balanced_and_split() -> None:
    pages = render_bench_set(seed=3, n=40)
    assert [p.number for p in pages] == list(range(40))
    for split in SPLITS:
        part = [p for p in pages if p.split == split]
        assert Counter(p.kind for p in part) == dict.fromkeys(SYNTH_KINDS, 2)  # every kind, equally, in both
    again = render_page(3, 17)
    assert np.array_equal(again.image, pages[17].image)
    assert again.text == pages[17].text
    assert [p.number for p in render_bench_set(3, 40, "test")] == list(range(1, 40, 2))
    assert render_page(4, 17).text != again.text
    assert all(p.image.dtype == np.uint8 and p.image.ndim == 2 and p.text.strip() for p in pages)
    assert all(p.lang == "en" or "CJK" in p.family or "IPA" in p.family for p in pages)  # Japanese needs a CJK font
    with pytest.raises(ValueError, match="split"):
        render_bench_set(0, 4, "train")


def test_cer_by_group_gives_the_mean_and_the_micro_average() -> None:
    table = cer_by_group(["abcd", "xy"], ["abXd", ""], [["a", "all"], ["b", "all"]])
    assert table["all"] == pytest.approx({"mean": (0.25 + 1.0) / 2, "micro": 3 / 6, "n": 2})
    assert table["a"] == pytest.approx({"mean": 0.25, "micro": 0.25, "n": 1})


def test_interleaved_map_swaps_the_order_on_every_other_item() -> None:
    calls: list[str] = []
    outs, secs = interleaved_map(
        {"a": lambda x: calls.append("a") or x, "b": lambda x: calls.append("b") or -x}, [1, 2, 3]
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert outs == {"a": [1, 2, 3], "b": [-1, -2, -3]}
    assert all(len(v) == 3 for v in secs.values())


# ------------------------------------------------------------------------------------------ real tesseract
@pytest.mark.tesseract
def test_line_on_a_speckled_background_is_read_not_dropped() -> None:
    rng = np.random.default_rng(0)
    line = render_line("A white fox circles the quiet garden", 30)
    page = degrade(rng, "speckle", line)
    result = ocr_summary(page)
    assert result.status == "ok"
    assert character_error_rate("A white fox circles the quiet garden", result.text) <= 0.05


@pytest.mark.tesseract
def test_columns_and_receipt_come_back_in_reading_order() -> None:
    cols = ocr_summary(_columns_page(), lang="eng")
    want = "Rivers carry\nstones down to\nthe sea 1984\nMorning trains\nleave the station\nevery seven"
    assert character_error_rate(want, cols.text) <= 0.05, cols.text
    assert cols.text.count("\n") == 5, cols.text
    receipt = ocr_summary(_receipt_page(), lang="eng")
    assert character_error_rate("Coffee 4.50\nGreen tea 12.00\nBatteries 7.25", receipt.text) <= 0.05, receipt.text
    assert receipt.text.count("\n") == 2
