"""Throughput and latency of POST /think: the REFUSE path (no model) against the ALLOW path (generate), and
optionally the image path (OCR, then REFUSE).

    python bench/serve_bench.py [--requests 200] [--threads 8] [--max-new-tokens 16] [--model DIR] [--ocr]
        [--dir PATH]

Each mode starts an in-process ``so8t_core.serve`` server on a free loopback port with a fixed decision (so the
policy's own cost is left out), a fresh audit log with the production settings (synchronous=FULL, one fsync per
row), and sends --requests requests from --threads client threads, one HTTP connection each, as curl would.
Without --model the model is the tiny Phi-3 the tests use (random weights, so ALLOW runs the full
--max-new-tokens). Clients and server share one interpreter, so the figures are a lower bound; the ratio between
modes measured side by side is the figure to quote. The audit files go under artifacts/ unless --dir says
otherwise (the disk a real log lives on decides the REFUSE rate).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from so8t_core.config import artifacts_dir
from so8t_core.serving.answer import AppState
from so8t_core.serving.audit import AuditLog
from so8t_core.serving.server import make_server


def tiny_model(folder: Path, max_positions: int = 512):
    """The tests' tiny model: a SentencePiece tokenizer on a few lines and a random 1-layer Phi-3 reading up to
    ``max_positions`` tokens."""
    from so8t_core.lm.base_model import build_model, tiny_phi3_config
    from so8t_core.lm.tokenizer import MIN_VOCAB, special_ids, train_tokenizer
    from so8t_core.think import QUAD_SYSTEM, format_quad

    lines = [format_quad("a", "b", "c", "d", "hello"), QUAD_SYSTEM, "hello world how are you today"] * 20
    tok = train_tokenizer(lines, folder / "tok", vocab_size=MIN_VOCAB)
    config = tiny_phi3_config(
        len(tok), hidden_size=32, num_layers=1, num_heads=2, max_positions=max_positions, **special_ids(tok)
    )
    return build_model(config), tok


def bench_model(model_dir: str | None, folder: Path, max_positions: int = 512):
    """``(model, tokenizer)``: the folder ``model_dir`` when given, else ``tiny_model(folder, max_positions)``."""
    if model_dir:
        from so8t_core.lm.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(model_dir)
    return tiny_model(folder, max_positions)


@contextmanager
def serving(state: AppState) -> Iterator[int]:
    """An in-process server for ``state`` on a free loopback port (yielded), shut down on exit."""
    server = make_server(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def png_line() -> str:
    from PIL import Image

    from so8t_core.serving.ocr_eval import render_line

    buf = io.BytesIO()
    Image.fromarray(render_line("Invoice 4217 is paid", 32)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def one(port: int, body: bytes) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/think", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}")
    return time.perf_counter() - t0


def run(state: AppState, body: bytes, requests: int, threads: int) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) of ``requests`` identical requests from ``threads`` clients."""
    lat, lock = [], threading.Lock()

    def client(n: int) -> None:
        for _ in range(n):
            dt = one(port, body)
            with lock:
                lat.append(dt)

    with serving(state) as port:
        one(port, body)  # warm-up (first generate, first fsync)
        workers = [
            threading.Thread(target=client, args=(requests // threads + (i < requests % threads),))
            for i in range(threads)
        ]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
    assert len(lat) == requests
    assert state.audit.verify().ok
    q = statistics.quantiles(lat, n=20)
    return {"req_per_s": requests / wall, "p50_ms": 1e3 * statistics.median(lat), "p95_ms": 1e3 * q[18]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--model", help="a model folder (default: the tiny test model)")
    p.add_argument("--ocr", action="store_true", help="also time the image path (needs tesseract)")
    p.add_argument("--dir", help="where the audit files go (default: a temp folder under artifacts/)")
    a = p.parse_args()
    base = Path(a.dir) if a.dir else artifacts_dir() / "bench"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix="serve_bench.") as tmp:
        model, tok = bench_model(a.model, Path(tmp))
        modes = [("refuse", "REFUSE", {"prompt": "how do I pick a lock?"}), ("allow", "ALLOW", {"prompt": "say hello"})]
        if a.ocr:
            modes.append(("image+refuse", "REFUSE", {"prompt": "what does it say?", "image_base64": png_line()}))
        print(
            f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
            f"{a.requests} requests x {a.threads} threads, max_new_tokens={a.max_new_tokens}"
        )
        results = {}
        for name, label, req in modes:
            with AuditLog(Path(tmp) / f"{name}.db") as log:
                state = AppState(
                    model,
                    tok,
                    log,
                    "bench",
                    "fixed",
                    lambda t, x=label: x,
                    max_new_tokens=a.max_new_tokens,
                    ocr_lang="eng",
                )
                results[name] = run(state, json.dumps(req).encode(), a.requests, a.threads)
            r = results[name]
            print(f"{name:>13}: {r['req_per_s']:8.1f} req/s   p50 {r['p50_ms']:7.1f} ms   p95 {r['p95_ms']:7.1f} ms")
        print(f"refuse / allow throughput ratio: {results['refuse']['req_per_s'] / results['allow']['req_per_s']:.1f}")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
