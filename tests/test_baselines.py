"""Baseline orchestration units: reference stdout parsing, selection replay, statistics,
plans, the seed bridge of the reference-run shim, and report rendering from a partial results cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.baselines import stats
from reimpl.baselines.config import FULL, QUICK, DatasetSpec, Plan, RunSpec
from reimpl.baselines.runner import normalize_reference, parse_reference_stdout, student_argv
from reimpl.metrics import rank_metrics

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
    stdout = _fake_stdout([(0.5, 12.5, _printed(rank_metrics(rv[0])), _printed(rank_metrics(rt[0]))),
                           (0.25, 11.0, _printed(rank_metrics(rv[1])), _printed(rank_metrics(rt[1])))])
    parsed = parse_reference_stdout(stdout)
    assert [e["epoch"] for e in parsed] == [1, 2] and parsed[1]["train_s"] == 11.0
    capture = {"evals": [{"split": s, "epoch": e + 1, "ranks": r}
                         for e in range(2) for s, r in (("val", rv[e]), ("test", rt[e]))]}
    hist, worst = normalize_reference(stdout, capture)
    assert worst <= 5.1e-7
    assert hist[1]["test"]["mrr"] == pytest.approx(rank_metrics(rt[1])["mrr"])
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
    assert len(QUICK.runs()) <= 27  # CI budget (tests/test_baselines_quick.py): 21 plain + 6 with the tiny teacher
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
    assert (tmp_path / "rep" / "figures" / "baselines_curves_unit_toy.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "figures" / "baselines_bars_unit_toy.png").stat().st_size > 1000
    assert "![NDCG@20 per epoch](figures/baselines_curves_unit_toy.png)" in text


# ------------------------------------------------------------------------- distillation plan pieces
def _toy_split(n_rows: int, seed: int = 0):
    from reimpl.data.types import SeqSplit

    rng = np.random.default_rng(seed)
    L, pad = 5, 20
    hist = rng.integers(0, L + 1, n_rows)                  # 0 .. L history items
    seqs = np.full((n_rows, L), pad, dtype=np.int64)
    for i, h in enumerate(hist):
        seqs[i, :h] = rng.integers(0, pad, h)
    return SeqSplit("train", seqs, np.maximum(1, hist), rng.integers(0, pad, n_rows), pad, pad), hist


@settings(max_examples=25, deadline=None)
@given(n_rows=st.integers(1, 40), take=st.integers(1, 50), min_history=st.integers(0, 6), seed=st.integers(0, 5))
def test_slice_rows_min_history(n_rows, take, min_history, seed):
    from reimpl.baselines.data import slice_rows

    split, hist = _toy_split(n_rows, seed)
    rows = slice_rows(split, take, np.random.default_rng(seed), min_history)
    pool = np.flatnonzero(hist >= min_history)
    if rows is None:  # no slice needed: every row qualifies and all are taken
        assert len(pool) == n_rows and take >= n_rows
        return
    assert np.all(np.diff(rows) > 0)                        # sorted, unique: file order kept
    assert set(rows.tolist()) <= set(pool.tolist())
    assert len(rows) == min(take, len(pool))


def test_slice_rows_is_seeded():
    from reimpl.baselines.data import slice_rows

    split, _ = _toy_split(100)
    a = slice_rows(split, 10, np.random.default_rng(3), 1)
    assert np.array_equal(a, slice_rows(split, 10, np.random.default_rng(3), 1))
    assert not np.array_equal(a, slice_rows(split, 10, np.random.default_rng(4), 1))


def test_distill_pair_and_plan():
    from reimpl.baselines.config import DISTILL, DISTILLATION, NO_DISTILLATION, distill_pair

    base = DatasetSpec("lastfm", "L", "ilora-lastfm", train_rows=64, min_history=1)
    plain, kd = distill_pair(base, "tiny", models=("GRU",), seeds=(1,))
    assert plain.key == "lastfm-slice64xallh1" and kd.key == "lastfm-slice64xallh1+kd"
    plan = Plan(name="u", datasets=(plain, kd), seeds=(1, 2))
    args = {r.dataset.key: r.student_args for r in plan.runs()}
    assert args == {plain.key: NO_DISTILLATION, kd.key: DISTILLATION}
    assert len({r.run_id for r in DISTILL.runs()}) == len(DISTILL.runs()) == 54
    assert plan.undistilled_twin(kd) is plain     # the listed twin itself
    assert Plan(name="v", datasets=(kd,)).undistilled_twin(kd).key == plain.key


def test_prepare_refuses_misaligned_teacher_rows(shared_dir, tmp_path):
    import dataclasses

    from reimpl.baselines.data import prepare

    ds = DatasetSpec("lastfm", "L", "ilora-lastfm", train_rows=16, eval_rows=8, min_history=1)
    man = prepare(ds, tmp_path, shared=shared_dir)
    rows = np.loadtxt(Path(man["workdir"]) / "train_rows.txt", dtype=np.int64)
    assert len(rows) == 16
    tocf = tmp_path / "tocf_src"
    tocf.mkdir()
    kd = dataclasses.replace(ds, tocf_dir=str(tocf), variant="kd")
    with pytest.raises(FileNotFoundError, match="rows.txt"):
        prepare(kd, tmp_path, shared=shared_dir)
    np.savetxt(tocf / "rows.txt", rows[::-1], fmt="%d")
    with pytest.raises(ValueError, match="other train rows"):
        prepare(kd, tmp_path, shared=shared_dir)
    np.savetxt(tocf / "rows.txt", rows, fmt="%d")
    man = prepare(kd, tmp_path, shared=shared_dir)
    assert (Path(man["workdir"]) / "tocf" / "lastfm").resolve() == tocf.resolve()


def test_history_identity_separates_loss_drift_from_metric_changes():
    h = lambda loss, hr: [{"loss": loss, "val": {"hr": [hr] * 4, "ndcg": [0.1] * 4, "mrr": 0.1},  # noqa: E731
                           "test": {"hr": [hr] * 4, "ndcg": [0.1] * 4, "mrr": 0.1}}]
    same = stats.history_identity({1: {"history": h(17.0, 0.2)}}, {1: {"history": h(17.0, 0.2)}})
    assert same["identical"] and same["metrics_identical"]
    drift = stats.history_identity({1: {"history": h(17.0, 0.2)}}, {1: {"history": h(17.0 + 6e-8, 0.2)}})
    assert not drift["identical"] and drift["metrics_identical"] and drift["loss_max_rel"] < 1e-8
    moved = stats.history_identity({1: {"history": h(17.0, 0.2)}}, {1: {"history": h(17.0, 0.3)}})
    assert not moved["identical"] and not moved["metrics_identical"]
