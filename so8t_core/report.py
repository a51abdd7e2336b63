"""What a pipeline run shows a reader: each executed notebook as HTML whose equations render offline, and an index
with every stage's verdicts and headline figure.

Math: nbconvert's HTML loads MathJax from a CDN, so without network every equation stays raw LaTeX. A report here
inlines MathJax 3's SVG bundle instead (the npm package pinned in ``package.json``, which ``make setup`` installs into
``node_modules/``): SVG output draws its own glyphs, so the one script is all a page needs, opened offline or sent
as a single file. Without the bundle (setup not run) a report falls back to nbconvert's CDN and says so on stderr.

Index: a stage declares its findings with ``Stage.verdict`` and its headline figure with ``Stage.headline``
(both recorded in ``metrics.json``); the index shows exactly those, never a guess from the metric names. A stage
that ran on real pretrained models logs ``real = {model: {headline: value}}``; each model gets a row under the
stage's own.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from so8t_core.artifacts import HEADLINE, VERDICTS
from so8t_core.config import REPO_ROOT

MATHJAX_BUNDLE = Path("es5") / "tex-svg-full.js"  # TeX input + SVG output + every TeX extension, no lazy loads
THUMB_WIDTH = 360  # pixels of an index thumbnail
KEY_METRICS = 6  # metrics shown for a stage that declares no verdicts

# MathJax 3 reads this before it starts. The delimiters are Jupyter's, so a report reads like the notebook.
MATHJAX_CONFIG = """window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'},
  options: {enableMenu: false}
};"""

# nbconvert's lab template, with its MathJax block replaced when the bundle is there.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_mathjax -%}
{%- if resources.so8t_mathjax -%}
<script>{{ resources.so8t_mathjax_config }}</script>
<script id="so8t-mathjax">{{ resources.so8t_mathjax }}</script>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock html_head_js_mathjax -%}
"""


def pinned_mathjax(root: Path = REPO_ROOT) -> str:
    """The MathJax version ``package.json`` pins (the one home of that pin)."""
    return json.loads((root / "package.json").read_text(encoding="utf-8"))["dependencies"]["mathjax"]


def mathjax_bundle(root: Path = REPO_ROOT) -> Path | None:
    """The installed MathJax bundle, or None when it is missing or not the pinned version.

    Args:
        root: the folder holding ``package.json`` and ``node_modules/``.
    Returns:
        Path of ``node_modules/mathjax/es5/tex-svg-full.js``, or None.
    """
    pkg = root / "node_modules" / "mathjax"
    try:
        installed = json.loads((pkg / "package.json").read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    bundle = pkg / MATHJAX_BUNDLE
    return bundle if installed == pinned_mathjax(root) and bundle.is_file() else None


@functools.cache
def _inline_mathjax() -> str | None:
    bundle = mathjax_bundle()
    if bundle is None:
        print(
            f"note: MathJax {pinned_mathjax()} is not in node_modules/ (make setup installs it); "
            "reports load it from the network",
            file=sys.stderr,
        )
        return None
    # an inline script ends at the first "</script", whatever JavaScript string it sits in
    return re.sub(r"</(script)", r"<\\/\1", bundle.read_text(encoding="utf-8"), flags=re.IGNORECASE)


def render_html(executed: Path, out: Path) -> None:
    """Self-contained HTML of an executed notebook: images embedded, MathJax inlined (see the module docstring).

    Args:
        executed: the notebook (executed or not) to render.
        out: the HTML file to write.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        embed_images=True,
        extra_loaders=[jinja2.DictLoader({"so8t_report.html.j2": _TEMPLATE})],
        template_file="so8t_report.html.j2",
    )
    js = _inline_mathjax()
    resources = {"so8t_mathjax": js, "so8t_mathjax_config": MATHJAX_CONFIG} if js else {}
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4), resources=resources)
    out.write_text(body, encoding="utf-8")


# --- the index ---------------------------------------------------------------------------------------------------
def findings(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's declared verdicts (``Stage.verdict``), by name, in the order it declared them."""
    return {n: metrics[n] for n in metrics.get(VERDICTS, []) if n in metrics}


def key_metrics(metrics: Mapping[str, Any], n: int = KEY_METRICS) -> dict[str, Any]:
    """The first ``n`` short scalar metrics: what the index shows of a stage that declares no verdicts."""
    skip = {VERDICTS, HEADLINE, "torch_threads"}
    scalars = {
        k: v
        for k, v in metrics.items()
        if k not in skip and isinstance(v, (int, float, str, bool)) and len(str(v)) < 40
    }
    return dict(list(scalars.items())[:n])


def thumbnail_uri(image: Path, width: int = THUMB_WIDTH) -> str:
    """A ``data:image/png;base64,...`` thumbnail of ``image`` at most ``width`` pixels wide (never enlarged)."""
    from PIL import Image

    with Image.open(image) as im:
        im = im.convert("RGBA") if im.mode in ("P", "LA") else im
        im.thumbnail((width, width * 4))
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _value_html(value: Any) -> str:
    if isinstance(value, bool):
        return f'<span class="{"yes" if value else "no"}">{"yes" if value else "no"}</span>'
    if value is None:
        return '<span class="na">not measured</span>'
    if isinstance(value, list) and all(not isinstance(v, str) or len(v) < 40 for v in value):
        return ", ".join(_value_html(v) for v in value) or "none"  # names or numbers: one line
    if isinstance(value, list):  # sentences: one per line
        return "<ul>" + "".join(f"<li>{_value_html(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, dict):
        return "<ul>" + "".join(f"<li>{html.escape(str(k))}: {_value_html(v)}</li>" for k, v in value.items()) + "</ul>"
    return html.escape(_fmt(value))


def _verdicts_html(metrics: Mapping[str, Any]) -> str:
    found = findings(metrics)
    if found:
        return (
            '<ul class="verdicts">'
            + "".join(f"<li><b>{html.escape(k)}</b>: {_value_html(v)}</li>" for k, v in found.items())
            + "</ul>"
        )
    km = "<br>".join(f"{html.escape(k)} = {html.escape(_fmt(v))}" for k, v in key_metrics(metrics).items())
    return '<span class="na">no verdicts declared</span>' + (
        f"<details><summary>metrics</summary>{km}</details>" if km else ""
    )


def _headline_html(metrics: Mapping[str, Any], stage_dir: Path, report: str | None) -> str:
    name = metrics.get(HEADLINE)
    if not name:
        return ""
    try:
        img = f'<img src="{thumbnail_uri(stage_dir / name)}" alt="{html.escape(name)}">'
    except OSError as exc:  # deleted or unreadable since the stage ran: say so, keep the index
        return f'<span class="err">{html.escape(name)}: {html.escape(str(exc))}</span>'
    img = f'<a href="{html.escape(report)}">{img}</a>' if report else img
    return f"<figure>{img}<figcaption>{html.escape(name)}</figcaption></figure>"


def stage_row(
    stage: str, status: str, seconds: float, error: str, metrics: Mapping[str, Any], stage_dir: Path, report: str | None
) -> str:
    """One ``<tr>`` of the index: stage (linked to its report), status, duration, verdicts, headline thumbnail.

    Args:
        stage: the stage name.
        status: ``ok``, ``failed``, ``skipped`` or ``pending``.
        seconds: how long the notebook ran.
        error: the failure message, or "".
        metrics: the stage's ``metrics.json`` (may be empty).
        stage_dir: its artifact folder (where the headline figure lies).
        report: the report's file name relative to the index, or None when there is none.
    Returns:
        The row's HTML.
    """
    link = f'<a href="{html.escape(report)}">{html.escape(stage)}</a>' if report else html.escape(stage)
    err = f'<div class="err">{html.escape(error)}</div>' if error else ""
    return (
        f'<tr class="{html.escape(status)}"><td>{link}</td><td class="status">{html.escape(status)}</td>'
        f"<td>{seconds:.1f} s</td><td>{_verdicts_html(metrics)}{err}</td>"
        f"<td>{_headline_html(metrics, stage_dir, report)}</td></tr>" + "".join(real_rows(stage, metrics))
    )


def real_rows(stage: str, metrics: Mapping[str, Any]) -> list[str]:
    """One ``<tr class="real">`` per real model a stage logged under ``real`` (``{model: {headline: value}}``).

    The row sits right under the stage's own (tiny-model) row and shows that model's headline numbers, so a reader
    compares the two at a glance. A ``real`` entry that is not a mapping of mappings is shown as it is.

    Args:
        stage: the stage name.
        metrics: the stage's ``metrics.json``.
    Returns:
        The rows' HTML, in the order the stage logged the models (none without a ``real`` dict).
    """
    real = metrics.get("real")
    if not isinstance(real, Mapping):
        return []
    rows = []
    for name, headline in real.items():
        shown = headline if isinstance(headline, Mapping) else {"value": headline}
        rows.append(
            f'<tr class="real"><td>{html.escape(stage)} &middot; <b>{html.escape(str(name))}</b></td>'
            f'<td class="status">real model</td><td></td><td>{_value_html(dict(shown))}</td><td></td></tr>'
        )
    return rows


def index_page(profile: str, rows: Sequence[str], artifacts: Path) -> str:
    """The whole ``index.html`` around ``stage_row`` rows."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>so8t pipeline ({html.escape(profile)})</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:.4em .8em;vertical-align:top;text-align:left}}tr.ok .status{{color:#080}}tr.failed .status{{color:#b00}}
tr.skipped .status{{color:#888}}.err{{color:#b00;font-family:monospace;white-space:pre-wrap}}.yes{{color:#080}}
.no{{color:#b00}}.na{{color:#888}}ul{{margin:0;padding-left:1.2em}}figure{{margin:0}}
figcaption{{font-size:.8em;color:#555}}
tr.real td{{background:#f6f8fb}}img{{max-width:{THUMB_WIDTH}px;border:1px solid #eee}}</style>
</head><body><h1>so8t pipeline: profile <code>{html.escape(profile)}</code></h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S")}. Artifacts in <code>{html.escape(str(artifacts))}</code>.
Each stage shows the verdicts its notebook declared and its headline figure; click through for the full report.</p>
<table><tr><th>stage</th><th>status</th><th>duration</th><th>verdicts</th><th>headline figure</th></tr>
{"".join(rows)}</table>
</body></html>"""
