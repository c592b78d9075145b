"""Run one baseline run as a subprocess, normalize its output, cache it; run a whole plan with resume.

Layout under ``<root>`` (default ``runs/baselines/<plan>``, git-ignored)::

    work/<key>/data/<name>/...        prepared data (reimpl.baselines.data)
    runs/<run_id>/log.txt             the subprocess's stdout + stderr
    runs/<run_id>/capture.json        reference: ranks recorded by parity.shims.dllm2rec_main
    runs/<run_id>/metrics.json        reimpl: reimpl.dllm2rec.train --out
    runs/<run_id>/ckpt.pt             reimpl: per-epoch checkpoint (resumed by --resume)
    results/<run_id>.json             the normalized result; its presence = the run is finished

A finished run is never rerun. An interrupted reimpl run resumes from its last epoch checkpoint; an
interrupted reference run restarts from scratch (``main.py`` saves nothing).

The reference's HR/NDCG are recomputed from the recorded ranks (full precision) and checked against
the values ``main.py`` prints (6 decimals); MRR exists only through the recorded ranks.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from reimpl.baselines.config import Plan, RunSpec
from reimpl.baselines.data import prepare
from reimpl.metrics import rank_metrics
from reimpl.paths import ROOT

PRINT_TOL = 5.1e-7  # main.py:256 prints with {:.6f}


def python_exe() -> str:
    return sys.executable


def run_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def student_argv(spec: RunSpec) -> list[str]:
    """Options both sides get, spelled as main.py's parse_args (main.py:13-40)."""
    argv = ["--model_name", spec.model, "--data", spec.dataset.name]
    for k, v in spec.student_args:
        argv += [f"--{k}", f"{v:g}"]
    return argv + ["--epoch", str(spec.epochs)]


def command(spec: RunSpec, workdir: Path, run_dir: Path) -> list[str]:
    if spec.side == "reference":
        return [python_exe(), "-m", "parity.shims.dllm2rec_main", "--seed", str(spec.seed),
                "--workdir", str(workdir), "--capture", str(run_dir / "capture.json"), "--",
                *student_argv(spec)]
    return [python_exe(), "-m", "reimpl.dllm2rec.train", "--data-dir", str(workdir), *student_argv(spec),
            "--mode", spec.side, "--seed", str(spec.seed), "--out", str(run_dir / "metrics.json"),
            "--checkpoint", str(run_dir / "ckpt.pt"), "--resume", "--no-progress"]


_LOSS = re.compile(r"^the loss in (\d+)th step is: (\S+), train this epoch cost (\S+) s")
_FLOATS = re.compile(r"^(-?\d+\.\d+)(\t-?\d+\.\d+){7}$")


def parse_reference_stdout(text: str) -> list[dict]:
    """Per epoch ``{"epoch", "loss", "train_s", "printed": {"val": [8], "test": [8]}}`` from main.py's
    stdout (main.py:497-517: loss line, then VAL and TEST blocks of hr/ndcg@1,5,10,20)."""
    epochs, cur, split = [], None, None
    for line in text.splitlines():
        m = _LOSS.match(line)
        if m:
            cur = {"epoch": int(m.group(1)), "loss": float(m.group(2)), "train_s": float(m.group(3)),
                   "printed": {}}
            epochs.append(cur)
            continue
        if line.startswith("VAL PHRASE"):
            split = "val"
        elif line.startswith("TEST PHRASE"):
            split = "test"
        elif cur is not None and split and _FLOATS.match(line.strip()):
            cur["printed"][split] = [float(x) for x in line.split()]
            split = None
    return epochs


def normalize_reference(stdout: str, capture: dict) -> tuple[list[dict], float]:
    """Merge parsed stdout and recorded ranks; returns (history, max |printed - recomputed|)."""
    epochs = parse_reference_stdout(stdout)
    evals = capture["evals"]
    if len(evals) != 2 * len(epochs):
        raise ValueError(f"reference run: {len(epochs)} epochs printed but {len(evals)} evaluations recorded")
    worst = 0.0
    hist = []
    for e in epochs:
        rec = {"epoch": e["epoch"], "loss": e["loss"], "train_s": e["train_s"]}
        for split in ("val", "test"):
            ev = evals[2 * (e["epoch"] - 1) + (split == "test")]
            if ev["split"] != split or ev["epoch"] != e["epoch"]:
                raise ValueError(f"reference run: evaluation order mismatch at epoch {e['epoch']}")
            m = rank_metrics(ev["ranks"])  # the capture writes -1 for a target that is not an item
            printed = e["printed"].get(split)
            if printed is None:
                raise ValueError(f"reference run: no printed {split.upper()} metrics at epoch {e['epoch']}")
            mine = [v for pair in zip(m["hr"], m["ndcg"]) for v in pair]
            worst = max(worst, max(abs(a - b) for a, b in zip(mine, printed)))
            rec[split] = m
        hist.append(rec)
    if worst > PRINT_TOL:
        raise ValueError(f"reference run: metrics recomputed from recorded ranks differ from main.py's "
                         f"printed values by {worst:.3g} (> {PRINT_TOL})")
    return hist, worst


def versions() -> dict:
    import pandas
    import scipy
    import torch

    from reimpl.refs_lock import load_lock

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "pandas": pandas.__version__, "scipy": scipy.__version__, "platform": platform.platform()}
    try:
        spec = load_lock()["DLLM2Rec"]
        out["dllm2rec_ref"] = f"{getattr(spec, 'url', '')}@{getattr(spec, 'commit', '')}"
    except Exception as e:  # noqa: BLE001 - informative only
        out["dllm2rec_ref"] = f"unknown ({e})"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "reimpl", "parity"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        out["recparity"] = head + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        out["recparity"] = "unknown"
    return out


CODE_FILES = ("reimpl/dllm2rec/*.py", "reimpl/models/*.py", "parity/shims/dllm2rec_main.py")


def code_version() -> dict:
    """Provenance of one run: git HEAD and a sha256 over the training code both sides execute
    (reimpl trainer + students, the reference-run shim) as it is on disk when the run starts."""
    import hashlib

    h = hashlib.sha256()
    for pattern in CODE_FILES:
        for f in sorted(ROOT.glob(pattern)):
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        head = "unknown"
    return {"git_head": head, "code_sha256": h.hexdigest()}


def reference_available() -> str | None:
    """None when the verified DLLM2Rec checkout exists, else the reason."""
    from reimpl.refs_lock import RefError, load_lock, verify

    try:
        verify(load_lock()["DLLM2Rec"])
    except (RefError, KeyError, OSError) as e:
        return f"reference checkout unavailable: {e}"
    return None


def result_path(root: Path, spec: RunSpec) -> Path:
    return Path(root) / "results" / f"{spec.run_id}.json"


def execute(spec: RunSpec, root: Path, workdir: Path, threads: int, bar=None) -> dict:
    """Run ``spec`` to completion (or failure) and write its normalized result; returns it."""
    run_dir = Path(root) / "runs" / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(spec, workdir, run_dir)
    code = code_version()
    log_path = run_dir / "log.txt"
    t0, started = time.time(), time.strftime("%Y-%m-%dT%H:%M:%S")
    resumed_from = 0
    if spec.side != "reference" and (run_dir / "ckpt.pt").is_file():
        resumed_from = -1  # the trainer logs "resumed from ... after epoch N"
    with open(log_path, "a") as log:
        log.write(f"\n### {started} {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(threads), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        out_lines = []
        for line in proc.stdout:
            out_lines.append(line)
            log.write(line)
            log.flush()
            if bar is not None and (_LOSS.match(line) if spec.side == "reference"
                                    else re.match(r"epoch \d+:", line)):
                bar.update(1)
            m = re.match(r"resumed from .* after epoch (\d+)", line)
            if m:
                resumed_from = int(m.group(1))
                if bar is not None:
                    bar.update(resumed_from)
        exit_code = proc.wait()
    wall = time.time() - t0
    res = {"run_id": spec.run_id, "dataset": spec.dataset.key, "dataset_name": spec.dataset.name,
           "model": spec.model, "side": spec.side, "seed": spec.seed, "epochs_cap": spec.epochs,
           "student_args": dict(spec.student_args), "command": shlex.join(cmd), "cwd": str(ROOT),
           "threads": threads, "started": started, "wall_s": wall, "exit_code": exit_code,
           "resumed_from_epoch": max(resumed_from, 0), "log": str(log_path), "code": code}
    if exit_code != 0:
        res["status"] = "failed"
        res["error"] = "".join(out_lines[-20:])
        (run_dir / "failed.json").write_text(json.dumps(res, indent=1))
        return res
    if spec.side == "reference":
        capture = json.loads((run_dir / "capture.json").read_text())
        hist, worst = normalize_reference("".join(out_lines), capture)
        res.update(history=hist, printed_vs_ranks_max_abs=worst, seed_calls=capture["seed_calls"],
                   stopped_early=len(hist) < spec.epochs, mrr_source="ranks recorded by the shim")
    else:
        m = json.loads((run_dir / "metrics.json").read_text())
        hist = [{"epoch": h["epoch"], "loss": h["loss"], "train_s": h["train_s"],
                 "val": {k: h["val"][k] for k in ("hr", "ndcg", "mrr", "n")},
                 "test": {k: h["test"][k] for k in ("hr", "ndcg", "mrr", "n")}} for h in m["history"]]
        res.update(history=hist, stopped_early=bool(m["stopped_early"]), trainer_best_epoch=m["best_epoch"],
                   trainer_selected_on=m["selected_on"], mrr_source="reimpl.dllm2rec.evaluate")
    res["status"] = "finished"
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = result_path(root, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)  # atomic: a result file is complete or absent
    (run_dir / "failed.json").unlink(missing_ok=True)
    return res


def _prepare_data(plan: Plan, root: Path, only: str | None, progress: bool, log,
                  defer_teachers: bool = False) -> tuple[dict, dict, list]:
    """Prepare every data set the selected runs need (a distilled one: its teacher phase first) and write
    ``manifests.json``; returns (manifests, {data key: why its teacher phase was skipped}, deferred), where
    ``deferred`` lists the distilled data sets whose teacher phase is left to the caller (``defer_teachers``:
    :func:`run_plan` overlaps it with the runs that do not read it)."""
    manifests: dict = {}
    teacher_skipped, deferred = {}, []
    wanted = {r.dataset.key for r in plan.runs() if only is None or re.search(only, r.run_id)}
    for ds in plan.datasets:
        if ds.teacher is not None and ds.key not in wanted:
            continue   # --only excludes its runs: do not start the (long) teacher phase
        if ds.teacher is not None:
            if defer_teachers and teacher_blocker(ds) is None:
                deferred.append(ds)
                continue
            why = prepare_teacher(plan, ds, root, manifests, progress=progress, log=log)
            if why:
                teacher_skipped[ds.key] = why
                log(f"note: {ds.key}: {why}; its runs are skipped")
            continue
        manifests[ds.key] = prepare(ds, root)
    (root / "manifests.json").write_text(json.dumps(manifests, indent=1))
    return manifests, teacher_skipped, deferred


def run_plan(plan: Plan, root: Path, *, only: str | None = None, progress: bool = True,
             log=print) -> dict:
    """Prepare data, run every unfinished run of ``plan`` (``jobs`` at a time; with ``jobs > 1`` a teacher phase
    runs in one slot beside the runs that do not read it), write ``status.json``."""
    from tqdm.auto import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifests, teacher_skipped, deferred = _prepare_data(plan, root, only, progress, log,
                                                         defer_teachers=plan.jobs > 1)
    ref_missing = reference_available()
    runs = [r for r in plan.runs() if (only is None or re.search(only, r.run_id))
            and r.dataset.key not in teacher_skipped]
    todo = [r for r in runs if not result_path(root, r).is_file()]
    if todo or not (root / "versions.json").is_file():  # library versions of the runs, not of a re-render
        (root / "versions.json").write_text(json.dumps(versions(), indent=1))
        (root / "plan.json").write_text(json.dumps(asdict(plan), indent=1))
    skipped = []
    if ref_missing:
        skipped = [r.run_id for r in todo if r.side == "reference"]
        todo = [r for r in todo if r.side != "reference"]
        log(f"note: {ref_missing}; {len(skipped)} reference runs skipped")
    log(f"plan {plan.name}: {len(runs)} runs, {len(runs) - len(todo) - len(skipped)} cached, "
        f"{len(todo)} to run -> {root}")
    failed = []
    outer = tqdm(total=len(todo), desc=f"baseline {plan.name}", unit="run", disable=not progress)

    def one(spec: RunSpec, per_epoch_bar: bool) -> dict:
        bar = (tqdm(total=spec.epochs, desc=f"  {spec.model}/{spec.side}/s{spec.seed}", unit="epoch",
                    leave=False, disable=not progress) if per_epoch_bar else None)
        try:
            return execute(spec, root, Path(manifests[spec.dataset.key]["workdir"]), plan.threads, bar)
        finally:
            if bar is not None:
                bar.close()

    def done(spec: RunSpec, res: dict) -> None:
        outer.update(1)
        outer.set_postfix_str(spec.run_id)
        if res["status"] != "finished":
            failed.append(spec.run_id)
            log(f"FAILED {spec.run_id} (exit {res['exit_code']}); see {res['log']}")

    if plan.jobs <= 1:
        for spec in todo:
            outer.set_postfix_str(spec.run_id)
            done(spec, one(spec, True))
    else:  # quick and distill plans: independent subprocesses, `jobs` at a time (timings then not comparable)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(plan.jobs) as pool:
            # a deferred teacher phase takes one slot; the runs that do not read it fill the others meanwhile
            teachers = {ds.key: pool.submit(prepare_teacher, plan, ds, root, manifests, progress=False, log=log)
                        for ds in deferred}

            def after_teacher(spec: RunSpec) -> dict:
                why = teachers[spec.dataset.key].result()  # its manifest is in place once this returns None
                if why:  # passed teacher_blocker before the plan started, so something changed meanwhile
                    raise RuntimeError(f"{spec.dataset.key}: {why}")
                return one(spec, False)

            futures = [(spec, pool.submit(one, spec, False)) for spec in todo if spec.dataset.key not in teachers]
            futures += [(spec, pool.submit(after_teacher, spec)) for spec in todo if spec.dataset.key in teachers]
            for spec, fut in futures:
                done(spec, fut.result())
        if deferred:
            (root / "manifests.json").write_text(json.dumps(manifests, indent=1))
    outer.close()
    finish_teachers(plan, root, manifests, progress=progress, log=log)
    status = {"plan": plan.name, "total": len(runs), "failed": failed, "skipped_reference": skipped,
              "skipped_teacher": teacher_skipped,
              "reference_missing": ref_missing, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (root / "status.json").write_text(json.dumps(status, indent=1))
    return status


def teacher_dir(root: Path, name: str) -> Path:
    return Path(root) / "teacher" / name


def teacher_rows(plan: Plan, ds, root: Path, manifests: dict) -> np.ndarray:
    """Original train-row indices the teacher of ``ds`` must export: those of its undistilled twin's slice
    (prepared here if needed; its ``train_rows.txt``)."""
    twin = plan.undistilled_twin(ds)
    man = manifests.get(twin.key) or prepare(twin, root)
    manifests[twin.key] = man
    return np.loadtxt(Path(man["workdir"]) / "train_rows.txt", dtype=np.int64, ndmin=1)


def teacher_blocker(ds) -> str | None:
    """Why the teacher phase of ``ds`` cannot run here (checked before any work), else None."""
    from reimpl.baselines.teacher import TEACHERS

    if ds.teacher not in TEACHERS:
        raise ValueError(f"dataset {ds.key}: unknown teacher {ds.teacher!r} (have {sorted(TEACHERS)})")
    prompt = ROOT / "ref_repositories" / "iLoRA" / "prompt" / "artist.txt"
    if not prompt.is_file():
        return f"teacher {ds.teacher} needs the iLoRA prompt file {prompt} (`make refs`)"
    return None


def prepare_teacher(plan: Plan, ds, root: Path, manifests: dict, progress: bool = True, log=print) -> str | None:
    """Prepare the undistilled twin of ``ds`` (its ``train_rows.txt`` fixes the rows), run / resume the
    teacher (reimpl.baselines.teacher) for those rows, then prepare ``ds`` with the teacher's ``tocf``.
    Returns None, or why the teacher could not run (its runs are then skipped)."""
    import dataclasses

    from reimpl.baselines.teacher import TEACHERS, run_teacher

    rows = teacher_rows(plan, ds, root, manifests)
    why = teacher_blocker(ds)
    if why:
        return why
    # train + export now (the students need them); evaluation after the student runs (finish_teachers)
    tocf = run_teacher(TEACHERS[ds.teacher], rows.tolist(), teacher_dir(root, ds.teacher), data_name=ds.name,
                       progress=progress, log=log, phases=("train", "export"))
    manifests[ds.key] = prepare(dataclasses.replace(ds, tocf_dir=str(tocf)), root)
    return None


def finish_teachers(plan: Plan, root: Path, manifests: dict, progress: bool = True, log=print) -> None:
    """Run the remaining teacher phase (generation evaluation) of every teacher the plan used."""
    from reimpl.baselines.teacher import TEACHERS, run_teacher

    for ds in plan.datasets:
        if ds.teacher is None or ds.key not in manifests:
            continue
        rows = np.loadtxt(Path(manifests[ds.key]["workdir"]) / "train_rows.txt", dtype=np.int64, ndmin=1)
        run_teacher(TEACHERS[ds.teacher], rows.tolist(), teacher_dir(root, ds.teacher), data_name=ds.name,
                    progress=progress, log=log)


def load_results(root: Path) -> list[dict]:
    d = Path(root) / "results"
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []
