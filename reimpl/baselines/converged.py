"""Converged student baselines on the leave-one-out protocol, trained by the engine, kept in ``results/``.

Plan (:data:`CONVERGED`): SASRec, GRU4Rec, Caser x {ml-100k LOO, LastFM LOO} x {BCE with one negative (the
reference's objective), full-softmax cross-entropy}; no distillation (``lam = ed_weight = alpha = 0``); fixed
mode's maths through :mod:`reimpl.engine` (selection and early stopping on VAL NDCG@20, patience 10, cap 200
epochs, TEST at the best VAL epoch).

Tuning (the same small budget for every model): one seed, one knob at a time from the reference's defaults
(``lr`` 1e-3 -> 3e-3, ``dropout_rate`` 0.1 -> 0.3, ``hidden_factor`` 64 -> 128, ``max_len`` 10 -> 50); the grid
point with the best VAL NDCG@20 at its selected epoch is then run for every seed. Seed 1 of the chosen point is
its tuning run (same run id, not re-run).

Every finished run is one record in ``results/converged/`` (:mod:`reimpl.results.store`); a killed run resumes
from its last epoch checkpoint in ``runs/converged/<run_id>/``. Runs are independent jobs dispatched by
:func:`reimpl.engine.dispatch.run_jobs` (local process pool by default; Ray / submitit optional).

Usage::

    python -m reimpl.baselines.converged run [--stage tune|final|all] [--jobs N] [--backend local|ray|submitit]
        [--dataset KEY] [--model M] [--objective O] [--max-runs N] [--commit]
    python -m reimpl.baselines.converged report     # tables + figures from results/ only (make baseline-report)
    python -m reimpl.baselines.converged status
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from reimpl.data.protocols import LOOConfig
from reimpl.paths import REPORTS

PLAN_NAME = "converged"
DATASETS = {"ml100k-loo": ("ml-100k leave-one-out (943 users, all ratings)", LOOConfig("ml-100k")),
            "lastfm-loo": ("LastFM leave-one-out (1,220 users of the iLoRA frames)", LOOConfig("lastfm"))}
MODELS = ("SASRec", "GRU", "Caser")
OBJECTIVES = ("bce", "softmax")
GRID = ((), (("lr", 0.003),), (("dropout_rate", 0.3),), (("hidden_factor", 128),), (("max_len", 50),))
TOPK = (1, 5, 10, 20)


def tag(overrides: tuple) -> str:
    return "default" if not overrides else "+".join(f"{k}={v:g}" for k, v in overrides)


@dataclass(frozen=True)
class ConvergedRun:
    dataset: str
    model: str
    objective: str
    seed: int
    overrides: tuple = ()
    epochs: int = 200
    patience: int = 10
    eval_every: int = 1

    @property
    def run_id(self) -> str:
        return f"{self.dataset}__{self.model}__{self.objective}__{tag(self.overrides)}__s{self.seed}"

    @property
    def cell(self) -> tuple:
        return (self.dataset, self.model, self.objective)

    def protocol(self) -> LOOConfig:
        ov = dict(self.overrides)
        return dataclasses.replace(DATASETS[self.dataset][1], max_len=int(ov.get("max_len", 10)))

    def engine_config(self):
        from reimpl.dllm2rec.config import DLLM2RecConfig
        from reimpl.engine.train import EngineConfig

        ov = {k: v for k, v in self.overrides if k != "max_len"}
        if "hidden_factor" in ov:
            ov["hidden_factor"] = int(ov["hidden_factor"])
        s = DLLM2RecConfig(model_name=self.model, data=self.dataset, mode="fixed", epoch=self.epochs,
                           patience=self.patience, seed=self.seed, lam=0.0, ed_weight=0.0, alpha=0.0, **ov)
        return EngineConfig(s, objective=self.objective, eval_every=self.eval_every)

    def config(self) -> dict:
        return {"engine": self.engine_config().as_dict(), "protocol": dataclasses.asdict(self.protocol()),
                "overrides": [list(kv) for kv in self.overrides]}


@dataclass(frozen=True)
class ConvergedPlan:
    name: str = PLAN_NAME
    datasets: tuple = tuple(DATASETS)
    models: tuple = MODELS
    objectives: tuple = OBJECTIVES
    seeds: tuple = (1, 2, 3, 4, 5)
    grid: tuple = GRID
    epochs: int = 200
    patience: int = 10
    notes: tuple = field(default_factory=tuple)

    def cells(self) -> list[tuple]:
        return [(d, m, o) for d in self.datasets for m in self.models for o in self.objectives]

    def run(self, cell: tuple, seed: int, overrides: tuple) -> ConvergedRun:
        return ConvergedRun(*cell, seed=seed, overrides=overrides, epochs=self.epochs, patience=self.patience)

    def tuning_runs(self) -> list[ConvergedRun]:
        """Grid point major (every cell's default first): a partial job covers every cell before tuning one."""
        return [self.run(c, self.seeds[0], g) for g in self.grid for c in self.cells()]

    def chosen(self, records: dict[str, dict]) -> dict[tuple, tuple | None]:
        """Per cell the grid point with the best VAL NDCG@20 (None while a tuning run is missing)."""
        out = {}
        for c in self.cells():
            scores = []
            for g in self.grid:
                rec = records.get(self.run(c, self.seeds[0], g).run_id)
                scores.append(None if rec is None else best_row(rec)["val"]["ndcg"][-1])
            out[c] = None if any(s is None for s in scores) else self.grid[int(np.argmax(scores))]
        return out

    def final_runs(self, records: dict[str, dict]) -> list[ConvergedRun]:
        return [self.run(c, s, g) for c, g in self.chosen(records).items() if g is not None for s in self.seeds]


CONVERGED = ConvergedPlan(notes=(
    "cap 200 epochs, patience 10 on VAL NDCG@20; one epoch = int(N / 256) batches of 256 rows drawn without "
    "replacement (the reference's epoch, main.py:355-360)",))


def best_row(rec: dict) -> dict:
    return next(h for h in rec["history"] if h["epoch"] == rec["best_epoch"])


# ------------------------------------------------------------------------------------------------ running
@lru_cache(maxsize=4)
def load_protocol(proto: LOOConfig):
    """(student data, digest, facts) of a protocol; cached per process."""
    import warnings

    from reimpl.data.protocols import build, to_student_data

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = build(proto)
    facts = {"users": d.users, "item_num": d.dataset.item_num, "rows": {k: s.n for k, s in d.dataset.splits.items()},
             "dropped": d.dropped, "warnings": [str(x.message) for x in w]}
    return to_student_data(d.dataset), d.digest, facts


def run_one(run: ConvergedRun, store_root: str | None = None, runs_root: str | None = None,
            threads: int = 1, reproduce: bool = False) -> str:
    """Train ``run`` (resuming its checkpoint) unless its record exists; returns the record path."""
    from reimpl.results.runs import add_selected_rows, train_record

    data, digest, facts = load_protocol(run.protocol())
    cfg = run.config()
    ecfg = run.engine_config()
    return train_record(PLAN_NAME, run.run_id, cfg, digest, {"protocol": cfg["protocol"], "facts": facts},
                        ecfg, data, store_root=store_root, runs_root=runs_root, threads=threads,
                        finish=add_selected_rows(ecfg, data), reproduce=reproduce)


def _job(args: tuple) -> str:
    run, store_root, threads = args
    return run_one(run, store_root, threads=threads)


def records_by_id(store_root: str | None = None) -> dict[str, dict]:
    from reimpl.results.store import Store

    return {r["run_id"]: r for r in Store(store_root).records(PLAN_NAME)}


def pending_runs(plan: ConvergedPlan, stage: str, store_root: str | None = None) -> list[ConvergedRun]:
    recs = records_by_id(store_root)
    runs = []
    if stage in ("tune", "all"):
        runs += plan.tuning_runs()
    if stage in ("final", "all"):
        runs += plan.final_runs(recs)
    seen, out = set(), []
    for r in runs:
        if r.run_id not in recs and r.run_id not in seen:
            seen.add(r.run_id)
            out.append(r)
    return out


def ready_runs(plan: ConvergedPlan, store_root: str | None = None) -> list[ConvergedRun]:
    """Runs that can start now, cell-major: each cell's missing tuning points, then (once tuned) its seeds."""
    recs = records_by_id(store_root)
    chosen = plan.chosen(recs)
    out = []
    for c in plan.cells():
        runs = [plan.run(c, plan.seeds[0], g) for g in plan.grid]
        if chosen[c] is not None:
            runs = [plan.run(c, s, chosen[c]) for s in plan.seeds]
        out += [r for r in runs if r.run_id not in recs]
    return out


# ------------------------------------------------------------------------------------------------ report
def ci95(x) -> tuple[float, float]:
    """(mean, half-width of the 95 % t interval); half-width NaN for fewer than 2 values."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def chance(n_items: int) -> dict:
    return {"HR@10": 10 / n_items, "HR@20": 20 / n_items,
            "NDCG@10": sum(1 / math.log2(r + 1) for r in range(1, 11)) / n_items,
            "NDCG@20": sum(1 / math.log2(r + 1) for r in range(1, 21)) / n_items}


def template_env(folder: Path | None = None):
    """The baselines reports' Jinja2 environment (templates from ``folder``, default this package's); filter
    ``ci``: ``(mean, half)`` -> "m ± h" ("pending": None)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder or Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["ci"] = lambda v, nd=4: "pending" if v is None else (
        f"{v[0]:.{nd}f}" if math.isnan(v[1]) else f"{v[0]:.{nd}f} ± {v[1]:.{nd}f}")
    return env


def report(plan: ConvergedPlan = CONVERGED, store_root: str | None = None, out: Path | None = None,
           fig_dir: Path | None = None) -> Path:
    """Render ``reports/baselines.md`` and its figures from the store only (no training)."""

    out = out or REPORTS / "baselines.md"
    fig_dir = fig_dir or out.parent / "figures"
    recs = records_by_id(store_root)
    chosen = plan.chosen(recs)
    sections = []
    for d in plan.datasets:
        facts = next((r["data"].get("facts") for r in recs.values() if r["run_id"].startswith(d + "__")), None)
        for o in plan.objectives:
            rows, curves = [], {}
            for m in plan.models:
                c = (d, m, o)
                g = chosen.get(c)
                tune = [(tag(gp), recs.get(plan.run(c, plan.seeds[0], gp).run_id)) for gp in plan.grid]
                finals = [recs.get(plan.run(c, s, g).run_id) for s in plan.seeds] if g is not None else []
                done = [r for r in finals if r is not None]
                row = {"model": m, "chosen": tag(g) if g is not None else "tuning pending",
                       "tuning": [(t, None if r is None else (best_row(r)["val"]["ndcg"][-1],
                                                            best_row(r)["test"]["ndcg"][-1])) for t, r in tune],
                       "n": len(done), "pending": len(plan.seeds) - len(done)}
                for split in ("val", "test"):
                    for name, key, k in (("HR@10", "hr", 2), ("NDCG@10", "ndcg", 2), ("HR@20", "hr", 3),
                                         ("NDCG@20", "ndcg", 3)):
                        row[f"{split} {name}"] = ci95([best_row(r)[split][key][k] for r in done]) if done else None
                row["epochs"] = ci95([r["best_epoch"] for r in done]) if done else None
                row["stopped"] = sum(r["stopped_early"] for r in done)
                row["train_s"] = ci95([r["timing"]["train_s"] for r in done]) if done else None
                rows.append(row)
                # learning curves of the final seeds; until those exist, of the finished tuning runs (seed 1)
                shown = done or [r for _, r in tune if r is not None]
                if shown:
                    curves[m] = [[(h["epoch"], h["val"]["ndcg"][-1]) for h in r["history"] if "val" in h]
                                 for r in shown]
            fig = None
            if curves:
                fig = fig_dir / f"converged_curves_{d}_{o}.png"
                _curves(curves, fig, f"{DATASETS[d][0]}, {o}: VAL NDCG@20 per epoch (one line per seed)")
            sections.append({"dataset": d, "label": DATASETS[d][0], "objective": o, "rows": rows, "facts": facts,
                             "chance": chance(facts["item_num"]) if facts else None,
                             "figure": os.path.relpath(fig, out.parent) if fig else None})
    from reimpl.results.store import Store, platform_text

    agreement = []
    for r in Store(store_root).records("converged-reference"):
        ref, mine = r["sides"]["reference"], r["sides"]["faithful"]
        last = ref["history"][-1]
        eng = recs.get(plan.run((r["config"]["dataset"], r["config"]["model"], "bce"), r["config"]["seed"], ()).run_id)
        eng_row = next((h for h in eng["history"] if h["epoch"] == r["config"]["epochs"]), None) if eng else None
        agreement.append({"dataset": r["config"]["dataset"], "model": r["config"]["model"], "seed": r["config"]["seed"],
                          "epochs": r["config"]["epochs"], "verdict": r["verdict"],
                          "ref_wall": ref["wall_s"], "faithful_wall": mine["wall_s"],
                          "ref_val": last["val"]["ndcg"][-1], "ref_test": last["test"]["ndcg"][-1],
                          "eng_val": eng_row["val"]["ndcg"][-1] if eng_row else None,
                          "eng_test": eng_row["test"]["ndcg"][-1] if eng_row else None})
    text = template_env().get_template("converged.md.j2").render(agreement=agreement,
        plan=plan, sections=sections, n_records=len(recs), grid=[tag(g) for g in plan.grid],
        platforms=sorted({platform_text(r) for r in recs.values()}),
        codes=sorted({r["code"]["git"][:10] + ("+dirty" if r["code"]["dirty"] else "") for r in recs.values()}))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def _curves(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (m, runs) in enumerate(curves.items()):
        for j, pts in enumerate(runs):
            x, y = zip(*pts)
            ax.plot(x, y, color=f"C{i}", alpha=0.7, lw=1, label=m if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("VAL NDCG@20")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.baselines.converged", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--stage", choices=("tune", "final", "all"), default="all")
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    r.add_argument("--backend", choices=("local", "ray", "submitit"), default="local")
    r.add_argument("--dataset", action="append")
    r.add_argument("--model", action="append")
    r.add_argument("--objective", action="append")
    r.add_argument("--max-runs", type=int, default=None)
    r.add_argument("--commit", action="store_true", help="git-commit each finished record (results/ only)")
    sub.add_parser("report")
    sub.add_parser("status")
    a = ap.parse_args(argv)
    plan = CONVERGED
    if a.cmd == "report":
        print(report(plan))
        return 0
    if a.cmd == "status":
        recs = records_by_id()
        print(f"{len(recs)} records; pending tune {len(pending_runs(plan, 'tune'))}, "
              f"final (for the cells tuned so far) {len(pending_runs(plan, 'final'))}")
        return 0
    plan = dataclasses.replace(plan, datasets=tuple(a.dataset or plan.datasets), models=tuple(a.model or plan.models),
                               objectives=tuple(a.objective or plan.objectives))
    from reimpl.engine.dispatch import run_jobs, run_ready

    def done(arg, path):
        print(f"finished {arg[0].run_id} -> {path}", flush=True)
        if a.commit:
            from reimpl.results.runs import git_commit

            git_commit(path)

    if a.stage == "all":  # cell by cell: a cell's seeds start as soon as its tuning is complete
        started: set = set()

        def ready(busy):
            items = [(x, None, a.threads) for x in ready_runs(plan) if x.run_id not in busy]
            if a.max_runs is not None:  # finished and in-flight runs count against --max-runs
                items = items[: max(0, a.max_runs - len(started | busy))]
            started.update(x[0].run_id for x in items)
            return items

        run_ready(_job, ready, key=lambda arg: arg[0].run_id, backend=a.backend, jobs=a.jobs, on_done=done)
        return 0
    budget = a.max_runs
    runs = pending_runs(plan, a.stage)
    if budget is not None:
        runs = runs[:budget]
    run_jobs(_job, [(x, None, a.threads) for x in runs], backend=a.backend, jobs=a.jobs, on_done=done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
