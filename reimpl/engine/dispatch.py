"""Run a plan's independent jobs: a local process pool by default; Ray or SLURM (submitit) as optional extras.

Each job is ``fn(arg)`` with a picklable module-level ``fn``; results come back in completion order through
``on_done(arg, result)``. No scheduling of our own: the backend's executor owns queueing and retries.

* ``local``: :class:`concurrent.futures.ProcessPoolExecutor` (``spawn`` context: torch and fork do not mix),
  ``jobs`` workers; ``jobs=1`` runs in this process (no pool; simplest to debug).
* ``ray``: ``ray.remote(fn)`` on the cluster ``ray.init(address=...)`` connects to (``RAY_ADDRESS``), or a local
  one; ``pip install recparity[ray]``.
* ``submitit``: :class:`submitit.AutoExecutor` (SLURM where available, else local), one array job;
  ``pip install recparity[slurm]``; ``folder`` holds its logs.

Plans whose later jobs depend on earlier results (tuning, then the chosen point for every seed) use
:func:`run_ready`: it asks the plan for the jobs that are ready each time a slot frees, so a cell's seeds start
as soon as its tuning is complete instead of after every cell's tuning.

A job that raises is reported through ``on_error(arg, exc)`` (default: re-raise after the others finish), so one
bad run does not lose the finished ones: each finished run writes its own results record.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from pathlib import Path
from typing import Callable, Iterable

BACKENDS = ("local", "ray", "submitit")


def run_jobs(fn: Callable, args: Iterable, *, backend: str = "local", jobs: int = 1,
             on_done: Callable | None = None, on_error: Callable | None = None,
             folder: str | Path = "runs/submitit", slurm: dict | None = None) -> list:
    """Run ``fn(a)`` for every ``a`` in ``args``; returns the results (completion order)."""
    args = list(args)
    if backend not in BACKENDS:
        raise ValueError(f"run_jobs: backend must be one of {BACKENDS}, got {backend!r}")
    out, errors = [], []

    def done(a, r):
        out.append(r)
        if on_done is not None:
            on_done(a, r)

    def failed(a, e):
        if on_error is not None:
            on_error(a, e)
        else:
            errors.append((a, e))

    if backend == "local" and jobs <= 1:
        for a in args:
            try:
                done(a, fn(a))
            except Exception as e:  # noqa: BLE001 - reported below, the other jobs still run
                failed(a, e)
    elif backend == "local":
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(fn, a): a for a in args}
            for f in cf.as_completed(futs):
                try:
                    done(futs[f], f.result())
                except Exception as e:  # noqa: BLE001
                    failed(futs[f], e)
    elif backend == "ray":
        import ray  # optional extra: pip install recparity[ray]

        if not ray.is_initialized():
            ray.init()
        remote = ray.remote(fn)
        refs = {remote.remote(a): a for a in args}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                done(refs[ready[0]], ray.get(ready[0]))
            except Exception as e:  # noqa: BLE001
                failed(refs[ready[0]], e)
    else:
        import submitit  # optional extra: pip install recparity[slurm]

        ex = submitit.AutoExecutor(folder=str(folder))
        ex.update_parameters(**(slurm or {"timeout_min": 600, "cpus_per_task": 1}))
        jobs_ = ex.map_array(fn, args)
        for a, j in zip(args, jobs_):
            try:
                done(a, j.result())
            except Exception as e:  # noqa: BLE001
                failed(a, e)
    if errors:
        a, e = errors[0]
        raise RuntimeError(f"run_jobs: {len(errors)} of {len(args)} job(s) failed; first: {a!r}: {e}") from e
    return out


def run_ready(fn: Callable, ready: Callable[[set], list], *, key: Callable = repr, backend: str = "local",
              jobs: int = 1, on_done: Callable | None = None, **kw) -> list:
    """Run ``fn`` over the jobs ``ready(in_flight_keys)`` returns (priority order), asking again as each finishes.

    ``ready`` sees the keys of the jobs in flight and must leave them out; it is re-asked after every completion,
    so jobs that depend on finished ones (whose results ``on_done`` has stored) join as soon as they can. Ends
    when nothing is in flight and ``ready`` returns nothing. Non-local backends run it in waves of ``run_jobs``.
    """
    if backend != "local" or jobs <= 1:
        out = []
        while batch := ready(set())[: max(jobs, 1) if backend == "local" else None]:
            out += run_jobs(fn, batch, backend=backend, jobs=jobs, on_done=on_done, **kw)
        return out
    out, errors, failed_keys = [], [], set()
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs: dict = {}
        while True:
            busy = {key(a) for a in futs.values()} | failed_keys
            for a in [a for a in ready(busy) if key(a) not in busy][: jobs - len(futs)]:
                futs[ex.submit(fn, a)] = a
            if not futs:
                break
            finished, _ = cf.wait(futs, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                a = futs.pop(f)
                try:
                    r = f.result()
                except Exception as e:  # noqa: BLE001 - the other jobs still run; a failed job is not retried
                    errors.append((a, e))
                    failed_keys.add(key(a))
                    continue
                out.append(r)
                if on_done is not None:
                    on_done(a, r)
    if errors:
        a, e = errors[0]
        raise RuntimeError(f"run_ready: {len(errors)} job(s) failed; first: {a!r}: {e}") from e
    return out
