"""GGUF export with llama.cpp's converter and parity in llama.cpp (notebook 04). The llama.cpp tests need
`make setup` (converter cache + llama-cpp-python); they are skipped, with that reason, only when it has not run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from so8t_core import timing
from so8t_core.batching import encode_documents
from so8t_core.export import gguf
from so8t_core.export.fusion import fuse_soul_into_lm_head, save_fused, tiny_tied_llama
from so8t_core.export.latency import interleaved_tokens_per_second, speed_ratio
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.loading import save_model

MISSING = gguf.missing_setup()
needs_llama_cpp = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING} (make setup installs it)")
SPECIAL = {"bos_token_id": 1, "eos_token_id": 3, "pad_token_id": 3}


# --- pure helpers (no llama.cpp) ---


def test_nll_of_uniform_logits_is_log_vocab_per_target():
    logits = np.zeros((5, 7), dtype=np.float32)
    nll, n = gguf.nll_from_logits(logits, [0, 1, 2, 3, 4])
    assert n == 4
    assert nll == pytest.approx(4 * math.log(7))


def test_nll_uses_the_next_token_as_target():
    logits = np.full((3, 4), -30.0, dtype=np.float32)
    logits[0, 2] = logits[1, 1] = 30.0  # position t is sure of token ids[t+1]
    assert gguf.nll_from_logits(logits, [9, 2, 1])[0] == pytest.approx(0.0, abs=1e-12)
    assert gguf.nll_from_logits(logits, [9, 1, 2])[0] > 100


def test_logit_parity_on_a_hand_made_case():
    a = [np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]], dtype=np.float32)]
    b = [np.array([[0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], dtype=np.float32)]  # 2nd position's argmax moves
    got = gguf.logit_parity(a, b, [[0, 1]])
    assert got["max_abs_diff"] == pytest.approx(2.0)
    assert got["top1_agreement"] == 0.5
    assert got["positions"] == 2
    ppl_a = math.exp(-(1.0 - math.log(2 + math.e)))  # one target (id 1) under a[0]
    assert got["ppl_reference"] == pytest.approx(ppl_a)
    same = gguf.logit_parity(a, a, [[0, 1]])
    assert same["max_abs_diff"] == 0
    assert same["top1_agreement"] == 1
    assert same["ppl_rel_diff"] == 0


def test_missing_converter_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(gguf.LlamaCppMissing, match="make setup"):
        gguf.converter_script()
    assert "scripts/setup_llama_cpp.sh" in gguf.missing_setup()
    with pytest.raises(gguf.LlamaCppMissing, match="make setup"):
        gguf.convert_to_gguf(tmp_path, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_missing_runtime_names_the_setup_command(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(gguf.LlamaCppMissing, match=r"llama-cpp-python==0.3.36.*make setup"):
        gguf.require_llama_cpp()


def test_bad_types_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outtype"):
        gguf.convert_to_gguf(tmp_path, tmp_path / "m.gguf", "q2_k")
    with pytest.raises(ValueError, match="types"):
        gguf.export_gguf(tmp_path, tmp_path, ["f32", "bf17"])


def test_interleaving_alternates_the_order_and_ratio_is_other_over_base():
    calls = []
    runs = {"base": lambda: calls.append("b") or 10, "fused": lambda: calls.append("f") or 10}
    rates = interleaved_tokens_per_second(runs, repeats=3, warmup=1, min_seconds=0.0)
    assert calls == ["b", "f", "b", "f", "f", "b", "b", "f"]
    assert all(len(v) == 3 and min(v) > 0 for v in rates.values())
    assert speed_ratio({"base": [2.0, 4.0, 3.0], "fused": [1.5, 1.5, 9.0]})["ratio"] == pytest.approx(0.5)


def test_each_sample_repeats_a_short_run_until_it_lasts_min_seconds(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    calls = {"a": 0, "b": 0}

    def run(name, seconds):
        def f():
            calls[name] += 1
            clock["now"] += seconds
            return 1

        return f

    a, b = 2.0**-9, 2.0**-8  # binary fractions: the fake clock's sums stay exact
    rates = interleaved_tokens_per_second({"a": run("a", a), "b": run("b", b)}, repeats=2, min_seconds=5 * b)
    assert calls == {"a": 1 + 2 * 5, "b": 1 + 2 * 5}  # inner = min_seconds / b (the slower one), for both
    assert rates["a"] == pytest.approx([512.0, 512.0])
    assert rates["b"] == pytest.approx([256.0, 256.0])


# --- through llama.cpp ---


def rows_of(tok, texts, n=4, T=40):
    return [d[:T] for d in encode_documents(tok, texts[:n])]


def fused_folder(model, tok, out, H):
    torch.manual_seed(3)
    w = SoulWrapper.build(model, SoulConfig(hidden_size=H, init_std=0.3, alpha_mode="fixed", alpha_start=1.0)).eval()
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    fused = fuse_soul_into_lm_head(model, w, ids)
    return fused, save_fused(fused, tok, out, {}, ids)


@pytest.fixture(scope="module")
def phi3_gguf(tok, tiny_model, tmp_path_factory):
    model = tiny_model(tok, hidden=32, layers=2, max_positions=128)
    d = tmp_path_factory.mktemp("phi3")
    fused, folder = fused_folder(model, tok, d / "fused", 32)
    return fused, folder, gguf.export_gguf(folder, d / "gguf", ["f32", "q8_0", "q4_k_m"], stem="fused")


@needs_llama_cpp
def test_phi3_f32_gguf_matches_transformers_in_llama_cpp(phi3_gguf, corpus_tok):
    fused, _, paths = phi3_gguf
    rows = rows_of(corpus_tok[0], corpus_tok[1].heldout)
    table = {r["type"]: r for r in gguf.gguf_parity(fused, paths, rows, n_threads=1)}
    assert table["f32"]["max_abs_diff"] <= 1e-3
    assert table["f32"]["top1_agreement"] == 1.0
    assert abs(table["f32"]["ppl_rel_diff"]) < 1e-4
    assert 0 < table["q8_0"]["max_abs_diff"] < 0.5  # quantised: close, not equal
    assert gguf.tensor_types(paths["f32"]) == {"F32": 15}  # 2 blocks x 6 + embeddings, output, final norm


@needs_llama_cpp
def test_q4_k_m_is_written_by_llama_cpps_quantizer(phi3_gguf):
    _, _, paths = phi3_gguf
    types = gguf.tensor_types(paths["q4_k_m"])
    assert "F32" in types, types  # norms stay f32
    assert set(types) - {"F32"}, types  # matrices are quantised
    assert paths["q4_k_m"].stat().st_size < paths["f32"].stat().st_size / 3
    assert not list(paths["f32"].parent.glob(".*"))  # no temporary file left


@needs_llama_cpp
def test_tied_llama_round_trip_keeps_the_untied_fused_head(corpus_tok, tmp_path):
    t, corpus = corpus_tok
    model = tiny_tied_llama(len(t), 32, num_layers=2, num_heads=2, init_range=0.2, **SPECIAL)
    fused, folder = fused_folder(model, t, tmp_path / "fused", 32)
    paths = gguf.export_gguf(folder, tmp_path / "gguf", ["f32"])
    assert gguf.tensor_types(paths["f32"])["F32"] == 2 * 9 + 3  # output.weight present, not the embeddings reused
    got = gguf.gguf_parity(fused, paths, rows_of(t, corpus.heldout), n_threads=1)[0]
    assert got["max_abs_diff"] <= 1e-3
    assert got["top1_agreement"] == 1.0


@needs_llama_cpp
def test_converter_failure_is_reported_and_leaves_no_file(tok, tmp_path):
    t = tok
    folder = save_model(tiny_tied_llama(len(t), 32, num_layers=1, num_heads=2, **SPECIAL), t, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(gguf.GGUFError, match=r"convert_hf_to_gguf.py failed"):
        gguf.convert_to_gguf(folder, tmp_path / "out" / "m.gguf")
    assert list((tmp_path / "out").iterdir()) == []


@needs_llama_cpp
def test_existing_gguf_is_refused(phi3_gguf, tmp_path):
    _, folder, paths = phi3_gguf
    before = paths["f32"].stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gguf.convert_to_gguf(folder, paths["f32"])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gguf.export_gguf(folder, paths["f32"].parent, ["f32"], stem="fused")
    assert paths["f32"].stat().st_mtime_ns == before
