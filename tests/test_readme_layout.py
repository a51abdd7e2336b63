"""The README's "Layout" names every module of every room, so a newcomer finds each file there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block(readme: str) -> str:
    """The code block under ``## Layout``."""
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def unlisted(block: str, package: Path) -> list[str]:
    """Modules of ``package`` (``room/module`` or ``module.py``) that the layout block does not name."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.py)?", block))
    out = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.name == "__init__.py" and len(rel.parts) > 1:
            continue
        if len(rel.parts) == 1:
            if path.name != "__init__.py" and path.name not in words:
                out.append(str(rel))
        elif f"{rel.parts[0]}/" not in block or path.stem not in words:
            out.append(str(rel))
    return out


def test_the_readme_layout_lists_every_module() -> None:
    block = layout_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert unlisted(block, ROOT / "so8t_core") == []


def test_a_missing_module_is_reported(tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()
    for f in ("__init__.py", "lm/__init__.py", "lm/corpus.py", "lm/batching.py", "think.py"):
        (tmp_path / f).write_text("")
    assert unlisted("lm/  corpus\nthink.py", tmp_path) == ["lm/batching.py"]
