"""reimpl/extensions/trial.py on a synthetic baseline root (tiny data, a fake teacher export): the arms
``plain``/``dllm2rec`` reproduce the baseline runner's runs, every arm runs, the report renders; units."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.baselines.config import DatasetSpec, Plan, distill_pair
from reimpl.extensions import trial

I, L, N = 30, 10, 512     # items, seq_size (write_dllm2rec requires 10), train rows (2 batches of 256)


class FakeEncoder:
    def encode(self, texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False):
        v = np.array([[len(t) + 1.0, t.count("a") + 1.0, 1.0] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _split(rs, name, n, min_hist=0):
    from reimpl.data.types import SeqSplit, lens_from_seqs

    lens = rs.randint(max(1, min_hist), L + 1, size=n)
    seqs = rs.randint(0, I, size=(n, L)).astype(np.int64)
    seqs[np.arange(L)[None] >= lens[:, None]] = I
    return SeqSplit(name, seqs, lens_from_seqs(seqs, I), rs.randint(0, I, size=n).astype(np.int64), I, I)


def _plan(epochs: int = 2) -> Plan:
    pair = distill_pair(DatasetSpec("lastfm", "synthetic", "ilora-lastfm", train_rows=N, min_history=1), "tiny",
                        models=("SASRec",), seeds=(1,))
    return Plan(name="synthetic", datasets=pair, seeds=(1,), epochs=epochs)


def make_root(root: Path, plan: Plan) -> trial.Baseline:
    """The layout reimpl.baselines writes for a distill pair (work/<key>{,+kd}, teacher/<t>/tocf, teacher.json)."""
    from reimpl.data.dllm2rec import write_dllm2rec
    from reimpl.data.types import SeqDataset
    from reimpl.extensions.uamd import write_uncertainty
    from reimpl.ilora.export import write_tocf

    rs = np.random.RandomState(0)
    ds = SeqDataset("lastfm", I, I, L, {"train": _split(rs, "train", N, 1), "val": _split(rs, "val", 12),
                                        "test": _split(rs, "test", 12)})
    plain, kd = plan.datasets
    rows = np.arange(N) * 3 + 1              # "original" train rows of the slice
    for spec in (plain, kd):
        w = root / "work" / spec.key
        write_dllm2rec(ds, w / "data" / "lastfm")
        np.savetxt(w / "train_rows.txt", rows, fmt="%d")
    tdir = root / "teacher" / "tiny"
    rank = np.stack([rs.permutation(I)[:10] for _ in range(N)])
    conf = np.sort(rs.random_sample((N, 10)) * 3, axis=1)
    folder = write_tocf(tdir, "lastfm", rank, conf, torch.as_tensor(rs.randn(I, 48), dtype=torch.float32), I,
                        pad_dim=4096)
    write_uncertainty(folder, rs.random_sample(N) * 1e-3)
    np.savetxt(folder / "rows.txt", rows, fmt="%d")
    link = root / "work" / kd.key / "tocf" / "lastfm"
    link.parent.mkdir(parents=True)
    link.symlink_to(folder.resolve(), target_is_directory=True)
    (tdir / "teacher.json").write_text(json.dumps({
        "spec": {"llm": "tiny", "mode": "fixed", "train_rows": 32, "max_epochs": 1, "batch_size": 4, "lr": 7e-4,
                 "cans_num": 20},
        "train": {"losses": [7.6, 7.5], "seconds": 1.0, "global_step": 1},
        "eval": {"test": {"rows": 8, "hr1": 0.0, "valid_ratio": 0.25, "n_correct": 0, "n_valid": 2}},
        "export": {"rows": N, "k": 10, "cans_num": 20, "target_in_topk": 0.52, "target_at_1": 0.05,
                   "chance_in_topk": 0.5, "chance_at_1": 0.05, "mean_rank_when_in_topk": 5.5},
        "timings": {"export_score_s": 10.0, "export_rows_timed": N}}))
    return trial.locate_baseline(root, plan)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("baseline")


def _args(root: Path, tmp: Path, **kw) -> "argparse.Namespace":  # noqa: F821
    argv = ["--baseline-root", str(root), "--work", str(tmp / "work"), "--out", str(tmp / "rep" / "extensions.md"),
            "--results", str(tmp / "results.json"), "--names", str(tmp / "id2name.txt")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return trial.build_parser().parse_args(argv)


def test_trial_end_to_end_reproduces_the_baseline(root, tmp_path):
    from reimpl.baselines.runner import execute
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama, tiny_tokenizer_dir

    plan = _plan()
    b = make_root(root, plan)
    # the baseline's distilled run exists as a result file; the undistilled one does not (-> re-run path)
    kd_spec = b.run_spec("SASRec", 1, "dllm2rec")
    assert execute(kd_spec, root, b.workdir(kd_spec), threads=1)["status"] == "finished"
    (tmp_path / "id2name.txt").write_text("".join(f"{i}::artist {i}\n" for i in range(I)), encoding="utf-8")
    tok = load_tiny_tokenizer(tiny_tokenizer_dir())
    out = trial.run_trial(_args(root, tmp_path, rationales=8, cdr_rounds=1), plan=plan,
                          rdr_model=tiny_llama(seed=0, vocab_size=len(tok)), rdr_tokenizer=tok, rdr_model_id="tiny",
                          encoder=FakeEncoder(), log=lambda m: None)
    checks = {c["arm"]: c for c in out["baseline_checks"]}
    assert checks["dllm2rec"]["source"] == "results" and checks["plain"]["source"] == "rerun"
    for c in checks.values():
        assert c["identical"] and c["max_abs"] <= trial.IDENTICAL_TOL and c["epochs"] == [2, 2]
    tb = out["tables"]["SASRec"]
    assert set(tb) == set(trial.ARMS)
    assert "vs_dllm2rec" in tb["uamd-exp"] and "vs_plain" in tb["dllm2rec"] and "vs_dllm2rec" not in tb["plain"]
    assert [r["round"] for r in out["cdr"]["SASRec"]["1"]] == [0, 1]
    assert out["rdr"]["n"] == 8 and out["teacher"]["files"]["table_width_used"] == 48
    # the trainer configuration is the baseline command's (lam / ed_weight / alpha, epochs, lr ...)
    cfg = out["configs"]["SASRec/dllm2rec"]["config"]
    assert (cfg["lam"], cfg["ed_weight"], cfg["alpha"], cfg["epoch"], cfg["mode"]) == (0.8, 0.2, 1.0, 2, "fixed")
    assert out["configs"]["SASRec/plain"]["config"]["lam"] == 0.0
    text = (tmp_path / "rep" / "extensions.md").read_text()
    assert "2 of 2 runs identical to the verified baseline run" in text
    assert "not the real SmolLM2" in text and "not refreshed" in text
    for f in out["figs"]:
        assert (tmp_path / "rep" / "figures" / f).is_file()
    # a perturbed baseline result is reported as a difference, not hidden
    res_file = root / "results" / f"{kd_spec.run_id}.json"
    r = json.loads(res_file.read_text())
    r["history"][1]["loss"] += 1e-6
    mine = [dict(h, loss=h["loss"]) for h in json.loads(res_file.read_text())["history"]]
    d = trial.compare_history(mine, r["history"])
    assert not d["identical"] and d["max_abs"] == pytest.approx(1e-6, rel=1e-3)


def test_trial_standin_teacher(root, tmp_path):
    plan = _plan()
    if not (root / "teacher").is_dir():
        make_root(root, plan)
    out = trial.run_trial(_args(root, tmp_path, teacher="standin", teacher_rows=0, arms="plain,dllm2rec,cdr",
                                cdr_rounds=1), plan=plan, log=lambda m: None)
    checks = {c["arm"]: c for c in out["baseline_checks"]}
    assert checks["plain"]["identical"] and checks["dllm2rec"]["identical"] is None
    assert out["standin"]["fit_rows"] == N and "teacher_test" in out["cdr"]["SASRec"]["1"][1]
    assert "STAND-IN, not iLoRA" in (tmp_path / "rep" / "extensions.md").read_text()


def test_locate_baseline_errors(tmp_path):
    plan = _plan()
    with pytest.raises(FileNotFoundError, match="train_data.df"):
        trial.locate_baseline(tmp_path, plan)
    b = make_root(tmp_path, plan)
    np.savetxt(b.tocf / "rows.txt", np.arange(N), fmt="%d")
    with pytest.raises(ValueError, match="misaligned"):
        trial.locate_baseline(tmp_path, plan)
    (b.tocf / "uncertainty_train.txt").unlink()
    with pytest.raises(FileNotFoundError, match="uncertainty_train.txt"):
        trial.locate_baseline(tmp_path, plan)
    with pytest.raises(ValueError, match="one distilled data set"):
        trial.locate_baseline(tmp_path, dataclasses.replace(plan, datasets=plan.datasets[:1]))


def test_student_config_is_the_baseline_command(tmp_path):
    plan = _plan(epochs=7)
    b = trial.Baseline(tmp_path, plan, plan.datasets[1], plan.datasets[0])
    cfg, cmd = trial.student_config(b, b.run_spec("GRU", 3, "dllm2rec"))
    assert (cfg.model_name, cfg.seed, cfg.epoch, cfg.lam, cfg.ed_weight, cfg.alpha, cfg.mode) == \
        ("GRU", 3, 7, 0.8, 0.2, 1.0, "fixed")
    assert (cfg.lr, cfg.batch_size, cfg.dropout_rate, cfg.d_llm) == (0.001, 256, 0.1, 4096)   # main.py defaults
    assert str(b.kd_workdir) in cmd
    cfg, _ = trial.student_config(b, b.run_spec("SASRec", 1, "plain"))
    assert (cfg.lam, cfg.ed_weight, cfg.alpha) == (0.0, 0.0, 0.0)


@settings(max_examples=25, deadline=None)
@given(items=st.integers(1, 9), used=st.integers(0, 7), h=st.integers(1, 5), pad=st.integers(0, 6),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_refreshed_table_writes_only_the_padding(items, used, h, pad, dtype):
    g = torch.Generator().manual_seed(items * 100 + used * 10 + h)
    table = torch.zeros(items, used + h + pad, dtype=dtype)
    table[:, :used] = torch.randn(items, used, generator=g, dtype=dtype) + 5.0   # no exact zeros
    assert trial.table_width(table) == used
    student = torch.nn.Module()
    student.item_embeddings = torch.nn.Embedding(items + 1, h)
    out = trial.refreshed_table(table, student, used)
    assert out.shape == table.shape and out.dtype == dtype
    assert torch.equal(out[:, :used], table[:, :used]) and torch.equal(out[:, used + h:], table[:, used + h:])
    torch.testing.assert_close(out[:, used:used + h], student.item_embeddings.weight.detach()[:items].to(dtype))
    assert torch.equal(table[:, used:], torch.zeros_like(table[:, used:]))         # input untouched
    with pytest.raises(ValueError, match="no room"):
        trial.refreshed_table(table, student, used + pad + 1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), extra=st.integers(0, 2), eps=st.sampled_from([0.0, 1e-13, 1e-9]))
def test_compare_history(n, extra, eps):
    rs = np.random.RandomState(n)
    h = [{"loss": float(rs.rand()), **{s: {"hr": list(rs.rand(4)), "ndcg": list(rs.rand(4)), "mrr": float(rs.rand())}
                                        for s in ("val", "test")}} for _ in range(n + extra)]
    other = json.loads(json.dumps(h[:n]))
    other[-1]["test"]["ndcg"][2] += eps
    d = trial.compare_history(h, other)
    assert d["epochs"] == [n + extra, n] and d["max_abs"] == pytest.approx(eps, abs=1e-16)
    assert d["identical"] == (extra == 0 and eps <= trial.IDENTICAL_TOL)


@pytest.mark.parametrize("model,width", [("SASRec", 64), ("GRU", 64), ("Caser", 64 + 16 * 3)])
def test_repr_width_matches_the_output_layer_and_keeps_the_rng(model, width):
    from reimpl.dllm2rec.config import DLLM2RecConfig

    cfg = DLLM2RecConfig(model_name=model, mode="fixed")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert trial.repr_width(cfg, I, L) == width
    assert torch.equal(torch.get_rng_state(), before)


def test_rdr_arm_trains_every_student(tmp_path):
    """The RDR head projects the student's s_fc input, whose width differs for Caser."""
    from reimpl.dllm2rec.config import DLLM2RecConfig
    from reimpl.extensions.hooks import ExtConfig
    from reimpl.extensions.rdr import build_vector_store
    from tests.ext_helpers import tiny_data

    d = tiny_data(teacher=False)
    build_vector_store({r: {"key": f"k{r}", "rationale": "a" * (r + 1)} for r in (0, 3, 5)}, tmp_path,
                       encoder=FakeEncoder())
    ext = ExtConfig.from_dict({"rdr": {"enabled": True, "lam": 0.5, "store": str(tmp_path)}})
    for model in ("SASRec", "GRU", "Caser"):
        cfg = DLLM2RecConfig(model_name=model, mode="fixed", batch_size=16, epoch=1, lam=0.0, ed_weight=0.0,
                             alpha=0.0, d_llm=64)
        res, student = trial.train_student(cfg, ext, d, None, log=lambda m: None)
        assert res["epochs_run"] == 1 and student.s_fc.in_features == trial.repr_width(cfg, d.item_num, d.seq_size)
