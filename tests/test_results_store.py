"""Results store: round trip, refusal of records that do not match their plan, converged runs written once and
reused, the report rebuilt from the store alone, dispatch backends."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from reimpl.baselines import converged
from reimpl.dllm2rec.train import load_data
from reimpl.engine.dispatch import run_jobs
from reimpl.results.store import RecordMismatch, Store, make_record
from tests.test_dllm2rec_train import write_export

RESULT = {"history": [{"epoch": 1, "loss": 0.5, "train_s": 1.0,
                       "val": {"hr": [0.1] * 4, "ndcg": [0.05] * 4, "mrr": 0.02, "n": 3}}],
          "best_epoch": 1, "stopped_early": False, "epochs_run": 1, "train_s": 1.0, "eval_s": 0.1}


def _rec(config=None, digest="abc"):
    return make_record(plan="p", run_id="r1", config=config or {"lr": 0.001, "k": (1, 2)},
                       data={"digest": digest}, result=RESULT, threads=1, wall_s=1.5)


def test_round_trip_and_refusals(tmp_path):
    st = Store(tmp_path)
    p = st.put(_rec())
    assert p == tmp_path / "p" / "r1.json" and not list(tmp_path.rglob("*.tmp"))
    rec = st.get("p", "r1", {"lr": 0.001, "k": (1, 2)}, "abc")
    assert rec["history"][0]["val"]["ndcg"][3] == 0.05 and rec["code"]["git"] and rec["platform"]["torch"]
    with pytest.raises(RecordMismatch, match=r"r1.json: field config.lr: 0.001 in record, 0.002 in plan"):
        st.get("p", "r1", {"lr": 0.002, "k": (1, 2)}, "abc")
    with pytest.raises(RecordMismatch, match="field data.digest"):
        st.get("p", "r1", {"lr": 0.001, "k": (1, 2)}, "other")
    with pytest.raises(RecordMismatch, match="another config"):
        st.put(_rec(config={"lr": 0.01, "k": (1, 2)}))
    assert st.get("p", "missing", {}, "abc") is None
    (tmp_path / "p" / "bad.json").write_text("{\"schema\": 1}")
    with pytest.raises(RecordMismatch, match="field 'run_id' missing"):
        st.records("p")


@pytest.fixture()
def toy_protocol(tmp_path, monkeypatch):
    root = write_export(tmp_path / "toy", d_llm=16)
    data = load_data(root, "toy", need_rank=False, need_emb=False)
    facts = {"users": 15, "item_num": data.item_num, "rows": {"train": 70, "val": 15, "test": 15}, "dropped": {},
             "warnings": []}
    monkeypatch.setattr(converged, "load_protocol", lambda proto: (data, f"digest-{proto.max_len}", facts))
    return tmp_path


def test_converged_run_written_once_and_reported(toy_protocol, monkeypatch):
    tmp = toy_protocol
    plan = dataclasses.replace(converged.CONVERGED, datasets=("ml100k-loo",), models=("GRU",), objectives=("bce",),
                               seeds=(1, 2), grid=((), (("lr", 0.003),)), epochs=2)
    store = str(tmp / "results")
    runs = [dataclasses.replace(r, epochs=2) for r in plan.tuning_runs()]
    small = lambda r: dataclasses.replace(r, epochs=2)  # noqa: E731
    for r in runs:
        cfg = r.engine_config()
        assert cfg.student.mode == "fixed" and cfg.student.lam == 0
    monkeypatch.setattr(converged.ConvergedRun, "engine_config",
                        lambda self, _orig=converged.ConvergedRun.engine_config: _set_batch(_orig(self)))
    paths = [converged.run_one(r, store, str(tmp / "runs")) for r in runs]
    mtimes = [(tmp / p).stat().st_mtime_ns for p in paths]
    assert [converged.run_one(r, store, str(tmp / "runs")) for r in runs] == paths  # reused, not re-run
    assert [(tmp / p).stat().st_mtime_ns for p in paths] == mtimes
    assert not list((tmp / "runs").rglob("ckpt.pt"))  # the cache is dropped once the record exists
    recs = converged.records_by_id(store)
    finals = plan.final_runs(recs)
    assert {r.seed for r in finals} == {1, 2} and len({r.overrides for r in finals}) == 1
    for r in finals:
        converged.run_one(small(r), store, str(tmp / "runs"))
    out = converged.report(plan, store, tmp / "rep" / "converged.md")
    text = out.read_text()
    assert "| GRU |" in text and "±" in text and (tmp / "rep" / "figures").is_dir()
    rec = json.loads((tmp / paths[0]).read_text())
    assert rec["data"]["digest"] == "digest-10" and rec["config"]["engine"]["student"]["epoch"] == 2


def _set_batch(cfg):
    cfg.student.batch_size = 16
    return cfg


def test_ci95():
    m, h = converged.ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(h, 4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(converged.ci95([1.0])[1])


def test_dispatch_local_pool_and_errors():
    assert sorted(run_jobs(math.sqrt, [4.0, 9.0], jobs=1)) == [2.0, 3.0]
    assert sorted(run_jobs(math.sqrt, [4.0, 9.0, 16.0], jobs=2)) == [2.0, 3.0, 4.0]
    seen = []
    with pytest.raises(RuntimeError, match="1 of 2 job"):
        run_jobs(math.sqrt, [4.0, -1.0], on_done=lambda a, r: seen.append(r))
    assert seen == [2.0]
    with pytest.raises(ValueError, match="backend"):
        run_jobs(math.sqrt, [1.0], backend="cron")


def test_reproduce_adds_per_row_ranks_only_to_an_identical_history(toy_protocol, monkeypatch):
    """A record without per-row ranks (made before they existed) is trained again and gains them when the new
    history is the stored one; a record whose history the code no longer reproduces is refused, untouched."""
    tmp = toy_protocol
    store = str(tmp / "results")
    monkeypatch.setattr(converged.ConvergedRun, "engine_config",
                        lambda self, _orig=converged.ConvergedRun.engine_config: _set_batch(_orig(self)))
    run = converged.ConvergedRun("ml100k-loo", "GRU", "bce", seed=1, epochs=2)
    p = tmp / converged.run_one(run, store, str(tmp / "runs"))
    rec = json.loads(p.read_text())
    assert rec["selected"]["ranks"] and len(rec["selected"]["conf"]) == len(rec["selected"]["ranks"])
    old = {k: v for k, v in rec.items() if k != "selected"}
    p.write_text(json.dumps(old))                       # as an older record
    converged.run_one(run, store, str(tmp / "runs"))      # no reproduce: reused as it is
    assert "selected" not in json.loads(p.read_text())
    converged.run_one(run, store, str(tmp / "runs"), reproduce=True)
    new = json.loads(p.read_text())
    assert new["selected"]["ranks"] == rec["selected"]["ranks"] and new["reproduced"]["identical_history"]
    assert {k: v for k, v in new.items() if k not in ("selected", "reproduced")} == old
    bad = json.loads(json.dumps(old))
    bad["history"][0]["loss"] += 1e-9
    p.write_text(json.dumps(bad))
    bad["platform"] = {"cpu": "CPU Y", "cpu_family": "25", "cpu_model_number": "17", "torch_cpu_capability": "AVX512",
                       "torch": "t"}
    p.write_text(json.dumps(bad))
    # the message names both machines: trajectories are fixed per code version and CPU kernel set
    with pytest.raises(RecordMismatch, match=r"another history from epoch 1 .* on CPU Y \(family 25 model 17, torch "
                                             r"AVX512\), 1 thread\(s\), torch t, this is .* torch "):
        converged.run_one(run, store, str(tmp / "runs"), reproduce=True)
    assert json.loads(p.read_text()) == bad


def test_git_commit_commits_one_file_and_leaves_an_unchanged_one_alone(tmp_path, monkeypatch, capsys):
    import subprocess

    from reimpl.results import runs

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout
    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    (tmp_path / "other.txt").write_text("not mine")
    rec = tmp_path / "results" / "r.json"
    rec.parent.mkdir()
    rec.write_text("{}")
    runs.git_commit(str(rec))
    assert git("log", "--format=%s").split("\n")[0] == "results: r"
    assert "?? other.txt" in git("status", "--short")          # only the record is committed
    runs.git_commit(str(rec))                                   # nothing new: no commit, no warning
    assert len(git("log", "--format=%s").strip().split("\n")) == 1
    assert "could not commit" not in capsys.readouterr().err
