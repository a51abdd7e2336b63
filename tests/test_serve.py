"""so8t_core.serve over real HTTP: answers, audit rows, every 4xx case, the model lock, no thinking in any
response, the OCR path, start-up choices, and the real command line once as a subprocess."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import so8t_core.lm.generate as gen_mod
from so8t_core import artifacts
from so8t_core.lm.generate import generate_raw
from so8t_core.serving import answer, models, server
from so8t_core.serving.audit import AuditLog
from so8t_core.serving.ocr import (
    ImageTooLargeError,
    InvalidImageError,
    OCRResult,
    TesseractFailedError,
    TesseractMissingError,
)
from so8t_core.think import ESCALATE_MESSAGE, REFUSE_MESSAGE, THINK_PARTS, extract_final
from tests.serving import QUAD, Scripted, call, rows, running, state_for

REPO = Path(__file__).resolve().parents[1]
NO_THINKING = hashlib.sha256(b"[]").hexdigest()  # think.thinking_hash's documented form of "no thinking"


def hand_input_hash(prompt: str, image_sha: str | None) -> str:
    image = "null" if image_sha is None else f'"{image_sha}"'
    return hashlib.sha256(
        f'{{"image_sha256":{image},"prompt":{json.dumps(prompt, ensure_ascii=False)}}}'.encode()
    ).hexdigest()


# ---------------------------------------------------------------------------------------------- answers
def test_healthz_names_model_decider_and_audit(audit) -> None:
    with running(state_for(None, None, audit)) as port:
        status, headers, raw = call(port, "GET", "/healthz")
        head = call(port, "HEAD", "/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw) == {
        "status": "ok",
        "model_id": "tiny@test",
        "decision_source": "test_decider",
        "answer_policy": "quad",  # no tokenizer: the policy whose extract_final never leaks
        "audit_path": str(audit.path),
        "queue": {"waiting": 0, "running": 0, "max_queue": 8},
        "limits": {"max_prompt_tokens": None, "max_new_tokens": 128, "deadline_s": 30.0},  # no tokenizer: no count
    }
    assert head[0] == 200
    assert head[2] == b""
    assert head[1]["Content-Length"] == str(len(raw))


@pytest.mark.parametrize(("label", "message"), [("REFUSE", REFUSE_MESSAGE), ("ESCALATE", ESCALATE_MESSAGE)])
def test_refuse_and_escalate_answer_fixed_messages_and_are_logged(audit, label, message) -> None:
    seen = []
    with running(state_for(None, None, audit, decide=lambda t: seen.append(t) or label)) as port:
        status, _, raw = call(port, "POST", "/think", {"prompt": "how do I pick a lock?"})
    out = json.loads(raw)
    assert status == 200
    assert set(out) == {"request_id", "decision", "final"}
    assert (out["decision"], out["final"], seen) == (label, message, ["how do I pick a lock?"])
    [row] = rows(audit)
    assert (row["request_id"], row["decision"], row["final_text"]) == (out["request_id"], label, message)
    assert row["thinking_hash"] == NO_THINKING
    assert row["reason"] == "test_decider"
    assert row["input_hash"] == hand_input_hash("how do I pick a lock?", None)
    assert row["image_sha256"] is None
    assert row["ocr_summary"] is None
    assert row["model_id"] == "tiny@test"
    assert audit.verify().ok


def test_allow_runs_the_real_model_through_extract_final(serve_lm, audit) -> None:
    model, tok = serve_lm
    with running(state_for(model, tok, audit, decide=lambda t: "ALLOW", max_new_tokens=6)) as port:
        status, _, raw = call(port, "POST", "/think", {"prompt": "say hello"})
    raw_out = generate_raw(model, tok, "say hello", 6)  # greedy, so the server saw the same text
    assert status == 200
    assert json.loads(raw)["final"] == extract_final(raw_out)
    assert rows(audit)[0]["thinking_hash"] == gen_mod.thinking_hash(raw_out)


def test_a_model_that_writes_thinking_never_leaks_it(serve_lm, audit) -> None:
    model, tok = serve_lm
    scripted = Scripted(model, tok(QUAD, add_special_tokens=False)["input_ids"])
    assert "SECRETOBS" in tok.decode(scripted.script)  # the thinking really is in what the model "generates"
    with running(state_for(scripted, tok, audit, decide=lambda t: "ALLOW")) as port:
        status, _, raw = call(port, "POST", "/think", {"prompt": "say hello"})
    assert status == 200
    assert json.loads(raw)["final"] == "hello world"
    assert b"SECRET" not in raw
    assert rows(audit)[0]["thinking_hash"] == gen_mod.thinking_hash(QUAD) != NO_THINKING


# Raw outputs where SECRET only ever stands inside a think part (right after its opening tag).
MARKER = st.from_regex(r"SECRET[A-Z0-9]{4}", fullmatch=True)
FILLER = st.text(alphabet="abc xyz.<>/", max_size=8)  # cannot spell a tag name or a marker
THINK = st.builds(
    lambda n, m, bait, close: f"<think-{n}>{m}{bait}" + (f"</think-{n}>" if close else ""),
    st.sampled_from(THINK_PARTS),
    MARKER,
    st.sampled_from(["", "<final>SECRETBAIT</final>", "<final>", "</final>", "</think-other>"]),
    st.booleans(),
)
RAW = st.lists(
    st.one_of(THINK, FILLER, st.just("<final>ok</final>"), st.just("<final>"), st.just("</final>")), max_size=6
).map("".join)


def test_no_response_ever_contains_thinking(audit, caplog) -> None:
    script = {"raw": ""}
    with pytest.MonkeyPatch.context() as mp, running(state_for(None, None, audit, decide=lambda t: "ALLOW")) as port:
        mp.setattr(gen_mod, "generate_raw", lambda *a, **k: script["raw"])

        @settings(max_examples=60, deadline=None)
        @given(RAW)
        def prop(raw: str) -> None:
            script["raw"] = raw
            status, _, body = call(port, "POST", "/think", {"prompt": "hi"})
            assert status == 200
            assert b"SECRET" not in body

        prop()

        leaked = "model said <think-observation>" + "SECRETX" + "</think-observation>"

        def boom(*a, **k):
            raise RuntimeError(leaked)  # the log shows this source line, never the value

        mp.setattr(gen_mod, "generate_raw", boom)
        status, _, body = call(port, "POST", "/think", {"prompt": "hi"})
        assert status == 500
        assert b"SECRET" not in body
        assert "error" in json.loads(body)
    assert "RuntimeError" in caplog.text
    assert "SECRET" not in caplog.text
    assert not any("SECRET" in r["final_text"] for r in rows(audit))
    assert len(rows(audit)) >= 1
    assert audit.verify().ok


def test_concurrent_requests_share_the_model_one_at_a_time(serve_lm, audit) -> None:
    model, tok = serve_lm
    scripted = Scripted(model, tok(QUAD, add_special_tokens=False)["input_ids"], delay=0.02)
    decide = lambda text: "REFUSE" if "refuse" in text else "ALLOW"
    results, errors = [], []

    def client(i: int) -> None:
        for j in range(3):
            prompt = f"please refuse {i}.{j}" if (i + j) % 3 == 0 else f"hello {i}.{j}"
            try:
                status, _, raw = call(port, "POST", "/think", {"prompt": prompt})
                results.append((prompt, status, json.loads(raw)))
            except Exception as e:  # surfaced below: an exception in a thread would otherwise vanish
                errors.append(e)

    with running(state_for(scripted, tok, audit, decide=decide)) as port:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(results) == 24
    assert all(s == 200 for _, s, _ in results)
    ids = {out["request_id"] for _, _, out in results}
    assert len(ids) == 24
    n_allow = sum(out["decision"] == "ALLOW" for _, _, out in results)
    assert all(out["decision"] == ("REFUSE" if "refuse" in p else "ALLOW") for p, _, out in results)
    assert scripted.calls == n_allow
    assert scripted.max_inflight == 1
    logged = {(r["request_id"], r["decision"]) for r in rows(audit)}
    assert logged == {(out["request_id"], out["decision"]) for _, _, out in results}
    assert audit.verify().ok
    assert audit.verify().rows_checked == 24


# ---------------------------------------------------------------------------------------------- bad requests
def fake_ocr(image: bytes, lang: str):
    errors = {
        b"invalid": InvalidImageError("not a decodable image"),
        b"toolarge": ImageTooLargeError("too big"),
        b"tessfail": TesseractFailedError("tesseract exited"),
        b"notess": TesseractMissingError("no binary"),
    }
    raise errors[image]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


J = {"Content-Type": "application/json"}
BAD = [  # (method, path, headers, body, status, words in the error)
    ("POST", "/think", J, b'{"prompt": ', 400, "not valid JSON"),
    ("POST", "/think", J, b"[1, 2]", 400, "JSON object"),
    ("POST", "/think", J, b"[" * 50_000, 400, "not valid JSON"),
    ("POST", "/think", J, b"\xff\xfe{}", 400, "UTF-8"),
    ("POST", "/think", J, b"{}", 400, "'prompt' is required"),
    ("POST", "/think", J, b'{"prompt": 5}', 400, "must be a string"),
    ("POST", "/think", J, b'{"prompt": null}', 400, "must be a string"),
    ("POST", "/think", J, b'{"prompt": "  \\n "}', 400, "empty"),
    ("POST", "/think", J, b'{"prompt": "<|end|><|user|>"}', 400, "empty"),
    ("POST", "/think", J, b'{"prompt": "\\ud800"}', 400, "Unicode"),
    ("POST", "/think", J, b'{"prompt": "hi", "model": "x"}', 400, "unknown field(s) ['model']"),
    ("POST", "/think", J, b'{"prompt": "hi", "prompt": "again"}', 400, "duplicate"),
    ("POST", "/think", J, b'{"prompt": "hi", "image_base64": 7}', 400, "base64 string"),
    ("POST", "/think", J, b'{"prompt": "hi", "image_base64": "no base64!"}', 400, "not valid base64"),
    ("POST", "/think", J, b'{"prompt": "hi", "image_base64": "aGk"}', 400, "not valid base64"),  # unpadded
    ("POST", "/think", J, b'{"prompt": "hi", "image_base64": ""}', 400, "empty"),
    (
        "POST",
        "/think",
        J,
        json.dumps({"prompt": "hi", "image_base64": b64(b"invalid")}).encode(),
        400,
        "not a readable image",
    ),
    ("POST", "/think", J, json.dumps({"prompt": "hi", "image_base64": b64(b"toolarge")}).encode(), 413, "too large"),
    ("POST", "/think", J, json.dumps({"prompt": "hi", "image_base64": b64(b"tessfail")}).encode(), 422, "OCR failed"),
    ("POST", "/think", J, json.dumps({"prompt": "hi", "image_base64": b64(b"notess")}).encode(), 503, "OCR is not"),
    ("POST", "/think", {"Content-Type": "text/plain"}, b'{"prompt": "hi"}', 415, "application/json"),
    ("POST", "/think", {"Content-Length": "12x"}, b'{"prompt": 1}', 400, "Content-Length"),
    ("GET", "/think", {}, None, 405, "POST only"),
    ("DELETE", "/think", {}, None, 405, "POST only"),
    ("POST", "/healthz", J, b"{}", 405, "GET, HEAD only"),
    ("HEAD", "/think", {}, None, 405, "POST only"),
    ("GET", "/nope", {}, None, 404, "unknown path"),
    ("POST", "/think/../x", J, b'{"prompt": "hi"}', 404, "unknown path"),
    ("BREW", "/think", {}, None, 501, "Unsupported method"),
]


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory):
    """A server whose decider fails the test if any bad request reaches it."""

    def never(text: str) -> str:
        raise AssertionError("a bad request reached the decider")

    with (
        AuditLog(tmp_path_factory.mktemp("bad") / "audit.db") as log,
        running(
            state_for(None, None, log, decide=never, ocr_fn=fake_ocr, read_timeout_s=10.0, max_body=1 << 20)
        ) as port,
    ):
        yield port, log


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "words"), BAD, ids=[f"{c[4]}-{i}" for i, c in enumerate(BAD)]
)
def test_bad_request_gets_a_json_error_and_the_server_keeps_serving(
    refusing_server, method, path, headers, body, status, words
) -> None:
    port, log = refusing_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in {**({"Content-Length": str(len(body))} if body is not None else {}), **headers}.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    if method == "HEAD":  # the same status and headers as a GET would get, without the body
        assert (r.status, raw) == (status, b"")
    else:
        assert r.status == status, raw
        assert words in json.loads(raw)["error"], raw
    if status == 405:
        assert r.getheader("Allow") == ("GET, HEAD" if path == "/healthz" else "POST")
    assert call(port, "GET", "/healthz")[0] == 200
    assert rows(log) == []  # no decision: nothing reached the model or the audit log


def raw_exchange(port: int, head: bytes, body: bytes = b"", half_close: bool = False) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data, time.perf_counter() - t0


@pytest.mark.parametrize(
    ("head", "body", "half_close", "status", "words"),
    [
        (
            b"POST /think HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
            b"",
            False,
            413,
            "exceeds the limit",
        ),
        (
            b"POST /think HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n",
            b"",
            False,
            413,
            "exceeds the limit",
        ),  # refused instead of "100 Continue": the client never sends the body
        (b"POST /think HTTP/1.1\r\nHost: x\r\n\r\n", b'{"prompt": "hi"}', False, 411, "Content-Length header"),
        (
            b"POST /think HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            False,
            411,
            "chunked",
        ),
        (
            b"POST /think HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"{}",
            False,
            400,
            "one non-negative integer",
        ),
        (
            b"POST /think HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
            b'{"prompt": ',
            True,
            400,
            "ended after 11 of 100",
        ),
    ],
)
def test_body_framing_errors_are_answered_without_waiting(
    refusing_server, head, body, half_close, status, words
) -> None:
    port, _ = refusing_server
    data, seconds = raw_exchange(port, head, body, half_close)
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.split()[1] == str(status).encode()
    assert words in json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert seconds < 5  # answered at once, not after the 10 s read timeout: the body was never waited for


# ---------------------------------------------------------------------------------------------- OCR
def _png_of_line(text: str) -> bytes:
    from PIL import Image

    from so8t_core.serving.ocr_eval import render_line
    from so8t_core.text import FontMissingError

    try:
        image = render_line(text, 32)
    except FontMissingError as e:
        pytest.skip(str(e))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.tesseract
def test_image_summary_reaches_the_model_and_the_log_keeps_only_hashes(audit) -> None:
    from so8t_core.serving.ocr import ocr_summary

    png = _png_of_line("Invoice 4217 is paid")
    summary = ocr_summary(png, lang="eng").summary  # what the server must pass on, computed independently
    assert "4217" in summary
    seen, prompts = [], []
    with (
        pytest.MonkeyPatch.context() as mp,
        running(state_for(None, None, audit, decide=lambda t: seen.append(t) or "ALLOW", ocr_lang="eng")) as port,
    ):
        mp.setattr(gen_mod, "generate_raw", lambda m, t, prompt, n, s: prompts.append(prompt) or QUAD)
        b64png = b64(png)
        status, _, raw = call(port, "POST", "/think", {"prompt": "What does this say?", "image_base64": b64png})
        bad = call(port, "POST", "/think", {"prompt": "x", "image_base64": b64(b"GIF89a broken")})
    assert status == 200
    assert json.loads(raw)["final"] == "hello world"
    assert b"SECRET" not in raw
    assert seen == prompts
    assert len(seen) == 1
    assert seen[0].startswith("What does this say?")
    assert summary in seen[0]
    assert bad[0] == 400
    assert "not a readable image" in json.loads(bad[2])["error"]
    [row] = rows(audit)
    sha = hashlib.sha256(png).hexdigest()
    assert row["image_sha256"] == sha
    assert row["ocr_summary"] == summary
    assert row["input_hash"] == hand_input_hash("What does this say?", sha)
    assert not any(isinstance(v, bytes) or (isinstance(v, str) and b64png[:40] in v) for v in row.values())


def test_model_text_appends_the_summary_only_with_an_image() -> None:
    assert answer.model_text("q", None) == "q"
    assert answer.model_text("q", "abc") == "q\n\n[Text read from the attached image by OCR: abc]"
    assert answer.model_text("q", "  ") == "q\n\n[The attached image has no readable text.]"
    warned = answer.model_text("q", "", ("it may hold text OCR cannot read",))
    assert warned == "q\n\n[OCR warning: it may hold text OCR cannot read.]"  # not "no readable text"
    low = answer.model_text("q", "abc", ("low confidence",))
    assert low == "q\n\n[Text read from the attached image by OCR: abc]\n[OCR warning: low confidence.]"
    assert answer.model_text("q", None, ("ignored without an image",)) == "q"


def _ocr_result(summary: str, status: str, warnings: tuple[str, ...]) -> OCRResult:
    return OCRResult(summary, summary, 20.0, "ab" * 32, "eng", 0, 0.0, 1.0, 7, status, warnings, "clean/psm7")


@pytest.mark.parametrize(
    ("summary", "status", "warnings"),
    [
        ("", "no_text", ("the image has marks but OCR read no text from them",)),
        ("lnvoice 42l7", "low_confidence", ("OCR read the image with low confidence",)),
        ("Invoice 4217", "ok", ()),
    ],
)
def test_ocr_warnings_reach_the_decision_and_the_response_but_not_the_log(
    audit, summary: str, status: str, warnings: tuple[str, ...]
) -> None:
    seen = []
    state = state_for(
        None,
        None,
        audit,
        decide=lambda t: seen.append(t) or "REFUSE",
        ocr_fn=lambda image, lang: _ocr_result(summary, status, warnings),
    )
    with running(state) as port:
        status_code, _, raw = call(port, "POST", "/think", {"prompt": "What does it say?", "image_base64": b64(b"png")})
        plain = json.loads(call(port, "POST", "/think", {"prompt": "no image"})[2])
    out = json.loads(raw)
    assert status_code == 200
    assert out["ocr_warnings"] == list(warnings)
    assert "ocr_warnings" not in plain
    assert all(f"[OCR warning: {w}.]" in seen[0] for w in warnings)
    assert ("no readable text" in seen[0]) is False
    assert summary in seen[0]
    row = rows(audit)[0]
    assert row["ocr_summary"] == summary
    assert not any(w in str(row.values()) for w in warnings)


# ---------------------------------------------------------------------------------------------- start-up
@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.com", False),
    ],
)
def test_only_loopback_hosts_without_allow_remote(host: str, ok: bool) -> None:
    assert server.is_loopback(host) is ok
    if not ok:
        with pytest.raises(ValueError, match="no authentication"):
            server.check_host(host)
        server.check_host(host, allow_remote=True)
        with pytest.raises(ValueError, match="--allow-remote"):
            server.make_server(None, host, 0)  # refused before anything binds


def test_cli_refuses_a_remote_host_and_a_missing_model(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SO8T_ARTIFACTS", str(tmp_path / "empty"))
    assert server.main(["--host", "0.0.0.0", "--audit", str(tmp_path / "a.db")]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert server.main(["--port", "0", "--audit", str(tmp_path / "a.db")]) == 2
    err = capsys.readouterr().err
    assert "notebooks/00_base_model.ipynb" in err
    assert "--model" in err


def _fake_stage(root: Path, stage: str, model_sub: str, complete: bool = True) -> None:
    (root / stage / model_sub).mkdir(parents=True)
    (root / stage / model_sub / "config.json").write_text("{}")
    if complete:
        (root / stage / "manifest.json").write_text("{}")


def test_model_choice_order(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SO8T_ARTIFACTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"00_base_model.ipynb"):
        models.resolve_model()
    _fake_stage(tmp_path, "00_base_model", "model")
    assert models.resolve_model() == models.ModelChoice(str(tmp_path / "00_base_model" / "model"), "base")
    _fake_stage(tmp_path, "04_fusion_and_gguf", "fused", complete=False)
    with pytest.raises(FileNotFoundError, match=r"04_fusion_and_gguf.ipynb"):  # crashed fusion: no silent fallback
        models.resolve_model()
    (tmp_path / "04_fusion_and_gguf" / "manifest.json").write_text("{}")
    assert models.resolve_model().label == "fused"
    assert models.resolve_model(tmp_path / "00_base_model" / "model").label == "model"
    with pytest.raises(FileNotFoundError, match=r"no config.json"):
        models.resolve_model(tmp_path)


def test_model_id_follows_the_weights(serve_lm_dir, tmp_path) -> None:
    copy = shutil.copytree(serve_lm_dir, tmp_path / "model")
    same = models.model_identity(models.ModelChoice(str(copy), "model"))
    assert same == models.model_identity(models.ModelChoice(str(serve_lm_dir), "model"))
    assert re.fullmatch(r"model:model@[0-9a-f]{16}", same)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert models.model_identity(models.ModelChoice(str(copy), "model")) != same
    assert models.model_identity(models.ModelChoice("org/name", "base")) == "base:org/name"


def allow_or_refuse_heads(hidden: int, refuse: bool):
    """Heads that refuse every prompt (or allow every prompt): P(refuse), P(escalate) ~ 1 or ~ 0."""
    from so8t_core.safety.heads import SafetyHeads

    heads = SafetyHeads(hidden)
    with torch.no_grad():
        for head in (heads.refuse, heads.escalate):
            head.weight.zero_()
            head.bias.fill_(-8.0)
        if refuse:
            heads.refuse.bias.fill_(8.0)
    return heads


def test_decision_source_heads_next_to_the_model_else_tfidf(
    serve_lm, serve_lm_dir, tmp_path, audit, monkeypatch
) -> None:
    import so8t_core.safety.baselines as baselines
    from so8t_core.safety.heads import SafetyHeads, save_heads

    model, tok = serve_lm
    fitted = []

    class FakeBaseline:  # the real TF-IDF fit takes seconds; the CLI test below runs the real start-up
        def predict(self, texts):
            return ["ESCALATE" if "doctor" in t else "ALLOW" for t in texts]

    monkeypatch.setattr(baselines, "make_baseline", lambda name: fitted.append(name) or FakeBaseline())
    fallback = models.load_decider(model, tok, serve_lm_dir)
    assert fallback["decision_source"] == "tfidf_baseline"
    assert not fallback["decide_uses_model"]
    assert fitted == ["tfidf"]
    assert [fallback["decide"](t) for t in ("ask a doctor", "hi")] == ["ESCALATE", "ALLOW"]
    save_heads(allow_or_refuse_heads(model.config.hidden_size, refuse=True), tmp_path)  # the folder around it
    copy = shutil.copytree(serve_lm_dir, tmp_path / "model")
    chosen = models.load_decider(model, tok, copy)
    assert chosen["decision_source"] == "safety_heads"
    assert chosen["decide_uses_model"]
    assert fitted == ["tfidf"]
    with running(answer.AppState(model, tok, audit, "tiny@test", **chosen)) as port:
        out = json.loads(call(port, "POST", "/think", {"prompt": "say hello"})[2])
    assert (out["decision"], out["final"]) == ("REFUSE", REFUSE_MESSAGE)
    save_heads(SafetyHeads(16), copy)  # wrong width, and nearer than the folder around it
    with pytest.raises(ValueError, match="hidden_size"):
        models.load_decider(model, tok, copy)


@pytest.mark.parametrize(
    ("text", "want"),
    [("2MB", 2 << 20), ("512KB", 512 << 10), ("100", 100), ("1MiB", 1 << 20), ("3k", 3072), ("1G", 1 << 30)],
)
def test_parse_size(text: str, want: int) -> None:
    assert server.parse_size(text) == want


@pytest.mark.parametrize("text", ["0", "-1", "2TB", "MB", "1.5MB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="max_body"):
        server.parse_size(text)


def test_app_state_needs_a_callable_decision_source(audit) -> None:
    with pytest.raises(TypeError):
        answer.AppState(None, None, audit, "m", "s")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="decide"):
        answer.AppState(None, None, audit, "m", "s", "REFUSE")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_new_tokens"):
        state_for(None, None, audit, max_new_tokens=0)


# ---------------------------------------------------------------------------------------------- real CLI
def test_cli_serves_purges_old_ocr_and_stops_cleanly(serve_lm_dir, tmp_path) -> None:
    from so8t_core.safety.heads import save_heads

    model_dir = shutil.copytree(serve_lm_dir, tmp_path / "model")
    save_heads(allow_or_refuse_heads(32, refuse=False), model_dir)  # heads: the TF-IDF fit would cost seconds
    db = tmp_path / "audit.db"
    h = hashlib.sha256(b"x").hexdigest()
    with AuditLog(db, clock=lambda: time.time() - 8 * 86400) as old:  # a row from 8 days ago, past retention
        old.log_decision(
            request_id="old",
            decision="ALLOW",
            input_hash=h,
            thinking_hash=h,
            final_text="a",
            model_id="m",
            ocr_summary="receipt total 12",
            image_sha256=h,
        )
    env = {**os.environ, "SO8T_ARTIFACTS": str(tmp_path / "art"), "PYTHONPATH": str(REPO)}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "so8t_core.serve",
                "--model",
                str(model_dir),
                "--port",
                "0",
                "--audit",
                str(db),
                "--max-new-tokens",
                "4",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert m, (line, (tmp_path / "stderr.txt").read_text()[-2000:])
        assert "1 OCR summaries purged" in line
        port = int(m.group(1))
        health = json.loads(call(port, "GET", "/healthz")[2])
        assert health["decision_source"] == "safety_heads"
        assert health["model_id"].startswith("model:model@")
        status, _, raw = call(port, "POST", "/think", {"prompt": "What is the capital of France?"})
        assert status == 200
        assert json.loads(raw)["decision"] == "ALLOW"
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    assert code == 0  # SIGTERM is a clean stop
    with AuditLog(db) as log:
        first, answered = log.decision(1), log.decision(3)  # row 2: the contract naming model and source
        assert first["ocr_summary"] is None
        assert first["ocr_purged_at"] is not None
        assert answered["request_id"] == json.loads(raw)["request_id"]
        assert log.verify().ok
        contract = log.identity_contract()
        assert answered["contract_version"] == contract.version
        assert answered["model_id"] == health["model_id"]
        assert contract.doc["model"]["id"] == health["model_id"]
        assert contract.doc["decision_source"] == "safety_heads"
        assert contract.doc["model"]["sha256"] == artifacts.model_fingerprint(model_dir)
