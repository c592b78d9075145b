"""Baseline orchestration units: rank metrics, reference stdout parsing, selection replay, statistics,
plans, the seed bridge of the reference-run shim, and report rendering from a partial results cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.baselines import stats
from reimpl.baselines.config import FULL, QUICK, DatasetSpec, Plan, RunSpec
from reimpl.baselines.runner import (metrics_from_ranks, normalize_reference, parse_reference_stdout,
                                     student_argv)


# --- rank metrics ---------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=40))
def test_metrics_from_ranks_match_reimpl_evaluate(ranks):
    from reimpl.dllm2rec.evaluate import metrics_from_ranks as reimpl_metrics

    a = metrics_from_ranks(ranks)
    b = reimpl_metrics(np.asarray(ranks, dtype=np.int64))
    np.testing.assert_allclose(a["hr"], b["hr"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a["ndcg"], b["ndcg"], rtol=0, atol=1e-12)
    assert abs(a["mrr"] - b["mrr"]) < 1e-12


def test_metrics_from_ranks_fixed_case():
    m = metrics_from_ranks([1, 3, 30, -1])  # -1: target not an item id, never a hit
    assert m["hr"] == [0.25, 0.5, 0.5, 0.5] and m["n"] == 4
    assert m["ndcg"][0] == pytest.approx(0.25)
    assert m["ndcg"][1] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 30) / 4)


# --- reference stdout (format of main.py:497-517, synthetic values) --------------------------------

def _fake_stdout(epochs: list[tuple[float, float, list[float], list[float]]]) -> str:
    out = ["---ARGUMENTS---", "epoch                                    3", "without using dros!"]
    for i, (loss, t, val, test) in enumerate(epochs, 1):
        out.append(f"the loss in {i}th step is: {loss}, train this epoch cost {t} s")
        for name, vals in (("VAL", val), ("TEST", test)):
            out += [f"{name} PHRASE:", "#" * 120, "hr@1\tndcg@1\thr@5\tndcg@5\thr@10\tndcg@10\thr@20\tndcg@20",
                    "\t".join(f"{v:.6f}" for v in vals), "#" * 120]
        out.append(f"patient=0, BEST STEP:{i}, BEST NDCG@20:0.1, BEST HR@20:0.2, test cost:0.1s")
    return "\n".join(out) + "\n"


def _printed(m):
    return [v for pair in zip(m["hr"], m["ndcg"]) for v in pair]


def test_parse_and_normalize_reference_output():
    rv, rt = [[1, 5, 40, 2], [3, 3, 9, 100]], [[2, 2, 2, 2], [1, 50, 60, 7]]
    stdout = _fake_stdout([(0.5, 12.5, _printed(metrics_from_ranks(rv[0])), _printed(metrics_from_ranks(rt[0]))),
                           (0.25, 11.0, _printed(metrics_from_ranks(rv[1])), _printed(metrics_from_ranks(rt[1])))])
    parsed = parse_reference_stdout(stdout)
    assert [e["epoch"] for e in parsed] == [1, 2] and parsed[1]["train_s"] == 11.0
    capture = {"evals": [{"split": s, "epoch": e + 1, "ranks": r}
                         for e in range(2) for s, r in (("val", rv[e]), ("test", rt[e]))]}
    hist, worst = normalize_reference(stdout, capture)
    assert worst <= 5.1e-7
    assert hist[1]["test"]["mrr"] == pytest.approx(metrics_from_ranks(rt[1])["mrr"])
    # a capture that does not match the printed numbers is refused, not averaged away
    capture["evals"][3]["ranks"] = [1, 1, 1, 1]
    with pytest.raises(ValueError, match="printed values"):
        normalize_reference(stdout, capture)
    with pytest.raises(ValueError, match="evaluations recorded"):
        normalize_reference(stdout, {"evals": capture["evals"][:3]})


# --- selection replay (main.py:507-519) -----------------------------------------------------------

def _hist(val, test):
    def m(x):
        return {"hr": [0, 0, 0, x], "ndcg": [0, 0, 0, x], "mrr": x}
    return [{"epoch": i + 1, "loss": 0.0, "train_s": 1.0, "val": m(v), "test": m(t)}
            for i, (v, t) in enumerate(zip(val, test))]


def test_select_epoch_rules():
    h = _hist(val=[0.1, 0.3, 0.3, 0.2], test=[0.2, 0.1, 0.4, 0.4])
    assert stats.select_epoch(h, "test")["epoch"] == 3       # strictly greater: the tie at 4 keeps 3
    assert stats.select_epoch(h, "val")["epoch"] == 2
    s = stats.select_epoch(h, "val", patience=2)
    assert s["stopped_at"] == 4 and s["complete"]
    zero = stats.select_epoch(_hist([0, 0], [0, 0]), "test", cap=2)
    assert zero == {"epoch": 1, "none_positive": True, "stopped_at": None, "complete": True}
    assert not stats.select_epoch(h[:2], "test", cap=4)["complete"]
    with pytest.raises(ValueError, match="on must be"):
        stats.select_epoch(h, "train")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=25), st.integers(1, 12))
def test_select_epoch_properties(scores, patience):
    h = _hist(scores, scores)
    s = stats.select_epoch(h, "val", patience)
    seen = scores[: s["stopped_at"]] if s["stopped_at"] else scores
    if max(seen) > 0:
        assert s["epoch"] == int(np.argmax(seen)) + 1  # first arg-max within the epochs it ran
    else:
        assert s["none_positive"] and s["epoch"] == 1
    if s["stopped_at"]:
        assert s["stopped_at"] - (s["epoch"] if not s["none_positive"] else 0) >= patience


# --- statistics -------------------------------------------------------------------------------------

def test_welch_and_holm():
    assert stats.welch([1, 1, 1], [1, 1, 1]) == 1.0
    assert math.isnan(stats.welch([1, 1, 1], [2, 2, 2]))  # undefined, not p = 0
    assert math.isnan(stats.welch([1], [1, 2]))
    p = stats.welch([0.1, 0.2, 0.15], [0.11, 0.19, 0.16])
    assert 0.5 < p <= 1.0
    raw = [0.01, 0.04, math.nan, 0.03]
    adj = stats.holm(raw)
    assert math.isnan(adj[2])
    assert adj[0] == pytest.approx(0.03) and adj[3] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)
    assert all(a >= r for a, r in zip(adj, raw) if not math.isnan(r))


def _result(side, seed, val, test, ds="d", model="GRU"):
    return {"status": "finished", "dataset": ds, "model": model, "side": side, "seed": seed,
            "epochs_cap": len(val), "history": _hist(val, test), "run_id": f"{ds}-{model}-{side}-{seed}",
            "wall_s": 1.0}


def test_aggregate_and_agreement():
    rng = np.random.default_rng(0)
    res = []
    for seed in (1, 2, 3):
        v, t = rng.uniform(0.1, 0.2, 3), rng.uniform(0.1, 0.2, 3)
        res += [_result("reference", seed, v, t), _result("faithful", seed, v, t),
                _result("fixed", seed, v + 0.5, t + 0.5)]
    rows = stats.aggregate(res, {("d", "GRU", s): 3 for s in ("reference", "faithful", "fixed")})
    ref, fa, fx = (rows[("d", "GRU", s, "val")] for s in ("reference", "faithful", "fixed"))
    assert ref.seeds == [1, 2, 3] and ref.pending == 0 and len(ref.arr("test", "MRR")) == 3
    by = {s: {r["seed"]: r for r in res if r["side"] == s} for s in ("reference", "faithful", "fixed")}
    a = stats.agreement(ref, fa, stats.history_identity(by["reference"], by["faithful"]))
    assert a["verdict"] == "agree" and a["identity"]["identical"] and "identical per seed" in a["text"]
    b = stats.agreement(ref, fx, stats.history_identity(by["reference"], by["fixed"]))
    assert b["verdict"] == "differ" and not b["identity"]["identical"]
    pend = stats.aggregate(res[:3], {("d", "GRU", "reference"): 3, ("d", "GRU", "faithful"): 3})
    assert pend[("d", "GRU", "reference", "test")].pending == 2
    assert stats.agreement(pend[("d", "GRU", "reference", "test")],
                           pend[("d", "GRU", "faithful", "test")])["verdict"] == "pending"


# --- plans ------------------------------------------------------------------------------------------

def test_plans_are_data():
    for plan in (QUICK, FULL):
        ids = [r.run_id for r in plan.runs()]
        assert len(ids) == len(set(ids))
        assert not any(r.dataset.source == "dllm2rec-game" for r in plan.runs())  # no train split
        assert len(plan.seeds) >= 2
    assert len(FULL.seeds) >= 3 and {r.side for r in FULL.runs()} == {"reference", "faithful", "fixed"}
    assert len(QUICK.runs()) <= 24  # CI budget (tests/test_baselines_quick.py)
    spec = FULL.runs()[0]
    argv = student_argv(spec)
    assert argv[argv.index("--lam") + 1] == "0" and argv[argv.index("--epoch") + 1] == str(FULL.epochs)
    with pytest.raises(ValueError, match="source"):
        DatasetSpec("x", "x", "somewhere")
    with pytest.raises(ValueError, match="side"):
        RunSpec(spec.dataset, "GRU", "other", 1, 1)
    with pytest.raises(ValueError, match="model"):
        RunSpec(spec.dataset, "BERT4Rec", "fixed", 1, 1)


def test_chance_levels():
    from reimpl.baselines.report import chance_levels

    c = chance_levels(4)
    assert c["HR@1"] == 0.25 and c["HR@5"] == 1.25  # k / I (not clipped: used for I >> k only)
    assert c["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


# --- the shim's seed bridge ---------------------------------------------------------------------------

def test_shim_maps_only_the_hard_coded_seed():
    from parity.shims.dllm2rec_main import HARD_CODED_SEED, _wrap_seeders

    log: list = []
    saved = _wrap_seeders(7, log)
    try:
        np.random.seed(HARD_CODED_SEED)
        a = np.random.rand(3)
        torch.manual_seed(HARD_CODED_SEED)
        ta = torch.rand(3)
        np.random.seed(5)  # any other value passes through
    finally:
        for owner, name, orig in saved:
            setattr(owner, name, orig)
    np.random.seed(7)
    torch.manual_seed(7)
    assert np.array_equal(a, np.random.rand(3)) and torch.equal(ta, torch.rand(3))
    assert ["np.random.seed", HARD_CODED_SEED, 7] in log and ["np.random.seed", 5, 5] in log
    assert np.random.seed is saved[0][2] and torch.manual_seed is saved[1][2]


# --- report from a partial cache ------------------------------------------------------------------

def test_report_renders_partial_cache(tmp_path):
    from reimpl.baselines.report import render

    ds = DatasetSpec("toy", "Toy", "ilora-lastfm")
    plan = Plan(name="unit", datasets=(ds,), models=("GRU", "Caser"), seeds=(1, 2, 3), epochs=3)
    rng = np.random.default_rng(1)
    (tmp_path / "results").mkdir()
    for seed in (1, 2):
        for side in ("reference", "faithful", "fixed"):
            v, t = rng.uniform(0, 0.1, 3), rng.uniform(0, 0.1, 3)
            r = _result(side, seed, v, t, ds="toy")
            spec = RunSpec(ds, "GRU", side, seed, 3)
            r.update(run_id=spec.run_id, command="python -m x", started="t", history=r["history"])
            (tmp_path / "results" / f"{spec.run_id}.json").write_text(json.dumps(r))
    (tmp_path / "manifests.json").write_text(json.dumps(
        {"toy": {"facts": {"item_num": 50, "seq_size": 10, "rows": {"train": 9}}, "sources": {}, "written": {},
                 "trainable": True}}))
    out = render(plan, tmp_path, tmp_path / "rep")
    text = out.read_text()
    assert "6 of 18 runs finished" in text
    assert "2/3 (pending)" in text and "0/3 (pending)" in text
    assert "**pending**" in text  # Caser: no seed yet
    assert (tmp_path / "rep" / "figures" / "baselines_curves_toy.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "figures" / "baselines_bars_toy.png").stat().st_size > 1000
    assert "![NDCG@20 per epoch](figures/baselines_curves_toy.png)" in text
