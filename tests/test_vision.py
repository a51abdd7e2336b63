import colorsys
import json
import math

import cv2
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

from so8t_core.data.corpus import build_corpus
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.tokenizer import train_tokenizer
from so8t_core.vision import data as vd
from so8t_core.vision import train as vt
from so8t_core.vision.data import ImageInputError, ImageSpec, to_pixels
from so8t_core.vision.model import (
    AdapterFusionLayer,
    VisionTowerUnavailable,
    VisualConfig,
    VisualLM,
    VisualProjectionAdapter,
    build_vision_tower,
    load_vision_tower,
    load_visual,
    save_visual,
    tiny_siglip_config,
)

H, DV, S = 32, 16, 16  # LM hidden, tower hidden, image side


# --- fixtures: a tiny tokenizer, LM + LoRA + soul, and tower ---


@pytest.fixture(scope="module")
def vision_tok(tmp_path_factory):
    """A tokenizer that also knows the captions and questions of the synthetic images (the suite's ``tok`` does not)."""
    samples = vd.generate(seed=5, n=40)
    texts = build_corpus(seed=0, n_docs=150).train + [t for s in samples for t in (s.caption_en, s.caption_ja)]
    texts += [q.question + " " + q.answer for s in samples for q in s.qa]
    return train_tokenizer(texts, tmp_path_factory.mktemp("vision_tok"), vocab_size=2500)


def soul_lm(vision_tok, seed: int = 0) -> SoulWrapper:
    torch.manual_seed(seed)
    cfg = Phi3Config(
        vocab_size=len(vision_tok),
        hidden_size=H,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=vision_tok.pad_token_id,
        bos_token_id=vision_tok.bos_token_id,
        eos_token_id=vision_tok.eos_token_id,
    )
    model = get_peft_model(
        Phi3ForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["qkv_proj", "o_proj"])
    )
    with torch.no_grad():  # nonzero LoRA B and soul so that "frozen" is tested on values that matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    w = SoulWrapper.build(model, SoulConfig(hidden_size=H, init_std=0.3, alpha_mode="learned", alpha_start=0.5))
    return w


def tower(seed: int = 0):
    return build_vision_tower(
        tiny_siglip_config(image_size=S, patch_size=8, hidden_size=DV, num_layers=1, num_heads=2), seed
    )


def vlm(vision_tok, method="weighted", seed=0) -> VisualLM:
    torch.manual_seed(seed)
    return VisualLM(soul_lm(vision_tok, seed), tower(seed), *VisualConfig(DV, H, H, method=method).build())


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return to_pixels([s.image for s in vd.generate(seed=seed, n=n)], ImageSpec(S))


# --- synthetic data ---


def test_generation_is_deterministic_and_seeded():
    a, b, c = vd.generate(seed=3, n=12), vd.generate(seed=3, n=12), vd.generate(seed=4, n=12)
    assert all(np.array_equal(x.image, y.image) and x.qa == y.qa and x.caption_ja == y.caption_ja for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))
    assert a[0].image.shape == (64, 64, 3)
    assert a[0].image.dtype == np.uint8


def _components(img: np.ndarray) -> list[np.ndarray]:
    # foreground = far from the (light, uniform) background shade in the corner
    fg = (np.abs(img.astype(int) - img[0, 0].astype(int)).sum(-1) > 90).astype(np.uint8)
    n, labels = cv2.connectedComponents(fg, connectivity=8)
    return [labels == k for k in range(1, n) if (labels == k).sum() >= 6]


def _colour_name(rgb: np.ndarray) -> str:
    # independent of the generator's table: HSV hue bands of the usual colour names
    h, _s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
    if v < 0.3:
        return "black"
    deg = h * 360
    return (
        "red"
        if deg < 20 or deg >= 330
        else "yellow"
        if deg < 70
        else "green"
        if deg < 170
        else "blue"
        if deg < 260
        else "purple"
    )


def _shape_name(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))  # square 1, circle pi/4, triangle 1/2
    rows = mask[ys.min() : ys.max() + 1].sum(1)  # width of each row, top to bottom
    q = max(len(rows) // 4, 1)
    top_vs_bottom = rows[:q].mean() / rows[-q:].mean()  # ~1 for a circle, small for an apex-up triangle
    return "square" if fill > 0.9 else "triangle" if top_vs_bottom < 0.6 else "circle"


def test_answers_match_what_was_drawn():
    samples = vd.generate(seed=11, n=80, word_fraction=0.2)
    shapes = [s for s in samples if s.scene.kind == "shapes"]
    assert len(shapes) > 40
    assert {s.scene.count for s in shapes} == {1, 2, 3, 4}
    for s in shapes:
        answers = {q.kind: q.answer for q in s.qa if q.lang == "en"}
        comps = _components(s.image)
        assert len(comps) == int(answers["count"]), s.caption_en
        pix = np.concatenate([s.image[m] for m in comps])
        assert _colour_name(np.median(pix, axis=0)) == answers["colour"], s.caption_en
        assert all(_shape_name(m) == answers["shape"] for m in comps), s.caption_en
        if "position" in answers:
            ys, xs = np.nonzero(comps[0])
            dx, dy = xs.mean() - 32, ys.mean() - 32
            side = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("bottom" if dy > 0 else "top")
            assert side == answers["position"]
    ja_colour = {q.answer for s in shapes for q in s.qa if q.kind == "colour" and q.lang == "ja"}
    assert ja_colour <= {"赤", "緑", "青", "黄色", "黒", "紫"}
    red = next(s for s in shapes if s.scene.colour == "red")
    assert ("赤", "colour", "ja") in {(q.answer, q.kind, q.lang) for q in red.qa}


def test_word_scenes_show_ink_and_answer_the_word():
    words = list(vd.generate(seed=2, n=30, word_fraction=1.0))
    for s in words:
        assert {q.answer for q in s.qa} == {s.scene.word}
        assert s.scene.word in vd.WORDS[s.scene.word_lang]
        assert (s.image.min(-1) < 100).sum() > 20  # dark text pixels exist
    assert {s.scene.word_lang for s in words} == {"en", "ja"}


# --- images in: conversion and refusal ---


def test_to_pixels_converts_size_grey_rgba_channels_first_and_dtypes():
    spec = ImageSpec(S)
    white = np.full((40, 24, 3), 255, np.uint8)
    grey = np.zeros((20, 20), np.uint8)
    rgba = np.zeros((S, S, 4), np.uint8)  # fully transparent black -> white
    chw = np.full((3, S, S), 255, np.uint8)
    u16 = np.full((S, S, 1), 65535, np.uint16)
    f = np.full((S, S, 3), 0.5, np.float32)
    px = to_pixels([white, grey, rgba, chw, u16, f], spec)
    assert px.shape == (6, 3, S, S)
    assert px.dtype == torch.float32
    expected = [1.0, -1.0, 1.0, 1.0, 1.0, 0.0]  # (x - 0.5) / 0.5 for white, black, white, white, white, mid-grey
    for i, e in enumerate(expected):
        torch.testing.assert_close(px[i], torch.full((3, S, S), e))
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[..., 0] = 255
    assert px.new_tensor(to_pixels([rgb], spec)[0, :, 0, 0].tolist()).tolist() == [1.0, -1.0, -1.0]  # RGB order kept


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([], "empty batch"),
        ([np.zeros((S, S, 2), np.uint8)], "2 channels"),
        ([np.zeros((S, S, 3), bool)], "dtype bool"),
        ([np.zeros((S, S, 3), np.int32)], "dtype int32"),
        ([np.full((S, S, 3), 200.0, np.float32)], r"expected \[0, 1\]"),
        ([np.full((S, S, 3), np.nan, np.float32)], "NaN"),
        ([np.zeros((0, S, 3), np.uint8)], "empty"),
        ([np.zeros((2, 2, S, S), np.uint8)], "shape"),
        (np.zeros((S, S, 3), np.uint8), "pass a list"),
    ],
)
def test_to_pixels_rejects_bad_images(bad, match):
    with pytest.raises(ImageInputError, match=match):
        to_pixels(bad, ImageSpec(S))


def test_pixel_values_of_the_wrong_shape_are_refused_by_name(vision_tok):
    m = vlm(vision_tok)
    with pytest.raises(ValueError, match="to_pixels"):
        m.visual_prefix(torch.zeros(1, 3, S + 8, S + 8))
    with pytest.raises(ValueError, match="to_pixels"):
        m.visual_prefix(torch.zeros(0, 3, S, S))


# --- adapter and fusion ---


def test_adapter_shape_and_last_step_is_an_exact_rotation():
    torch.manual_seed(0)
    a = VisualProjectionAdapter(DV, H)
    with torch.no_grad():
        a.rotation.generators.normal_(0, 0.5)
    x = torch.randn(3, 5, DV)
    out, normed = a(x), a.normed(x)
    assert out.shape == (3, 5, H)
    blocks = lambda t: t.reshape(3, 5, H // 8, 8).norm(dim=-1)
    torch.testing.assert_close(blocks(out), blocks(normed), atol=1e-5, rtol=1e-5)
    assert (out - normed).abs().max() > 0.1  # it really rotated
    ln = torch.nn.functional.layer_norm(a.fc2(torch.nn.functional.gelu(a.fc1(x))), (H,))  # LayerNorm by hand
    torch.testing.assert_close(normed, ln, atol=1e-5, rtol=1e-5)  # weight 1, bias 0 at init


def test_adapter_refuses_a_tower_of_another_width(vision_tok):
    with pytest.raises(ValueError, match="built for"):
        VisualProjectionAdapter(DV, H)(torch.randn(1, 4, DV + 8))
    with pytest.raises(ValueError, match=r"adapter.vision_hidden"):
        VisualLM(soul_lm(vision_tok), tower(), VisualProjectionAdapter(DV * 2, H), AdapterFusionLayer(H))
    with pytest.raises(ValueError, match="lm_hidden"):
        VisualProjectionAdapter(DV, 30)


def test_weighted_fusion_weights_sum_to_one_and_mix_the_paths():
    torch.manual_seed(0)
    f = AdapterFusionLayer(H, "weighted", init_visual_weight=0.3)
    t, v = torch.randn(2, 7, H), torch.randn(2, 4, H)
    w = f.path_weights(t, v)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 7))
    torch.testing.assert_close(w[0, 0], torch.tensor([0.7, 0.3]))
    expected = 0.7 * t + 0.3 * f.summary(t, v)
    torch.testing.assert_close(f(t, v), expected)


def test_attention_fusion_shapes_weights_and_identity_start():
    torch.manual_seed(0)
    f = AdapterFusionLayer(H, "attention", num_heads=4)
    t, v = torch.randn(2, 7, H), torch.randn(2, 4, H)
    assert f(t, v).shape == (2, 7, H)
    torch.testing.assert_close(f(t, v), t)  # zero output projection: starts as the text model
    with torch.no_grad():
        f.fuse.out_proj.weight.normal_()
    assert (f(t, v) - t).abs().max() > 1e-3
    w = f.path_weights(t, v)
    assert w.shape == (2, 7, 2)
    assert torch.allclose(w.sum(-1), torch.ones(2, 7))


@pytest.mark.parametrize("method", ["weighted", "attention"])
def test_text_only_path_is_unchanged_without_an_image(method):
    f = AdapterFusionLayer(H, method)
    t = torch.randn(2, 5, H)
    assert f(t, None) is t
    assert f(t, torch.zeros(2, 0, H)) is t


@pytest.mark.parametrize("method", ["weighted", "attention"])
def test_forward_without_prefix_equals_the_soul_lm(vision_tok, method):
    m = vlm(vision_tok, method)
    ids = torch.randint(5, len(vision_tok), (2, 9))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        ref = m.soul(ids, mask).logits
        torch.testing.assert_close(m(ids, mask).logits, ref, atol=1e-5, rtol=1e-5)
        empty = torch.zeros(2, 0, H)
        torch.testing.assert_close(m(ids, mask, prefix=empty).logits, ref, atol=1e-5, rtol=1e-5)
        # with a prefix, the text positions see it: logits change, shape stays (B, T, V)
        out = m(ids, mask, pixels(2)).logits
    assert out.shape == ref.shape
    assert (out - ref).abs().max() > 1e-4


def test_prefix_enters_as_inputs_embeds_with_extended_mask(vision_tok):
    m = vlm(vision_tok)
    ids, px = torch.randint(5, len(vision_tok), (2, 6)), pixels(2)
    with torch.no_grad():
        P = m.visual_prefix(px)
        lm = m.soul.model.get_base_model()
        embeds = torch.cat([P, lm.get_input_embeddings()(ids)], 1)
        h = lm.model(inputs_embeds=embeds, attention_mask=torch.ones(2, embeds.shape[1])).last_hidden_state
        expected = lm.lm_head(m.fusion(m.soul.mix(h[:, P.shape[1] :]), P))
        torch.testing.assert_close(m(ids, pixel_values=px).logits, expected, atol=1e-5, rtol=1e-5)


# --- training keeps the frozen parts frozen ---


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weighted", "attention"])
def test_training_moves_only_adapter_and_fusion(vision_tok, method):
    m = vlm(vision_tok, method)
    frozen = {
        "lm_base_lora": _snapshot(m.soul.model),
        "soul_rotation": _snapshot(m.soul.rotation),
        "soul_alpha": _snapshot(m.soul.alpha),
        "tower": _snapshot(m.tower),
    }
    assert any("lora_B" in k for k in frozen["lm_base_lora"])
    trained = _snapshot(m.adapter) | {f"f.{k}": v for k, v in _snapshot(m.fusion).items()}
    samples = vd.generate(seed=1, n=6)
    recs = vt.train_adapter(
        m,
        vision_tok,
        to_pixels([s.image for s in samples], m.spec),
        vd.text_tasks(samples),
        steps=3,
        batch_size=4,
        lr=1e-2,
    )
    assert len(recs) == 3
    assert all(math.isfinite(r["loss"]) for r in recs)
    for name, snap in frozen.items():
        now = _snapshot(
            {
                "lm_base_lora": m.soul.model,
                "soul_rotation": m.soul.rotation,
                "soul_alpha": m.soul.alpha,
                "tower": m.tower,
            }[name]
        )
        assert all(torch.equal(snap[k], now[k]) for k in snap), f"{name} changed"
    after = _snapshot(m.adapter) | {f"f.{k}": v for k, v in _snapshot(m.fusion).items()}
    assert sum(not torch.equal(trained[k], after[k]) for k in trained) >= len(trained) // 2
    assert not m.soul.training
    assert not m.tower.training


def test_train_mode_checkpoints_the_frozen_decoder_without_dropout(vision_tok):
    m = vlm(vision_tok, "attention")
    lm = m.soul.model.get_base_model()
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls, mlp = [], lm.model.layers[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]  # hooks do not fire on recompute
    m.train()
    assert all(layer.training for layer in lm.model.layers)  # transformers checkpoints only layers in train mode
    assert not any(mod.training for layer in lm.model.layers for mod in layer.modules() if mod is not layer)
    out = m(torch.tensor([[1, 5, 6, 7]]), pixel_values=pixels(1), labels=torch.tensor([[1, 5, 6, 7]]))
    out.loss.backward()
    assert len(calls) == 2  # forward, then the recompute in backward
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.adapter.fc1.parameters())
    m.eval()
    assert not any(layer.training for layer in lm.model.layers)


# --- scoring ---


def test_encode_row_labels_only_the_target(vision_tok):
    ids, labels = vt.encode_row(vision_tok, "何色ですか？", "赤")
    end = vision_tok.convert_tokens_to_ids("<|end|>")
    n_target = len(vision_tok("赤", add_special_tokens=False)["input_ids"]) + 1
    assert ids[0] == vision_tok.bos_token_id
    assert ids[-1] == end
    assert len(ids) == len(labels)
    assert labels[:-n_target] == [-100] * (len(ids) - n_target)
    assert labels[-n_target:] == ids[-n_target:]


@pytest.mark.slow
def test_teacher_forced_exact_match_equals_greedy_decoding(vision_tok):
    m = vlm(vision_tok, "attention", seed=1)
    samples = vd.generate(seed=7, n=4)
    px = to_pixels([s.image for s in samples], m.spec)
    rows = vd.text_tasks(samples, with_captions=False)[:6]
    vt.train_adapter(m, vision_tok, px, rows, steps=200, batch_size=6, lr=2e-2)  # fit these rows so some become exact
    scores = vt.score_rows(m, vision_tok, px, rows)
    for (i, q, a, _), s in zip(rows, scores):
        greedy = vt.greedy_answer(m, vision_tok, q, px[i : i + 1], max_new_tokens=8)
        assert s["exact"] == (greedy == a), (q, a, greedy)
    assert any(s["exact"] for s in scores)


def test_paired_difference_by_hand_and_resamples_images():
    rows = [
        (0, "q", "a", "colour"),
        (0, "q", "a", "count"),
        (1, "q", "a", "count"),
        (1, "c", "a", "caption"),
        (2, "q", "a", "word"),
    ]
    a = [{"exact": e} for e in (False, False, True, False, True)]
    b = [{"exact": e} for e in (True, True, True, True, False)]
    out = vt.paired_difference(a, b, rows, n_boot=2000)
    assert out["questions"] == 4
    assert out["images"] == 3
    assert out["diff"] == pytest.approx((1 + 1 + 0 - 1) / 4)
    lo, hi = out["ci95"]
    # three images (one +1, one +1/2, one -1): 2 degrees of freedom, nothing shown
    assert lo < 0 < hi
    assert out["p"] > 0.05
    same = vt.paired_difference(a, a, rows)
    assert same["diff"] == 0
    assert same["ci95"] == [0.0, 0.0]
    assert same["p"] == 1.0
    many = [(i // 2, "q", "a", "count") for i in range(40)]  # 20 images, b right on every question
    won = vt.paired_difference([{"exact": False}] * 40, [{"exact": i % 3 > 0} for i in range(40)], many)
    assert won["ci95"][0] > 0
    assert won["p"] < 0.01
    assert won["images"] == 20
    with pytest.raises(ValueError, match="scores"):
        vt.paired_difference(a[:-1], b, rows)


def test_visual_path_weight_of_weighted_fusion_is_its_softmax_weight(vision_tok):
    m = vlm(vision_tok, "weighted")
    samples = vd.generate(seed=2, n=3)
    px = to_pixels([s.image for s in samples], m.spec)
    w = vt.visual_path_weight(m, vision_tok, px, vd.text_tasks(samples)[:5], batch_size=2)
    assert w == pytest.approx(float(torch.softmax(m.fusion.path_logits, 0)[1]), abs=1e-6)
    a = vlm(vision_tok, "attention")
    wa = vt.visual_path_weight(a, vision_tok, px, vd.text_tasks(samples)[:5])
    assert 0.0 <= wa <= 1.0


def test_summarise_by_hand():
    scores = [
        {"kind": "count", "exact": True, "correct": 2, "tokens": 2},
        {"kind": "count", "exact": False, "correct": 1, "tokens": 2},
        {"kind": "word", "exact": True, "correct": 3, "tokens": 3},
        {"kind": "caption", "exact": False, "correct": 3, "tokens": 4},
    ]
    assert vt.summarise(scores) == {"em_count": 0.5, "em_word": 1.0, "em_all": 2 / 3, "caption_token_acc": 0.75}


def test_sigmoid_contrastive_loss_by_hand():
    img, txt = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    same = torch.eye(2, dtype=torch.bool)
    # normalised: cosine 1 on the diagonal, 0 off it; logits = e^0 * cos + 0.5
    expected = -(2 * math.log(1 / (1 + math.exp(-1.5))) + 2 * math.log(1 / (1 + math.exp(0.5)))) / 2
    got = vt.sigmoid_contrastive_loss(img, txt, torch.tensor(0.0), torch.tensor(0.5), same)
    assert got.item() == pytest.approx(expected, rel=1e-6)


# --- saving and loading ---


def test_save_load_round_trip_and_mismatch(tmp_path, vision_tok):
    cfg = VisualConfig(DV, H, H, method="attention")
    a, f = cfg.build()
    with torch.no_grad():
        a.rotation.generators.normal_()
        f.fuse.out_proj.weight.normal_()
    save_visual(tmp_path / "v", a, f, cfg)
    a2, f2, cfg2 = load_visual(tmp_path / "v")
    x, t = torch.randn(1, 3, DV), torch.randn(1, 2, H)
    assert cfg2 == cfg
    torch.testing.assert_close(a2(x), a(x))
    torch.testing.assert_close(f2(t, a(x)), f(t, a(x)))
    raw = json.loads((tmp_path / "v" / "visual_config.json").read_text())
    (tmp_path / "v" / "visual_config.json").write_text(json.dumps({**raw, "vision_hidden": DV * 2}))
    with pytest.raises(ValueError, match="does not fit"):
        load_visual(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match=r"visual.safetensors"):
        load_visual(tmp_path)


def test_load_vision_tower_from_folders_and_clear_error_offline(tmp_path):
    tower().save_pretrained(tmp_path / "siglip")
    torch.manual_seed(0)
    CLIPVisionModel(
        CLIPVisionConfig(
            image_size=S, patch_size=8, hidden_size=DV, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(tmp_path / "clip")
    sig, clip = load_vision_tower(tmp_path / "siglip"), load_vision_tower(tmp_path / "clip")
    assert type(sig).__name__ == "SiglipVisionModel"
    assert type(clip).__name__ == "CLIPVisionModel"
    assert clip.config.hidden_size == DV
    with pytest.raises(VisionTowerUnavailable, match="hf download so8t-test/no-such-tower"):
        load_vision_tower("so8t-test/no-such-tower")


# --- stage config ---


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"image_size": 30}, "image_size=30"),
        ({"tower_heads": 5}, "tower_heads=5"),
        ({"render_size": 16}, "render_size"),
        ({"word_fraction": 1.5}, "word_fraction"),
        ({"init_visual_weight": 1.0}, "init_visual_weight"),
        ({"map": "qr"}, "map='qr'"),
        ({"adapter_steps": 0}, "adapter_steps=0"),
        ({"torch_threads": -1}, "torch_threads"),
    ],
)
def test_stage_config_rejects_bad_values_by_name(bad, match):
    from so8t_core.config import VisualStageConfig

    VisualStageConfig()  # the defaults are valid
    with pytest.raises(ValueError, match=match):
        VisualStageConfig(**bad)
