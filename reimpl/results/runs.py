"""Train one engine run into the results store, and dispatch a plan's runs: what every store-backed plan shares.

:func:`train_record` is the life of one run: reuse its record when the store has it (refusing one made with
another config or data, :meth:`reimpl.results.store.Store.get`), else train through :func:`reimpl.engine.train`
resuming from ``<runs_root>/<run_id>/ckpt.pt`` (a cache), write the record atomically, drop the checkpoint.
:func:`dispatch` runs a list of such jobs through :func:`reimpl.engine.dispatch.run_jobs` and, with ``commit``,
git-commits each record as it lands (results/ only), so a session that ends mid-plan loses at most the runs in
flight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from reimpl.paths import ROOT, RUNS


def train_record(plan: str, run_id: str, config: dict, digest: str, data_meta: dict, engine_cfg, data, *,
                 store_root: str | None = None, runs_root: str | Path | None = None, threads: int = 1,
                 hooks=None, finish: Callable[[dict, dict], None] | None = None, reproduce: bool = False) -> str:
    """The record path of ``run_id`` (trained now unless stored). ``finish(result, record)`` may add fields
    (``result`` holds ``best_state`` when ``finish`` is given).

    ``reproduce``: a stored record without per-row ranks (``selected``) is trained again; when every epoch's loss
    and metrics equal the stored ones exactly, the stored record gains ``selected`` and a ``reproduced`` note
    (code version, time); any difference raises :class:`RecordMismatch` naming it and writes nothing."""
    import torch

    from reimpl.engine.train import train
    from reimpl.results.store import RecordMismatch, Store, make_record

    torch.set_num_threads(threads)
    store = Store(store_root)
    old = store.get(plan, run_id, config, digest)
    if old is not None and not (reproduce and not old.get("selected")):
        return str(store.path(plan, run_id))
    rdir = Path(runs_root or RUNS / plan) / run_id
    rdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = train(engine_cfg, data, checkpoint=rdir / "ckpt.pt", hooks=hooks, keep_best=finish is not None,
                log=lambda m: print(f"{run_id}: {m}", file=sys.stderr, flush=True))
    rec = make_record(plan=plan, run_id=run_id, config=config, data={**data_meta, "digest": digest}, result=res,
                      threads=threads, wall_s=time.perf_counter() - t0)
    if finish is not None:
        finish(res, rec)
    if old is not None:   # reproduce: the new run must be the stored one, epoch by epoch
        from reimpl.results.store import code_version, platform_info, platform_text

        keys = ("epoch", "loss", "val", "test")
        a = [{k: h.get(k) for k in keys} for h in old["history"]]
        b = [{k: h.get(k) for k in keys} for h in json.loads(json.dumps(rec["history"]))]
        if a != b:
            i = next(i for i, (x, y) in enumerate(zip(a + [None], b + [None])) if x != y)
            stored, now = (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)
            raise RecordMismatch(f"{store.path(plan, run_id)}: reproducing the run gave another history from epoch "
                                 f"{i + 1} (stored {stored}, now {now}); the record was trained by code "
                                 f"{old.get('code')} on {platform_text(old)}, this is {code_version()} on "
                                 f"{platform_text({'platform': platform_info(), 'threads': threads})}: the engine's "
                                 f"summation order (and so the trajectory) is fixed per code version and CPU kernel "
                                 f"set only (docs/notes.md, sessions 12 and 14), so reproduce at the record's commit "
                                 f"on a machine of its kind")
        rec = {**old, "selected": rec.get("selected"),
               "reproduced": {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code_version(),
                              "wall_s": round(time.perf_counter() - t0, 1), "identical_history": True}}
    p = store.put(rec)
    (rdir / "ckpt.pt").unlink(missing_ok=True)  # the record is the result; the cache is no longer needed
    return str(p)


def selected_rows(res: dict, engine_cfg, data) -> dict | None:
    """The selected student's per-row TEST target ranks, top-1 confidence and correctness, and ECE
    (``record["selected"]``: paired per-row tests, popularity buckets, reliability diagrams), or None after a
    resume from a checkpoint older than the engine's ``best_model`` field."""
    from reimpl.dllm2rec.student import build_student
    from reimpl.extensions.metrics import evaluate_student

    if res.get("best_state") is None:
        return None
    m = build_student(engine_cfg.student, data.item_num, data.seq_size)
    m.load_state_dict(res.pop("best_state"))
    ev = evaluate_student(m, data.test, data.llm_table, return_rows=True)
    return {"ece": ev["ece"], "ranks": ev["ranks"], "conf": [round(c, 6) for c in ev["conf"]],
            "correct": ev["correct"]}


def add_selected_rows(engine_cfg, data) -> Callable[[dict, dict], None]:
    """``finish`` for :func:`train_record` that stores :func:`selected_rows` in the record."""
    def finish(res: dict, rec: dict) -> None:
        rec["selected"] = selected_rows(res, engine_cfg, data)
    return finish


def git_commit(path: str) -> None:
    """Commit one results file (nothing else), retrying while another commit holds the index lock; a file already
    committed as it is (a resume that added nothing) is left alone."""
    rel = os.path.relpath(path, ROOT)
    for _ in range(10):
        if subprocess.run(["git", "add", rel], cwd=ROOT).returncode != 0:
            time.sleep(3)
            continue
        if subprocess.run(["git", "diff", "--cached", "--quiet", "--", rel], cwd=ROOT).returncode == 0:
            return
        if subprocess.run(["git", "commit", "-q", "-m", f"results: {Path(rel).stem}", "--", rel],
                          cwd=ROOT).returncode == 0:
            return
        time.sleep(3)
    print(f"warning: could not commit {rel}", file=sys.stderr)


def dispatch(job: Callable, args: list, *, backend: str = "local", jobs: int = 1, commit: bool = False) -> list:
    """``run_jobs(job, args)``; prints each finished record and commits it when ``commit``."""
    from reimpl.engine.dispatch import run_jobs

    def done(arg, path):
        print(f"finished {arg[0].run_id} -> {path}", flush=True)
        if commit:
            git_commit(path)

    return run_jobs(job, args, backend=backend, jobs=jobs, on_done=done)
