"""Reports a person reads: declared verdicts and a headline figure on the index; equations that render offline."""

import base64
import io
import json
import re

import nbformat
import pytest

from so8t_core import pipeline, report
from so8t_core.artifacts import Stage
from so8t_core.config import NOTEBOOKS_DIR, REPO_ROOT

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def _png(path, size=(900, 600)):
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


# --- Stage.verdict / Stage.headline ------------------------------------------------------------------------------
def test_verdict_logs_values_and_names_in_order(isolated_outputs):
    st = Stage("01_x", {"seed": 0})
    st.log(width=64)
    st.verdict(beats_base=True, best="lora_only")
    st.verdict(checks={"a": True, "b": None}, lines=["one sentence.", "another."], beats_base=False)
    m = json.loads(st.path("metrics.json").read_text())
    assert m["verdicts"] == ["beats_base", "best", "checks", "lines"]  # order of first declaration, no repeats
    assert m["beats_base"] is False
    assert m["best"] == "lora_only"
    assert m["width"] == 64
    assert report.findings(m) == {
        "beats_base": False,
        "best": "lora_only",
        "checks": {"a": True, "b": None},
        "lines": ["one sentence.", "another."],
    }


@pytest.mark.parametrize(
    ("findings", "match"),
    [
        ({"verdicts": True}, "reserved"),
        ({"headline": "x"}, "reserved"),
        ({"table": [{"a": 1}]}, "not a finding"),
        ({"nested": {"a": {"b": 1}}}, "not a finding"),
        ({"essay": "line one\nline two"}, "not a finding"),
    ],
)
def test_verdict_refuses_what_is_no_finding(isolated_outputs, findings, match):
    st = Stage("01_x", {"seed": 0})
    with pytest.raises(ValueError, match=match):
        st.verdict(**findings)
    assert "verdicts" not in json.loads(st.path("metrics.json").read_text())


def test_headline_names_an_image_the_stage_wrote(isolated_outputs):
    st = Stage("01_x", {"seed": 0})
    with pytest.raises(FileNotFoundError, match="save the figure first"):
        st.headline("fig.png")
    with pytest.raises(ValueError, match="image file"):
        st.headline("metrics.json")
    _png(st.path("fig.png"))
    st.headline("fig.png")
    assert json.loads(st.path("metrics.json").read_text())["headline"] == "fig.png"


# --- the index -------------------------------------------------------------------------------------------------
def test_index_shows_declared_verdicts_and_the_headline_thumbnail(isolated_outputs):
    from PIL import Image

    st = Stage("01_x", {"seed": 0})
    st.log(torch_like_noise=3, hidden_size=64)
    _png(st.path("phase.png"))
    st.verdict(soul_beats_lora_only=False, best_variant="lora_only", f16_top1_ge_99=None, wins_at=[0.0, 3.0])
    st.verdict(notes=["The interval contains 0, no measurable difference on this test split."], empty=[])
    st.headline("phase.png")
    st.finish()
    bare = Stage("02_y", {"seed": 0})  # declares nothing: still a row, with its first metrics
    bare.log(steps=10)
    bare.finish()
    rep = isolated_outputs / "reports"
    rep.mkdir()
    (rep / "01_x.html").write_text("<html></html>")
    runs = [
        pipeline.StageRun("01_x", {}, "ok", 12.5, metrics=st.metrics),
        pipeline.StageRun("02_y", {}, "ok", 1.0, metrics=bare.metrics),
        pipeline.StageRun("03_z", {}, "failed", 2.0, error="notebooks/03_z.ipynb failed in cell 4"),
        pipeline.StageRun("04_w", {}, "skipped"),
    ]
    page = pipeline.write_index(runs, "smoke").read_text()
    rows = {re.search(r"\d\d_\w", r).group(0): r for r in page.split('<tr class="')[1:]}
    assert list(rows) == ["01_x", "02_y", "03_z", "04_w"]
    one, two = rows["01_x"], rows["02_y"]
    assert '<a href="01_x.html">01_x</a>' in one
    assert "12.5 s" in one
    assert '<b>soul_beats_lora_only</b>: <span class="no">no</span>' in one
    assert "<b>best_variant</b>: lora_only" in one
    assert "not measured" in one
    assert "<b>wins_at</b>: 0, 3</li>" in one
    assert "<b>empty</b>: none</li>" in one
    assert (
        "<b>notes</b>: <ul><li>The interval contains 0, no measurable difference on this test split.</li></ul>" in one
    )
    assert "hidden_size" not in one  # a stage with verdicts shows its findings, not its first metrics
    thumb = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="phase.png">', one)
    assert thumb, one
    with Image.open(io.BytesIO(base64.b64decode(thumb.group(1)))) as im:
        assert im.size == (report.THUMB_WIDTH, 240)  # scaled down, aspect kept
    assert "no verdicts declared" in two
    assert "steps = 10" in two
    assert "<img" not in two
    assert rows["03_z"].startswith("failed")
    assert "failed in cell 4" in rows["03_z"]
    assert "<a href" not in rows["03_z"]
    assert rows["04_w"].startswith("skipped")


def test_index_shows_a_row_per_real_model_beside_the_stage_row(isolated_outputs):
    runs = []
    for name, real in (
        ("03_a", {"smollm2-135m-instruct": {"soul_top1": 0.5}}),
        ("04_b", {"smollm2-135m-instruct": {"f32_max_abs_diff": 2.9e-4, "target_q8_0": False}, "gemma3-270m": {}}),
        ("05_c", None),
        ("06_d", {"gemma3-270m": {"safety_f1": 0.61, "served": "probe"}}),
    ):
        st = Stage(name, {"seed": 0})
        st.verdict(ok=True)
        if real is not None:
            st.log(real=real)
        st.finish()
        runs.append(pipeline.StageRun(name, {}, "ok", 1.0, metrics=st.metrics))
    page = pipeline.write_index(runs, "default").read_text()
    rows = page.split('<tr class="')[1:]
    kinds = [(r.split('"')[0], re.search(r"\d\d_\w", r).group(0)) for r in rows]
    assert kinds == [
        ("ok", "03_a"),
        ("real", "03_a"),
        ("ok", "04_b"),
        ("real", "04_b"),
        ("real", "04_b"),
        ("ok", "05_c"),
        ("ok", "06_d"),
        ("real", "06_d"),
    ]
    smol = rows[3]
    assert "<b>smollm2-135m-instruct</b>" in smol
    assert "real model" in smol
    assert "f32_max_abs_diff: 0.00029</li>" in smol
    assert 'target_q8_0: <span class="no">no</span>' in smol
    assert "served: probe" in rows[7]
    assert "safety_f1: 0.61" in rows[7]
    assert report.real_rows("07_e", {"real": "not a dict"}) == []
    assert report.real_rows("07_e", {"real": {"m": 3}})[0].count("value: 3") == 1


def test_index_survives_a_missing_headline_file(isolated_outputs):
    st = Stage("01_x", {"seed": 0})
    _png(st.path("fig.png"))
    st.headline("fig.png")
    st.path("fig.png").unlink()
    page = pipeline.write_index([pipeline.StageRun("01_x", {}, "ok", 1.0, metrics=st.metrics)], "smoke").read_text()
    assert 'class="err">fig.png' in page


# --- math that renders offline -----------------------------------------------------------------------------------
def test_mathjax_pin_is_installed_and_inlined(tmp_path):
    bundle = report.mathjax_bundle()
    assert bundle is not None, f"MathJax {report.pinned_mathjax()} missing in node_modules/: run make setup"
    out = tmp_path / "01.html"
    report.render_html(NOTEBOOKS_DIR / "01_so8_rotation_math.ipynb", out)
    page = out.read_text()
    assert '<script id="so8t-mathjax">' in page
    assert "mathjax/2.7.7" not in page
    assert len(page) > bundle.stat().st_size


def test_mathjax_bundle_none_when_version_differs(tmp_path):
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {"mathjax": "3.2.2"}}))
    pkg = tmp_path / "node_modules" / "mathjax"
    (pkg / "es5").mkdir(parents=True)
    (pkg / "es5" / "tex-svg-full.js").write_text("//")
    (pkg / "package.json").write_text(json.dumps({"version": "3.2.1"}))
    assert report.mathjax_bundle(tmp_path) is None
    (pkg / "package.json").write_text(json.dumps({"version": "3.2.2"}))
    assert report.mathjax_bundle(tmp_path) == pkg / "es5" / "tex-svg-full.js"
    assert (
        report.pinned_mathjax(REPO_ROOT)
        == json.loads((REPO_ROOT / "package.json").read_text())["dependencies"]["mathjax"]
    )


def _display_math(nb_path) -> int:
    """How many $$...$$ blocks the notebook's markdown holds."""
    text = "\n".join(c.source for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == "markdown")
    return len(re.findall(r"\$\$.+?\$\$", text, flags=re.S))


MATH_STATE = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done({loaded: false}); return; }
MathJax.startup.promise.then(() => {
  const md = [...document.querySelectorAll('.jp-RenderedMarkdown')].map(e => e.innerText).join('\\n');
  done({loaded: true, version: MathJax.version,
        math: document.querySelectorAll('mjx-container').length,
        display: document.querySelectorAll('mjx-container[display="true"]').length,
        svg: document.querySelectorAll('mjx-container > svg').length,
        errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
        markdown: md});
}, e => done({loaded: true, failed: String(e)}));
"""


@pytest.mark.browser
def test_reports_render_math_in_chromium_without_network(chromium, tmp_path):
    for nb in NOTEBOOKS:
        out = tmp_path / f"{nb.stem}.html"
        report.render_html(nb, out)
        chromium.get(out.as_uri())
        got = chromium.execute_async_script(MATH_STATE)
        assert got.get("loaded"), f"{nb.stem}: MathJax did not load (offline)"
        assert "failed" not in got, got
        assert got["version"] == report.pinned_mathjax()
        assert got["math"] > 0, (nb.stem, got)
        assert got["svg"] == got["math"], (nb.stem, got)
        assert got["display"] == _display_math(nb), (nb.stem, got)
        assert got["errors"] == 0, nb.stem
        assert "$$" not in got["markdown"]
        assert "\\frac" not in got["markdown"]
        assert "\\text" not in got["markdown"]
