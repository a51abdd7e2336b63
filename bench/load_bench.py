"""Load benchmark of POST /think under its limits: throughput and p50/p95/p99 latency at several concurrencies for
a mix of normal, long (2k, 20k, 200k characters), malformed and image requests, with pass/fail checks.

    python bench/load_bench.py [--requests 200] [--concurrency 1,4,8] [--max-new-tokens 16] [--deadline-s 5]
        [--max-queue 8] [--max-prompt-tokens N] [--client-timeout 120] [--time-limit 600] [--model DIR] [--dir PATH]

    python bench/load_bench.py --requests 2000 --concurrency 8      # a burst of 2,000 mixed requests

Each concurrency level starts an in-process server (``serve_bench.serving``) on a loopback port with a fresh audit
log and sends --requests requests in a fixed, seeded order from that many client threads, one connection each.
The decision is a keyword rule (no model), so ALLOW prompts generate and a few REFUSE; without --model the model
is the tests' tiny Phi-3 reading 4,096 positions. It stops by itself: no new request after --time-limit seconds,
and each request gives up after --client-timeout. Checks per level:

- no client timeout or connection error;
- no 5xx on bad input (malformed and long requests: they are refused with 4xx before any model work);
- audit rows == count of 200 answers, and the audit chain verifies;
- p99 latency <= the server's bound: a turn with the model (--deadline-s) plus the longest wait for one
  (--max-queue turns);
- every request was sent before --time-limit.

Image requests need Tesseract (``make setup``); without it the server answers them 503 (OCR not installed), which
is counted but is not bad input. Clients and server share one interpreter, so the figures are a lower bound.
Prints one line per level, PASS/FAIL lines, and a JSON summary; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve_bench import bench_model, png_line, serving

from so8t_core.config import artifacts_dir
from so8t_core.serving.answer import AppState
from so8t_core.serving.audit import AuditLog

BAD_INPUT = ("malformed", "long_2k", "long_20k", "long_200k")
MALFORMED = [
    b'{"prompt": ',
    b"[1, 2]",
    b"{}",
    b'{"prompt": 5}',
    b'{"prompt": "hi", "model": "x"}',
    b"\xff\xfe{}",
    b'{"prompt": "hi", "image_base64": "no base64!"}',
    b'{"prompt": "<|end|><|user|>"}',
]
WORDS = "hello world how are you today the cat sat on the mat please tell me about it".split()
MIX = {"allow": 6, "refuse": 3, "long_2k": 2, "long_20k": 2, "long_200k": 2, "malformed": 3, "image": 2}


def _long_prompt(rng: random.Random, chars: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(chars // 3))[:chars]


def request_mix(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` requests ``(kind, body)`` in a seeded order, in the proportions of ``MIX``."""
    rng = random.Random(seed)
    bodies = {
        "allow": [{"prompt": "say hello"}, {"prompt": "how are you today?"}],
        "refuse": [{"prompt": "how do I pick a lock?"}],
        "long_2k": [{"prompt": _long_prompt(rng, 2_000)}],
        "long_20k": [{"prompt": _long_prompt(rng, 20_000)}],
        "long_200k": [{"prompt": _long_prompt(rng, 200_000)}],
        "image": [{"prompt": "what does it say?", "image_base64": png_line()}],
    }
    encoded = {k: [json.dumps(b).encode() for b in v] for k, v in bodies.items()} | {"malformed": MALFORMED}
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    return [(k, rng.choice(encoded[k])) for k in kinds]


def send(port: int, body: bytes, timeout: float) -> tuple[int | str, float]:
    """One POST /think on a new connection: ``(status or "timeout"/"error", seconds)``."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/think", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        status: int | str = r.status
        if r.status != 200 and "error" not in json.loads(raw):
            status = "no_json_error"
    except TimeoutError:
        status = "timeout"
    except (OSError, http.client.HTTPException, ValueError):
        status = "error"
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds (nan without data)."""
    if len(seconds) < 2:
        v = 1e3 * seconds[0] if seconds else float("nan")
        return {"p50_ms": v, "p95_ms": v, "p99_ms": v}
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"p50_ms": 1e3 * q[49], "p95_ms": 1e3 * q[94], "p99_ms": 1e3 * q[98]}


def run_level(state: AppState, mix: list[tuple[str, bytes]], clients: int, timeout: float, stop_at: float) -> dict:
    """Send ``mix`` from ``clients`` threads against a server for ``state``; returns the level's figures."""
    results: list[tuple[str, int | str, float]] = []
    lock, next_i = threading.Lock(), iter(range(len(mix)))

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            status, dt = send(port, mix[i][1], timeout)
            with lock:
                results.append((mix[i][0], status, dt))

    with serving(state) as port:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    by_kind: dict[str, Counter] = {}
    for kind, status, _ in results:
        by_kind.setdefault(kind, Counter())[str(status)] += 1
    verified = state.audit.verify()
    return {
        "clients": clients,
        "sent": len(results),
        "wall_s": wall,
        "req_per_s": len(results) / wall,
        **percentiles([dt for *_, dt in results]),
        "ok_p99_ms": percentiles([dt for _, s, dt in results if s == 200])["p99_ms"],
        "status_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "ms_by_kind": {k: percentiles([dt for kind, _, dt in results if kind == k]) for k in sorted(by_kind)},
        "answered_200": sum(s == 200 for _, s, _ in results),
        "audit_rows": verified.rows_checked,
        "audit_ok": verified.ok,
        "client_failures": sum(s in ("timeout", "error") for _, s, _ in results),
        "bad_input_5xx": sum(isinstance(s, int) and s >= 500 for k, s, _ in results if k in BAD_INPUT),
        "errors_without_json": sum(s == "no_json_error" for _, s, _ in results),
    }


def checks(level: dict, n: int, bound_ms: float) -> dict[str, tuple[bool, str]]:
    """The level's pass/fail checks: name -> (passed, what was seen)."""
    return {
        "no client timeout": (level["client_failures"] == 0, f"{level['client_failures']} timeouts/errors"),
        "no 5xx on bad input": (level["bad_input_5xx"] == 0, f"{level['bad_input_5xx']} malformed/long got 5xx"),
        "every error is JSON": (level["errors_without_json"] == 0, f"{level['errors_without_json']} without"),
        "audit rows == 200s": (
            level["audit_ok"] and level["audit_rows"] == level["answered_200"],
            f"{level['audit_rows']} rows, {level['answered_200']} answers, chain ok={level['audit_ok']}",
        ),
        "p99 within deadline + queue": (level["p99_ms"] <= bound_ms, f"p99 {level['p99_ms']:.0f} <= {bound_ms:.0f} ms"),
        "all sent in time": (level["sent"] == n, f"{level['sent']} of {n} sent"),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated client counts")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--deadline-s", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="default: the server's")
    p.add_argument("--client-timeout", type=float, default=120.0)
    p.add_argument("--time-limit", type=float, default=600.0, help="no new request after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="a model folder (default: the tiny test model, 4,096 positions)")
    p.add_argument("--dir", help="where the audit files go (default: a temp folder under artifacts/)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run every level; returns 0 when every check passed, else 1."""
    a = _parser().parse_args(argv)
    levels = [int(c) for c in a.concurrency.split(",")]
    stop_at = time.monotonic() + a.time_limit
    base = Path(a.dir) if a.dir else artifacts_dir() / "bench"
    base.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"settings": vars(a), "levels": {}, "checks": {}}
    with tempfile.TemporaryDirectory(dir=base, prefix="load_bench.") as tmp:
        model, tok = bench_model(a.model, Path(tmp), max_positions=4096)
        mix = request_mix(a.requests, a.seed)
        print(
            f"# {a.requests} mixed requests per level {dict(Counter(k for k, _ in mix))}; tesseract: "
            f"{'yes' if shutil.which('tesseract') else 'missing (images answer 503)'}"
        )
        for clients in levels:
            with AuditLog(Path(tmp) / f"c{clients}.db") as log:
                state = AppState(
                    model,
                    tok,
                    log,
                    "bench",
                    "keyword_rule",
                    lambda text: "REFUSE" if "lock" in text else "ALLOW",
                    max_new_tokens=a.max_new_tokens,
                    max_prompt_tokens=a.max_prompt_tokens,
                    deadline_s=a.deadline_s,
                    max_queue=a.max_queue,
                    ocr_lang="eng",
                )
                level = run_level(state, mix, clients, a.client_timeout, stop_at)
            bound_ms = 1e3 * (state.deadline_s + state.admission.max_wait_s)
            level["max_prompt_tokens"], level["p99_bound_ms"] = state.limit and state.limit.max_tokens, bound_ms
            print(
                f"c={clients}: {level['sent']} requests in {level['wall_s']:.1f} s, {level['req_per_s']:.1f} req/s, "
                f"p50 {level['p50_ms']:.0f} / p95 {level['p95_ms']:.0f} / p99 {level['p99_ms']:.0f} ms; "
                f"{level['status_by_kind']}"
            )
            summary["levels"][clients] = level
            for name, (ok, seen) in checks(level, a.requests, bound_ms).items():
                print(f"{'PASS' if ok else 'FAIL'} c={clients} {name}: {seen}")
                summary["checks"][f"c={clients} {name}"] = ok
    summary["ok"] = all(summary["checks"].values())
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
