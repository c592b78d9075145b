"""The reference ``main.py`` on the converged plan's leave-one-out splits, beside reimpl faithful: the agreement check.

For each (data set, student, seed) the LOO split of :mod:`reimpl.baselines.converged` is written in DLLM2Rec's
layout (``data/<name>/``, max length 10: ``main.py:384`` hard-codes it) and trained for ``epochs`` epochs by the
unmodified ``main.py`` (through ``parity.shims.dllm2rec_main``, in a subprocess) and by ``reimpl.dllm2rec.train``
in faithful mode, both with the reference's defaults and no distillation (BCE with one negative, lr 1e-3,
hidden 64, dropout 0.1), by :func:`reimpl.baselines.runner.execute`. The verdict compares every per-epoch loss
and VAL/TEST metric: *identical* (bit for bit, <= 1e-12) or the largest difference. The engine is then tied to
faithful by the declared fixes (``reports/parity.md``) and to fixed mode's maths (``tests/test_engine_equivalence.py``).

Each pair is one record in ``results/converged-reference/`` (the two histories, the verdict, timings), so
``make baseline-report`` shows it without re-running. The epoch cap is what fits a session: ``main.py`` takes
~30 s per ml-100k LOO epoch on one core (380 batches), and neither side's curve is converged at that cap.

Usage::

    python -m reimpl.baselines.converged_reference [--dataset ml100k-loo] [--model SASRec] [--seed 1]
        [--epochs 3] [--commit]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from reimpl.baselines.converged import DATASETS, MODELS
from reimpl.paths import RUNS
from reimpl.results.runs import git_commit

PLAN_NAME = "converged-reference"
EPOCHS = 3


def run_id(dataset: str, model: str, seed: int, epochs: int) -> str:
    return f"{dataset}__{model}__bce__default__s{seed}__e{epochs}"


def workdir(dataset: str, root: Path) -> tuple[Path, str, str]:
    """(workdir with ``data/<name>/`` written once, name, split digest) for a converged-plan data set."""
    from reimpl.data.dllm2rec import write_dllm2rec
    from reimpl.data.protocols import build

    ds = build(DATASETS[dataset][1])
    name = dataset.replace("-", "_")
    work = root / "work" / dataset
    ready = work / "ready"
    if not ready.is_file() or ready.read_text().strip() != ds.digest:
        write_dllm2rec(dataclasses.replace(ds.dataset, name=name), work / "data" / name)
        ready.write_text(ds.digest + "\n")
    return work, name, ds.digest


def compare(ref: list[dict], mine: list[dict]) -> dict:
    """Largest |difference| over epochs of loss and every VAL/TEST hr/ndcg/mrr; identical at <= 1e-12."""
    worst, where = 0.0, None
    if len(ref) != len(mine):
        return {"identical": False, "max_abs": float("inf"), "where": f"epochs {len(ref)} vs {len(mine)}"}
    for a, b in zip(ref, mine):
        pairs = [("loss", a["loss"], b["loss"])]
        for split in ("val", "test"):
            for k in ("hr", "ndcg"):
                pairs += [(f"{split} {k}@{i}", x, y) for i, (x, y) in enumerate(zip(a[split][k], b[split][k]))]
            pairs.append((f"{split} mrr", a[split]["mrr"], b[split]["mrr"]))
        for name, x, y in pairs:
            if abs(x - y) > worst:
                worst, where = abs(x - y), f"epoch {a['epoch']} {name}"
    return {"identical": worst <= 1e-12, "max_abs": worst, "where": where}


def run_pair(dataset: str, model: str, seed: int, epochs: int = EPOCHS, store_root: str | None = None,
             runs_root: Path | None = None, threads: int = 1) -> Path:
    """main.py and reimpl faithful for ``epochs`` epochs; writes (or returns the existing) record."""
    from reimpl.baselines.config import NO_DISTILLATION, DatasetSpec, RunSpec
    from reimpl.baselines.runner import execute, reference_available
    from reimpl.results.store import Store, code_version, platform_info

    store = Store(store_root)
    rid = run_id(dataset, model, seed, epochs)
    root = Path(runs_root or RUNS / PLAN_NAME)
    work, name, digest = workdir(dataset, root)
    cfg = {"dataset": dataset, "model": model, "seed": seed, "epochs": epochs, "student_args": "reference defaults, "
           "no distillation", "max_len": 10, "sides": ["reference", "faithful"]}
    if store.get(PLAN_NAME, rid, cfg, digest) is not None:
        return store.path(PLAN_NAME, rid)
    why = reference_available()
    if why:
        raise RuntimeError(f"{rid}: {why}")
    spec = DatasetSpec(name, DATASETS[dataset][0], "ml-100k")  # source unused: the workdir is written above
    sides = {}
    for side in ("reference", "faithful"):
        res = execute(RunSpec(spec, model, side, seed, epochs, NO_DISTILLATION), root, work, threads)
        if res["status"] != "finished":
            raise RuntimeError(f"{rid}: {side} run failed:\n{res.get('error', '')}")
        sides[side] = {"history": res["history"], "wall_s": res["wall_s"], "command": res["command"]}
    rec = {"schema": 1, "plan": PLAN_NAME, "run_id": rid, "config": cfg, "data": {"digest": digest},
           "code": code_version(), "sides": sides, "history": sides["faithful"]["history"], "best_epoch": None,
           "verdict": compare(sides["reference"]["history"], sides["faithful"]["history"]),
           "threads": threads, "platform": platform_info(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return store.put(rec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.baselines.converged_reference",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", choices=tuple(DATASETS))
    ap.add_argument("--model", action="append", choices=MODELS)
    ap.add_argument("--seed", action="append", type=int)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--commit", action="store_true", help="git-commit each finished record (results/ only)")
    a = ap.parse_args(argv)
    for d in a.dataset or tuple(DATASETS):
        for m in a.model or MODELS:
            for s in a.seed or (1,):
                p = run_pair(d, m, s, a.epochs)
                print(f"finished {p}", flush=True)
                if a.commit:
                    git_commit(str(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
