"""Fusion of LoRA and the soul into lm_head (notebook 04): parity over tied and untied architectures, untying,
saving and reloading, and refusals that leave nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM

from so8t_core.export import fusion
from so8t_core.export.fusion import (
    FusionError,
    card_info,
    causal_logits,
    compare_logits,
    fuse_soul_into_lm_head,
    fused_head_weight,
    is_tied,
    load_soul_folder,
    save_fused,
    tiny_tied_llama,
)
from so8t_core.gate.rotation import ComposedSO8Rotation
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.loading import save_model

H = 32
SPECIAL = {"bos_token_id": 1, "eos_token_id": 3, "pad_token_id": 3}  # <|endoftext|> pads, as in base_model


def phi3_untied(vocab: int, hidden: int = H, seed: int = 0):
    torch.manual_seed(seed)
    cfg = Phi3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        tie_word_embeddings=False,
        **SPECIAL,
    )
    return Phi3ForCausalLM(cfg).eval()


def llama_tied(vocab: int, hidden: int = H, seed: int = 0):
    return tiny_tied_llama(vocab, hidden, num_layers=2, num_heads=2, seed=seed, init_range=0.2, **SPECIAL)


def qwen2_tied(vocab: int, hidden: int = H, seed: int = 0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        initializer_range=0.2,
        tie_word_embeddings=True,
        **SPECIAL,
    )
    return Qwen2ForCausalLM(cfg).eval()


ARCHS = {"phi3_untied": (phi3_untied, False), "llama_tied": (llama_tied, True), "qwen2_tied": (qwen2_tied, True)}
LORA_TARGETS = {
    "phi3_untied": ["qkv_proj", "down_proj"],
    "llama_tied": ["q_proj", "v_proj", "down_proj"],
    "qwen2_tied": ["q_proj", "v_proj", "down_proj"],
}


def with_soul(model, lora_targets=None, alpha: float = 0.9, seed: int = 1) -> SoulWrapper:
    if lora_targets:
        torch.manual_seed(seed)  # init_lora_weights=False: B is random too, so the merge changes the weights
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_targets, init_lora_weights=False)
        )
    torch.manual_seed(seed)
    cfg = SoulConfig(hidden_size=H, init_std=0.3, alpha_mode="fixed", alpha_start=alpha)
    return SoulWrapper.build(model, cfg).eval()


def prompts(vocab: int, n: int = 3, T: int = 12):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(4, vocab, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[0, -3:] = 0  # one right-padded row
    return ids.masked_fill(mask == 0, SPECIAL["pad_token_id"]), mask


# --- the formula ---


def test_fused_head_weight_equals_the_dense_formula():
    torch.manual_seed(0)
    V, Hh = 11, 24
    W = torch.randn(V, Hh)
    rot = ComposedSO8Rotation(Hh, "cayley", init_std=0.5)
    R = rot.matrices().detach()  # (3, 8, 8)
    dense = torch.block_diag(*R)  # (H, H), written out independently of the einsum
    s = torch.sigmoid(torch.tensor(0.4))
    torch.testing.assert_close(fused_head_weight(W, R, s), W + s * W @ dense, atol=1e-5, rtol=1e-5)
    h = torch.randn(5, Hh)  # the identity the fusion rests on: W'h = W(h + s R h)
    torch.testing.assert_close(h @ fused_head_weight(W, R, s).T, (h + s * h @ dense.T) @ W.T, atol=1e-5, rtol=1e-5)


def test_fused_head_weight_is_float32_from_half_and_checks_blocks():
    W = torch.randn(5, 16).half()
    R = torch.eye(8).expand(2, 8, 8)
    out = fused_head_weight(W, R, 0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, 1.5 * W.float())  # R = I: W' = (1 + s) W
    with pytest.raises(ValueError, match=r"R.shape"):
        fused_head_weight(W, torch.eye(8).expand(3, 8, 8), 0.5)


# --- parity, table-driven over architectures ---


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_fused_logits_equal_the_wrapper(arch, lora, tok):
    build, tied = ARCHS[arch]
    model = build(len(tok))
    assert is_tied(model) == tied
    w = with_soul(model, LORA_TARGETS[arch] if lora else None)
    ids, mask = prompts(len(tok))
    head_before = w.model.get_output_embeddings().weight.detach().clone()
    fused = fuse_soul_into_lm_head(w.model, w, ids, mask)
    assert type(fused) is type(model)
    assert not any("lora" in n for n, _ in fused.named_modules())
    got = compare_logits(causal_logits(w, ids, mask), causal_logits(fused, ids, mask), mask)
    assert got["max_abs_diff"] <= 1e-4
    assert got["top1_agreement"] == 1.0
    w.use_gate = False  # the same model without the soul: the fusion must have changed the logits
    assert compare_logits(causal_logits(w, ids, mask), causal_logits(fused, ids, mask), mask)["max_abs_diff"] > 1e-2
    assert torch.equal(w.model.get_output_embeddings().weight, head_before)  # the input model is untouched


@pytest.mark.parametrize("arch", ["llama_tied", "qwen2_tied"])
def test_tied_model_is_untied_and_keeps_its_input_embeddings(arch, tok):
    model = ARCHS[arch][0](len(tok))
    w = with_soul(model)
    emb = model.get_input_embeddings().weight.detach().clone()
    fused = fuse_soul_into_lm_head(model, w, *prompts(len(tok)))
    assert not is_tied(fused)
    assert fused.config.tie_word_embeddings is False
    assert torch.equal(fused.get_input_embeddings().weight, emb)
    assert not torch.equal(fused.get_output_embeddings().weight, emb)
    assert fused.all_tied_weights_keys == {}  # transformers would otherwise drop lm_head when saving
    assert is_tied(model)  # the original stays as it was


def test_lm_head_bias_is_kept(tok):
    model = phi3_untied(len(tok))
    head = model.lm_head
    model.lm_head = torch.nn.Linear(H, len(tok), bias=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(head.weight)
        model.lm_head.bias.normal_()
    w = with_soul(model)
    fused = fuse_soul_into_lm_head(model, w, *prompts(len(tok)))
    assert torch.equal(fused.lm_head.bias, model.lm_head.bias)


def test_a_wrong_fusion_is_caught_by_the_parity_check(tok, monkeypatch):
    model = phi3_untied(len(tok))
    w = with_soul(model)
    monkeypatch.setattr(fusion, "fused_head_weight", lambda W, R, s: W.float() + s * W.float() @ torch.block_diag(*R).T)
    with pytest.raises(FusionError, match="differ from the wrapper"):  # R^T instead of R
        fuse_soul_into_lm_head(model, w, *prompts(len(tok)))


def test_nan_alpha_raises_and_nothing_is_written(tok, tmp_path):
    model = phi3_untied(len(tok))
    w = with_soul(model)
    with torch.no_grad():
        w.alpha.alpha.fill_(float("nan"))
    out = tmp_path / "fused"

    def fuse_then_save() -> None:
        fused = fuse_soul_into_lm_head(model, w, *prompts(len(tok)))
        save_fused(fused, tok, out, {}, *prompts(len(tok)))

    with pytest.raises(FusionError, match="non-finite"):
        fuse_then_save()
    assert list(tmp_path.iterdir()) == []


def test_nan_in_lora_raises_fusion_error(tok):
    w = with_soul(phi3_untied(len(tok)), LORA_TARGETS["phi3_untied"])
    with torch.no_grad():
        next(p for n, p in w.model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    with pytest.raises(FusionError, match="merging LoRA failed"):
        fuse_soul_into_lm_head(w.model, w, *prompts(len(tok)))


def test_soul_of_another_hidden_size_is_refused(tok):
    model = phi3_untied(len(tok), hidden=64)
    w = with_soul(phi3_untied(len(tok)))  # H = 32
    with pytest.raises(ValueError, match=r"soul hidden_size=32.*model hidden size is 64"):
        fuse_soul_into_lm_head(model, w, *prompts(len(tok)))


# --- saving and reloading ---


@pytest.mark.parametrize("arch", ["phi3_untied", "llama_tied"])
def test_saved_folder_reloads_untied_with_the_same_logits(arch, tok, tmp_path):
    model = ARCHS[arch][0](len(tok))
    w = with_soul(model, LORA_TARGETS[arch])
    ids, mask = prompts(len(tok))
    fused = fuse_soul_into_lm_head(w.model, w, ids, mask)
    parity = compare_logits(causal_logits(w, ids, mask), causal_logits(fused, ids, mask), mask)
    out = save_fused(fused, tok, tmp_path / "fused", card_info(w, "tiny", parity, is_tied(model)), ids, mask)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.model", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert json.loads((out / "config.json").read_text())["architectures"] == [type(model).__name__]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not is_tied(reloaded)
    torch.testing.assert_close(causal_logits(reloaded, ids, mask), causal_logits(fused, ids, mask), atol=0, rtol=0)
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    card = (out / "README.md").read_text()
    assert f"{w.alpha.alpha.item()}" in card
    assert "cayley" in card
    assert "parity_max_abs_diff" in card
    assert [p.name for p in tmp_path.iterdir()] == ["fused"]  # no temporary folder left


def test_verify_saved_refuses_a_folder_that_would_re_tie(tok, tmp_path):
    model = llama_tied(len(tok))
    ids, mask = prompts(len(tok))
    fused = fuse_soul_into_lm_head(model, with_soul(model), ids, mask)
    out = save_fused(fused, tok, tmp_path / "fused", {}, ids, mask)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    with pytest.raises(FusionError, match="tie_word_embeddings"):
        fusion.verify_saved(out, fused, ids, mask)


def test_existing_output_is_refused_unless_overwrite(tok, tmp_path):
    model = phi3_untied(len(tok))
    w = with_soul(model)
    ids, mask = prompts(len(tok))
    fused = fuse_soul_into_lm_head(model, w, ids, mask)
    out = tmp_path / "fused"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_fused(fused, tok, out, {}, ids, mask)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    save_fused(fused, tok, out, {}, ids, mask, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["fused"]


def test_non_finite_weights_are_not_saved(tok, tmp_path):
    model = phi3_untied(len(tok))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")
    with pytest.raises(FusionError, match="down_proj"):
        save_fused(model, tok, tmp_path / "fused", {}, *prompts(len(tok)))
    assert list(tmp_path.iterdir()) == []


# --- soul folders ---


@pytest.fixture
def base_and_soul(tok, tmp_path):
    base = save_model(phi3_untied(len(tok)), tok, tmp_path / "base")
    w = with_soul(AutoModelForCausalLM.from_pretrained(base), LORA_TARGETS["phi3_untied"])
    return base, w.save(tmp_path / "soul"), w


def test_soul_folder_is_loaded_and_fused(base_and_soul, tok):
    base, soul_dir, w = base_and_soul
    ids, mask = prompts(len(tok))
    out = fusion.fuse_soul_folder(base, soul_dir, ids, mask)
    assert out["parity"]["max_abs_diff"] <= 1e-4
    assert out["qlora_gap"] is None
    got = compare_logits(causal_logits(w, ids, mask), causal_logits(out["model"], ids, mask), mask)
    assert got["max_abs_diff"] <= 1e-4  # the reloaded soul + adapter is the one that was saved


def test_missing_and_corrupt_soul_files_are_named(base_and_soul, tok):
    base, soul_dir, _ = base_and_soul
    (soul_dir / "soul.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_soul_folder(base, soul_dir)
    (soul_dir / "soul.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"soul.safetensors is missing.*03_soul_injection"):
        load_soul_folder(base, soul_dir)


def test_soul_folder_of_another_hidden_size_is_refused(base_and_soul, tok, tmp_path):
    _, soul_dir, _ = base_and_soul
    wide = save_model(phi3_untied(len(tok), hidden=64), tok, tmp_path / "wide")
    (soul_dir / "adapter_config.json").unlink()  # the soul alone: the size check must still fire
    with pytest.raises(ValueError, match=r"soul hidden_size=32.*model hidden size is 64"):
        load_soul_folder(wide, soul_dir)
    save_file(
        {"r_cmd.generators": torch.zeros(2, 28), "r_safe.generators": torch.zeros(4, 28), "alpha": torch.zeros(1)},
        soul_dir / "soul.safetensors",
    )
    with pytest.raises(ValueError, match=r"r_cmd.generators.shape"):
        load_soul_folder(tmp_path / "base", soul_dir)


def test_quantised_path_fuses_a_full_precision_reload_and_measures_the_gap(base_and_soul, tok, monkeypatch):
    base, soul_dir, _ = base_and_soul
    real = fusion.load_soul_folder

    def bf16_stand_in(*args, load_in_4bit=False, **kw):  # NF4 needs CUDA; bf16 plays the low-precision base here
        return real(*args, **({"dtype": torch.bfloat16} if load_in_4bit else kw))

    monkeypatch.setattr(fusion, "load_soul_folder", bf16_stand_in)
    ids, mask = prompts(len(tok))
    out = fusion.fuse_soul_folder(base, soul_dir, ids, mask, load_in_4bit=True)
    assert next(out["model"].parameters()).dtype == torch.float32
    assert out["parity"]["max_abs_diff"] <= 1e-4
    gap = out["qlora_gap"]
    assert 1e-4 < gap["max_abs_diff"] < 1.0  # bf16 rounding shows, but the models agree


@pytest.mark.gpu  # bitsandbytes NF4; notebook 04 measures the gap on a GPU
def test_4bit_soul_is_fused_on_a_full_precision_reload(base_and_soul, tok):
    base, soul_dir, _ = base_and_soul
    ids, mask = prompts(len(tok))
    out = fusion.fuse_soul_folder(base, soul_dir, ids, mask, load_in_4bit=True)
    assert out["parity"]["max_abs_diff"] <= 1e-4  # fused vs the fp32 wrapper it was built from
    gap = out["qlora_gap"]
    assert gap is not None
    assert 0 < gap["max_abs_diff"] < float("inf")
    assert next(out["model"].parameters()).dtype == torch.float32


def test_tied_case_checks_report_each_failure(tok):
    model = llama_tied(len(tok))
    w = with_soul(model)
    emb = model.get_input_embeddings().weight.detach().clone()
    fused = fuse_soul_into_lm_head(model, w, *prompts(len(tok)))
    ok = {"max_abs_diff": 0.0, "top1_agreement": 1.0}
    checks = fusion.tied_case_checks(model, fused, fused, emb, ok, ok, ok)
    assert all(checks.values()), checks
    bad = fusion.tied_case_checks(model, model, model, emb + 1, {"max_abs_diff": 1e-3}, {"max_abs_diff": 1e-9}, ok)
    assert not any(bad[k] for k in ("fused_untied", "reload_untied", "input_embeddings_unchanged"))
    assert not bad["wrapper_parity_le_1e-4"]
    assert not bad["reload_same_logits"]
    lagging = fusion.tied_case_checks(model, fused, fused, emb, ok, ok, ok | {"top1_agreement": 0.99})
    assert not lagging["llama_cpp_f32_le_1e-3_top1_100"]
