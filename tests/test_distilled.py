"""The distillation plan of ``make baseline`` (issue 16 part 4): students read the committed teacher export
without retraining; records go to the results store; the report rebuilds from records alone."""

from __future__ import annotations

import json

import pytest

from reimpl.baselines import distilled as dz
from reimpl.paths import DATA


def test_plan_arms_and_ids():
    runs = dz.DISTILLED.runs()
    assert len(runs) == 3 * 2 * 5 and len({r.run_id for r in runs}) == len(runs)
    kd = next(r for r in runs if r.arm == "kd").engine_config().student
    plain = next(r for r in runs if r.arm == "plain").engine_config().student
    assert (kd.lam, kd.ed_weight, kd.alpha) == (0.8, 0.2, 1.0)  # DLLM2Rec's defaults, main.py:28-40
    assert (plain.lam, plain.ed_weight, plain.alpha) == (0.0, 0.0, 0.0)
    assert runs[0].config()["teacher"] is None and runs[1].config()["teacher"] == dz.TEACHER


def test_loo_plan_uses_the_tuned_points():
    plan = dz.PLANS["ml100k-loo"]
    tuned = {"SASRec": (("lr", 0.003),), "GRU": None, "Caser": ()}
    runs = plan.runs(tuned)
    assert {r.model for r in runs} == {"SASRec", "Caser"}  # GRU: tuning not complete, not planned yet
    sas = next(r for r in runs if r.model == "SASRec" and r.arm == "kd")
    assert sas.engine_config().student.lr == 0.003 and sas.protocol().source == "ml-100k"
    assert sas.run_id == "ml100k-loo__SASRec__lr=0.003__kd__ml100k-loo-e4srec-smollm2-32k__s1"
    assert dz.teacher_path(sas.teacher, sas.dataset).parent.name == "ml100k-loo"
    ml = dz.DistilledRun("GRU", "plain", 1, dataset="ml100k-loo", overrides=(("max_len", 50),))
    assert ml.protocol().max_len == 50 and ml.config()["overrides"] == [["max_len", 50]]


FACTS = {"item_num": 4606, "rows": {"train": 50800, "val": 122, "test": 122}}


def _record(run, ndcg20, hr20=0.1):
    hist = [{"epoch": 1, "test": {"hr": [0.0, 0.0, hr20 / 2, hr20], "ndcg": [0.0, 0.0, ndcg20 / 2, ndcg20]}}]
    return {"schema": 1, "plan": dz.PLAN_NAME, "run_id": run.run_id, "config": run.config(), "history": hist,
            "best_epoch": 1, "timing": {"train_s": 10.0}, "data": {"digest": "x", "facts": FACTS}}


def test_report_from_records_only(tmp_path):
    plan = dz.DistilledPlan(models=("SASRec",), seeds=(1, 2, 3))
    d = tmp_path / dz.PLAN_NAME
    d.mkdir()
    for r in plan.runs():
        nd = 0.05 + 0.01 * r.seed + (0.02 if r.arm == "kd" else 0.0) + (0.001 * r.seed if r.arm == "kd" else 0)
        (d / f"{r.run_id}.json").write_text(json.dumps(_record(r, nd)))
    text = dz.report({"lastfm": plan}, store_root=str(tmp_path), out=tmp_path / "r.md")
    assert "| SASRec | default | kd | 3 of 3 |" in text and "| SASRec | 3 |" in text
    delta = dz.paired(plan.runs(), dz.records(str(tmp_path)), "SASRec", "ndcg", 20)
    assert delta["n"] == 3 and abs(delta["mean"] - 0.022) < 1e-12 and delta["p"] < 0.01


@pytest.mark.skipif(not (DATA / "ilora" / "lastfm").is_dir(), reason="needs ../shared/data/ilora/lastfm")
def test_committed_export_feeds_a_distilled_run(tmp_path):
    data, digest, facts = dz.load(dz.TEACHER)
    plain, plain_digest, _ = dz.load(None)
    assert data.candidates.shape == (50800, 10) and data.llm_table.shape == (4606, 4096)
    assert facts["teacher"]["d"] == 64 and not data.llm_table[:, 64:].any()  # zero-padded at load
    assert digest != plain_digest  # a record pins the teacher file too
    run = dz.DistilledRun("Caser", "kd", 1, epochs=1)
    path = dz.run_one(run, store_root=str(tmp_path), runs_root=tmp_path / "runs")
    rec = json.loads(open(path).read())
    assert rec["data"]["digest"] == digest and rec["epochs_run"] == 1 and rec["history"][0]["loss"] > 0
    assert rec["history"][0]["val"]["n"] == 122


def test_loo_plain_reuses_the_identical_converged_run(tmp_path, monkeypatch):
    from reimpl.baselines.converged import CONVERGED

    monkeypatch.setattr(dz, "tuned_points", lambda d, store_root=None: {"SASRec": (("lr", 0.003),), "GRU": None,
                                                                        "Caser": None})
    twin = CONVERGED.run(("ml100k-loo", "SASRec", "bce"), 1, (("lr", 0.003),))
    (tmp_path / "converged").mkdir()
    rec = {"schema": 1, "plan": "converged", "run_id": twin.run_id, "config": twin.config(), "history": [],
           "best_epoch": 1, "data": {"digest": "d"}}
    (tmp_path / "converged" / f"{twin.run_id}.json").write_text(json.dumps(rec))
    plain = "ml100k-loo__SASRec__lr=0.003__plain__ml100k-loo-e4srec-smollm2-32k__s1"
    assert dz.records(str(tmp_path))[plain]["run_id"] == twin.run_id
    rec["config"]["engine"]["student"]["dropout_rate"] = 0.3   # another run: not the twin any more
    (tmp_path / "converged" / f"{twin.run_id}.json").write_text(json.dumps(rec))
    assert plain not in dz.records(str(tmp_path))
