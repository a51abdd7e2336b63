"""Real-model tasks (chat items, splits, answer tokens) and the tier-A soul saved as a SoulWrapper folder.

Everything runs on the project's tiny tokenizer and a random tied Llama; one slow test touches SmolLM2 when it
is installed and converted.
"""

from __future__ import annotations

import pytest
import torch

from so8t_core.data import real_tasks as rt
from so8t_core.studies import head_study as hs
from so8t_core.studies import real_head_study as rhs

TEXTS = ["The capital of France is Paris.", "What is 3 + 4? 3 + 4 = 7", "Answer the user's question."] * 4


@pytest.fixture(scope="module")
def facts():
    return rt.load_facts()


@pytest.fixture
def tiny(tiny_lm, tmp_path, monkeypatch):
    """The project's tokenizer (with its chat template) and a random tied Llama on it, saved like a checkpoint."""
    from so8t_core.export.fusion import tiny_tied_llama
    from so8t_core.lm.loading import save_model
    from so8t_core.lm.tokenizer import special_ids

    monkeypatch.setenv("SO8T_FEATURES_DIR", str(tmp_path / "features"))
    tok = tiny_lm(TEXTS).tok
    model = tiny_tied_llama(len(tok), 32, num_layers=2, num_heads=2, init_range=0.2, **special_ids(tok))
    return model, tok, save_model(model, tok, tmp_path / "base")


@pytest.mark.parametrize("task", rt.REAL_TASKS)
def test_splits_are_disjoint_in_templates_and_deterministic(task, facts):
    items = rt.make_real_task(task, 0, facts, 60, 20, 20)
    seen = {s: {it.template for it in items[s]} for s in items}
    assert not seen["test"] & (seen["train"] | seen["dev"])
    assert not seen["train"] & seen["dev"]
    assert items == rt.make_real_task(task, 0, facts, 60, 20, 20)
    assert items != rt.make_real_task(task, 1, facts, 60, 20, 20)
    assert {len(v) for v in items.values()} == {60, 20}


def test_the_answers_shift_as_each_task_says(facts):
    shift = rt.make_real_task("shift", 0, facts, 200, 40, 40)
    for it in (i for s in shift.values() for i in s):
        assert it.answer != it.known
        assert it.answer.strip() in {c for _, c in facts}
    fmt = rt.make_real_task("format", 0, facts, 50, 10, 10)
    assert all(it.answer == it.known.upper() for s in fmt.values() for it in s)
    arith = rt.make_real_task("arith", 0, (), 200, 40, 60)
    problems = {s: {it.prefix for it in arith[s]} for s in arith}
    assert not problems["test"] & (problems["train"] | problems["dev"])  # test sums never seen
    assert all(len(it.answer) == 1 and eval(it.prefix.rstrip(" =")) == int(it.answer) for it in arith["test"])


def test_encode_chat_labels_exactly_the_answer_tokens(tiny, facts):
    _, tok, _ = tiny
    items = rt.make_real_task("shift", 0, facts, 6, 2, 2)["train"] + rt.make_real_task("arith", 0, (), 4, 2, 2)["test"]
    enc = rt.encode_chat(tok, items)
    for row, it in enumerate(items):
        want = tok(it.answer, add_special_tokens=False)["input_ids"]
        lab = enc["labels"][row]
        assert lab[lab != -100].tolist() == want  # one or several tokens, whatever the answer needs
        n = int(enc["attention_mask"][row].sum())
        assert enc["input_ids"][row, n - len(want) : n].tolist() == want  # the answer ends the item
        assert tok.decode(enc["input_ids"][row, : n - len(want)]).endswith(it.prefix)
        assert enc["known_first"][row] == tok(it.known, add_special_tokens=False)["input_ids"][0]


def test_measurable_flags_each_reason():
    assert rt.measurable("shift", 0.0, 0.9)["measurable"]
    assert not rt.measurable("shift", 0.0, 0.2)["measurable"]
    assert not rt.measurable("format", 0.95, 0.9)["measurable"]
    assert not rt.measurable("arith", 0.0, 0.0)["measurable"]
    assert rt.measurable("arith", 0.5, 0.5)["measurable"]


def test_states_are_cached_and_the_shortlist_holds_every_answer(tiny, facts):
    model, tok, folder = tiny
    items = rt.make_real_task("format", 0, facts, 12, 4, 6)
    feats = {s: rhs.answer_states(model, tok, its, folder, batch_size=4, top_k=3) for s, its in items.items()}
    assert not any(hit for _, hit in feats.values())
    again, hit = rhs.answer_states(model, tok, items["test"], folder, batch_size=4, top_k=3)
    assert hit
    assert torch.equal(again["x"], feats["test"][0]["x"])
    f = {s: v[0] for s, v in feats.items()}
    ids = rhs.shortlist(f, 3)
    cache = rhs.to_cached(f["test"], ids)
    assert torch.equal(ids[cache.y], f["test"]["y"])
    head = rhs.sliced_head(model.get_output_embeddings(), ids)
    base = hs.score(hs.build("base", model.model.norm, head), cache)
    assert base["em"].mean() == pytest.approx(rhs.base_summary(f["test"])["exact_match"])  # greedy is on the list


def test_the_saved_soul_folder_gives_the_tier_a_heads_logits(tiny, facts):
    from so8t_core.lm.loading import load_soul_folder

    model, tok, folder = tiny
    items = rt.make_real_task("shift", 0, facts, 24, 8, 8)
    f = {s: rhs.answer_states(model, tok, its, folder, batch_size=8)[0] for s, its in items.items()}
    ids = rhs.shortlist(f)
    cache = {s: rhs.to_cached(v, ids) for s, v in f.items()}
    run = hs.TierA(lrs=(0.1,), steps=20, batch=16, seeds=(1, 2))
    soul = hs.train_variant(hs.variant_specs()["soul_composed_learned"], cache, model.model.norm,
                            rhs.sliced_head(model.get_output_embeddings(), ids), 0.1, run, 0)  # fmt: skip
    assert soul.rotation.r_cmd.generators.abs().max() > 1e-3  # trained: a parity of the identity proves nothing
    soul_dir = rhs.save_soul(soul, model, folder.parent / "soul")
    wrapper, _ = load_soul_folder(folder, soul_dir)
    got = rhs.wrapper_answer_logits(wrapper, rt.encode_chat(tok, items["test"]), 8)
    with torch.no_grad():
        want = rhs.full_head(soul, model.get_output_embeddings())(f["test"]["x"])
        assert (soul(f["test"]["x"]) - want[:, ids]).abs().max() < 1e-5
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4
    with torch.no_grad():
        wrapper.alpha.alpha.add_(0.5)  # a different gate must show
    assert (rhs.wrapper_answer_logits(wrapper, rt.encode_chat(tok, items["test"]), 8) - want).abs().max() > 1e-3


def test_valid_on_dev_needs_a_rival_below_the_base():
    tuning = {"oft": {"grid": [0.1, 0.2], "scores": [1.0, 0.5], "choice": 0.2},
              "soul": {"grid": [0.1], "scores": [0.1], "choice": 0.1}}  # fmt: skip
    assert rhs.valid_on_dev({"tuning": tuning}, 1.0)["valid"]
    assert not rhs.valid_on_dev({"tuning": tuning}, 0.51)["valid"]  # the soul's own score never counts
    assert rhs.valid_on_dev({"tuning": tuning}, 1.0)["best_rival"] == "oft"


@pytest.mark.slow
def test_smollm2_knows_the_capitals(facts):
    from so8t_core.lm.loading import load_model_and_tokenizer
    from so8t_core.lm.real_models import RealModelUnavailable, real_model_dir

    try:
        folder = real_model_dir("smollm2-135m-instruct")
    except RealModelUnavailable as e:
        pytest.skip(str(e))
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    items = rt.make_real_task("shift", 0, facts, 4, 4, 16)["test"]
    enc = rt.encode_chat(tok, items)
    c = hs.cache_states(rhs._Body(model), enc, 16)
    base = rhs.base_scores(model.model.norm, model.get_output_embeddings(), c.x, c.y, 1)
    known = (base["top"][rhs.first_positions(c.item, c.n_items), 0] == enc["known_first"]).float().mean()
    assert known >= rt.MIN_KNOWN
    assert base["hit"].mean() < 0.2
    assert folder.is_dir()


def test_no_measured_task_saves_no_soul(tmp_path):
    runs = {"shift": {"base": {}, "measurable": {"measurable": False, "reason": "x"}}}
    assert rhs.train_and_save_soul(None, runs, None, {}, tmp_path) is None  # type: ignore[arg-type]
    assert not (tmp_path / "soul").exists()


@pytest.mark.parametrize("shift", [-0.5, 0.5, 0.0])
def test_real_verdicts_come_out_either_way_and_edges_withhold(shift):
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.3, size=(1, 40)).repeat(5, 0)  # (S, I): the same items under 5 seeds
    noise = lambda: rng.normal(0, 0.01, size=base.shape)
    nll = {v: base + noise() for v in ("base", "oft", "lora_r1", "soul_composed_learned", "soul_a1.618")}
    nll["soul_learned"] = base + shift + noise()
    results = {"shift": {"nll": nll, "edge_variants": []}}
    templates = {"shift": [i % 8 for i in range(40)]}
    rows = rhs.real_rows(results, templates, n_boot=200)
    assert all(rows[k]["primary"] for k in rhs.primary_keys(["shift"]))
    assert not rows["shift/soul_a1.618 - oft"]["primary"]  # outside the declared family: exploratory
    v = rhs.real_verdicts(rows, {"shift": True})
    assert v["soul_vs_oft_better_on"] == (["shift"] if shift < 0 else [])
    assert v["soul_vs_oft_worse_on"] == (["shift"] if shift > 0 else [])
    results["shift"]["edge_variants"] = ["soul_learned"]
    edged = rhs.real_verdicts(rhs.real_rows(results, templates, n_boot=200), {"shift": True})
    assert edged["soul_vs_oft_better_on"] == edged["soul_vs_oft_worse_on"] == []
    assert edged["no_verdict_edge"]
    summary = {"shift": {"base": {"exact_match": 0.0, "known_first": 0.9}, "measurable": {"measurable": True},
                         "test_nll": {k: float(x.mean()) for k, x in nll.items()}}}  # fmt: skip
    text = " ".join(rhs.reading("m", v, rows, summary))
    assert f"{rows['shift/soul_learned - oft']['mean']:+.3f}" in text
    assert "exact match 0.00" in text
