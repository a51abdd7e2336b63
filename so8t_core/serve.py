"""The ``/think`` HTTP endpoint: a prompt (and optionally an image) in, a policy decision and a final answer out.

    python -m so8t_core.serve [--model DIR] [--host 127.0.0.1] [--port 8088] [--audit artifacts/audit/audit.db]
        [--max-body 2MB] [--max-new-tokens 128] [--allow-remote]

    POST /think    {"prompt": str, "image_base64": str (optional)} -> 200 {"request_id", "decision", "final"}
    GET  /healthz  -> 200 {"status", "model_id", "decision_source", "audit_path"}
    errors         -> 4xx/5xx {"error": "..."}: 400 bad JSON, fields, base64 or image; 404 path; 405 method;
                      411 no Content-Length; 413 body or image too large; 415 not JSON; 422 OCR failed on the
                      image; 500 internal; 503 OCR not installed. The server keeps serving.

The standard library's ``ThreadingHTTPServer`` (no new dependency), one thread per connection. A model lock lets
one request at a time use the model (safety heads, ``generate``); parsing, OCR, a baseline decision, the fixed
REFUSE/ESCALATE answers and audit writes run in parallel.

An image is read locally by ``ocr.ocr_summary`` and only its summary is appended to the prompt (``model_text``);
decision and answer both see that text. The answer comes only from ``think.respond`` (``extract_final`` or a
fixed message), and error messages and the server log never include model output.

Every answered request is one ``AuditLog.log_decision`` row: decision, decision source (as reason), ``input_hash``,
thinking hash (for REFUSE/ESCALATE, which generate nothing, the hash of no thinking), final text, model id and,
with an image, its SHA-256 and the OCR summary (purged after ``audit.RETENTION_DAYS``, at start-up). A rejected
request (4xx) reached no decision and is not logged as one. If the audit write fails the answer is withheld (500).

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import re
import signal
import socket
import sys
import threading
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from .artifacts import notebook_for, require, sha256_file
from .audit import AuditError, AuditLog
from .audit_chain import canonical_json
from .config import artifacts_dir, check
from .ocr import (ImageTooLargeError, InvalidImageError, OCRResult, TesseractFailedError, TesseractMissingError,
                  ocr_summary)
from .think import Response, respond, strip_control, thinking_hash

log = logging.getLogger("so8t_core.serve")  # also when run as __main__

FUSED_STAGE, FUSED_DIR, BASE_STAGE = "04_fusion_and_gguf", "fused", "00_base_model"
ROUTES = {"/think": "POST", "/healthz": "GET"}
FIELDS = ("prompt", "image_base64")
NO_THINKING_HASH = thinking_hash("")  # logged for REFUSE/ESCALATE: nothing was generated
OCR_NOTE = "[Text read from the attached image by OCR: {summary}]"
OCR_EMPTY_NOTE = "[The attached image has no readable text.]"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx) and a message safe to send back."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class ThinkRequest:
    """A validated ``/think`` body: the prompt and the decoded image bytes (``None`` without an image)."""

    prompt: str
    image: bytes | None


def _default_ocr(image: bytes, lang: str) -> OCRResult:
    return ocr_summary(image, lang=lang)


@dataclass(frozen=True)
class AppState:
    """Everything a request needs. Exactly one decision source: ``heads`` (+ ``thresholds``) or ``decide_fn``.

    Args:
        model, tokenizer: the causal LM and its tokenizer.
        audit: the open audit log.
        model_id: identifier written to every audit row (at most 200 chars).
        decision_source: name of the policy shown by ``/healthz`` and logged as the reason.
        decide_fn: text -> ALLOW/ESCALATE/REFUSE (a baseline: it does not touch the model).
        heads, thresholds: trained ``SafetyHeads`` and their ``Thresholds``.
        max_new_tokens, max_body, read_timeout_s: generation budget, body limit (bytes), socket timeout.
        ocr_lang, ocr_fn: Tesseract languages and the OCR function ``(bytes, lang) -> OCRResult``.
    """

    model: Any
    tokenizer: Any
    audit: AuditLog
    model_id: str
    decision_source: str
    decide_fn: Callable[[str], str] | None = None
    heads: Any = None
    thresholds: Any = None
    max_new_tokens: int = 128
    max_body: int = 2 << 20
    read_timeout_s: float = 30.0
    ocr_lang: str = "jpn+eng"
    ocr_fn: Callable[[bytes, str], OCRResult] = _default_ocr
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        check((self.heads is None) != (self.decide_fn is None), "decide_fn", self.decide_fn,
              "give exactly one decision source: heads= or decide_fn=")
        for name in ("model_id", "decision_source"):  # both go into every audit row
            v = getattr(self, name)
            check(isinstance(v, str) and 0 < len(v) <= 200, name, v, "must be a non-empty string of at most 200 chars")
        for name in ("max_new_tokens", "max_body", "read_timeout_s"):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")


# ---------------------------------------------------------------------------------------------- request logic
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    dup = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)  # linear: bodies may hold many keys
    if dup:
        raise ValueError(f"duplicate key(s) {[k[:40] for k in dup[:5]]}")
    return dict(pairs)


def parse_think_request(body: bytes) -> ThinkRequest:
    """Validate a ``/think`` body.

    Args:
        body: the raw request body.
    Returns:
        ``ThinkRequest``. Raises ``RequestError(400, ...)`` naming what is wrong.
    """
    try:
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise RequestError(400, f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise RequestError(400, 'body must be a JSON object like {"prompt": "..."}')
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {[k[:40] for k in unknown[:5]]}: allowed are {list(FIELDS)}")
    prompt, image = obj.get("prompt"), obj.get("image_base64")
    if not isinstance(prompt, str):
        raise RequestError(400, f"field 'prompt' is required and must be a string (got {type(prompt).__name__})")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "field 'prompt' holds invalid Unicode (a lone surrogate)") from None
    if not strip_control(prompt).strip():
        raise RequestError(400, "field 'prompt' is empty (after removing chat control tokens)")
    if image is not None and not isinstance(image, str):
        raise RequestError(400, f"field 'image_base64' must be a base64 string (got {type(image).__name__})")
    return ThinkRequest(prompt, None if image is None else _decode_base64(image))


def _decode_base64(text: str) -> bytes:
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "field 'image_base64' is not valid base64 (standard alphabet, padded)") from None
    if not data:
        raise RequestError(400, "field 'image_base64' is empty")
    return data


def model_text(prompt: str, ocr_summary_text: str | None) -> str:
    """The text the decision and the model see: the prompt, plus the OCR summary when an image came with it."""
    if ocr_summary_text is None:
        return prompt
    note = OCR_NOTE.format(summary=ocr_summary_text) if ocr_summary_text.strip() else OCR_EMPTY_NOTE
    return f"{prompt}\n\n{note}"


def input_hash(prompt: str, image_sha256: str | None) -> str:
    """SHA-256 of the canonical JSON ``{"image_sha256": ..., "prompt": ...}``: whoever holds the request can
    recompute it, while the audit log keeps neither the prompt nor the image."""
    canon = canonical_json({"image_sha256": image_sha256, "prompt": prompt})
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _run_ocr(state: AppState, image: bytes) -> OCRResult:
    try:
        return state.ocr_fn(image, state.ocr_lang)
    except ImageTooLargeError as e:
        raise RequestError(413, f"image too large: {e}") from None
    except InvalidImageError as e:
        raise RequestError(400, f"field 'image_base64' is not a readable image: {e}") from None
    except TesseractFailedError:
        raise RequestError(422, "OCR failed on this image (Tesseract error or timeout)") from None
    except TesseractMissingError as e:  # the server's installation, not the client's image
        raise RequestError(503, f"OCR is not available on this server: {e}") from None


def _answer(state: AppState, text: str) -> Response:
    kwargs: dict[str, Any] = {"max_new_tokens": state.max_new_tokens}
    if state.heads is None:
        label = state.decide_fn(text)  # a baseline does not touch the model: no lock needed
        if label != "ALLOW":
            return respond(state.model, state.tokenizer, text, decide_fn=lambda _: label)
        kwargs["decide_fn"] = lambda _: label
    else:
        kwargs.update(heads=state.heads, thresholds=state.thresholds)
    with state.lock:  # the heads' forward pass and generate share the model
        return respond(state.model, state.tokenizer, text, **kwargs)


def think(state: AppState, req: ThinkRequest, request_id: str) -> dict[str, str]:
    """Answer one validated request and append its audit row; the response holds only the final answer.

    Args:
        state: the server's ``AppState``.
        req: from ``parse_think_request``.
        request_id: a fresh id (the handler uses ``uuid4().hex``).
    Returns:
        ``{"request_id", "decision", "final"}``. Raises ``RequestError`` for an image OCR refuses.
    """
    ocr = _run_ocr(state, req.image) if req.image is not None else None
    r = _answer(state, model_text(req.prompt, ocr.summary if ocr else None))
    state.audit.log_decision(
        request_id=request_id, decision=r.decision, reason=state.decision_source,
        input_hash=input_hash(req.prompt, ocr.image_sha256 if ocr else None),
        thinking_hash=r.thinking_hash or NO_THINKING_HASH, final_text=r.final, model_id=state.model_id,
        ocr_summary=ocr.summary if ocr else None, image_sha256=ocr.image_sha256 if ocr else None)
    return {"request_id": request_id, "decision": r.decision, "final": r.final}


# ---------------------------------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    server: ThinkServer
    server_version = "so8t-serve/1"
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length

    def setup(self) -> None:
        self.timeout = self.server.state.read_timeout_s  # a client that stops sending frees its thread
        super().setup()

    def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        for k, v in {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body)),
                     "Cache-Control": "no-store", **(headers or {})}.items():
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
            log.error("request %s failed with %s:\n%s", request_id, type(e).__name__,
                      "".join(traceback.format_tb(e.__traceback__)))
            self.close_connection = True
            return 500, {"error": f"internal error; see the server log for request {request_id}"}, {}

    def _dispatch(self) -> None:
        status, obj, headers = self._handle()
        try:
            self._send_json(status, obj, headers)
        except ConnectionError:  # the client left; an answered request is already in the audit log
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


def health(state: AppState) -> dict[str, str]:
    """What ``GET /healthz`` returns: model id, decision source and audit log path."""
    return {"status": "ok", "model_id": state.model_id, "decision_source": state.decision_source,
            "audit_path": str(state.audit.path)}


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
            "127.0.0.1 (put an authenticating TLS proxy in front), or pass --allow-remote to accept that risk")


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


# ---------------------------------------------------------------------------------------------- start-up
@dataclass(frozen=True)
class ModelChoice:
    """Which model to serve: ``source`` (a folder or hub id), ``label`` (fused/base/model), 4-bit flag."""

    source: str
    label: str
    load_in_4bit: bool = False


def resolve_model(override: str | Path | None = None) -> ModelChoice:
    """``--model DIR``, else notebook 04's fused model, else notebook 00's base model, else a clear error.

    Args:
        override: a model folder given on the command line.
    Returns:
        ``ModelChoice``. Raises ``FileNotFoundError`` naming the folder or the notebook to run.
    """
    from .loading import read_model_ref

    if override is not None:
        if not (Path(override) / "config.json").is_file():
            raise FileNotFoundError(f"--model {override}: not a model folder (no config.json)")
        return ModelChoice(str(Path(override).resolve()), "model")
    if (artifacts_dir() / FUSED_STAGE / FUSED_DIR).exists():  # half-written fusion: an error, not a silent fallback
        return ModelChoice(str(require(FUSED_STAGE, f"{FUSED_DIR}/config.json") / FUSED_DIR), "fused")
    try:
        ref = read_model_ref(require(BASE_STAGE))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no model to serve: run {notebook_for(BASE_STAGE)} (python -m so8t_core.pipeline "
                                f"--only 00) or {notebook_for(FUSED_STAGE)}, or pass --model DIR ({e})") from e
    return ModelChoice(str(ref["base_model"]), "base", bool(ref.get("load_in_4bit", False)))


def model_identity(choice: ModelChoice) -> str:
    """``label:name@hash``: the hash covers config.json and every safetensors file, so a changed model is a
    different id in the audit log; a hub id is used as it is."""
    folder = Path(choice.source)
    if not folder.is_dir():
        return f"{choice.label}:{choice.source}"[:200]
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{sha256_file(f)}".encode())
    return f"{choice.label}:{folder.name[:100]}@{h.hexdigest()[:16]}"


def find_heads(model_dir: str | Path) -> Path | None:
    """The folder holding ``safety_heads.safetensors``: the model folder or the folder around it, else None."""
    from .safety_heads import HEADS_WEIGHTS

    folder = Path(model_dir)
    return next((d for d in (folder, folder.parent) if (d / HEADS_WEIGHTS).is_file()), None)


def load_decider(model: Any, model_dir: str | Path) -> dict[str, Any]:
    """The safety heads next to the model, or (documented fallback) the TF-IDF baseline fitted on the shipped
    train split. Returns ``AppState`` keyword arguments: ``decision_source`` and ``heads``/``thresholds`` or
    ``decide_fn``."""
    from .safety import make_baseline
    from .safety_heads import HEADS_NOTEBOOK, load_heads

    from .safety_eval import find_heads_for_model

    # beside the model, else the heads notebook 06 recorded for these exact weights
    folder = (find_heads(model_dir) or find_heads_for_model(model_dir)) if Path(model_dir).is_dir() else None
    if folder is None:
        baseline = make_baseline("tfidf")
        return {"decision_source": "tfidf_baseline", "decide_fn": lambda text: baseline.predict([text])[0]}
    heads, thresholds = load_heads(folder)
    check(heads.hidden_size == model.config.hidden_size, "safety_heads.hidden_size", heads.hidden_size,
          f"the model has {model.config.hidden_size}: retrain the heads on this model ({HEADS_NOTEBOOK})")
    return {"decision_source": "safety_heads", "heads": heads, "thresholds": thresholds}


def parse_size(text: str) -> int:
    """``"2MB"`` -> 2097152: an integer with an optional K/M/G unit (binary multiples; ``B``, ``iB`` optional)."""
    m = re.fullmatch(r"\s*([0-9]+)\s*([kmg]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    check(m is not None and int(m.group(1)) > 0, "max_body", text, "must be a positive size like 2MB, 512KB or 1048576")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m so8t_core.serve", description="Serve POST /think on the model.")
    p.add_argument("--model", help="model folder (default: notebook 04's fused model, else notebook 00's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8088, help="0 picks a free port")
    p.add_argument("--audit", help="audit log file (default: artifacts/audit/audit.db)")
    p.add_argument("--max-body", default="2MB")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (no auth, no TLS)")
    return p


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends serve_forever like Ctrl-C, so the audit log is closed cleanly


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2 with a one-line message for bad settings)."""
    from .loading import load_model_and_tokenizer

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    audit = None
    try:
        check_host(args.host, args.allow_remote)
        max_body = parse_size(args.max_body)
        choice = resolve_model(args.model)
        audit = AuditLog(args.audit or artifacts_dir() / "audit" / "audit.db")
        purged = audit.purge()
        model, tok = load_model_and_tokenizer(choice.source, load_in_4bit=choice.load_in_4bit)
        state = AppState(model, tok, audit, model_identity(choice), max_new_tokens=args.max_new_tokens,
                         max_body=max_body, **load_decider(model, choice.source))
        server = make_server(state, args.host, args.port, args.allow_remote)
    except (ValueError, OSError, AuditError) as e:
        if audit is not None:
            audit.close()
        print(f"so8t_core.serve: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"so8t serve: {state.model_id} ({state.decision_source}); audit {audit.path} ({purged} OCR summaries "
          f"purged); listening on http://{host}:{port}", flush=True)
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
