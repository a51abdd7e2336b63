"""Tokenizer, tiny Phi-3, pretraining, perplexity, saving/loading and LoRA of the base model (notebook 00)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from so8t_core import config
from so8t_core.batching import encode_documents, token_batches
from so8t_core.config import BaseModelConfig
from so8t_core.data.corpus import build_corpus
from so8t_core.lm import loading
from so8t_core.lm import tokenizer as tk
from so8t_core.lm.base_model import build_model, tiny_phi3_config
from so8t_core.lm.generate import greedy_chat
from so8t_core.lm.loading import load_model_and_tokenizer, read_model_ref, resolve_base, save_model, write_model_ref
from so8t_core.lm.lora import LoraSettings, apply_lora
from so8t_core.lm.pretrain import lr_at, perplexity, pretrain, unigram_perplexity
from so8t_core.lm.tokenizer import special_ids, train_tokenizer
from so8t_core.think import chat_turn, stop_ids

# written out here rather than imported, so a renamed or dropped token fails the test
SPECIALS = [
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<think-observation>",
    "</think-observation>",
    "<think-deduction>",
    "</think-deduction>",
    "<think-abduction>",
    "</think-abduction>",
    "<think-integration>",
    "</think-integration>",
    "<final>",
    "</final>",
]
JAPANESE = ["空の色は青です。", "太郎はりんごを3個持っています。", "月曜日の次は火曜日です。\n3 + 4 = 7です。"]


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(seed=0, n_docs=300, heldout_fraction=0.1)


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    """This module's own tokenizer, on its larger corpus: the tokenizer and pretraining are what it tests."""
    return train_tokenizer(corpus.train, tmp_path_factory.mktemp("tok"), vocab_size=2500)


@pytest.fixture(scope="module")
def tiny(tok, tiny_model):
    """The suite's tiny Phi-3 on this module's tokenizer, also stopping at ``<|end|>``: ``tiny(hidden=, layers=)``."""
    end = [tok.convert_tokens_to_ids("<|end|>")]
    return lambda **kw: tiny_model(tok, stop_ids=end, **kw)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory, tiny):
    model = tiny()
    return model, save_model(model, tok, tmp_path_factory.mktemp("m") / "model")


# --- tokenizer ---


def check_specials(t):
    for s in SPECIALS:
        ids = t.encode(s, add_special_tokens=False)
        assert len(ids) == 1, s
        assert ids[0] != t.unk_token_id, s
        assert t.convert_ids_to_tokens(ids) == [s]
        assert ids[0] in t.encode(f"abc{s}def", add_special_tokens=False)


def test_each_special_token_is_one_id(tok):
    check_specials(tok)
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|endoftext|>"
    assert 0 <= tok.pad_token_id < len(tok)
    assert tok.bos_token == "<s>"


def test_special_tokens_stay_single_after_autotokenizer_reload(saved):
    _, folder = saved
    check_specials(AutoTokenizer.from_pretrained(folder))


def test_japanese_round_trips(tok):
    for s in JAPANESE:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == s


def test_unseen_characters_fall_back_to_bytes(tok, corpus):
    for s in ["😀", "鬱", "Ωμέγα"]:
        assert s not in "".join(corpus.train)
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == s


def test_tokenizer_folder_keeps_the_sentencepiece_model(tok):
    assert Path(tok.vocab_file).name == "tokenizer.model"
    assert Path(tok.vocab_file).is_file()


def test_tokenizer_training_is_deterministic(corpus, tok, tmp_path):
    again = train_tokenizer(corpus.train, tmp_path, vocab_size=2500)
    assert (tmp_path / "tokenizer.model").read_bytes() == Path(tok.vocab_file).read_bytes()
    assert again.get_vocab() == tok.get_vocab()


def test_too_small_vocab_is_rejected(corpus, tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(corpus.train, tmp_path, vocab_size=100)
    assert config.MIN_VOCAB == tk.MIN_VOCAB


# --- model config ---


def test_config_is_untied_and_checks_sizes(tok):
    cfg = tiny_phi3_config(len(tok), hidden_size=32, num_heads=2, **special_ids(tok))
    model = build_model(cfg)
    assert not cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    with pytest.raises(ValueError, match="hidden_size"):
        tiny_phi3_config(len(tok), hidden_size=36)
    with pytest.raises(ValueError, match="pad_token_id"):
        tiny_phi3_config(100, pad_token_id=100, eos_token_id=2)
    with pytest.raises(ValueError, match="hidden_size"):
        BaseModelConfig(hidden_size=100)
    assert BaseModelConfig.from_dict(BaseModelConfig().to_dict()) == BaseModelConfig()
    assert BaseModelConfig(probe_layers=" 0, -1,2").probe_layer_ids == (0, -1, 2)
    for bad in ("", "last", ","):
        with pytest.raises(ValueError, match="probe_layers"):
            BaseModelConfig(probe_layers=bad)
    with pytest.raises(ValueError, match="probe_max_prompts"):
        BaseModelConfig(probe_max_prompts=-1)


# --- save / load ---


def test_save_then_auto_reload_gives_identical_logits(saved, tok):
    model, folder = saved
    assert (folder / "tokenizer.model").is_file()
    assert (folder / "model.safetensors").is_file()
    model2 = AutoModelForCausalLM.from_pretrained(folder)
    tok2 = AutoTokenizer.from_pretrained(folder)
    text = "<|user|>\n空の色は何ですか？<|end|>\n<|assistant|>\n"
    ids = torch.tensor([tok(text).input_ids])
    assert torch.equal(ids, torch.tensor([tok2(text).input_ids]))
    assert torch.equal(model(ids).logits, model2(ids).logits)


def test_load_model_and_tokenizer_on_a_saved_folder(saved):
    model, folder = saved
    model2, tok2 = load_model_and_tokenizer(folder)
    assert not model2.training  # documented: callers who train call .train()
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.equal(model(ids).logits, model2(ids).logits)
    assert tok2.pad_token is not None


def test_missing_local_path_names_it(tmp_path):
    missing = tmp_path / "no_such_model"
    for arg in (missing, str(missing)):
        with pytest.raises(FileNotFoundError, match="no_such_model"):
            load_model_and_tokenizer(arg)
    with pytest.raises(ValueError, match="base_model"):
        load_model_and_tokenizer("")


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    with pytest.raises(loading.BaseModelUnavailable, match=r"so8t-test/not-a-model.*not in the Hugging Face cache"):
        load_model_and_tokenizer("so8t-test/not-a-model", local_files_only=True)
    monkeypatch.setattr(loading, "_hub_offline", lambda: False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(OSError, match=r"so8t-test/not-a-model.*no network"):
        load_model_and_tokenizer("so8t-test/not-a-model")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_4bit_without_cuda_says_it_needs_a_gpu(saved):
    with pytest.raises(RuntimeError, match="CUDA"):
        load_model_and_tokenizer(saved[1], load_in_4bit=True)


@pytest.mark.gpu
def test_4bit_loads_nf4_and_prepares_for_training(saved):
    import bitsandbytes as bnb

    model, _tok2 = load_model_and_tokenizer(saved[1], load_in_4bit=True)
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised
    assert all(m.weight.quant_type == "nf4" for m in quantised)
    assert all(m.weight.quant_state.nested for m in quantised)  # double quantisation
    assert not any(p.requires_grad for p in model.parameters())  # frozen by prepare_model_for_kbit_training
    ids = torch.tensor([[1, 5, 9, 12]], device=model.device)
    assert torch.isfinite(model(ids).logits).all()


def test_model_ref_resolves_each_kind(tmp_path, saved):
    write_model_ref(tmp_path, "")
    assert resolve_base(tmp_path) == str(tmp_path / "model")
    assert read_model_ref(tmp_path)["load_in_4bit"] is False
    write_model_ref(tmp_path, "microsoft/Phi-3-mini-4k-instruct", load_in_4bit=True)
    assert resolve_base(tmp_path) == "microsoft/Phi-3-mini-4k-instruct"
    assert read_model_ref(tmp_path)["load_in_4bit"] is True
    write_model_ref(tmp_path, saved[1])
    assert resolve_base(tmp_path) == str(saved[1].resolve())
    with pytest.raises(FileNotFoundError, match="00_base_model"):
        resolve_base(tmp_path / "empty")


# --- training and evaluation ---


@pytest.mark.slow
def test_pretraining_lowers_loss_and_is_deterministic(tok, corpus, tiny):
    model = tiny()
    batches = token_batches(tok, corpus.heldout, seq_len=64, batch_size=16)
    before = perplexity(model, batches)
    records = pretrain(
        model,
        tok,
        corpus.train,
        steps=40,
        batch_size=8,
        seq_len=64,
        lr=1e-2,
        seed=1,
        eval_batches=batches[:2],
        eval_every=20,
    )
    assert sum(r["loss"] for r in records[-5:]) / 5 < records[0]["loss"] - 1.0
    assert perplexity(model, batches) < before / 2
    assert not model.training
    curve = [(r["step"], r["heldout_ppl"]) for r in records if "heldout_ppl" in r]
    assert [s for s, _ in curve] == [19, 39]
    assert curve[1][1] < curve[0][1]
    again = pretrain(tiny(), tok, corpus.train, steps=40, batch_size=8, seq_len=64, lr=1e-2, seed=1)
    assert [r["loss"] for r in again] == [r["loss"] for r in records]  # evaluation does not disturb training


class ShiftModel:
    """Puts weight ``a`` on (input + 1) mod V at every position: right only under the next-token shift."""

    def __init__(self, vocab: int, a: float) -> None:
        self.vocab, self.a = vocab, a

    def __call__(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(-1, ((input_ids + 1) % self.vocab).unsqueeze(-1), self.a)
        return SimpleNamespace(logits=logits)


def test_perplexity_is_exp_mean_nll_on_a_hand_made_case():
    V, a = 4, 2.0
    hit = math.exp(a) / (math.exp(a) + V - 1)  # p of the predicted token
    miss = 1 / (math.exp(a) + V - 1)
    batch = {
        "input_ids": torch.tensor([[0, 1, 2, 0], [3, 0, 3, 3]]),  # row 0: hit, hit, miss; row 1: hit, then padding
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
    }
    expected = math.exp(-(3 * math.log(hit) + math.log(miss)) / 4)
    assert perplexity(ShiftModel(V, a), [batch]) == pytest.approx(expected, rel=1e-6)


def test_unigram_perplexity_on_a_hand_made_case():
    class CharTok:  # ids: <s>=0, eos=1, 'a'=2, 'b'=3
        bos_token_id, eos_token_id = 0, 1

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[{"a": 2, "b": 3}[c] for c in t] for t in texts]}

        def __len__(self):
            return 4

    # targets of the train docs <s>ab</s>, <s>a</s>: 2,3,1,2,1 -> add-one p(3) = 2/9, p(1) = 3/9
    batch = {"input_ids": torch.tensor([[0, 3, 1]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    assert unigram_perplexity(CharTok(), ["ab", "a"], [batch]) == pytest.approx(math.sqrt(81 / 6))


def test_token_batches_make_every_token_a_target_once(tok, corpus):
    docs = corpus.heldout[:20]
    batches = token_batches(tok, docs, seq_len=8, batch_size=4)
    targets = sum(int(b["attention_mask"][:, 1:].sum()) for b in batches)
    assert targets == sum(len(tok.encode(d, add_special_tokens=False)) + 1 for d in docs)  # + eos, not <s>
    assert all(b["input_ids"].shape[1] <= 8 for b in batches)
    assert encode_documents(tok, ["x"])[0][0] == tok.bos_token_id


def test_the_tokenizers_chat_template_writes_chat_turn(tok):
    user = [{"role": "user", "content": "空の色は？"}]
    system = [{"role": "system", "content": "Be brief."}, *user]
    for messages, kwargs in ((user, {}), (system, {"system": "Be brief."})):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == chat_turn("空の色は？", **kwargs)


def test_greedy_chat_stops_at_the_stop_ids_of_think(tok, monkeypatch, tiny):
    model, seen = tiny(), {}
    original = model.generate

    def record(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", record)
    greedy_chat(model, tok, "hi", max_new_tokens=2)
    assert seen["eos_token_id"] == stop_ids(tok)
    assert set(stop_ids(tok)) == {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.55)  # cosine midpoint between 1 and 0.1
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)


# --- LoRA ---


def test_lora_default_targets_adapt_only_lora_params(tok, tiny):
    h, layers, r = 32, 2, 4
    model = tiny(hidden=h, layers=layers)
    inter = model.config.intermediate_size
    peft_model = apply_lora(model, LoraSettings(r=r, alpha=8, dropout=0.05))
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n for n in trainable)
    # A: r x in, B: out x r for qkv (h -> 3h), o (h -> h), gate_up (h -> 2I), down (I -> h)
    per_layer = r * ((h + 3 * h) + (h + h) + (h + 2 * inter) + (inter + h))
    assert sum(trainable.values()) == layers * per_layer


def test_lora_target_that_matches_nothing_is_named(tok, tiny):
    with pytest.raises(ValueError, match=r"q_proj.*qkv_proj"):
        apply_lora(tiny(), LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("qkv_proj", "q_proj")))
    with pytest.raises(ValueError, match="r="):
        LoraSettings(r=0, alpha=8, dropout=0.0)
