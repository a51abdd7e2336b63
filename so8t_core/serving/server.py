"""The ``/think`` HTTP endpoint: a prompt (and optionally an image) in, a policy decision and a final answer out.

    python -m so8t_core.serve [--model DIR|NAME] [--host 127.0.0.1] [--port 8088] [--audit artifacts/audit/audit.db]
        [--max-body 2MB] [--max-new-tokens 128] [--max-prompt-tokens N] [--deadline-s 30] [--max-queue 8]
        [--allow-remote] [--decision-source NAME]

    POST /think    {"prompt": str, "image_base64": str (optional)} -> 200 {"request_id", "decision", "final"}
    GET  /healthz  -> 200 {"status", "model_id", "decision_source", "answer_policy", "audit_path", "queue", "limits"}
    errors         -> 4xx/5xx {"error": "..."}: 400 bad JSON, fields, base64 or image; 404 path; 405 method;
                      411 no Content-Length; 413 body, image or prompt (in tokens) too large; 415 not JSON;
                      422 OCR failed on the image; 500 internal; 503 queue full (with Retry-After) or OCR not
                      installed. The server keeps serving.

The standard library's ``ThreadingHTTPServer`` (no new dependency), one thread per connection. A model lock lets
one request at a time use the model (safety heads, ``generate``); parsing, OCR, a baseline decision, the fixed
REFUSE/ESCALATE answers and audit writes run in parallel. The work of one request is bounded (``ops.limits``): a
prompt over ``--max-prompt-tokens`` is refused before any model work, at most ``--max-queue`` requests wait for
the model (the next gets 503 at once), and a turn with the model ends after ``--deadline-s``. ``/healthz`` never
waits for the model.

Which model speaks (``models.resolve_model``): ``--model`` (a folder, or a real model's name such as
``smollm2-135m-instruct``), else SmolLM2-135M-Instruct with the soul fused into its head (notebook 04's
``real/smollm2-135m-instruct/fused``), else notebook 04's fused tiny model, else notebook 00's. How it answers is a
property of the model (``ops.policy``): the project's quad models answer in the quad layout and only ``<final>``
leaves; a chat model without thinking tags (SmolLM2) is asked through its own chat template and its reply leaves
with every think part removed.

An image is read locally by ``ocr.ocr_summary`` and only its summary is appended to the prompt (``model_text``);
decision and answer both see that text. The answer comes only from ``policy.respond_under`` (``extract_final``,
``policy.final_text`` or a fixed message), and error messages and the server log never include model output.

The decision source is the one notebook 06 chose on dev (``safety.decision``, ``decision.json``) unless
``--decision-source`` names another it measured; ``/healthz`` and every audit row name it.

Every answered request is one ``AuditLog.log_decision`` row: decision, decision source (as reason), ``input_hash``,
thinking hash (for REFUSE/ESCALATE, which generate nothing, the hash of no thinking), final text, model id
(``label:name@hash``), the identity-contract version whose document holds the model's weight hashes, the decision
source and the answer policy (``load_state``) and,
with an image, its SHA-256 and the OCR summary (purged after ``audit.RETENTION_DAYS``, at start-up). A rejected
request (4xx, 503) reached no decision and is not logged as one. If the audit write fails the answer is withheld (500).

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import re
import signal
import socket
import sys
import traceback
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from so8t_core.config import artifacts_dir
from so8t_core.serving.answer import AppState, RequestError, health, parse_think_request, think
from so8t_core.serving.audit import AuditError, AuditLog
from so8t_core.serving.models import ModelChoice, load_decider, model_identity, resolve_model, serving_contract
from so8t_core.serving.policy import answer_policy

log = logging.getLogger("so8t_core.serve")  # also when run as __main__

ROUTES = {"/think": "POST", "/healthz": "GET"}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


# ---------------------------------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    server: ThinkServer
    server_version = "so8t-serve/1"
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length

    def setup(self) -> None:
        # socketserver reads the per-connection timeout from the instance; a client that stops sending frees its thread
        self.timeout = self.server.state.read_timeout_s  # type: ignore[misc]  # typeshed says ClassVar; read per instance
        super().setup()

    def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        for k, v in {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            **(headers or {}),
        }.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib calls this for bad request lines, oversized headers and unknown methods: answer in JSON too.
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _content_length(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "chunked bodies are not accepted: send a Content-Length")
        lengths = set(self.headers.get_all("Content-Length") or [])
        if not lengths:
            raise RequestError(411, "a Content-Length header is required")
        raw = lengths.pop()
        if lengths or not re.fullmatch(r"\s*[0-9]{1,18}\s*", raw):
            raise RequestError(400, "Content-Length must be one non-negative integer")
        n, limit = int(raw), self.server.state.max_body
        if n > limit:  # refused before reading a byte of it
            raise RequestError(413, f"body of {n} bytes exceeds the limit of {limit} bytes (--max-body)")
        return n

    def handle_expect_100(self) -> bool:
        # curl asks before sending a large body: refuse it here, so it is never sent
        try:
            self._content_length()
        except RequestError as e:
            self.close_connection = True
            self._send_json(e.status, {"error": e.message})
            return False
        return super().handle_expect_100()

    def _read_body(self) -> bytes:
        n = self._content_length()
        body = self.rfile.read(n)
        if len(body) < n:
            raise RequestError(400, f"body ended after {len(body)} of {n} bytes")
        return body

    def _route(self) -> str:
        path = urlsplit(self.path).path
        if path not in ROUTES:
            raise RequestError(404, f"unknown path: use {', '.join(f'{m} {p}' for p, m in ROUTES.items())}")
        allowed = ROUTES[path] + (", HEAD" if ROUTES[path] == "GET" else "")  # HEAD: a GET without the body
        if self.command not in allowed.split(", "):
            raise RequestError(405, f"{path} accepts {allowed} only", {"Allow": allowed})
        return path

    def _handle(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        request_id = uuid.uuid4().hex
        try:
            if self._route() == "/healthz":
                return 200, health(self.server.state), {}
            if self.headers.get("Content-Type") is not None and self.headers.get_content_type() != "application/json":
                raise RequestError(415, "Content-Type must be application/json")
            return 200, think(self.server.state, parse_think_request(self._read_body()), request_id), {}
        except RequestError as e:
            self.close_connection = True  # the body may be unread: do not parse it as the next request
            return e.status, {"error": e.message}, e.headers
        except Exception as e:  # its message may hold model output: log the type and frames, send a fixed text
            log.error(
                "request %s failed with %s:\n%s",
                request_id,
                type(e).__name__,
                "".join(traceback.format_tb(e.__traceback__)),
            )
            self.close_connection = True
            return 500, {"error": f"internal error; see the server log for request {request_id}"}, {}

    def _dispatch(self) -> None:
        status, obj, headers = self._handle()
        try:
            self._send_json(status, obj, headers)
        except ConnectionError:  # the client left; an answered request is already in the audit log
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class ThinkServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` carrying the ``AppState`` its handlers read."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: AppState) -> None:
        self.state = state
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool = False) -> None:
    """Refuse a non-loopback bind address unless ``allow_remote``, and say why."""
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"host={host!r} is not a loopback address: /think has no authentication and no TLS, and every call "
            "runs the model and writes the audit log, so anyone who can reach the port could use it. Keep "
            "127.0.0.1 (put an authenticating TLS proxy in front), or pass --allow-remote to accept that risk"
        )


def make_server(state: AppState, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False) -> ThinkServer:
    """A bound, not yet serving ``ThinkServer``; run ``serve_forever()`` (e.g. in a thread), then ``shutdown()``.

    Args:
        state: the ``AppState``.
        host, port: where to listen (port 0 picks a free one: read ``server.server_address``).
        allow_remote: allow a non-loopback ``host`` (see ``check_host``).
    Returns:
        The server.
    """
    check_host(host, allow_remote)
    return ThinkServer((host, port), state)


def parse_size(text: str) -> int:
    """``"2MB"`` -> 2097152: an integer with an optional K/M/G unit (binary multiples; ``B``, ``iB`` optional)."""
    m = re.fullmatch(r"\s*([0-9]+)\s*([kmg]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"max_body={text!r}: must be a positive size like 2MB, 512KB or 1048576")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m so8t_core.serve", description="Serve POST /think on the model.")
    p.add_argument(
        "--model",
        help="model folder or real model name (smollm2-135m-instruct); default: notebook 04's fused SmolLM2, "
        "else its fused tiny model, else notebook 00's",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8088, help="0 picks a free port")
    p.add_argument("--audit", help="audit log file (default: artifacts/audit/audit.db)")
    p.add_argument("--max-body", default="2MB")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="longest prompt (with OCR text) in model tokens; default: the model's trained context less "
        "--max-new-tokens, at most what the decision source reads (512 for safety heads)",
    )
    p.add_argument("--deadline-s", type=float, default=30.0, help="longest turn of one request with the model")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait for the model; then 503")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (no auth, no TLS)")
    p.add_argument(
        "--decision-source",
        default=None,
        help="a source notebook 06 measured (keyword, tfidf, bow_ids, soul_heads, tfidf|soul_heads, ...); "
        "default: the one it chose on dev",
    )
    return p


def load_state(choice: ModelChoice, audit: AuditLog, decision_source: str | None = None, **settings: Any) -> AppState:
    """Load the chosen model, its decision source and its answer policy, and record them in the audit log.

    The identity contract (``models.serving_contract``: model id, weight hashes, decision source, answer policy) is
    stored once (unchanged on a restart with the same model) and every decision row of this server names its
    version.

    Args:
        choice: from ``resolve_model``.
        audit: the open audit log.
        decision_source: ``--decision-source`` (None: the one notebook 06 chose).
        settings: further ``AppState`` fields (``max_new_tokens``, ``max_prompt_tokens``, ``deadline_s``...).
    Returns:
        The ``AppState`` to serve.
    """
    from so8t_core.lm.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(choice.source, load_in_4bit=choice.load_in_4bit)
    decider = load_decider(model, tok, choice.source, decision_source)
    model_id, policy = model_identity(choice), answer_policy(tok)
    contract = serving_contract(choice, model_id, decider["decision_source"], policy)
    version = audit.set_identity_contract(contract)
    return AppState(model, tok, audit, model_id, answer_policy=policy, contract_version=version, **decider, **settings)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends serve_forever like Ctrl-C, so the audit log is closed cleanly


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2 with a one-line message for bad settings)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    audit = None
    try:
        check_host(args.host, args.allow_remote)
        max_body = parse_size(args.max_body)
        choice = resolve_model(args.model)
        audit = AuditLog(args.audit or artifacts_dir() / "audit" / "audit.db")
        purged = audit.purge()
        state = load_state(
            choice,
            audit,
            args.decision_source,
            max_new_tokens=args.max_new_tokens,
            max_body=max_body,
            max_prompt_tokens=args.max_prompt_tokens,
            deadline_s=args.deadline_s,
            max_queue=args.max_queue,
        )
        server = make_server(state, args.host, args.port, args.allow_remote)
    except (ValueError, OSError, AuditError) as e:
        if audit is not None:
            audit.close()
        print(f"so8t_core.serve: {e}", file=sys.stderr)
        return 2
    host, port = str(server.server_address[0]), server.server_address[1]
    host = f"[{host}]" if ":" in host else host
    print(
        f"so8t serve: {state.model_id} ({state.decision_source}, {state.answer_policy} answers); audit {audit.path} "
        f"({purged} OCR summaries purged); prompts up to "
        f"{state.limit.max_tokens if state.limit else 'any number of'} tokens, turns of "
        f"{state.deadline_s:g} s, {state.max_queue} waiting at most; listening on http://{host}:{port}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        audit.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
