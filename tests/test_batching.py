"""The one padding and pooling home (``lm.batching``), and the serving and training paths agreeing on it."""

from __future__ import annotations

import pytest
import torch

from so8t_core.lm.batching import encode_prompts, right_pad


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
