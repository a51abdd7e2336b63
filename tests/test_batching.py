"""The one padding and pooling home (``lm.batching``), and the serving and training paths agreeing on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from so8t_core.batching import encode_prompts, masked_mean, right_pad
from so8t_core.config import SafetyEvalStageConfig
from so8t_core.safety.heads import SafetyHeads, pooled_hidden_states, predict_with_heads
from so8t_core.safety.pillars import PillarSettings, build_family, pooled_states


def test_right_pad_fills_after_each_row_and_masks_the_rows_own_entries() -> None:
    ids, mask = right_pad([[5, 6, 7], [8], [9, 10]], pad_id=2)
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2], [9, 10, 2]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == torch.long
    labels, _ = right_pad([[-100, 4], [-100, -100, 3]], pad_id=-100)
    assert labels.tolist() == [[-100, 4, -100], [-100, -100, 3]]


class _Chars:
    """A tokenizer stand-in: one id per character, after a start id 1."""

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1, *(ord(c) for c in text)]}


def test_encode_prompts_tokenises_each_prompt_alone_and_cuts_it() -> None:
    ids, mask = encode_prompts(_Chars(), ["ab", "abcdef"], max_length=4)
    assert ids.tolist() == [[1, 97, 98, 0], [1, 97, 98, 99]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="empty prompt"):
        encode_prompts(_Chars(), ["ok", "  "], max_length=4)


# --- the serving path and the training path pool the same state ------------------------------------------
TEXTS = ["how do I bake bread", "write a poem about rain", "make a weapon to hurt people", "fix my python code"] * 3
PROMPTS = ["how do I bake bread", "make a weapon to hurt people now", "rain", "fix python code", "write a poem"]


def test_masked_mean_averages_real_positions_only() -> None:
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (B, T, H)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(x, mask), torch.stack([x[0, :2].mean(0), torch.zeros(4)]))
    torch.testing.assert_close(masked_mean(x[..., 0], mask), torch.tensor([2.0, 0.0]))  # (B, T) values


def test_serving_and_training_pool_the_same_states(tiny_lm) -> None:
    """One batch through the server's and the CLI's feature (``pooled_hidden_states``, ``predict_with_heads``)
    and through notebook 06's training (``pillars.pooled_states`` and the masked mean of a training step)."""
    lm = tiny_lm(TEXTS, hidden=32, layers=2, heads=2)
    # the server and the CLI keep 512 tokens (pooled_hidden_states' default): the pillars must train with as many
    settings = PillarSettings.from_stage(
        SafetyEvalStageConfig(steps=1, batch_size=len(PROMPTS), max_length=512, batch_eval=len(PROMPTS))
    )
    served = pooled_hidden_states(lm.model, lm.tok, PROMPTS, batch_size=len(PROMPTS))
    wrapper = build_family(lm.model, "soul", settings)
    trained = pooled_states(wrapper, lm.tok, PROMPTS, settings)
    ids, mask = encode_prompts(lm.tok, PROMPTS, settings.max_length)
    with torch.no_grad():
        step = masked_mean(wrapper.hidden(ids, mask).float(), mask)  # what a train_pillars step pools
    assert served.shape == (len(PROMPTS), 32)
    torch.testing.assert_close(trained, served, rtol=0.0, atol=1e-6)
    torch.testing.assert_close(step, served, rtol=0.0, atol=1e-6)
    torch.manual_seed(0)
    heads = SafetyHeads(32).eval()
    _, probs = predict_with_heads(lm.model, lm.tok, heads, PROMPTS, batch_size=2)  # the CLI's and server's heads
    with torch.no_grad():
        want = heads.probs(trained)
    np.testing.assert_allclose(probs["p_refuse"], want["p_refuse"].numpy(), atol=1e-6)


def test_pooled_states_skip_the_vocabulary_head_but_not_its_states(tiny_lm) -> None:
    """The pooled feature needs no logits: the head runs on one position per prompt, and the feature equals the
    hidden states of a full forward pass."""
    lm = tiny_lm(TEXTS, hidden=32, layers=2, heads=2)
    widths: list[int] = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda m, i, o: widths.append(o.shape[1]))
    try:
        got = pooled_hidden_states(lm.model, lm.tok, PROMPTS, batch_size=len(PROMPTS), layers=(1, -1))
    finally:
        hook.remove()
    assert widths
    assert set(widths) == {1}
    ids, mask = encode_prompts(lm.tok, PROMPTS, 512)
    with torch.no_grad():
        full = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    want = torch.cat([masked_mean(full[i].float(), mask) for i in (1, -1)], dim=1)
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-5)
