"""Compare two pipeline runs' metrics.json, stage by stage, leaving out timings (they differ run to run).

    python scripts/compare_metrics.py ARTIFACTS_A ARTIFACTS_B

Prints, per stage, how many values differ and the first of them. Paths count as values (they differ when the runs
wrote to different folders); NaN equals NaN, and NaN equals null (strict JSON writes NaN as null since 0.2).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TIMING = (
    "seconds",
    "_ms_",
    "ms_",
    "tokens_per_s",
    "latency",
    "gate_ratio",
    "map_exp_over",
    "torch_threads",
    "qlora_gap",
    "ratio_to_floor",
    "speed",
    "wall",
)


def flat(x: Any, pre: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{pre}.{k}" if pre else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from flat(v, f"{pre}[{i}]")
    else:
        yield pre, x


def same(a: Any, b: Any) -> bool:
    nan = lambda v: isinstance(v, float) and math.isnan(v)
    return a == b or (nan(a) and (nan(b) or b is None)) or (nan(b) and a is None)


def main(a: Path, b: Path) -> int:
    for stage in sorted(p.name for p in a.iterdir() if (p / "metrics.json").is_file()):
        ma = dict(flat(json.loads((a / stage / "metrics.json").read_text())))
        mb = dict(flat(json.loads((b / stage / "metrics.json").read_text()))) if (b / stage).is_dir() else {}
        keys = [k for k in sorted(set(ma) | set(mb)) if not any(t in k for t in TIMING)]
        diff = [(k, ma.get(k, "<missing>"), mb.get(k, "<missing>")) for k in keys if not same(ma.get(k), mb.get(k))]
        print(f"{stage}: {len(keys)} values compared, {len(diff)} differ")
        for d in diff[:12]:
            print("   ", d)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
