"""The extension trial on the engine (issue 17): arms built on the distilled plan, records, report from records."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reimpl.baselines import distilled as dz
from reimpl.extensions import engine_trial as et
from reimpl.paths import DATA


def test_holm():
    assert et.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = et.holm([float("nan"), 0.02])
    assert out[0] != out[0] and out[1] == pytest.approx(0.02)


def test_trial_runs_share_the_distilled_runs_config():
    plan = dz.PLANS["ml100k-loo"]
    runs = et.trial_runs(plan, tuned={"SASRec": (("lr", 0.003),), "GRU": None, "Caser": None})
    assert {r.arm for r in runs} == set(et.TRAINED) and {r.base.model for r in runs} == {"SASRec"}
    r = next(x for x in runs if x.arm == "sel-gt-error")
    assert r.config()["engine"] == r.base.config()["engine"] and r.config()["ext"]["selection"]["policy"] == "gt_error"
    assert r.run_id == "ml100k-loo__SASRec__lr=0.003__sel-gt-error__ml100k-loo-e4srec-smollm2-32k__s1"


def test_decomposition_arms_switch_dllm2rec_parts_off_one_by_one():
    plan = dz.PLANS["ml100k-loo"]
    runs = {r.arm: r for r in et.trial_runs(plan, tuned={"SASRec": (("lr", 0.003),), "GRU": None, "Caser": None})
            if r.base.seed == 1}
    weights = {a: {k: runs[a].config()["engine"]["student"][k] for k in ("lam", "ed_weight", "alpha")}
               for a in ("dro-only", "emb-only")}
    assert weights == {"dro-only": {"lam": 0.0, "ed_weight": 0.0, "alpha": 1.0},
                       "emb-only": {"lam": 0.0, "ed_weight": 0.2, "alpha": 0.0}}
    assert runs["dro-only"].base.arm == "plain" and runs["emb-only"].base.arm == "kd"   # only emb-only reads a teacher
    other = dict(runs["emb-only"].config()["engine"]["student"], lam=0.8, alpha=1.0)
    assert other == runs["emb-only"].base.config()["engine"]["student"]   # nothing else changes


@pytest.mark.skipif(not (DATA / "ilora" / "lastfm").is_dir(), reason="needs ../shared/data/ilora/lastfm")
def test_an_arm_trains_and_the_report_reads_it(tmp_path):
    base = dz.DistilledRun("Caser", "kd", 1, epochs=1)
    run = et.TrialRun(base, "sel-gt-error")
    rec = json.loads(open(et.run_one(run, store_root=str(tmp_path), runs_root=tmp_path / "runs")).read())
    assert rec["epochs_run"] == 1 and len(rec["selected"]["ranks"]) == 122 and 0 <= rec["selected"]["ece"] <= 1
    with pytest.raises(ValueError, match="UAMD needs a per-row uncertainty: the teacher export"):
        et.run_one(et.TrialRun(base, "uamd-exp"), store_root=str(tmp_path), runs_root=tmp_path / "runs")
    text = et.report(("lastfm",), store_root=str(tmp_path), out=tmp_path / "r.md")
    caser = text[text.index("## Caser"):]
    assert "| sel-gt-error |" in caser and "| 1 |" in caser.split("| sel-gt-error |")[1].split("\n")[0]


def test_ensemble_disagreement_and_file(tmp_path):
    import numpy as np

    from reimpl.data import DataError
    from reimpl.teachers import ensemble

    base = np.array([[1, 2, 3], [4, 5, 6]])
    same, other = base.copy(), np.array([[1, 9, 8], [7, 8, 9]])
    u = ensemble.disagreement(base, [same, other], k=3)
    assert u == pytest.approx([(0 + 2 / 3) / 2, (0 + 1) / 2])
    p = ensemble.write(tmp_path / "t.uncertainty.safetensors", np.arange(2), u, {"k": 3})
    assert ensemble.read(p, 2) == pytest.approx(u, abs=1e-3)
    with pytest.raises(DataError, match="rows"):
        ensemble.read(p, 3)
    with pytest.raises(DataError, match="uncertainty"):
        ensemble.write(tmp_path / "x.safetensors", np.arange(2), np.array([0.1, np.nan]), {})


def test_rationale_rows_and_missing_store(tmp_path, monkeypatch):
    r = et.rationale_rows(97171, 0.1)
    assert len(r) == 9717 and (r[1:] > r[:-1]).all() and et.rationale_rows(97171, 0.1).tolist() == r.tolist()
    monkeypatch.setattr(et, "rationale_dir", lambda d: tmp_path / d)
    with pytest.raises(ValueError, match="RDR needs rationales"):
        et.vector_store("ml100k-loo")


def test_a_teacher_free_arm_is_shared_by_the_plans_of_one_split():
    tuned = {"SASRec": (("lr", 0.003),), "GRU": None, "Caser": None}
    r8 = next(r for r in et.trial_runs(dz.PLANS["ml100k-loo@8k"], ("dro-only",), tuned) if r.base.seed == 1)
    r32 = next(r for r in et.trial_runs(dz.PLANS["ml100k-loo"], ("dro-only",), tuned) if r.base.seed == 1)
    assert r8.run_id != r32.run_id
    rec = {"config": json.loads(json.dumps(r8.config()))}
    assert et._trial_record({r8.run_id: rec}, r32) is rec
    k8 = next(r for r in et.trial_runs(dz.PLANS["ml100k-loo@8k"], ("emb-only",), tuned) if r.base.seed == 1)
    k32 = next(r for r in et.trial_runs(dz.PLANS["ml100k-loo"], ("emb-only",), tuned) if r.base.seed == 1)
    assert et._trial_record({k8.run_id: {"config": json.loads(json.dumps(k8.config()))}}, k32) is None  # teacher


def test_contrasts_pair_by_seed_and_wait_for_pairs(monkeypatch):
    monkeypatch.setattr(et, "_metric", lambda rec, metric="ndcg", k=10: rec["v"])
    per_arm = {"dro-only": {1: {"v": 0.06}, 2: {"v": 0.07}, 3: {"v": 0.065}},
               "plain": {1: {"v": 0.04}, 2: {"v": 0.045}, 3: {"v": 0.041}}, "emb-only": {}}
    out = {(c["arm"], c["against"]): c for c in et.contrasts(per_arm)}
    c = out[("dro-only", "plain")]
    assert c["n"] == 3 and c["mean"] == pytest.approx((0.02 + 0.025 + 0.024) / 3) and "helps against" in c["verdict"]
    assert out[("emb-only", "plain")]["n"] == 0 and "pending" in out[("emb-only", "plain")]["verdict"]


@pytest.mark.skipif(not (DATA / "ilora" / "lastfm").is_dir(), reason="needs ../shared/data/ilora/lastfm")
def test_the_report_shows_cdr_rounds(tmp_path):
    from reimpl.results.store import Store, make_record

    test = {"ndcg": [0.01, 0.02, 0.03, 0.04], "hr": [0.05, 0.06, 0.07, 0.08]}
    history = [{"round": 0, "test": test, "matches_stored_kd_record": True},
               {"round": 1, "test": dict(test, ndcg=[0.01, 0.02, 0.035, 0.04]), "export_target_in_top10": 0.25,
                "cost_s": {"refine": 10.0, "export": 20.0, "student": 30.0}}]
    rec = make_record(plan="extensions-cdr", run_id="d__SASRec__lr=1__kd__T__s1__cdr2", config={
        "run": "d__SASRec__lr=1__kd__T__s1", "cdr": {"refine_rows": 40, "refine_lr": 1e-3, "rounds": 2, "patience": 1},
        "engine": {"student": {"topk": [1, 5, 10, 20]}}}, data={}, threads=1, wall_s=120.0,
        result={"history": history, "best_epoch": None, "stopped_early": True, "epochs_run": 1, "train_s": 1.0,
                "eval_s": 0.0})
    Store(str(tmp_path)).put(rec)
    text = et.report(("lastfm",), store_root=str(tmp_path), out=tmp_path / "r.md")
    cdr = text[text.index("# CDR"):]
    assert "| 1 | 0.0350 | 0.0700 | 0.250 | – | 10 | 20 | 30 |" in cdr and "Round 0 equals the stored `kd`" in cdr
    assert "| d | SASRec | copy | 1 | 0.0300 | 0.0350 | 0.0050 | – |" in cdr   # one seed: no interval, no p
    assert "| d | copy | 40 | – | – | – |" in cdr   # no refinement curve, no item count, no teacher file
    assert (tmp_path / "figures" / "ext_engine_cdr.png").is_file()


def test_cdr_rounds_are_cached_and_a_foreign_cache_is_refused(tmp_path):
    """A killed CDR run resumes at the round after its last cached one (its student's weights and the rounds so
    far); a cache written by another configuration is refused, naming the file."""
    import torch

    from reimpl.checkpoint import CheckpointError
    from reimpl.extensions import cdr_engine as ce

    student = torch.nn.Linear(3, 2)
    ident = {"run": "x", "cdr": {"refine_rows": 4}}
    hist = [{"round": 0, "test": {"ndcg": [0.1, 0.2]}}, {"round": 1, "test": {"ndcg": [0.1, 0.3]}}]
    ce.save_round(tmp_path, 0, hist[:1], student, ident)
    ce.save_round(tmp_path, 1, hist, student, ident)
    got, state = ce.load_rounds(tmp_path, ident, max_round=3)
    assert got == hist and torch.equal(state["weight"], student.weight)
    assert ce.load_rounds(tmp_path, ident, max_round=0)[0] == hist[:1]   # a shorter run stops at its cap
    assert ce.load_rounds(tmp_path / "none", ident, max_round=3) is None
    with pytest.raises(CheckpointError, match="round1.ckpt: written by a different run"):
        ce.load_rounds(tmp_path, {"run": "x", "cdr": {"refine_rows": 8}}, max_round=3)
    # saturation: rounds after the last one that beat every earlier one, round 0 included
    assert [ce.rounds_since_best(v) for v in ([0.2], [0.2, 0.1], [0.2, 0.3], [0.2, 0.2], [0.2, 0.3, 0.1, 0.3])] == \
        [0, 1, 0, 1, 2]


def test_cdr_align_maps_the_student_table_onto_the_teachers():
    """init=align: an affine image of the teacher's table is mapped back exactly (R^2 1); noise lowers R^2; a
    default (copy) config keeps the identity of the rounds cached before ``init`` existed."""
    import torch

    from reimpl.extensions import cdr_engine as ce

    g = torch.Generator().manual_seed(0)
    t = torch.randn(50, 4, generator=g)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    s = (t.double() @ a + 3.0).float()
    fit, r2 = ce.align_items(s, t)
    assert fit.dtype == t.dtype and r2 == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(fit, t, atol=1e-4, rtol=0)
    _, r2_noise = ce.align_items(torch.randn(50, 4, generator=g), t)
    assert 0.0 <= r2_noise < 0.5
    with pytest.raises(ValueError, match="same I"):
        ce.align_items(s[:10], t)
    with pytest.raises(ValueError, match="init must be one of"):
        ce.CDRConfig(init="mean")
    assert ce.CDRConfig().suffix == "" and ce.CDRConfig(init="align").suffix == "-align"
    run = type("R", (), {"run_id": "x", "engine_config": lambda self: type("E", (), {"as_dict": lambda s: {}})()})()
    assert "init" not in ce._identity(run, ce.CDRConfig())["cdr"]
    assert ce._identity(run, ce.CDRConfig(init="align"))["cdr"]["init"] == "align"


@pytest.mark.skipif(not (DATA / "ilora" / "lastfm").is_dir(), reason="needs ../shared/data")
def test_the_committed_extensions_report_is_current(tmp_path):
    """reports/extensions.md is what `make extensions` renders from the committed records (figures aside)."""
    from reimpl.paths import REPORTS

    if not (REPORTS / "extensions.md").is_file():
        pytest.skip("reports/extensions.md not rendered yet")
    assert et.report(out=tmp_path / "extensions.md") == (REPORTS / "extensions.md").read_text()


def test_cost_per_arm_is_the_mean_minutes_and_epochs_of_its_runs():
    recs = [{"timing": {"wall_s": 120.0}, "epochs_run": 10}, {"timing": {"wall_s": 240.0}, "epochs_run": 21}]
    assert et._cost(recs) == {"min": 3.0, "epochs": 15.5}
    assert et._cost([]) is None and et._cost([{"timing": {}}]) is None


def test_a_second_teacher_part_lists_only_the_arms_it_ran():
    """A part named apart from its split (``@8k``) is a check on the main teacher's verdicts: no pending arm rows."""
    import re

    from reimpl.paths import REPORTS

    if not (REPORTS / "extensions.md").is_file():
        pytest.skip("reports/extensions.md not rendered yet")
    parts = re.split(r"^# ", (REPORTS / "extensions.md").read_text(), flags=re.M)
    second = [p for p in parts if p.split(":")[0].endswith("@8k")]
    assert second, "no second-teacher part in reports/extensions.md"
    for part in second:
        assert "A second teacher on" in part
        assert not re.findall(r"^\| [\w-]+ \| [^|]* \| 0 \| pending", part, flags=re.M)


@pytest.mark.skipif(not (DATA / "ilora" / "lastfm").is_dir(), reason="needs ../shared/data/ilora/lastfm")
def test_an_rdr_arm_keeps_its_rationale_view(tmp_path, monkeypatch):
    """The rdr arm trains with the committed-JSONL vector store (real MiniLM) and stores the selected student's view."""
    from reimpl.extensions.rdr import CACHE_FILE

    folder = tmp_path / "rationales" / "lastfm"
    folder.mkdir(parents=True)
    words = ["calm", "loud", "sad", "bright", "dark", "fast", "slow", "warm"]
    with open(folder / CACHE_FILE, "w") as f:
        for r in range(24):
            f.write(json.dumps({"row": r, "key": f"k{r}", "model_id": "test", "prompt": "p",
                                "rationale": f"They like {words[r % 8]} music."}) + "\n")
    monkeypatch.setattr(et, "rationale_dir", lambda d: tmp_path / "rationales" / d)
    monkeypatch.setattr(et, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(et, "ROOT", tmp_path)
    run = et.TrialRun(dz.DistilledRun("SASRec", "plain", 1, epochs=1), "rdr-only")
    rec = json.loads(open(et.run_one(run, store_root=str(tmp_path / "store"), runs_root=tmp_path / "r")).read())
    v = rec["rdr_view"]
    assert v["rows"] == 24 and v["k"] == 8 and len(v["points"]["xy"]) == 24 and -1 <= v["silhouette"] <= 1
    assert rec["data"]["facts"]["rationales"]["store"] == "runs/rationales/lastfm"


def test_each_part_names_its_teachers_own_quality():
    plan = dz.PLANS["lastfm-loo"]
    rec = json.loads(dz.teacher_path(plan.teacher, plan.dataset).with_suffix(".json").read_text())
    sec = {"model": "SASRec", "rows": [{"arm": "plain", "ndcg10": (0.03, 0.004)}]}
    facts = et._teacher_facts(plan, [sec])
    assert facts["ndcg10"] == rec["eval"]["test"]["all_items"]["NDCG@10"]
    assert facts["in_topk"] == rec["export"]["target_in_topk_all_items"] and facts["k"] == 10
    assert facts["plain"] == (0.03, 0.004) and facts["chance"] == pytest.approx(0.0010, abs=5e-5)
    assert et._teacher_facts(dataclasses.replace(plan, teacher="no-such-teacher"), [sec]) is None


def test_the_rdr_part_says_how_its_rationales_were_made():
    from reimpl.extensions.rdr import CACHE_FILE, read_cache

    cache = et.rationale_dir("lastfm-loo") / CACHE_FILE
    if not cache.is_file():
        pytest.skip(f"{cache} is not here")
    facts = et._rationale_facts("lastfm-loo")
    assert facts["n"] == len(read_cache(cache)) and facts["dtype"] == "float32" and not facts["mixed"]
    assert et._rationale_facts("no-such-split") is None


def test_a_view_file_is_found_under_the_plans_run_id(tmp_path):
    # a leave-one-out plain record is the converged run's record, whose own run id names no teacher
    view = {"k": 8, "rows": 4, "silhouette": -0.02, "knn_agree": 0.18, "knn_chance": 0.15, "points": {}}
    p = et.view_path("plan-id__plain__s1", str(tmp_path))
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"rdr_view": view}))
    per_arm = {"plain": {1: {"run_id": "converged-id__s1"}}}
    assert et.rationale_views(per_arm, str(tmp_path)) == []
    got = et.rationale_views(per_arm, str(tmp_path), {"plain": {1: "plan-id__plain__s1"}})
    assert len(got) == 1 and got[0]["arm"] == "plain" and got[0]["seeds"] == [1]
