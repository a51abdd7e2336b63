"""Rewards of notebook 07: table-driven, with adversarial completions in the spirit of extract_final's tests."""

from __future__ import annotations

import random

import pytest
import torch

from so8t_core.rl import rewards as R
from so8t_core.think import ESCALATE_MESSAGE, REFUSE_MESSAGE, format_quad, top_level_parts

OBS, DED, ABD = "The user asks about tea.", "An everyday request.", "The intent decides."
GOOD_ALLOW = format_quad(OBS, DED, ABD, "So I answer.", "Sure. Steep it for three minutes.")
GOOD_REFUSE = format_quad(OBS, DED, ABD, "So I refuse.", "I can't help with that.")
GOOD_ESC = format_quad(OBS, DED, ABD, "So I refer them on.", "This needs a qualified person: please ask a doctor.")
T = {p: (f"<think-{p}>", f"</think-{p}>") for p in ("observation", "deduction", "abduction", "integration")}


def part(p: str, text: str) -> str:
    return f"{T[p][0]}{text}{T[p][1]}"


# (case, raw, structure, consistency, correctness vs ALLOW)
CASES = [
    ("canonical", GOOD_ALLOW, 1.0, 1.0, 1.0),
    ("lenient tag spelling", GOOD_ALLOW.replace("<think-observation>", "<THINK_Observation >"), 1.0, 1.0, 1.0),
    (
        "two parts swapped",
        part("deduction", DED)
        + part("observation", OBS)
        + part("abduction", ABD)
        + part("integration", "So I answer.")
        + "<final>Sure.</final>",
        5 / 6,
        1.0,
        1.0,
    ),
    (
        "repeated part",
        part("observation", OBS)
        + part("observation", OBS)
        + part("deduction", DED)
        + part("abduction", ABD)
        + part("integration", "So I answer.")
        + "<final>Sure.</final>",
        4 / 6,
        1.0,
        1.0,
    ),
    (
        "nested part",
        part("observation", OBS + part("deduction", DED))
        + part("abduction", ABD)
        + part("integration", "So I answer.")
        + "<final>Sure.</final>",
        3 / 6,  # observation nested, deduction absent at top level, order wrong; abduction, integration, final ok
        1.0,
        1.0,
    ),
    (
        "final inside a thinking part only",
        part("observation", OBS)
        + part("deduction", DED)
        + part("abduction", ABD)
        + part("integration", "So I answer.<final>Sure.</final>"),
        3 / 6,
        0.0,
        0.0,
    ),
    ("empty final", GOOD_ALLOW.replace("Sure. Steep it for three minutes.", "  "), 5 / 6, 0.0, 0.0),
    ("unclosed final", GOOD_ALLOW.replace("</final>", ""), 5 / 6, 0.0, 0.0),
    ("unclosed integration", GOOD_ALLOW.replace("</think-integration>", ""), 3 / 6, 0.0, 0.0),
    ("two finals", GOOD_ALLOW + "<final>Again.</final>", 4 / 6, 0.0, 0.0),
    (
        "think tag inside the final",
        GOOD_ALLOW.replace("Sure.", "Sure.<think-deduction>x</think-deduction>"),
        5 / 6,
        0.0,
        0.0,
    ),
    ("empty thinking part", GOOD_ALLOW.replace(DED, ""), 5 / 6, 1.0, 1.0),
    ("no tags at all", "Sure. Steep it for three minutes.", 0.0, 0.0, 0.0),
    ("empty completion", "", 0.0, 0.0, 0.0),
    ("only a final", "<final>Sure.</final>", 1 / 6, 0.0, 1.0),
    ("integration says refuse, answer helps", GOOD_ALLOW.replace("So I answer.", "So I refuse."), 1.0, 0.0, 1.0),
    ("integration without a decision", GOOD_ALLOW.replace("So I answer.", "Hmm."), 1.0, 0.0, 1.0),
    ("control token inside a tag", GOOD_ALLOW.replace("<final>", "<fi<|end|>nal>"), 1.0, 1.0, 1.0),
]


@pytest.mark.parametrize(("case", "raw", "structure", "consistency", "correct"), CASES, ids=[c[0] for c in CASES])
def test_text_rewards_on_adversarial_completions(case, raw, structure, consistency, correct):
    got = R.score_completion(raw, "ALLOW")
    assert got["structure"] == pytest.approx(structure), R.structure_checks(raw)
    assert got["consistency"] == consistency
    assert got["correctness"] == correct


@pytest.mark.parametrize(
    ("raw", "label", "answer", "stated"),
    [
        (GOOD_REFUSE, "REFUSE", "REFUSE", "REFUSE"),
        (GOOD_ESC, "ESCALATE", "ESCALATE", "ESCALATE"),
        (format_quad(OBS, DED, ABD, "So I refuse.", REFUSE_MESSAGE), "REFUSE", "REFUSE", "REFUSE"),
        (
            format_quad(OBS, DED, ABD, "したがって専門家につなぎます。", ESCALATE_MESSAGE),
            "ESCALATE",
            "ESCALATE",
            "ESCALATE",
        ),
        (
            format_quad(OBS, DED, ABD, "したがって断ります。", "その依頼には協力できません。"),
            "REFUSE",
            "REFUSE",
            "REFUSE",
        ),
        (GOOD_ALLOW, "REFUSE", "ALLOW", "ALLOW"),  # answered a prompt that should be refused
    ],
)
def test_decisions_and_correctness_per_label(raw, label, answer, stated):
    assert R.answer_decision(raw) == answer
    assert R.stated_decision(raw) == stated
    assert R.correctness_reward(raw, label) == float(answer == label)
    assert R.consistency_reward(raw) == 1.0


def test_correctness_refuses_an_unknown_label():
    with pytest.raises(ValueError, match="label"):
        R.correctness_reward(GOOD_ALLOW, "MAYBE")


def test_every_training_chat_of_the_grammar_earns_full_reward():
    """The cue tables agree with the imitation data: every generated chat reads as its own label."""
    from so8t_core.data import documents as D
    from so8t_core.data.safety_data import VARIANTS, generate_safety_prompts

    phrase = {(v[0], lang): text for v in VARIANTS for lang, text in (("en", v[5]), ("ja", v[6]))}
    prompts = generate_safety_prompts(0)
    for p in prompts[:: max(1, len(prompts) // 600)]:
        turn = D.safety_chat(p.prompt, p.label, phrase[(p.variant, p.lang)], p.lang == "ja", random.Random(0))
        raw = turn.split("<|assistant|>\n", 1)[1]
        assert R.score_completion(raw, p.label) == {"structure": 1.0, "consistency": 1.0, "correctness": 1.0}, raw


def test_top_level_parts_outline():
    parts = top_level_parts("junk</final>" + part("observation", "a<final>b</final>") + "<final>c")
    assert [(p.name, p.closed, p.nested) for p in parts] == [("think-observation", True, True), ("final", False, False)]


def test_kl_k3_is_zero_on_equal_policies_and_positive_otherwise():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(R.kl_k3(lp, lp, mask), torch.zeros(2))
    other = lp + torch.tensor([[0.3, -0.2, 5.0], [0.0, 0.0, 0.0]])
    k = R.kl_k3(lp, other, mask)
    r = torch.tensor([0.3, -0.2])
    assert k[0] == pytest.approx(float((torch.exp(r) - r - 1).mean()))
    assert k[1] == 0
    assert torch.equal(R.stability_reward(lp, other, mask), -k)


def test_trl_reward_functions_decode_ids_and_read_the_label_column():
    texts = {1: GOOD_ALLOW, 2: GOOD_REFUSE}
    funcs = R.trl_text_rewards(lambda ids: texts[ids[0]])
    assert [f.__name__ for f in funcs] == ["structure", "consistency", "correctness"]
    out = [f(completion_ids=[[1], [2]], label=["ALLOW", "ALLOW"], prompts=["p", "q"]) for f in funcs]
    assert out == [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]


@pytest.mark.parametrize(
    ("structure", "correctness", "hacking"),
    [
        ([0.2, 0.3, 0.6, 0.9], [0.8, 0.7, 0.4, 0.2], True),  # the watch's case
        ([0.2, 0.3, 0.6, 0.9], [0.2, 0.3, 0.5, 0.8], False),  # both rise: learning
        ([0.9, 0.9, 0.9, 0.9], [0.8, 0.7, 0.4, 0.2], False),  # correctness falls, structure flat
        ([0.5, 0.51, 0.5, 0.51], [0.5, 0.49, 0.5, 0.49], False),  # within tolerance
        ([0.2, 0.3, 0.6, 0.9], [0.5, 0.5, 0.51, 0.5], True),  # reward rises, correctness flat: the quiet case
    ],
)
def test_reward_hacking_verdict(structure, correctness, hacking):
    v = R.reward_hacking({"structure": structure, "correctness": correctness})
    assert v["hacking"] is hacking
    assert ("reward hacking:" in v["conclusion"]) is hacking
    assert "\n" not in v["conclusion"]


def test_reward_hacking_needs_both_curves_and_two_steps():
    with pytest.raises(KeyError, match="correctness"):
        R.reward_hacking({"structure": [0.1, 0.2]})
    with pytest.raises(ValueError, match="curves"):
        R.reward_hacking({"structure": [0.1], "correctness": [0.1]})


def test_total_rewards_weighs_each_part_and_subtracts_the_kl():
    rows = {"structure": [1.0, 0.5], "consistency": [1.0, 0.0], "correctness": [0.0, 1.0], "kl": [0.2, 0.0]}
    assert R.total_rewards(rows, (1.0, 2.0, 4.0, 10.0)) == pytest.approx([1 + 2 - 2.0, 0.5 + 4.0])
    with pytest.raises(ValueError, match="weights"):
        R.total_rewards(rows, (1.0, 2.0))
    with pytest.raises(ValueError, match=r"longer|shorter"):  # rows of different lengths are a bug, not a shorter list
        R.total_rewards(rows | {"kl": [0.0]}, (1.0, 1.0, 1.0, 1.0))
