"""The findings notebooks log come from these functions: table-driven cases, and missing inputs raise."""

from __future__ import annotations

import math

import pytest

from so8t_core.config import AlphaStageConfig, SoulStageConfig
from so8t_core.export.gguf import parity_targets
from so8t_core.studies.gate_studies import rotation_reading, rotation_verdicts
from so8t_core.think import format_quad, in_quad_layout
from so8t_core.verdicts import higher, lower, need
from so8t_core.vision.train import text_only_baselines


def test_need_names_the_missing_key_and_what_needed_it() -> None:
    assert need({"a": 1}, "a", "x") == 1
    with pytest.raises(KeyError, match=r"soul_verdicts: no 'b' among \['a'\]"):
        need({"a": 1}, "b", "soul_verdicts")
    assert lower({"a": 1.0, "b": 2.0}, "a", "b", "x")
    assert not higher({"a": 1.0, "b": 2.0}, "a", "b", "x")
    assert not lower({"a": 2.0, "b": 2.0}, "a", "b", "x")  # a tie is no win


# --- notebook 04 ---
def row(t, diff, top1, ppl):
    return {"type": t, "max_abs_diff": diff, "top1_agreement": top1, "ppl": ppl}


@pytest.mark.parametrize(
    ("wrapper", "table", "key", "want"),
    [
        ({"max_abs_diff": 5e-5}, [row("f32", 1e-4, 1.0, 10.0)], "fused_vs_wrapper_max_abs_le_1e-4", True),
        ({"max_abs_diff": 2e-4}, [row("f32", 1e-4, 1.0, 10.0)], "fused_vs_wrapper_max_abs_le_1e-4", False),
        ({"max_abs_diff": 0.0}, [row("f32", 2e-3, 1.0, 10.0)], "f32_max_abs_le_1e-3_and_top1_100", False),
        ({"max_abs_diff": 0.0}, [row("f32", 1e-4, 0.99, 10.0)], "f32_max_abs_le_1e-3_and_top1_100", False),
        ({"max_abs_diff": 0.0}, [row("f32", 0, 1, 10.0)], "f16_top1_ge_99", None),
        ({"max_abs_diff": 0.0}, [row("f32", 0, 1, 10.0), row("f16", 0.1, 0.985, 10.0)], "f16_top1_ge_99", False),
        (
            {"max_abs_diff": 0},
            [row("f32", 0, 1, 10.0), row("q8_0", 1, 0.9, 10.05)],
            "q8_0_ppl_within_1pct_of_f32",
            True,
        ),
        ({"max_abs_diff": 0}, [row("f32", 0, 1, 10.0), row("q8_0", 1, 0.9, 9.8)], "q8_0_ppl_within_1pct_of_f32", False),
    ],
)
def test_parity_targets(wrapper, table, key, want) -> None:
    assert parity_targets(wrapper, table)[key] == want


def test_parity_targets_need_f32_and_the_wrapper_check() -> None:
    with pytest.raises(KeyError, match="f32"):
        parity_targets({"max_abs_diff": 0.0}, [row("f16", 0, 1, 1)])
    with pytest.raises(KeyError, match="max_abs_diff"):
        parity_targets({}, [row("f32", 0, 1, 1)])


# --- notebook 05 ---
def em(all_, word):
    return {"em_all": all_, "em_word": word}


RESULTS = {
    "visual_weighted": em(0.6, 0.5),
    "visual_attention": em(0.4, 0.1),
    "text_only_zero_shot": em(0.3, 0.2),
    "text_only_blind_weighted": em(0.5, 0.1),
    "text_only_blind_attention": em(0.2, 0.3),
}
METHODS = ("weighted", "attention")


def test_text_only_rival_is_the_better_of_zero_shot_and_the_blind_twin() -> None:
    assert text_only_baselines(RESULTS, METHODS) == {
        "weighted": "text_only_blind_weighted",
        "attention": "text_only_zero_shot",
    }


# --- notebook 00 ---
QUAD = format_quad("o", "d", "a", "i", "answer")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (QUAD, True),
        ("  " + QUAD + " trailing", True),
        (QUAD.replace("<final>answer</final>", ""), False),
        (QUAD.replace("<think-observation>o</think-observation>", ""), False),
        (format_quad("o", "<b>", "a", "i", "x"), False),  # a tag inside a part
        ("<final>answer</final>", False),
        ("", False),
    ],
)
def test_in_quad_layout(text: str, want: bool) -> None:
    assert in_quad_layout(text) is want


def test_in_quad_layout_needs_the_parts_in_order() -> None:
    swapped = QUAD.replace("observation", "TMP").replace("deduction", "observation").replace("TMP", "deduction")
    assert not in_quad_layout(swapped)


# --- configs from a notebook's namespace ---
def test_from_namespace_takes_the_fields_and_ignores_the_rest() -> None:
    ns = {f: getattr(AlphaStageConfig(), f) for f in AlphaStageConfig.__dataclass_fields__} | {"plt": object()}
    assert AlphaStageConfig.from_namespace(ns | {"exp_steps": 7}).exp_steps == 7
    with pytest.raises(ValueError, match="exp_lr"):
        AlphaStageConfig.from_namespace({k: v for k, v in ns.items() if k != "exp_lr"})
    with pytest.raises(ValueError, match="steps"):
        SoulStageConfig.from_namespace(
            {f: getattr(SoulStageConfig(), f) for f in SoulStageConfig.__dataclass_fields__} | {"steps": 0}
        )
    assert math.isclose(SoulStageConfig().alpha_target, (1 + 5**0.5) / 2)


# --- notebook 01: rotation math ---
ROT = {
    "orth_err_cayley_float32": 3e-7,
    "orth_err_exp_float32": 5e-7,
    "det_max_dev_cayley": 1e-14,
    "det_max_dev_exp": 2e-14,
    "commutator_at_scale_1": 0.8,
    "commutator_small_scale_slope": 2.01,
    "map_ms_cayley": 2.0,
    "map_ms_exp": 5.0,
    "dense_over_block_params": 877.7,
}


@pytest.mark.parametrize(
    ("change", "key", "want"),
    [
        ({}, "maps_orthogonal_float32", True),
        ({"orth_err_exp_float32": 2e-5}, "maps_orthogonal_float32", False),
        ({}, "det_plus_one_both_maps", True),
        ({"det_max_dev_exp": 1e-6}, "det_plus_one_both_maps", False),
        ({}, "order_matters", True),
        ({"commutator_at_scale_1": 1e-3}, "order_matters", False),
        ({}, "commutator_quadratic_at_small_scale", True),
        ({"commutator_small_scale_slope": 1.0}, "commutator_quadratic_at_small_scale", False),
        ({}, "cheaper_map", "cayley"),
        ({"map_ms_exp": 1.0}, "cheaper_map", "exp"),
    ],
)
def test_rotation_verdicts(change, key, want) -> None:
    assert rotation_verdicts(ROT | change)[key] == want


def test_rotation_verdicts_conclusion_follows_the_numbers() -> None:
    assert rotation_verdicts(ROT)["conclusion"].startswith("Cayley and exp give exact rotations in float32")
    assert "878x fewer" in rotation_verdicts(ROT)["conclusion"]
    assert "cayley maps 2.5x faster" in rotation_verdicts(ROT)["conclusion"]
    assert "do not both stay orthogonal" in rotation_verdicts(ROT | {"orth_err_cayley_float32": 1.0})["conclusion"]
    with pytest.raises(KeyError, match="rotation_verdicts: no 'map_ms_exp'"):
        rotation_verdicts({k: v for k, v in ROT.items() if k != "map_ms_exp"})


def test_rotation_reading_quotes_the_run() -> None:
    metrics = ROT | {"householder_det": -1.0, "gate_ratio_block_cayley": 3.25, "gate_ratio_dense": 40.0}
    lines = rotation_reading(metrics, rotation_verdicts(metrics))
    assert lines[0] == rotation_verdicts(metrics)["conclusion"]
    assert "slope 2.01" in lines[2]
    assert "quadratically, as theory says" in lines[2]
    assert lines[3].endswith("block_cayley 3.2x, dense 40.0x.")  # cheapest first
    bent = metrics | {"commutator_small_scale_slope": 1.0}
    assert "not quadratically" in rotation_reading(bent, rotation_verdicts(bent))[2]
    with pytest.raises(KeyError, match="rotation_reading: no 'householder_det'"):
        rotation_reading(ROT, rotation_verdicts(ROT))
