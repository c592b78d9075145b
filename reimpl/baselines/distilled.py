"""Students distilled from a committed teacher export, beside their undistilled twins, trained by the engine.

Plans (:data:`PLANS`): SASRec, GRU4Rec, Caser x {``plain``, ``kd``} x seeds 1-5, per data set:

* ``lastfm``: LastFM as iLoRA publishes it (50,800 train rows of 976 users; 122 val and 122 test users, disjoint
  from the train users), the reference's default student settings, teacher ``e4srec-smollm2-l6-8000``;
* ``ml100k-loo`` / ``lastfm-loo``: the converged baselines' leave-one-out splits, each student at its tuned point
  of ``reports/baselines.md`` (objective ``bce``; a model joins once its tuning is complete), an E4SRec
  teacher trained on the split's train rows only (``results/teachers/<split>/``); ``ml100k-loo@8k`` and
  ``lastfm-loo@8k``: the same splits with the first, weaker teachers (8,000 training rows).

``kd`` reads the teacher's compact export without retraining (rows checked against the train split at read,
:func:`reimpl.teachers.export.read_compact`) and trains with DLLM2Rec's default distillation (``lam`` 0.8,
``ed_weight`` 0.2, ``alpha`` 1, main.py:28-40); ``plain`` sets all three to 0. Both: the reference's BCE with one
negative, fixed mode's maths through :mod:`reimpl.engine`, selection and early stopping on VAL NDCG@20
(patience 10, cap 200 epochs), TEST at the selected epoch.

Why LastFM's published split and not its leave-one-out split with the LastFM teacher: that export ranks the
published train rows, and its teacher starts from the SASRec checkpoint the iLoRA authors trained on every train
row. On LastFM LOO the val/test targets of the 976 train users *are* published train rows, so such a teacher has
seen them; the published val/test users it has not. LOO distillation uses teachers trained on LOO train rows.

Every finished run is one record in ``results/distilled/`` (:mod:`reimpl.results.store`) whose data digest pins
the split arrays *and* the teacher file (sha256), so a record made with another export is refused.

Usage::

    python -m reimpl.baselines.distilled run [--dataset lastfm|ml100k-loo] [--jobs N] [--model M] [--arm plain|kd]
        [--seed S] [--max-runs N] [--commit]
    python -m reimpl.baselines.distilled report    # reports/baselines_distilled.md from results/ only
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from reimpl.baselines.converged import DATASETS, MODELS, best_row, chance, ci95, tag, template_env
from reimpl.paths import DATA, REPORTS, ROOT

PLAN_NAME = "distilled"
TEACHER = "e4srec-smollm2-l6-8000"     # the best teacher of reports/teachers.md with a full-train export
ARMS = {"plain": (("lam", 0.0), ("ed_weight", 0.0), ("alpha", 0.0)),
        "kd": (("lam", 0.8), ("ed_weight", 0.2), ("alpha", 1.0))}
METRICS = ("hr", "ndcg")


def teacher_path(name: str, dataset: str = "lastfm") -> Path:
    folder = ROOT / "results" / "teachers"
    return (folder if dataset == "lastfm" else folder / dataset) / f"{name}.safetensors"


@dataclass(frozen=True)
class DistilledRun:
    model: str
    arm: str
    seed: int
    teacher: str = TEACHER
    epochs: int = 200
    patience: int = 10
    dataset: str = "lastfm"        # "lastfm" (published split) or a reimpl.baselines.converged.DATASETS key
    overrides: tuple = ()          # LOO: the converged plan's tuned point of (dataset, model, bce)

    @property
    def run_id(self) -> str:
        if self.dataset == "lastfm":
            return f"lastfm__{self.model}__{self.arm}__{self.teacher}__s{self.seed}"
        from reimpl.baselines.converged import tag

        return f"{self.dataset}__{self.model}__{tag(self.overrides)}__{self.arm}__{self.teacher}__s{self.seed}"

    def engine_config(self):
        from reimpl.dllm2rec.config import DLLM2RecConfig
        from reimpl.engine.train import EngineConfig

        ov = {k: (int(v) if k == "hidden_factor" else v) for k, v in self.overrides if k != "max_len"}
        s = DLLM2RecConfig(model_name=self.model, data=self.dataset, mode="fixed", epoch=self.epochs,
                           patience=self.patience, seed=self.seed, **ov, **dict(ARMS[self.arm]))
        return EngineConfig(s, objective="bce")

    def protocol(self):
        from reimpl.baselines.converged import DATASETS

        return dataclasses.replace(DATASETS[self.dataset][1], max_len=int(dict(self.overrides).get("max_len", 10)))

    def config(self) -> dict:
        cfg = {"engine": self.engine_config().as_dict(), "teacher": self.teacher if self.arm == "kd" else None}
        if self.dataset == "lastfm":
            return {**cfg, "split": "ilora-lastfm (published)"}
        return {**cfg, "protocol": dataclasses.asdict(self.protocol()),
                "overrides": [list(kv) for kv in self.overrides]}


@dataclass(frozen=True)
class DistilledPlan:
    models: tuple = MODELS
    arms: tuple = tuple(ARMS)
    seeds: tuple = (1, 2, 3, 4, 5)
    teacher: str = TEACHER
    dataset: str = "lastfm"

    def runs(self, tuned: dict | None = None) -> list[DistilledRun]:
        """Seed major: a partial job leaves every (model, arm) with the same seeds done. LOO plans use the
        converged plan's tuned point per model (``tuned``: {model: overrides}; a model not tuned yet is left out)."""
        if self.dataset == "lastfm":
            return [DistilledRun(m, a, s, self.teacher) for s in self.seeds for m in self.models for a in self.arms]
        tuned = tuned if tuned is not None else tuned_points(self.dataset)
        return [DistilledRun(m, a, s, self.teacher, dataset=self.dataset, overrides=tuned[m]) for s in self.seeds
                for m in self.models if tuned.get(m) is not None for a in self.arms]


def tuned_points(dataset: str, store_root: str | None = None) -> dict:
    """{model: the converged plan's chosen grid point for (dataset, model, bce), or None while tuning runs}."""
    from reimpl.baselines.converged import CONVERGED, records_by_id

    chosen = CONVERGED.chosen(records_by_id(store_root))
    return {m: chosen.get((dataset, m, "bce")) for m in MODELS}


DISTILLED = DistilledPlan()
# leave-one-out: the teachers of reports/teachers.md trained on each split's train rows only (results/teachers/<d>/)
PLANS = {"lastfm": DISTILLED,
         # E4SRec on 32,000 of the 97,171 train rows: test NDCG@20 0.071 over all items (history masked), the
         # SASRec bar 0.079; the first, 8,000-row teacher (0.053) stays as its own plan
         "ml100k-loo": DistilledPlan(teacher="ml100k-loo-e4srec-smollm2-32k", dataset="ml100k-loo"),
         "ml100k-loo@8k": DistilledPlan(teacher="ml100k-loo-e4srec-smollm2", dataset="ml100k-loo"),
         # E4SRec on all 49,265 train rows: test NDCG@10 0.0102 over all items (the SASRec bar 0.0288); the first,
         # 8,000-row teacher (0.0041) keeps its own plan
         "lastfm-loo": DistilledPlan(teacher="lastfm-loo-e4srec-smollm2-full", dataset="lastfm-loo"),
         "lastfm-loo@8k": DistilledPlan(teacher="lastfm-loo-e4srec-smollm2", dataset="lastfm-loo")}


@lru_cache(maxsize=4)
def load(teacher: str | None, dataset: str = "lastfm", protocol=None):
    """(DLLM2RecData, digest, facts) of the published LastFM split or a LOO ``protocol`` (LOOConfig), with
    ``teacher``'s export when given (cached per process; the engine does not modify it)."""
    import torch

    from reimpl.data import load_ilora
    from reimpl.data.protocols import split_digest, to_student_data
    from reimpl.engine.forward import trim_table
    from reimpl.teachers.export import read_compact

    if dataset == "lastfm":
        ds = load_ilora(DATA / "ilora" / "lastfm", name="lastfm")
        data = to_student_data(ds)
        digest = split_digest(ds)
    else:
        from reimpl.data.protocols import build

        built = build(protocol)
        ds, digest = built.dataset, built.digest
        data = to_student_data(ds)
    facts = {"item_num": ds.item_num, "rows": {k: ds[k].n for k in ("train", "val", "test")}}
    if teacher is not None:
        path = teacher_path(teacher, dataset)
        files, meta = read_compact(path, ds.item_num, n_train=ds["train"].n)  # rows 0..N-1, ids, finite
        data.candidates = torch.from_numpy(files.rank)
        data.confidence = torch.tensor(files.confidence, dtype=torch.float)
        data.llm_table = files.embeddings
        data.uncertainty = files.uncertainty   # [N] or None (UAMD, reimpl.extensions.engine_trial)
        data.files.update(candidates=str(path), confidence=str(path), llm_table=str(path))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        digest = hashlib.sha256(f"{digest}:{sha}".encode()).hexdigest()
        facts["teacher"] = {"name": teacher, "file": str(path.relative_to(ROOT)), "sha256": sha,
                            "k": int(files.rank.shape[1]),
                            "d": int(meta.get("d", 0) or trim_table(files.embeddings).size(1))}
    return data, digest, facts


def run_one(run: DistilledRun, store_root: str | None = None, threads: int = 1,
            runs_root: str | Path | None = None, reproduce: bool = False) -> str:
    """Train ``run`` (resuming its checkpoint in ``runs/distilled/``) unless its record exists."""
    from reimpl.results.runs import add_selected_rows, train_record

    data, digest, facts = load(run.teacher if run.arm == "kd" else None, run.dataset,
                               run.protocol() if run.dataset != "lastfm" else None)
    cfg = run.config()
    meta = {"split": cfg["split"]} if "split" in cfg else {"protocol": cfg["protocol"]}
    ecfg = run.engine_config()
    return train_record(PLAN_NAME, run.run_id, cfg, digest, {**meta, "facts": facts}, ecfg, data,
                        store_root=store_root, runs_root=runs_root, threads=threads,
                        finish=add_selected_rows(ecfg, data), reproduce=reproduce)


def _job(args: tuple) -> str:
    return run_one(*args)


def _reproduce_job(args: tuple) -> str:
    """Train a stored run again to add its per-row ranks (a leave-one-out ``plain`` run: its converged twin)."""
    run = args[0]
    if run.arm == "plain" and run.dataset != "lastfm":
        from reimpl.baselines import converged as cv

        return cv.run_one(cv.CONVERGED.run((run.dataset, run.model, "bce"), run.seed, run.overrides),
                          reproduce=True)
    return run_one(run, reproduce=True)


def records(store_root: str | None = None) -> dict[str, dict]:
    """This plan's records, plus, for each leave-one-out ``plain`` run, the converged plan's record of the very
    same engine run (same engine config, seed and split digest: the engine is deterministic, so training it
    again would reproduce it; a record whose config differs in anything is not used)."""
    from reimpl.baselines.converged import CONVERGED, records_by_id
    from reimpl.results.store import Store, _json_normal

    out = {r["run_id"]: r for r in Store(store_root).records(PLAN_NAME)}
    conv = records_by_id(store_root)
    for plan in PLANS.values():
        if plan.dataset == "lastfm":
            continue
        for run in plan.runs(tuned_points(plan.dataset, store_root)):
            if run.arm != "plain" or run.run_id in out:
                continue
            twin = conv.get(CONVERGED.run((run.dataset, run.model, "bce"), run.seed, run.overrides).run_id)
            if twin is not None and twin["config"]["engine"] == _json_normal(run.engine_config().as_dict()):
                out[run.run_id] = twin
    return out


# ------------------------------------------------------------------------------------------------ report
def _test(rec: dict, metric: str, k: int) -> float:
    return best_row(rec)["test"][metric][rec["config"]["engine"]["student"]["topk"].index(k)]


def paired_delta(x: dict, y: dict) -> dict:
    """``x - y`` over the seeds both hold (``{seed: value}``): n, mean, 95 % CI half-width, paired t p-value (NaN
    with fewer than 2 pairs or no spread)."""
    from scipy import stats

    common = sorted(set(x) & set(y))
    d = np.array([x[s] - y[s] for s in common])
    m, h = ci95(d)
    p = float(stats.ttest_rel([x[s] for s in common], [y[s] for s in common]).pvalue) \
        if len(d) >= 2 and d.std() > 0 else float("nan")
    return {"n": len(d), "mean": m, "half": h, "p": p}


def paired(runs: list[DistilledRun], recs: dict, model: str, metric: str, k: int) -> dict:
    """kd minus plain on TEST ``metric@k``, over the seeds both arms finished (:func:`paired_delta`)."""
    arm = {a: {r.seed: _test(recs[r.run_id], metric, k) for r in runs
               if r.model == model and r.arm == a and r.run_id in recs} for a in ("kd", "plain")}
    return paired_delta(arm["kd"], arm["plain"])


def section(plan: DistilledPlan, recs: dict, tuned: dict | None = None) -> dict:
    """One data set's tables: per (model, arm) mean ± CI of the TEST metrics; kd − plain paired by seed."""
    runs = plan.runs(tuned)
    mine = [recs[r.run_id] for r in runs if r.run_id in recs]
    rows = []
    for m in plan.models:
        for a in plan.arms:
            rs = [recs[r.run_id] for r in runs if r.model == m and r.arm == a and r.run_id in recs]
            point = next((r.overrides for r in runs if r.model == m), None)
            cell = {"model": m, "arm": a, "n": len(rs), "point": "-" if point is None else tag(point)}
            for metric in METRICS:
                for k in (10, 20):
                    cell[f"{metric}{k}"] = ci95([_test(r, metric, k) for r in rs]) if rs else None
            cell["epoch"] = ci95([r["best_epoch"] for r in rs]) if rs else None
            cell["train_s"] = ci95([r["timing"]["train_s"] for r in rs]) if rs else None
            rows.append(cell)
    deltas = [{"model": m, **{f"{metric}{k}": paired(runs, recs, m, metric, k) for metric in METRICS
                              for k in (10, 20)}} for m in plan.models]
    teacher = next((r["data"]["facts"]["teacher"] for r in mine if r["data"]["facts"].get("teacher")), None)
    facts = next((r["data"]["facts"] for r in mine), None)
    item_num = facts["item_num"] if facts else None
    return {"plan": plan, "rows": rows, "deltas": deltas, "teacher": teacher, "facts": facts, "n_records": len(mine),
            "chance": chance(item_num) if item_num else None, "item_num": item_num,
            "label": ("LastFM as published" if plan.dataset == "lastfm" else DATASETS[plan.dataset][0])
            + f", teacher `{plan.teacher}`"}


def report(plans: dict | None = None, store_root: str | None = None, out: Path | None = None,
           tuned: dict | None = None) -> str:
    """``reports/baselines_distilled.md`` from the store only (no data or training needed)."""
    recs = records(store_root)
    sections = [section(p, recs, None if tuned is None else tuned.get(p.dataset))
                for p in (plans or PLANS).values()]
    text = template_env().get_template("distilled.md.j2").render(sections=sections, n_records=len(recs))
    (out or REPORTS / "baselines_distilled.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.baselines.distilled", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    r.add_argument("--backend", choices=("local", "ray", "submitit"), default="local")
    r.add_argument("--dataset", choices=tuple(PLANS), default="lastfm")
    r.add_argument("--model", action="append", choices=MODELS)
    r.add_argument("--arm", action="append", choices=tuple(ARMS))
    r.add_argument("--seed", action="append", type=int)
    r.add_argument("--max-runs", type=int, default=None)
    r.add_argument("--commit", action="store_true", help="git-commit each finished record (results/ only)")
    r.add_argument("--reproduce", action="store_true",
                   help="train stored runs that lack per-row ranks again; add them when the history is identical")
    sub.add_parser("report")
    a = ap.parse_args(argv)
    if a.cmd == "report":
        print(report())
        return 0
    base = PLANS[a.dataset]
    plan = dataclasses.replace(base, models=tuple(a.model or base.models), arms=tuple(a.arm or base.arms),
                               seeds=tuple(a.seed or base.seeds))
    from reimpl.results.runs import dispatch

    have = records()
    if a.reproduce:
        todo = [x for x in plan.runs() if x.run_id in have and not have[x.run_id].get("selected")][: a.max_runs]
        dispatch(_reproduce_job, [(x,) for x in todo], backend=a.backend, jobs=a.jobs, commit=a.commit)
        return 0
    todo = [x for x in plan.runs() if x.run_id not in have][: a.max_runs]
    dispatch(_job, [(x, None, a.threads) for x in todo], backend=a.backend, jobs=a.jobs, commit=a.commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
