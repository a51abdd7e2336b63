"""so8t_core.serve under load: the prompt limit in tokens (413 before any model work), the bounded queue (503 with
Retry-After), /healthz during a generation, the per-request deadline, and one audit row per 200 in a mixed burst."""

from __future__ import annotations

import copy
import json
import threading
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_core.safety.decision import Decider
from so8t_core.safety.heads import HEADS_MAX_TOKENS
from so8t_core.serving import answer, limits
from so8t_core.serving.ocr import OCRResult
from so8t_core.think import build_prompt, stop_ids
from tests.serving import QUAD, Scripted, call, rows, running, state_for


def never(text: str) -> str:
    raise AssertionError("a refused request reached the decision source")


def scripted(serve_lm, delay: float = 0.0) -> Scripted:
    model, tok = serve_lm
    return Scripted(model, tok(QUAD, add_special_tokens=False)["input_ids"], delay)


def model_tokens(tok, text: str) -> int:
    return len(tok(build_prompt(text))["input_ids"])


def wait_until(port: int, pred, timeout: float = 10.0) -> dict:
    """Poll /healthz until ``pred(health)`` holds; returns that health."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        health = json.loads(call(port, "GET", "/healthz")[2])
        if pred(health):
            return health
        time.sleep(0.01)
    raise AssertionError("the server never reached the expected state")


def in_thread(results: list, port: int, body: dict) -> threading.Thread:
    t = threading.Thread(target=lambda: results.append(call(port, "POST", "/think", body)))
    t.start()
    return t


# ---------------------------------------------------------------------------------------------- prompt limit
def test_too_long_prompts_get_413_in_under_a_second(serve_lm, audit) -> None:
    model = scripted(serve_lm)
    state = state_for(model, serve_lm[1], audit, decide=never, max_new_tokens=16)
    assert state.limit is not None
    assert state.limit.max_tokens == 512 - 16
    with running(state) as port:
        for prompt in ("hello world " * 16_667, "the cat sat " * 300):  # 200,000 chars; 3,600 chars
            t0 = time.perf_counter()
            status, _, raw = call(port, "POST", "/think", {"prompt": prompt})
            seconds = time.perf_counter() - t0
            error = json.loads(raw)["error"]
            assert status == 413, (status, seconds)
            assert seconds < 1.0, (status, seconds)
            assert "496 tokens (--max-prompt-tokens)" in error
        assert "tokens (with any OCR text" in error  # the short one was counted, not refused by its length
    assert model.calls == 0
    assert rows(audit) == []


def test_the_limit_counts_what_the_model_reads_with_ocr_text(serve_lm, audit) -> None:
    model, tok = scripted(serve_lm), serve_lm[1]
    prompt = "hello world how are you today " * 4
    n = model_tokens(tok, prompt)
    ocr = OCRResult("the cat sat", "the cat sat", 90.0, "ab" * 32, "eng", 0, 0.0, 1.0, 3, "ok", (), "clean/psm7")
    for limit, status in ((n, 200), (n - 1, 413)):
        state = state_for(model, tok, audit, decide=lambda t: "ALLOW", max_prompt_tokens=limit, ocr_fn=lambda *a: ocr)
        with running(state) as port:
            got, _, raw = call(port, "POST", "/think", {"prompt": prompt})
            with_image = call(port, "POST", "/think", {"prompt": prompt, "image_base64": "aGk="})
        assert got == status, raw
        assert with_image[0] == 413
        assert "with any OCR text" in json.loads(with_image[2])["error"]
    assert [length for length, _ in model.seen] == [n]  # the one answered prompt reached generate whole
    assert len(rows(audit)) == 1


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab <|>日本語🙂\n\t"), min_size=1, max_size=200))
def test_no_text_holds_fewer_tokens_than_its_characters_allow(serve_lm, text: str) -> None:
    tok = serve_lm[1]
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert n * limits.chars_per_token(tok) >= len(text)  # so a text over max_chars never fits


def test_limit_defaults_and_start_up_checks() -> None:
    phi35 = SimpleNamespace(max_position_embeddings=131072, original_max_position_embeddings=4096)
    assert limits.prompt_token_limit(phi35, 128, None) == 4096 - 128  # its trained context, not the rope stretch
    assert limits.prompt_token_limit(phi35, 128, 512) == 512  # heads read at most 512 tokens
    assert limits.prompt_token_limit(phi35, 128, None, 20_000) == 20_000  # asked for, and the model takes it
    assert limits.prompt_token_limit(None, 128, None) is None
    for config, window, asked, words in (
        (phi35, 512, 600, "decide on a cut prompt"),
        (SimpleNamespace(max_position_embeddings=512), None, 500, "512 positions"),
        (phi35, None, 0, "must be > 0"),
    ):
        with pytest.raises(ValueError, match="max_prompt_tokens") as err:
            limits.prompt_token_limit(config, 128, window, asked)
        assert words in str(err.value)
    assert Decider("heads", 0.5, [], uses_model=True).max_tokens == HEADS_MAX_TOKENS
    assert Decider("tfidf", 0.5, [], uses_model=False).max_tokens is None


# ---------------------------------------------------------------------------------------------- queue
@pytest.mark.parametrize("max_queue", [1, 0])
def test_a_full_queue_gets_503_with_retry_after(serve_lm, audit, max_queue) -> None:
    model, results = scripted(serve_lm, delay=1.5), []
    state = state_for(model, serve_lm[1], audit, decide=lambda t: "ALLOW", max_queue=max_queue)
    with running(state) as port:
        threads = [in_thread(results, port, {"prompt": "first"})]
        wait_until(port, lambda h: h["queue"]["running"] == 1)
        if max_queue:
            threads.append(in_thread(results, port, {"prompt": "second"}))
            wait_until(port, lambda h: h["queue"]["waiting"] == 1)
        t0 = time.perf_counter()
        status, headers, raw = call(port, "POST", "/think", {"prompt": "one too many"})
        seconds = time.perf_counter() - t0
        for t in threads:
            t.join()
    assert status == 503
    assert seconds < 1.0
    assert int(headers["Retry-After"]) >= 1
    assert f"{max_queue} requests already wait for the model (--max-queue)" in json.loads(raw)["error"]
    assert [r[0] for r in results] == [200] * len(threads)
    assert len(rows(audit)) == len(threads)


def test_a_wait_for_the_model_ends_after_max_wait(serve_lm, audit) -> None:
    model, results = scripted(serve_lm, delay=1.5), []  # ignores its deadline, like a slow prefill
    state = state_for(model, serve_lm[1], audit, decide=lambda t: "ALLOW", max_queue=2, deadline_s=0.2)
    with running(state) as port:
        first = in_thread(results, port, {"prompt": "first"})
        wait_until(port, lambda h: h["queue"]["running"] == 1)
        t0 = time.perf_counter()
        status, headers, raw = call(port, "POST", "/think", {"prompt": "second"})
        seconds = time.perf_counter() - t0
        first.join()
    assert status == 503
    assert 0.3 <= seconds < 1.2
    assert "no turn with the model within 0.4 s" in json.loads(raw)["error"]
    assert "Retry-After" in headers
    assert len(rows(audit)) == 1


def test_healthz_answers_while_a_long_generation_runs(serve_lm, audit) -> None:
    model, results = scripted(serve_lm, delay=2.0), []
    with running(state_for(model, serve_lm[1], audit, decide=lambda t: "ALLOW")) as port:
        long = in_thread(results, port, {"prompt": "take your time"})
        wait_until(port, lambda h: h["queue"]["running"] == 1)
        t0 = time.perf_counter()
        status, _, raw = call(port, "GET", "/healthz")
        seconds = time.perf_counter() - t0
        busy = model.inflight
        long.join()
    health = json.loads(raw)
    assert status == 200
    assert seconds < 0.5
    assert busy == 1
    assert health["model_id"] == "tiny@test"
    assert health["queue"] == {"waiting": 0, "running": 1, "max_queue": 8}
    assert health["limits"]["max_prompt_tokens"] == 512 - 128
    assert results[0][0] == 200


# ---------------------------------------------------------------------------------------------- deadline
def test_the_deadline_stops_generation(serve_lm, audit) -> None:
    model, tok = copy.deepcopy(serve_lm[0]), serve_lm[1]
    steps = []

    def slow_no_eos(module, args, output):  # 50 ms per token, and never the end of the text
        steps.append(1)
        time.sleep(0.05)
        output[..., stop_ids(tok)] = float("-inf")
        return output

    model.lm_head.register_forward_hook(slow_no_eos)
    state = state_for(model, tok, audit, decide=lambda t: "ALLOW", max_new_tokens=200, deadline_s=0.5)
    with running(state) as port:
        t0 = time.perf_counter()
        status, _, raw = call(port, "POST", "/think", {"prompt": "say hello"})
        seconds = time.perf_counter() - t0
    assert status == 200, (seconds, len(steps))
    assert seconds < 2.5, (seconds, len(steps))  # not 200 steps, 10 s
    assert len(steps) <= 15, (seconds, len(steps))
    assert len(rows(audit)) == 1
    assert json.loads(raw)["decision"] == "ALLOW"


# ---------------------------------------------------------------------------------------------- burst
def test_one_audit_row_per_200_after_a_mixed_burst(serve_lm, audit) -> None:
    model, tok = scripted(serve_lm, delay=0.05), serve_lm[1]
    bodies = [
        {"prompt": "say hello"},
        {"prompt": "please refuse this"},
        {"prompt": "hello world " * 500},  # over 496 tokens
        b'{"prompt": ',
        {"prompt": "hi", "extra": 1},
    ]
    decide = lambda t: "REFUSE" if "refuse" in t else "ALLOW"
    state = state_for(model, tok, audit, decide=decide, max_new_tokens=16, max_queue=2)
    out, lock = [], threading.Lock()

    def client(i: int) -> None:
        for j in range(5):
            got = call(port, "POST", "/think", bodies[(i + j) % len(bodies)])
            with lock:
                out.append(got)

    with running(state) as port:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = [s for s, _, _ in out]
    assert len(out) == 40
    assert set(statuses) <= {200, 400, 413, 503}
    assert statuses.count(413) == 8
    assert all("error" in json.loads(raw) for s, _, raw in out if s != 200)
    assert all("Retry-After" in h for s, h, _ in out if s == 503)
    answered = {json.loads(raw)["request_id"] for s, _, raw in out if s == 200}
    assert {r["request_id"] for r in rows(audit)} == answered
    assert len(rows(audit)) == statuses.count(200)
    assert audit.verify().ok
    assert model.max_inflight == 1
    assert all(kwargs["max_time"] <= state.deadline_s for _, kwargs in model.seen)


def test_app_state_checks_its_limits(serve_lm, audit) -> None:
    with pytest.raises(ValueError, match="deadline_s"):
        state_for(None, None, audit, deadline_s=0)
    with pytest.raises(ValueError, match="max_queue"):
        state_for(None, None, audit, max_queue=-1)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        state_for(serve_lm[0], serve_lm[1], audit, max_prompt_tokens=500)  # 500 + 128 new tokens > 512 positions
    assert answer.AppState(None, serve_lm[1], audit, "m", "s", never, decide_max_tokens=64).limit.max_tokens == 64
