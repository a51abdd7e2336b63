"""Notebook 03's soul study: task generators, tier-A heads, tier-B sizes and the verdict functions (table-driven)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from so8t_core.config import SoulStageConfig
from so8t_core.data import tasks
from so8t_core.studies import head_study as hs
from so8t_core.studies import soul_verdicts as sv

WORDS = [
    ("歩行", "ほこう", "walk"),
    ("根底", "こんてい", "root"),
    ("建前", "たてまえ", "face"),
    ("水素", "すいそ", "hydrogen"),
]
DOCS = [f'The Japanese word {w} ({r}) means "{g}".' for w, r, g in WORDS] * 2 + [
    "「奮起」（ふんき）は英語で「rousing」という意味です。",  # seen once: not known at min_count 2
    'The Japanese word 紺 (こん) means "navy blue".',  # two-word gloss
    'The Japanese word 紺 (こん) means "navy blue".',
]
FACTS = tasks.known_facts(DOCS)


# --- tasks ---


def test_known_facts_keep_seen_one_word_facts_only():
    assert [f.gloss for f in FACTS] == ["walk", "root", "face", "hydrogen"]
    assert [f.gloss for f in tasks.known_facts(DOCS, min_count=1)][-1] == "rousing"
    assert len(tasks.known_facts(DOCS, limit=2)) == 2


@pytest.mark.parametrize("task", tasks.TASKS)
def test_make_task_is_deterministic_and_sized(task):
    a = tasks.make_task(task, 0, FACTS, n_train=50, n_dev=20, n_test=30)
    assert a == tasks.make_task(task, 0, FACTS, n_train=50, n_dev=20, n_test=30)
    assert a != tasks.make_task(task, 1, FACTS, n_train=50, n_dev=20, n_test=30)
    assert {s: len(v) for s, v in a.items()} == {"train": 50, "dev": 20, "test": 30}


@pytest.mark.parametrize("task", tasks.TASKS)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_test_templates_are_disjoint_from_train_and_dev(task, seed):
    sp = tasks.make_task(task, seed, FACTS, n_train=300, n_dev=100, n_test=100)
    used = {s: {it.template for it in sp[s]} for s in tasks.SPLITS}
    assert not used["test"] & (used["train"] | used["dev"])
    assert len(used["test"]) >= 2
    assert not {it.prompt for it in sp["test"]} & {it.prompt for it in sp["train"]}


def test_arith_tests_operand_pairs_never_trained_and_answers_are_right():
    sp = tasks.make_task("arith", 0, n_train=500, n_dev=50, n_test=100)
    pairs = {s: set() for s in tasks.SPLITS}
    for s in tasks.SPLITS:
        for it in sp[s]:
            nums = [int(x) for x in __import__("re").findall(r"\d+", it.prompt)][:3]
            assert int(it.answer) == (nums[0] + nums[1]) * nums[2]
            pairs[s].add(tuple(nums[:2]))
    assert not pairs["test"] & pairs["train"]


@pytest.mark.parametrize(("task", "check"), [("remap", "permuted"), ("format", "upper")])
def test_fact_answers(task, check):
    sp = tasks.make_task(task, 0, FACTS, n_train=64, n_dev=16, n_test=16)
    gloss = {f.word: f.gloss for f in FACTS}
    answer_of: dict[str, str] = {}
    for it in sp["train"] + sp["test"]:
        word = next(w for w in gloss if w in it.prompt)
        if check == "upper":
            assert it.answer == gloss[word].upper()
        else:
            assert it.answer != gloss[word]
            assert it.answer in gloss.values()
            assert answer_of.setdefault(word, it.answer) == it.answer  # one fixed permutation


@pytest.mark.parametrize(("n", "seed"), [(2, 0), (5, 1), (100, 3)])
def test_derangement_has_no_fixed_point(n, seed):
    p = tasks.derangement(n, seed)
    assert sorted(p) == list(range(n))
    assert all(p[i] != i for i in range(n))


def test_encode_items_labels_only_the_answer(corpus_tok):
    tok, _ = corpus_tok
    items = [tasks.Item("Q: What is 2 + 3? A:", "5", 0), tasks.Item("Q: x? A:", "blue", 1)]
    enc = tasks.encode_items(tok, items)
    for i, it in enumerate(items):
        lab = enc["labels"][i][enc["labels"][i] != -100].tolist()
        assert lab[-1] == tok.eos_token_id
        assert tok.decode(lab[:-1]).strip() == it.answer


def test_make_task_refuses_bad_arguments():
    with pytest.raises(ValueError, match="task="):
        tasks.make_task("nope", 0, FACTS)
    with pytest.raises(ValueError, match="facts="):
        tasks.make_task("remap", 0, FACTS[:1])
    with pytest.raises(ValueError, match="n_test="):
        tasks.make_task("arith", 0, n_test=0)


# --- tier A heads ---

H, V = 16, 40


@pytest.fixture
def base_head():
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(H, elementwise_affine=True)
    return norm, torch.nn.Linear(H, V, bias=False)


@pytest.mark.parametrize(
    ("family", "kw", "params", "same_as_base"),
    [
        ("temperature", {}, 1, True),
        ("ln", {}, 2 * H, True),  # LayerNorm here: weight and bias
        ("ia3", {}, H, True),
        ("oft", {}, H // 8 * 28, True),
        ("lora_r1", {}, H + V, True),
        ("lora_temp", {}, H + V + 1, True),
        ("soul", {"alpha": 0.0, "learned": True}, H // 8 * 28 + 1, False),
        ("soul", {"alpha": 1.0, "learned": False}, H // 8 * 28, False),
        ("soul_composed", {}, 2 * H // 8 * 28 + 1, False),
        ("soul_normed", {}, H // 8 * 28 + 1, True),  # (h + s h) / (1 + s) = h at R = I
    ],
)
def test_tier_a_families_sizes_and_start(base_head, family, kw, params, same_as_base):
    norm, head = base_head
    m = hs.build(family, norm, head, **kw)
    x = torch.randn(5, H)
    assert hs.n_trainable(m) == params
    assert torch.allclose(m(x), head(norm(x)), atol=1e-5) == same_as_base
    base_ids = {id(norm.weight), id(norm.bias), id(head.weight)}
    assert not any(id(p) in base_ids for p in m.parameters())  # the variant trains copies, never the base


@pytest.mark.slow
def test_tier_a_fit_lowers_the_loss_and_score_counts_items(base_head):
    norm, head = base_head
    x = torch.randn(60, H)
    data = hs.Cached(x, (x[:, 0] > 0).long() * 3, torch.arange(60) // 2, 30)  # two positions per item
    before = hs.score(hs.build("oft", norm, head), data)
    after = hs.score(hs.fit(hs.build("lora_r1", norm, head), data, 0.05, 80, 32, 0), data)
    assert before["nll"].shape == (30,)
    assert after["nll"].mean() < before["nll"].mean()
    assert set(np.unique(after["em"])) <= {0.0, 1.0}


def toy_cache() -> dict[str, hs.Cached]:
    g = torch.Generator().manual_seed(1)

    def split(n: int) -> hs.Cached:
        x = torch.randn(2 * n, H, generator=g)
        return hs.Cached(x, (x[:, 0] > 0).long() * 3, torch.arange(2 * n) // 2, n)

    return {"train": split(40), "dev": split(15), "test": split(15)}


def test_tier_a_extends_a_grid_whose_best_rate_is_its_end_and_marks_the_edge(base_head):
    norm, head = base_head
    cache, spec = toy_cache(), {"family": "lora_r1"}
    tiny = hs.tune_lr(spec, cache, norm, head, hs.TierA((1e-6, 2e-6), 10, 16, (1, 2), max_extensions=2))
    assert tiny["edge"]
    assert tiny["side"] == "high"
    assert tiny["grid"] == pytest.approx([1e-6, 2e-6, 4e-6, 8e-6])
    assert len(tiny["curves"]) == 4
    assert all(len(c) == 10 for c in tiny["curves"].values())
    one = hs.tune_lr(spec, cache, norm, head, hs.TierA((0.01,), 10, 16, (1, 2)))
    assert one["edge"]
    assert one["side"] == "untuned"
    wide = hs.tune_lr(spec, cache, norm, head, hs.TierA((1e-4, 0.03, 10.0), 10, 16, (1, 2), max_extensions=0))
    assert not wide["edge"]
    assert wide["choice"] == 0.03


@pytest.mark.slow
def test_tier_a_seeds_replicate_and_a_run_repeats_exactly(base_head):
    norm, head = base_head
    specs = {k: v for k, v in hs.variant_specs((0.0, 1.0, 2.0)).items() if k in ("base", "oft", "lora_temp")}
    run = hs.TierA((0.01, 0.03), 8, 16, (1, 2, 3))
    a, b = (hs.run_task(toy_cache(), norm, head, run, specs) for _ in range(2))
    assert all(np.array_equal(a["nll"][v], b["nll"][v]) for v in specs)
    assert a["lr"] == b["lr"]
    assert not np.allclose(a["nll"]["oft"][0], a["nll"]["oft"][1])  # order and dropout differ per seed
    assert set(a["tuning"]) == {"oft", "lora_temp"}
    assert set(a["edge_variants"]) <= {"oft", "lora_temp"}


@pytest.mark.parametrize(("a", "name"), [(1.618033988749895, "soul_a1.618"), (1.5, "soul_a1.5"), (-2.0, "soul_a-2")])
def test_alpha_names(a, name):
    assert hs.alpha_name(a) == name


# --- verdicts ---


def row(mean, lo, hi, p_holm=0.001, min_effect=0.0):
    return {"mean": mean, "estimate": mean, "lo": lo, "hi": hi, "p": p_holm, "p_holm": p_holm,
            "min_effect": min_effect}  # fmt: skip


@pytest.mark.parametrize(
    ("r", "want"),
    [
        (row(-1, -2, -0.5), "better"),
        (row(1, 0.5, 2), "worse"),
        (row(-1, -2, 0.5), "no clear difference"),  # interval straddles 0
        (row(-1, -2, -0.5, min_effect=1.5), "no clear difference"),  # smaller than the named minimum effect
        (row(-1, -2, -0.5, p_holm=0.2), "no clear difference"),  # not significant after Holm
    ],
)
def test_outcome(r, want):
    assert sv.outcome(r) == want


@pytest.mark.parametrize(
    ("gate", "want"),
    [
        ({"remap": row(-1, -2, -0.5)}, {"remap": True}),
        ({"remap": row(-1, -2, 0.1)}, {"remap": False}),  # LoRA not clearly better than the base
        ({"remap": row(0.5, 0.1, 1.0), "arith": row(-0.2, -0.3, -0.1)}, {"remap": False, "arith": True}),
    ],
)
def test_validity_gate(gate, want):
    assert sv.validity(gate) == want


WIN, TIE = row(-1, -2, -0.5), row(-0.1, -1, 0.8)
PHI, R1, R2 = "soul_a1.618", "soul_a1.5", "soul_a1.75"
ALL = {"remap": True, "format": True, "arith": True}


def phi_rows(outcomes: dict[str, tuple[dict, dict]]) -> dict[str, dict]:
    return {f"{t}/{PHI} - {r}": x for t, (a, b) in outcomes.items() for r, x in ((R1, a), (R2, b))}


@pytest.mark.parametrize(
    ("outcomes", "valid", "special", "on"),
    [
        ({"remap": (WIN, WIN), "format": (WIN, WIN), "arith": (TIE, TIE)}, ALL, True, ["remap", "format"]),
        ({"remap": (WIN, WIN), "format": (WIN, TIE), "arith": (TIE, TIE)}, ALL, False, ["remap"]),
        ({"remap": (WIN, WIN), "format": (WIN, WIN), "arith": (TIE, TIE)}, ALL | {"format": False}, False, ["remap"]),
        ({"remap": (TIE, TIE), "format": (TIE, TIE), "arith": (TIE, TIE)}, ALL, False, []),
    ],
)  # fmt: skip
def test_phi_special_needs_both_neighbours_on_two_valid_tasks(outcomes, valid, special, on):
    v = sv.phi_special(phi_rows(outcomes), valid, PHI, [R1, R2])
    assert v == {"phi_special": special, "phi_beats_neighbours_on": on}


def primary_rows(tier: str, tasks_: list[str], r: dict) -> dict[str, dict]:
    return {f"{t}/{a} - {b}": r for t in tasks_ for n, (x, a, b) in sv.PRIMARY.items() if x == tier}


def test_study_verdicts_skip_invalid_tasks_and_raise_on_missing_rows():
    valid = {"remap": True, "arith": False}
    rows_a, rows_b = primary_rows("A", list(valid), WIN), primary_rows("B", list(valid), WIN)
    v = sv.study_verdicts(rows_a, rows_b, valid, valid)
    assert v["soul_vs_oft_better_on"] == ["remap"]
    assert v["invalid_tasks_B"] == ["arith"]
    assert not v["phi_special"]
    assert v["lora_soul_vs_lora_worse_on"] == []
    assert v["pet_with_soul_better_on"] == ["remap"]
    assert v["no_verdict_edge"] == []
    assert any("arith invalid" in s for s in sv.reading(v))
    with pytest.raises(KeyError, match="soul - lora"):
        sv.study_verdicts(rows_a, {k: r for k, r in rows_b.items() if "soul - lora" not in k}, valid, valid)


def test_an_edge_chosen_learning_rate_yields_no_verdict():
    valid = {"remap": True}
    rows_a, rows_b = primary_rows("A", ["remap"], WIN), primary_rows("B", ["remap"], WIN)
    marked = sv.mark_edges(rows_a, {"remap": ["boft"]})  # BOFT's rate stayed at the top of its grid
    assert sv.outcome(marked["remap/soul_learned - boft"]) == "edge"
    assert sv.outcome(marked["remap/soul_learned - oft"]) == "better"
    v = sv.study_verdicts(marked, rows_b, valid, valid)
    assert v["soul_vs_boft_better_on"] == []
    assert v["soul_vs_oft_better_on"] == ["remap"]
    assert v["no_verdict_edge"] == ["A:remap/soul_vs_boft"]
    assert any("soul_vs_boft" in s for s in sv.reading(v))


def fake_results(variants, rng, shift, edge=()):
    nll = {v: rng.normal(1.0 + shift.get(v, 0.0), 0.3, (3, 12)) for v in variants}
    return {"nll": nll, "em": nll, "params": dict.fromkeys(variants, 1), "edge_variants": list(edge)}


def test_holm_runs_over_the_primary_family_only():
    rng = np.random.default_rng(0)
    va = ["base", "oft", "boft", "ia3", "lora_r1", "lora_temp", "soul_learned", "soul_composed_learned",
          "soul_normed_learned", sv.PHI, *sv.NEIGHBOURS]  # fmt: skip
    vb = ["lora", "lora_pet", "soul", "soul_pet", "soul_frozen_r", "oft_all", "lora_matched"]
    tier_a = {"remap": fake_results(va, rng, {"soul_learned": -0.5})}
    tier_b = {"remap": fake_results(vb, rng, {})}
    templates = {"remap": [i % 4 for i in range(12)]}
    rows = sv.study_rows(tier_a, tier_b, templates, n_boot=200)
    primary = {k for k, r in rows.items() if r["primary"]}
    assert primary == {sv.primary_key(n, "remap") for n in sv.PRIMARY}
    assert all(r["p_holm"] is None and sv.outcome(r) == "exploratory" for k, r in rows.items() if k not in primary)
    # one more exploratory variant (another fixed alpha) leaves every primary p_holm as it was
    tier_a["remap"]["nll"]["soul_a3"] = rng.normal(0.5, 0.3, (3, 12))
    more = sv.study_rows(tier_a, tier_b, templates, n_boot=200)
    assert len(more) > len(rows)
    assert all(more[k]["p_holm"] == rows[k]["p_holm"] for k in primary)
    assert sv.outcome(more["A:remap/soul_a3 - oft"]) == "exploratory"
    # and a primary row whose variant was tuned at an edge makes no verdict, though it stays in the family
    tier_a["remap"]["edge_variants"] = ["soul_learned"]
    edged = sv.study_rows(tier_a, tier_b, templates, n_boot=200)
    assert sv.outcome(edged["A:remap/soul_learned - oft"]) == "edge"
    assert edged["A:remap/soul_learned - oft"]["primary"]


def test_primary_names_the_alpha_variants_head_study_builds():
    assert hs.alpha_name(1.618033988749895) == sv.PHI
    assert (hs.alpha_name(1.5), hs.alpha_name(1.75)) == sv.NEIGHBOURS
    assert set(sv.CLAIMS) == set(sv.PRIMARY)
    assert 10 <= len(sv.PRIMARY) <= 14
    assert sv.MIN_EFFECT > 0


def test_compare_and_holm_rows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, (4, 12)), rng.normal(2.0, 0.1, (4, 12))
    rows = sv.add_holm(
        {
            "x": sv.compare(a, b, [i % 3 for i in range(12)], n_boot=200),
            "y": sv.compare(a, a + rng.normal(0.0, 0.1, a.shape), [i % 3 for i in range(12)], n_boot=200),
        }
    )
    assert sv.outcome(rows["x"]) == "better"
    assert rows["x"]["p_holm"] >= rows["x"]["p"]
    assert sv.outcome(rows["y"]) == "no clear difference"
    assert rows["x"]["n_seeds"] == 4
    assert rows["x"]["n_clusters"] == 3
    assert len(rows["x"]["per_seed"]) == 4


def test_compare_with_seeds_that_agree_exactly_is_no_win():
    a = np.tile(np.linspace(1.0, 2.0, 12), (4, 1))  # every seed gives the same numbers
    r = sv.compare(a, a + 0.5 + np.array([0.1, -0.1, 0.05] * 4), [i % 3 for i in range(12)], n_boot=200)
    assert r["mean"] == pytest.approx(-0.5 - 0.05 / 3)
    assert not r["degenerate"]
    assert r["df"] == pytest.approx(2.0)  # only the templates vary: 3 of them, 2 degrees of freedom
    same = sv.add_holm({"x": sv.compare(np.ones((4, 12)), np.ones((4, 12)), [i % 3 for i in range(12)])})["x"]
    assert same["degenerate"]
    assert same["p"] == 1.0
    assert sv.outcome(same) == "no clear difference"
    assert sv.validity({"t": same}) == {"t": False}


# --- tier B ---


@pytest.fixture
def tier_b_setup(tiny_lm):
    from so8t_core.gate.soul import SoulConfig

    texts = ["Q: What is 2 + 3? A: 5", "Q: What does the Japanese word 歩行 mean? A: walk"] * 20
    lm = tiny_lm(texts, hidden=32, layers=1)
    items = [tasks.Item("Q: What is 2 + 3? A:", "5", 0), tasks.Item("Q: What is 4 + 4? A:", "8", 1)] * 4
    return lm, tasks.encode_items(lm.tok, items), SoulConfig(hidden_size=32)


@pytest.mark.slow
@pytest.mark.parametrize(("freeze", "steps", "moves"), [(True, 2, False), (False, 2, True), (True, 4, True)])
def test_frozen_r_waits_for_the_gate_to_open(tier_b_setup, freeze, steps, moves):
    import copy

    from so8t_core.studies import body_study as bs

    lm, enc, soul = tier_b_setup
    run = bs.TierB.from_stage(
        SoulStageConfig(b_steps=steps, b_batch=2, b_seeds=2)
    )  # alpha: -5 at steps 0-1, sigmoid > 0.05 from step 2
    w = bs.build("soul_frozen_r", copy.deepcopy(lm.model), soul, run, seed=0)
    bs.train(w, enc, 1e-2, run, seed=0, freeze_r=freeze)
    assert bool(w.rotation.r_cmd.generators.abs().sum() > 0) == moves


def test_tier_b_sizes_and_scores(tier_b_setup):
    import copy

    from so8t_core.studies import body_study as bs

    lm, enc, soul = tier_b_setup
    run = bs.TierB.from_stage(SoulStageConfig(b_steps=1, b_batch=2, b_seeds=2))
    oft = bs.build("oft_all", copy.deepcopy(lm.model), soul, run, 0)
    matched = bs.build("lora_matched", copy.deepcopy(lm.model), soul, run, 0)
    lora, with_soul = (bs.build(v, copy.deepcopy(lm.model), soul, run, 0) for v in ("lora", "soul"))
    assert bs.n_trainable(oft) == bs.oft_params(lm.model)
    assert bs.n_trainable(with_soul) == bs.n_trainable(lora) + 2 * 32 // 8 * 28  # two rotations, scheduled alpha
    r = bs.matched_rank(lm.model)  # the smallest rank at or above OFT's size
    assert bs.n_trainable(matched) >= bs.oft_params(lm.model) > bs.n_trainable(matched) * (r - 1) / r
    s = bs.score(lora, enc)
    assert s["nll"].shape == (8,)
    assert np.all(s["nll"] > 0)


@pytest.mark.parametrize(("centre", "outside"), [(1.2, False), (4.0, True)])
def test_alpha_argmin_reading_says_when_the_parabola_extrapolates(centre, outside):
    grid = [0.0, 1.0, 1.5, 2.0, 3.0]
    nll = np.array([[(a - centre) ** 2 + 0.01 * s for a in grid] for s in range(3)])
    r = sv.alpha_argmin(grid, nll, n_boot=50)
    assert r["estimate"] == pytest.approx(centre, abs=1e-6)
    assert r["grid"] == grid
    v = {
        "valid_tasks_A": [],
        "invalid_tasks_A": [],
        "valid_tasks_B": [],
        "invalid_tasks_B": [],
        "alpha_argmin": {"t": r},
    }
    assert ("extrapolates" in sv.reading(v)[-1]) == outside


def test_report_lines_show_every_row_and_the_non_reference_primaries() -> None:
    cmp = {
        "mean": -0.1234,
        "estimate": -0.1234,
        "lo": -0.2,
        "hi": -0.05,
        "p": 0.01,
        "p_holm": 0.03,
        "per_seed": [-0.1, -0.15],
    }
    tables = [
        {"task": "remap", "variant": "oft", "params": 448, "test_nll": 1.5, "exact_match": 0.5},
        {"task": "remap", "variant": "soul_learned", "params": 449, "test_nll": 1.4, "exact_match": 0.6,
         "vs_oft": cmp | {"p_holm": None}, "outcome": "better"},
    ]  # fmt: skip
    rows = {sv.primary_key(n, "remap"): cmp for n in sv.PRIMARY}
    lines = sv.report_lines(tables, rows, ["remap"])
    assert lines[0].startswith("task")
    assert lines[0].endswith("outcome")
    assert "-0.123" in lines[2]
    assert "better" in lines[2]
    assert lines[2].split()[-2] == "-"
    others = [k for k in rows if not k.endswith((" - oft", " - lora"))]
    assert len(lines) == 4 + len(others)
    assert all("per seed [-0.1, -0.15]" in line for line in lines[4:])
