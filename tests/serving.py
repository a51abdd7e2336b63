"""Helpers the server tests share: a running server on a free port, one HTTP call, the audit rows, a scripted
model and the quad text the tiny tokenizer is trained on (the fixtures that use them live in conftest.py)."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from contextlib import contextmanager

import torch

from so8t_core.serving import answer, server
from so8t_core.serving.audit import AuditLog
from so8t_core.think import QUAD_SYSTEM, format_quad

QUAD = format_quad("SECRETOBS", "SECRETDED", "SECRETABD", "SECRETINT", "hello world")
# what the server tests' tokenizer is trained on: the quad tags and the system prompt are single pieces
SERVE_TEXTS = [QUAD, QUAD_SYSTEM, "hello world how are you today", "the cat sat on the mat"] * 20


def state_for(model, tok, audit, decide=lambda text: "REFUSE", **kw) -> answer.AppState:
    """The server's state around ``model``/``tok`` with a test identity and decision source (refuses by default)."""
    return answer.AppState(model, tok, audit, "tiny@test", "test_decider", decide, **kw)


@contextmanager
def running(state: answer.AppState):
    """Serve ``state`` on a free loopback port in a thread; yields the port and shuts the server down after."""
    httpd = server.make_server(state, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def call(
    port: int, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    """One request with http.client; returns (status, headers, raw body)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def rows(audit: AuditLog) -> list[dict]:
    """Every decision row of the audit log, read through a separate read-only connection."""
    with sqlite3.connect(f"file:{audit.path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY id")]


class Scripted(torch.nn.Module):
    """A model whose ``generate`` appends scripted ids (after ``delay`` s) and records how many run at once, and
    the prompt length and keyword arguments of each call."""

    def __init__(self, model, script: list[int], delay: float = 0.0) -> None:
        super().__init__()
        self.model, self.config, self.script, self.delay = model, model.config, script, delay
        self.guard, self.inflight, self.max_inflight, self.calls = threading.Lock(), 0, 0, 0
        self.seen: list[tuple[int, dict]] = []

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, input_ids, **kwargs):
        with self.guard:
            self.inflight += 1
            self.calls += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.seen.append((input_ids.shape[1], kwargs))
        time.sleep(self.delay)
        with self.guard:
            self.inflight -= 1
        return torch.cat([input_ids, torch.tensor([self.script])], dim=1)
