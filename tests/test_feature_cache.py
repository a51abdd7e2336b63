"""The feature cache: computed once per key, reread exactly, a different key computes again."""

from __future__ import annotations

import torch

from so8t_core.lm import feature_cache as fc


def test_cached_computes_once_and_rereads_exactly(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.randn(3, 4), "y": torch.arange(3)}

    key = {"model": "abc", "prompts": fc.digest(["a", "b", "c"]), "layer": 2}
    first, hit1 = fc.cached("pooled", key, compute, root=tmp_path)
    again, hit2 = fc.cached("pooled", key, compute, root=tmp_path)
    assert (hit1, hit2) == (False, True)
    assert len(calls) == 1
    assert torch.equal(first["x"], again["x"])
    assert torch.equal(first["y"], again["y"])
    other, hit3 = fc.cached("pooled", {**key, "layer": 3}, compute, root=tmp_path)
    assert not hit3
    assert len(calls) == 2
    assert not torch.equal(other["x"], first["x"])


def test_fingerprint_follows_the_weights(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    a = fc.model_fingerprint(tmp_path)
    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    assert fc.model_fingerprint(tmp_path) != a


def test_bad_kind_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="short name"):
        fc.entry_path("../x", {}, tmp_path)


def test_a_file_stored_for_another_key_is_recomputed(tmp_path, monkeypatch):
    shared = tmp_path / "pooled" / "same.safetensors"  # two keys landing on one file (a truncated-hash clash)
    monkeypatch.setattr(fc, "entry_path", lambda kind, key, root=None: shared)
    fc.cached("pooled", {"k": 1}, lambda: {"x": torch.zeros(2)}, root=tmp_path)
    b, hit = fc.cached("pooled", {"k": 2}, lambda: {"x": torch.ones(2)}, root=tmp_path)
    assert not hit
    assert torch.equal(b["x"], torch.ones(2))
