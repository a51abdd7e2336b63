"""GRPO training of notebook 07: the soul in the output head, which parameters train, saving, serving."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from so8t_core.config import QuadRLStageConfig
from so8t_core.export import fusion, gguf
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.generate import generate_raw
from so8t_core.lm.loading import load_model_and_tokenizer, save_model
from so8t_core.rl import evaluation as ev
from so8t_core.rl import training as tr
from so8t_core.serving.models import resolve_model

H = 32


@pytest.fixture
def base_and_soul(tok, tiny_model, tmp_path):
    base = save_model(tiny_model(tok, hidden=H, layers=1, max_positions=256), tok, tmp_path / "base")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["qkv_proj"], init_lora_weights=False),
    )
    torch.manual_seed(1)
    w = SoulWrapper.build(model, SoulConfig(hidden_size=H, init_std=0.3, alpha_mode="fixed", alpha_start=0.5)).eval()
    return base, w.save(tmp_path / "soul"), w


def _ids(tok):
    enc = tok(
        [tr.chat_prompt("How do I boil an egg?"), tr.chat_prompt("卵のゆで方は？")], return_tensors="pt", padding=True
    )
    return enc["input_ids"], enc["attention_mask"]


def test_soul_head_gives_the_wrappers_logits(base_and_soul, tok):
    base, soul_dir, w = base_and_soul
    policy = tr.load_policy(base, soul_dir, trainable=False)
    ids, mask = _ids(tok)
    with torch.no_grad():
        want = w(ids, mask).logits
        got = policy.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("train_soul", [False, True])
def test_grpo_trains_lora_and_the_soul_only_when_asked(base_and_soul, tok, train_soul, monkeypatch):
    import trl
    from accelerate.state import AcceleratorState

    base, soul_dir, _ = base_and_soul
    precision = []
    init = trl.GRPOTrainer.__init__
    monkeypatch.setattr(
        trl.GRPOTrainer, "__init__", lambda self, *a, **k: precision.append(k["args"].bf16) or init(self, *a, **k)
    )
    policy = tr.load_policy(base, soul_dir, train_soul=train_soul)
    reference = tr.load_policy(base, soul_dir, trainable=False)
    assert (policy.counts["soul"] > 0) is train_soul
    assert policy.counts["lora"] > 0
    assert reference.counts["lora"] == 0
    # a random model's completions all score 0 on the text rewards, and with LoRA's B = 0 the policy equals the
    # reference (KL 0): every advantage would be 0 and nothing could move. A small B makes the KL vary.
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    soul0 = {k: v.clone() for k, v in policy.soul.soul_state().items()}
    lora0 = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}
    ref0 = {n: p.detach().clone() for n, p in reference.model.named_parameters()}
    prompts, labels = ["How do I boil an egg?", "卵のゆで方は？"], ["ALLOW", "ALLOW"]
    s = tr.GRPOSettings.from_stage(
        QuadRLStageConfig(steps=2, num_generations=4, prompts_per_step=1, max_completion_length=8, soul_lr=0.5)
    )
    history = tr.train_grpo(policy, reference, prompts, labels, s)
    assert precision == [torch.cuda.is_available() and torch.cuda.is_bf16_supported()]  # no bf16 autocast on a CPU
    assert not AcceleratorState._shared_state  # nothing of the trainer's Accelerator outlives it
    curves = tr.reward_curves(history)
    assert len(curves["structure"]) == 2
    assert set(tr.REWARDS) <= set(curves)
    soul_moved = any(not torch.equal(v, policy.soul.soul_state()[k]) for k, v in soul0.items())
    assert soul_moved is train_soul
    assert any(not torch.equal(p, lora0[n]) for n, p in policy.model.named_parameters() if "lora_" in n)
    assert all(torch.equal(p, ref0[n]) for n, p in reference.model.named_parameters())


def test_completion_logps_score_each_completion_token(base_and_soul, tok):
    base, soul_dir, _ = base_and_soul
    policy = tr.load_policy(base, soul_dir, trainable=False)
    prompt = tr.chat_prompt("How do I boil an egg?")
    completion = tok("<final>Boil it.</final>", add_special_tokens=False)["input_ids"]
    lp, mask = tr.completion_logps(policy.model, tok, [prompt, prompt], [completion, completion[:2]])
    p_ids = tok([prompt])["input_ids"][0]
    full = torch.tensor([p_ids + completion])
    with torch.no_grad():
        logp = torch.log_softmax(policy.model(input_ids=full).logits[0], -1)
    want = torch.stack([logp[len(p_ids) - 1 + i, t] for i, t in enumerate(completion)])
    torch.testing.assert_close(lp[0], want, atol=1e-5, rtol=1e-5)
    assert mask[1].tolist() == [1, 1] + [0] * (len(completion) - 2)
    torch.testing.assert_close(lp[1, :2], want[:2], atol=1e-5, rtol=1e-5)


@pytest.fixture
def rl_fused(base_and_soul, tok, tmp_path):
    """A GRPO-style policy with a changed soul, saved as a soul folder and fused like notebook 07 does."""
    base, soul_dir, _ = base_and_soul
    policy = tr.load_policy(base, soul_dir, train_soul=True)
    with torch.no_grad():
        policy.soul.alpha.alpha.add_(0.7)  # a changed soul must reach the fused head
    rl_soul = policy.soul.save(tmp_path / "rl_soul")
    ids, mask = _ids(tok)
    out = fusion.fuse_soul_folder(base, rl_soul, ids, mask)
    info = fusion.card_info(out["wrapper"], str(base), out["parity"], False)
    folder = fusion.save_fused(out["model"], out["tokenizer"], tmp_path / "fused", info, ids, mask)
    return policy, out["model"], folder


def test_trained_soul_folder_fuses_into_a_folder_the_server_loads(rl_fused, tok):
    policy, fused, folder = rl_fused
    ids, mask = _ids(tok)
    with torch.no_grad():
        want = policy.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(fusion.causal_logits(fused, ids, mask), want, atol=1e-4, rtol=1e-4)
    choice = resolve_model(folder)  # what `python -m so8t_core.serve --model <folder>` resolves
    assert choice.label == "model"
    assert choice.source == str(folder.resolve())
    model, tok2 = load_model_and_tokenizer(choice.source)
    torch.testing.assert_close(fusion.causal_logits(model, ids, mask), want, atol=1e-4, rtol=1e-4)
    assert isinstance(generate_raw(model, tok2, "How do I boil an egg?", max_new_tokens=4), str)


@pytest.mark.skipif(gguf.missing_setup() is not None, reason=f"{gguf.missing_setup()} (make setup installs it)")
def test_rl_fused_folder_exports_to_gguf_with_parity(rl_fused, tok, tmp_path):
    _, fused, folder = rl_fused
    paths = gguf.export_gguf(folder, tmp_path / "gguf", ["f32"], stem="rl")
    rows = [tok(tr.chat_prompt(t))["input_ids"][:24] for t in ("How do I boil an egg?", "卵のゆで方は？")]
    (row,) = gguf.gguf_parity(fused, paths, rows, n_threads=1)
    assert row["max_abs_diff"] <= 1e-3
    assert row["top1_agreement"] == 1.0


def test_generate_answers_cut_at_the_stop_token(base_and_soul, tok):
    base, soul_dir, _ = base_and_soul
    policy = tr.load_policy(base, soul_dir, trainable=False)
    raws, ids = ev.generate_answers(policy.model, tok, ["How do I boil an egg?", "卵のゆで方は？"], 6, batch=2)
    assert len(raws) == len(ids) == 2
    assert all(len(x) <= 6 for x in ids)
    stops = set(tok.convert_tokens_to_ids(["<|end|>"])) | {tok.eos_token_id, tok.pad_token_id}
    assert all(t not in stops for x in ids for t in x[:-1])  # nothing after a stop


def test_grpo_settings_are_checked():
    with pytest.raises(ValueError, match="num_generations"):
        replace(tr.GRPOSettings.from_stage(QuadRLStageConfig()), num_generations=1)
    with pytest.raises(ValueError, match="weights"):
        replace(tr.GRPOSettings.from_stage(QuadRLStageConfig()), weights=(1.0, 1.0))


@pytest.mark.slow
@pytest.mark.gpu  # bitsandbytes NF4: the real-checkpoint path of notebook 07 (load_in_4bit=true)
def test_4bit_policy_trains_and_its_soul_folder_fuses(base_and_soul, tok, tmp_path):
    base, soul_dir, _ = base_and_soul
    policy = tr.load_policy(base, soul_dir, train_soul=True, load_in_4bit=True)
    reference = tr.load_policy(base, soul_dir, trainable=False, load_in_4bit=True)
    s = tr.GRPOSettings.from_stage(
        QuadRLStageConfig(steps=2, num_generations=4, prompts_per_step=1, max_completion_length=8, soul_lr=0.5)
    )
    history = tr.train_grpo(policy, reference, ["How do I boil an egg?"], ["ALLOW"], s)
    assert len(history) == 2
    assert torch.isfinite(policy.soul.alpha.alpha).item()
    rl_soul = policy.soul.save(tmp_path / "rl_soul")
    out = fusion.fuse_soul_folder(base, rl_soul, *_ids(tok), load_in_4bit=True)
    assert out["parity"]["max_abs_diff"] <= 1e-4
    assert out["qlora_gap"] is not None


def test_evaluate_policy_scores_answers_and_has_zero_kl_against_itself(base_and_soul):
    from so8t_core.rl import evaluation as ev

    base, soul_dir, _ = base_and_soul
    policy = tr.load_policy(base, soul_dir, trainable=False)
    sets = {"dev": {"prompts": ["How do I boil an egg?", "卵のゆで方は？"], "gold": ["ALLOW", "ALLOW"]}}
    out = ev.evaluate_policy(policy, policy, sets, max_new_tokens=4, batch=2)
    rows = out["dev"]
    assert set(rows) >= {"raw", "kl", "decision", "structure", "correctness"}
    assert len(rows["raw"]) == 2
    assert rows["kl"] == pytest.approx([0.0, 0.0], abs=1e-6)  # the same policy on both sides
    assert rows["decision"] == ev.score_outputs(rows["raw"], sets["dev"]["gold"])["decision"]
