"""OCR benchmark: ``ocr_summary`` against plain Tesseract on the rendered benchmark set, CER per group and images/s.

Both read every page of one split of ``so8t_core.serving.ocr_synth.render_bench_set`` in the same run, page by page,
their order swapped on every other page (``timing.interleaved_map``), so machine load hits both alike. Plain
Tesseract is ``pytesseract.image_to_string(image, lang=...)`` with nothing else changed. Tune on ``dev``, report
``test``. The targets: on every kind, ``ocr_summary``'s mean CER <= plain Tesseract's; no page with text comes
back empty without a warning; ``ocr_summary`` reads at least half as many images per second.

    python bench/ocr_bench.py --split test --n 400 --json reports/ocr_bench_test.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pytesseract

from so8t_core.serving.ocr import OCRConfig, OCRResult, check_languages, ocr_summary
from so8t_core.serving.ocr_eval import cer_by_group, character_error_rate
from so8t_core.serving.ocr_synth import KINDS, LANGS, LAYOUTS, SPLITS, render_bench_set
from so8t_core.timing import interleaved_map

RATE_RATIO_TARGET = 0.5


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--split", choices=SPLITS, default="test", help="tune on dev, report test")
    ap.add_argument("--n", type=int, default=400, help="pages in both splits together (the split holds half)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lang", default="jpn+eng")
    ap.add_argument("--omp-threads", type=int, default=1, help="OMP_THREAD_LIMIT for every tesseract process")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    os.environ["OMP_THREAD_LIMIT"] = str(args.omp_threads)  # the same for both readers
    check_languages(args.lang)

    t = time.perf_counter()
    pages = render_bench_set(args.seed, args.n, args.split)
    print(
        f"rendered {len(pages)} {args.split} pages (seed {args.seed}, n {args.n}) in {time.perf_counter() - t:.1f} s; "
        f"OMP_THREAD_LIMIT={args.omp_threads} cpus={len(os.sched_getaffinity(0))}"
    )
    config = OCRConfig()
    outs, secs = interleaved_map(
        {
            "ocr_summary": lambda im: ocr_summary(im, args.lang, config),
            "tesseract": lambda im: pytesseract.image_to_string(im, lang=args.lang),
        },
        [p.image for p in pages],
    )
    results: list[OCRResult] = outs["ocr_summary"]
    refs = [p.text for p in pages]
    groups = [[f"kind:{p.kind}", f"layout:{p.layout}", f"lang:{p.lang}", f"style:{p.style}", "all"] for p in pages]
    ours = cer_by_group(refs, [r.text for r in results], groups)
    plain = cer_by_group(refs, outs["tesseract"], groups)
    rates = {k: len(pages) / sum(v) for k, v in secs.items()}
    silent = [p.number for p, r in zip(pages, results, strict=True) if p.text.strip() and not r.text and not r.warnings]
    pairs = [
        (character_error_rate(p.text, r.text), character_error_rate(p.text, t))
        for p, r, t in zip(pages, results, outs["tesseract"], strict=True)
    ]
    worse = [p.number for p, (a, b) in zip(pages, pairs, strict=True) if a > b]
    better = sum(a < b for a, b in pairs)
    worse_kinds = [k for k in KINDS if f"kind:{k}" in ours and ours[f"kind:{k}"]["mean"] > plain[f"kind:{k}"]["mean"]]
    report = {
        "split": args.split,
        "n_pages": len(pages),
        "seed": args.seed,
        "n": args.n,
        "lang": args.lang,
        "omp_threads": args.omp_threads,
        "config": config.to_dict(),
        "cer": {"ocr_summary": ours, "tesseract": plain},
        "images_per_s": rates,
        "rate_ratio": rates["ocr_summary"] / rates["tesseract"],
        "status_counts": dict(Counter(r.status for r in results)),
        "winner_counts": dict(Counter(r.candidate for r in results)),
        "empty_without_warning": silent,
        "pages_worse_than_tesseract": worse,
        "pages_better_than_tesseract": better,
        "worse_kinds": worse_kinds,
        "targets_met": {
            "cer_per_kind": not worse_kinds,
            "never_silently_empty": not silent,
            "rate_ratio": rates["ocr_summary"] / rates["tesseract"] >= RATE_RATIO_TARGET,
        },
    }
    _print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def _print(r: dict) -> None:
    ours, plain = r["cer"]["ocr_summary"], r["cer"]["tesseract"]
    print(f"\nmean CER per image ({r['split']} split, {r['n_pages']} pages)")
    print(f"| {'group':<20} | {'n':>4} | {'ocr_summary':>11} | {'tesseract':>9} |")
    print(f"|{'-' * 22}|{'-' * 5}:|{'-' * 12}:|{'-' * 10}:|")
    order = [
        *(f"kind:{k}" for k in KINDS),
        *(f"layout:{x}" for x in LAYOUTS),
        *(f"lang:{x}" for x in LANGS),
        *sorted(g for g in ours if g.startswith("style:")),
        "all",
    ]
    for g in (g for g in order if g in ours):
        print(f"| {g:<20} | {ours[g]['n']:>4.0f} | {ours[g]['mean']:>11.2%} | {plain[g]['mean']:>9.2%} |")
    rates = r["images_per_s"]
    print(
        f"\nimages/s (one page at a time, interleaved): ocr_summary {rates['ocr_summary']:.2f}, "
        f"tesseract {rates['tesseract']:.2f}, ratio {r['rate_ratio']:.2f}"
    )
    print(
        f"pages better than tesseract: {r['pages_better_than_tesseract']}, worse: "
        f"{len(r['pages_worse_than_tesseract'])} {r['pages_worse_than_tesseract']}"
    )
    print(f"status: {r['status_counts']}; winning reading: {r['winner_counts']}")
    word = {k: "met" if v else "MISSED" for k, v in r["targets_met"].items()}
    print(
        f"targets: mean CER <= tesseract on every kind: {word['cer_per_kind']} {r['worse_kinds'] or ''}; "
        f"never empty without a warning: {word['never_silently_empty']} {r['empty_without_warning'] or ''}; "
        f"images/s ratio >= {RATE_RATIO_TARGET:g}: {word['rate_ratio']}"
    )


if __name__ == "__main__":
    main()
