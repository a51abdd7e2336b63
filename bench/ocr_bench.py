"""OCR benchmark: CER per kind and language, and images/s, on the rendered evaluation set.

Runs ``ocr_summary`` (the full pipeline) and, side by side, plain Tesseract on the unprocessed image (same
languages, ``--psm 7``), so the table shows what the OpenCV preprocessing buys. Targets from the issue:
CER <= 5 % on clean lines and >= 2 images/s with 2 workers.

    python bench/ocr_bench.py --n 48 --seed 0 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pytesseract  # noqa: E402

from so8t_core.ops.ocr import OCRConfig, ocr_summary  # noqa: E402
from so8t_core.ops.ocr_eval import cer_table, render_eval_set  # noqa: E402

CLEAN_CER_TARGET = 0.05
RATE_TARGET = 2.0


def _timed(fn, x):
    t = time.perf_counter()
    out = fn(x)
    return out, time.perf_counter() - t


def run(read, images: list[np.ndarray], workers: int) -> tuple[list[str], float, list[float]]:
    """Read every image with ``workers`` threads (Tesseract runs as a subprocess, so threads do overlap).
    Returns (texts, images per second over the wall clock, per-image seconds)."""
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(lambda im: _timed(read, im), images))
    wall = time.perf_counter() - t
    return [o[0] for o in out], len(images) / wall, [o[1] for o in out]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="rendered images (cycling kind x language)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="parallel OCR calls (the target is for 2 cores)")
    ap.add_argument("--lang", default="jpn+eng")
    ap.add_argument(
        "--omp-threads",
        type=int,
        default=1,
        help="OMP_THREAD_LIMIT for each tesseract process (ocr_summary defaults it to 1 when unset)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip plain Tesseract on the raw images")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    os.environ["OMP_THREAD_LIMIT"] = str(args.omp_threads)

    t = time.perf_counter()
    samples = render_eval_set(args.seed, args.n)
    print(
        f"rendered {len(samples)} images (seed {args.seed}) in {time.perf_counter() - t:.1f} s; "
        f"workers={args.workers} OMP_THREAD_LIMIT={args.omp_threads} "
        f"cpus={len(os.sched_getaffinity(0))}"
    )
    images = [s.image for s in samples]
    config = OCRConfig()
    texts, rate, secs = run(lambda im: ocr_summary(im, args.lang, config).text, images, args.workers)
    report = {
        "n": len(samples),
        "seed": args.seed,
        "workers": args.workers,
        "pipeline_images_per_s": rate,
        "pipeline_median_s": statistics.median(secs),
        "pipeline_cer": cer_table(samples, texts),
    }
    if not args.no_baseline:
        raw = lambda im: pytesseract.image_to_string(im, lang=args.lang, config="--oem 1 --psm 7")  # noqa: E731
        raw_texts, raw_rate, _ = run(raw, images, args.workers)
        report.update(raw_images_per_s=raw_rate, raw_cer=cer_table(samples, raw_texts))
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _print(r: dict) -> None:
    raw = r.get("raw_cer", {})
    print(f"\n{'group':<11} {'CER pipeline':>13} {'CER tesseract only':>19}")
    for g, cer in r["pipeline_cer"].items():
        base = f"{raw[g]:>19.2%}" if g in raw else f"{'-':>19}"
        print(f"{g:<11} {cer:>13.2%} {base}")
    print(
        f"\npipeline: {r['pipeline_images_per_s']:.2f} images/s with {r['workers']} workers "
        f"(median {r['pipeline_median_s'] * 1000:.0f} ms per image)"
    )
    if "raw_images_per_s" in r:
        print(f"tesseract only: {r['raw_images_per_s']:.2f} images/s")
    clean = max(v for g, v in r["pipeline_cer"].items() if g.startswith("clean"))  # worst clean group
    print(
        f"target clean CER <= {CLEAN_CER_TARGET:.0%} (worst of clean, clean/en, clean/ja): "
        f"{'met' if clean <= CLEAN_CER_TARGET else 'MISSED'} ({clean:.2%}); target >= {RATE_TARGET:g} images/s: "
        f"{'met' if r['pipeline_images_per_s'] >= RATE_TARGET else 'MISSED'} ({r['pipeline_images_per_s']:.2f})"
    )


if __name__ == "__main__":
    main()
