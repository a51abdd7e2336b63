"""Compare the verdicts of two pipeline runs (two ``artifacts/`` folders), stage by stage.

    python scripts/compare_verdicts.py RUN_A/artifacts RUN_B/artifacts [--json OUT]

A stage's verdicts are the metrics its notebook marked with ``Stage.verdict`` (``metrics.json["verdicts"]``). A
verdict *flips* when a yes/no or a word differs between the runs; a number that moves is reported with its relative
change but is not a flip unless it moves more than ``--rtol``. Prints one line per verdict and exits 1 when any
verdict flipped or a stage is missing from one run, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def verdicts(artifacts: Path) -> dict[str, dict[str, Any]]:
    """Stage -> {verdict name: value} for every stage folder with a ``metrics.json``."""
    out = {}
    for m in sorted(artifacts.glob("*/metrics.json")):
        metrics = json.loads(m.read_text(encoding="utf-8"))
        out[m.parent.name] = {k: metrics.get(k) for k in metrics.get("verdicts", [])}
    return out


def same(a: Any, b: Any, rtol: float) -> bool:
    """Equal, with numbers (not booleans) equal within ``rtol``; containers compared item by item."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=rtol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rtol) for x, y in zip(a, b))
    return a == b


def compare(a: Path, b: Path, rtol: float = 1e-6) -> dict[str, Any]:
    """``{"rows": [(stage, name, value_a, value_b, same)], "missing": [stages in one run only], "flips": n}``."""
    va, vb = verdicts(a), verdicts(b)
    rows = []
    for stage in sorted(set(va) & set(vb)):
        for name in dict.fromkeys([*va[stage], *vb[stage]]):
            x, y = va[stage].get(name), vb[stage].get(name)
            rows.append((stage, name, x, y, same(x, y, rtol)))
    missing = sorted(set(va) ^ set(vb))
    return {"rows": rows, "missing": missing, "flips": sum(not r[4] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="the first run's artifacts folder")
    ap.add_argument("b", type=Path, help="the second run's artifacts folder")
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance for numeric verdicts")
    ap.add_argument("--json", type=Path, help="also write the comparison here")
    args = ap.parse_args(argv)
    for d in (args.a, args.b):
        if not d.is_dir():
            ap.error(f"{d}: not a folder")
    res = compare(args.a, args.b, args.rtol)
    for stage, name, x, y, ok in res["rows"]:
        shown = json.dumps(x, ensure_ascii=False)[:100] if ok else f"{json.dumps(x)[:60]} | {json.dumps(y)[:60]}"
        print(f"{'same ' if ok else 'DIFF '} {stage}  {name}: {shown}")
    for stage in res["missing"]:
        print(f"MISSING {stage}: in one run only")
    print(f"{len(res['rows'])} verdicts, {res['flips']} differ, {len(res['missing'])} stages in one run only")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")
    return 1 if res["flips"] or res["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
