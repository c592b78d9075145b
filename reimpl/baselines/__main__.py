"""CLI: ``python -m reimpl.baselines {run,report} --plan quick|full [--root DIR] [--only REGEX]``.

``--epochs N`` / ``--seeds 1,2,3`` override the plan (the epoch cap is part of every run id, so a new
cap starts new runs next to the cached ones; render with the same overrides). ``run`` prepares the data, runs
every unfinished run of the plan (results cached under ``--root``, default ``runs/baselines/<plan>``), then renders
the report; ``report`` only renders from whatever
has finished (pending rows are marked). The quick plan's report goes to ``<root>/baselines.md``; the
full plan's to ``reports/baselines_agreement.md`` + ``reports/figures/baselines_*.png`` (``--report-dir``
overrides).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from reimpl.baselines.config import PLANS
from reimpl.paths import ROOT


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.baselines", description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=("run", "report", "teacher"))
    ap.add_argument("--plan", choices=sorted(PLANS), default="quick")
    ap.add_argument("--root", default=None, help="results cache (default runs/baselines/<plan>)")
    ap.add_argument("--report-dir", default=None,
                    help="where baselines.md + figures/ go (default: reports/ for full, <root> for quick)")
    ap.add_argument("--only", default=None, help="regex on run ids (run a subset)")
    ap.add_argument("--epochs", type=int, default=None, help="override the plan's epoch cap (new run ids)")
    ap.add_argument("--seeds", default=None, help="override the plan's seeds, e.g. 1,2,3,4,5")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-report", action="store_true", help="run only; render later with `report`")
    ap.add_argument("--phases", default="train,eval,export",
                    help="teacher: which phases to run now (train always completes first)")
    a = ap.parse_args(argv)
    plan = PLANS[a.plan]
    if a.epochs is not None or a.seeds is not None:
        plan = dataclasses.replace(plan, epochs=a.epochs or plan.epochs,
                                   seeds=tuple(int(x) for x in a.seeds.split(",")) if a.seeds else plan.seeds)
    root = Path(a.root) if a.root else ROOT / "runs" / "baselines" / plan.name
    report_dir = Path(a.report_dir) if a.report_dir else (ROOT / "reports" if plan.name == "full" else root)
    status = None
    if a.cmd == "teacher":   # only the teacher phases of the plan's distilled data sets
        from reimpl.baselines.runner import teacher_dir, teacher_rows
        from reimpl.baselines.teacher import TEACHERS, run_teacher

        manifests: dict = {}
        for ds in plan.datasets:
            if ds.teacher is not None:
                run_teacher(TEACHERS[ds.teacher], teacher_rows(plan, ds, root, manifests).tolist(),
                            teacher_dir(root, ds.teacher), data_name=ds.name, progress=not a.no_progress,
                            phases=a.phases.split(","))
        return 0
    if a.cmd == "run":
        from reimpl.baselines.runner import run_plan

        status = run_plan(plan, root, only=a.only, progress=not a.no_progress)
    if a.cmd == "report" or not a.no_report:
        from reimpl.baselines.report import render

        extra, name = (), "baselines.md"
        if plan.name == "full" and not a.root:   # reports/baselines_agreement.md also holds the distillation plan
            extra = tuple((PLANS[n], ROOT / "runs" / "baselines" / n) for n in ("long", "distill"))
            name = "baselines_agreement.md"    # reports/baselines.md is the converged report (make baseline-report)
        path = render(plan, root, report_dir, extra, name)
        print(f"wrote {path}")
    return 1 if status and status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
