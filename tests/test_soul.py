import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Phi3Config, Phi3ForCausalLM

from so8t_core.config import SoulStageConfig
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.inject import (
    InjectConfig,
    export_soul_weights,
    inject,
    latest_checkpoint,
    read_timeline,
)

V, H = 96, 32


def tiny_phi3(seed: int = 0, hidden: int = H) -> Phi3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Phi3Config(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return Phi3ForCausalLM(cfg)


def with_lora(model, dropout: float = 0.1):
    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    )
    return get_peft_model(model, cfg)


def data(n: int = 16, T: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[::3, -4:] = 0  # some right padding
    return ids.masked_fill(mask == 0, 0), mask


def soul_cfg(**kw) -> SoulConfig:
    base = {
        "hidden_size": H,
        "init_std": 0.2,
        "alpha_warmup": 1,
        "alpha_anneal": 4,
        "pet_warmup": 1,
        "pet_main": 3,
        "pet_anneal": 2,
    }
    return SoulConfig(**{**base, **kw})


def _inject(warmup_steps: int, **stage) -> InjectConfig:
    """An injection run's settings as notebook 03 builds them, from a stage config with ``stage`` changed."""
    return InjectConfig.from_stage(SoulStageConfig(**stage), warmup_steps=warmup_steps)


def test_logits_equal_independent_dense_computation():
    model = tiny_phi3().eval()
    w = SoulWrapper.build(model, soul_cfg(alpha_mode="fixed", alpha_start=0.7))
    ids, mask = data(4)
    with torch.no_grad():
        h = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]  # after final norm
        R = w.rotation.dense()  # (H, H) block diagonal R_cmd @ R_safe
        expected = (h + torch.sigmoid(torch.tensor(0.7)) * h @ R.T) @ model.lm_head.weight.T
        got = w(ids, mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    closed = SoulWrapper.build(model, soul_cfg(), use_gate=False)
    with torch.no_grad():
        torch.testing.assert_close(closed(ids, mask).logits, model(ids, attention_mask=mask).logits)


def test_gradients_reach_soul_and_lora_but_not_the_base():
    model = with_lora(tiny_phi3(), dropout=0.0)
    w = SoulWrapper.build(model, soul_cfg(alpha_mode="learned"))
    ids, mask = data(4)
    w(ids, mask, ids.masked_fill(mask == 0, -100)).loss.backward()
    assert w.rotation.r_cmd.generators.grad.abs().sum() > 0
    assert w.rotation.r_safe.generators.grad.abs().sum() > 0
    assert w.alpha.alpha.grad is not None
    assert w.alpha.alpha.grad != 0
    lora = [p for n, p in w.named_parameters() if "lora_B" in n]
    assert lora
    assert all(p.grad is not None for p in lora)
    base = [p for n, p in w.named_parameters() if "lora_" not in n and "rotation" not in n and "alpha" not in n]
    assert base
    assert all(not p.requires_grad and p.grad is None for p in base)


def test_save_load_round_trip_and_bad_soul_files(tmp_path):
    w = SoulWrapper.build(with_lora(tiny_phi3()), soul_cfg(alpha_mode="learned", alpha_start=0.3))
    w.save(tmp_path / "soul")
    assert {"soul.safetensors", "soul_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "soul").iterdir()
    }
    w2 = SoulWrapper.load(tmp_path / "soul", with_lora(tiny_phi3(seed=5)))
    for k, v in w.soul_state().items():
        assert torch.equal(v, w2.soul_state()[k])
    with pytest.raises(ValueError, match="soul hidden_size=32"):
        SoulWrapper.load(tmp_path / "soul", tiny_phi3(hidden=64))
    (tmp_path / "soul" / "soul.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        SoulWrapper.load(tmp_path / "soul", tiny_phi3())
    with pytest.raises(FileNotFoundError, match=r"soul.safetensors is missing"):
        SoulWrapper.load(tmp_path, tiny_phi3())


def test_wrong_shape_soul_state_is_refused():
    w = SoulWrapper.build(tiny_phi3(), soul_cfg())
    bad = {**w.soul_state(), "r_cmd.generators": torch.zeros(3, 28)}
    with pytest.raises(ValueError, match=r"r_cmd.generators.shape=\(3, 28\)"):
        w.load_soul_state(bad)


def test_hidden_size_must_be_multiple_of_8():
    with pytest.raises(ValueError, match="hidden_size=30"):
        SoulConfig(hidden_size=30)


def _run(tmp, steps, stop_after=None, resume=None, alpha_mode="learned"):
    w = SoulWrapper.build(with_lora(tiny_phi3()), soul_cfg(alpha_mode=alpha_mode))
    cfg = _inject(steps=steps, batch_size=4, lr=5e-3, soul_lr=5e-2, warmup_steps=2, checkpoint_every=3, seed=3)
    recs = inject(w, data(), cfg, out_dir=tmp, resume_from=resume, stop_after=stop_after)
    return w, recs


@pytest.mark.slow
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    full, _ = _run(tmp_path / "a", 6)
    _run(tmp_path / "b", 6, stop_after=4)  # interrupted after step 4; last checkpoint is step 3
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_000003"
    resumed, _ = _run(tmp_path / "b", 6, resume="latest")
    for k, v in full.soul_state().items():
        torch.testing.assert_close(resumed.soul_state()[k], v, atol=1e-6, rtol=0)
    lora = lambda w: {n: p for n, p in w.named_parameters() if "lora_" in n}
    for n, p in lora(full).items():
        torch.testing.assert_close(lora(resumed)[n], p, atol=1e-6, rtol=0)
    tl = read_timeline(tmp_path / "b")
    assert [r["step"] for r in tl] == list(range(6))  # no duplicates from the replayed step
    assert [r["alpha"] for r in tl] == pytest.approx([r["alpha"] for r in read_timeline(tmp_path / "a")], abs=1e-6)


@pytest.mark.slow
def test_resume_with_different_config_names_the_key(tmp_path):
    _run(tmp_path, 3)
    w = SoulWrapper.build(with_lora(tiny_phi3()), soul_cfg(alpha_mode="learned", map="exp"))
    cfg = _inject(steps=6, batch_size=4, lr=5e-3, soul_lr=5e-2, warmup_steps=2, checkpoint_every=3, seed=3)
    with pytest.raises(ValueError, match=r"soul\.map"):
        inject(w, data(), cfg, out_dir=tmp_path, resume_from="latest")


@pytest.mark.slow
def test_half_written_checkpoint_is_never_latest(tmp_path):
    _run(tmp_path, 3)
    (tmp_path / "checkpoints" / ".tmp_step_000006").mkdir()
    (tmp_path / "checkpoints" / "step_000009").mkdir()  # no trainer state: incomplete
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_000003"


@pytest.mark.slow
def test_training_lowers_loss_and_timeline_exports(tmp_path):
    w = SoulWrapper.build(with_lora(tiny_phi3(), dropout=0.0), soul_cfg(alpha_mode="scheduled"))
    cfg = _inject(steps=30, batch_size=8, lr=1e-2, soul_lr=5e-2, warmup_steps=3, checkpoint_every=0, seed=0)
    recs = inject(w, data(8), cfg, out_dir=tmp_path)
    assert sum(r["lm_loss"] for r in recs[-5:]) < sum(r["lm_loss"] for r in recs[:5])
    sched = w.config.alpha_schedule()
    assert [r["alpha"] for r in recs] == pytest.approx([sched(s) for s in range(30)], abs=1e-6)
    assert recs[0]["phase"] == "stable"
    assert recs[-1]["phase"] == "golden"
    assert max(r["orth_error"] for r in recs) < 1e-5
    n = export_soul_weights(recs, tmp_path / "soul_weights.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "soul_weights.jsonl").read_text().splitlines()]
    assert n == len(rows) == 30
    assert [r["alpha_gate"] for r in rows] == [r["alpha"] for r in recs]
    assert rows[-1]["r_total"]["dist_identity"] > 0
    assert set(rows[0]) >= {"r_safe", "r_cmd", "r_total"}
