"""``make extensions-slice``: UAMD, RDR, CDR and sample selection against the verified distillation baseline.

The superseded 256-row trial; ``make extensions`` is :mod:`reimpl.extensions.engine_trial`.

Usage::

    python -m reimpl.extensions.trial [--baseline-root runs/baselines/distill] [--plan distill]
        [--teacher ilora|standin] [--models SASRec[,GRU,Caser]] [--seeds 1,2,3] [--arms a,b,..]
        [--rationales all|N] [--cdr-rounds 2] [--work cache/extensions] [--out reports/extensions.md]

**Baseline.** The distillation plan of :mod:`reimpl.baselines` (``--plan distill``; its students are
the ones ``reports/baselines_agreement.md`` verifies). Its kd working directory ``<root>/work/<key>+kd/`` holds
the student slice (``data/<name>/``) and, through the ``tocf/<name>`` link, the reimpl iLoRA teacher's
export for exactly those rows (``<root>/teacher/<teacher>/tocf/<name>/``: ranking, confidence,
4096-padded item table, UAMD uncertainty, ``rows.txt``). Every arm trains on that slice and is
evaluated on its val/test splits, with the trainer configuration of the plan's reimpl ``fixed`` runs:
the options are *parsed from the command* :func:`reimpl.baselines.runner.command` builds for those
runs, so lr, batch, dropout, epochs, DRO ``alpha``, ``lam``, ``ed_weight`` ... are the baseline's by
construction, not by copy. Arms ``plain`` and ``dllm2rec`` are the baseline's undistilled and
distilled runs of the same seed: their per-epoch history is compared with
``<root>/results/<run_id>.json`` (or, while that file does not exist yet, with a fresh subprocess
run of the very same command) and the largest difference is reported.

**Teacher.** ``--teacher ilora`` (default): the export above, unchanged. ``--teacher standin``: the
clearly labelled stand-in of :mod:`reimpl.extensions.standin` (SASRec experts) replaces it, fit on
``--teacher-rows`` LastFM train rows and exported for the same slice; then only ``plain`` is the
baseline run, and CDR refines the stand-in itself (:func:`reimpl.extensions.cdr.run_cdr`).

**CDR with the iLoRA teacher.** A full round (teacher re-training + re-export) costs hours on this
CPU, so a round here refreshes only the teacher-side item table the student injects: the previous
round's student item embeddings are written into the zero padding of ``all_embeddings.pt`` (columns
``d_used .. d_used + H``; the LLM columns are kept). The teacher's ranking, confidence and uncertainty
are *not* refreshed (``what_cdr`` in the results says so, and the report quotes it).

Caches under ``--work``: rationales (``rdr/<key>/``), stand-in teachers, baseline re-runs.
Results: ``runs/extensions/results.json`` (``--results``); report ``--out``; figures beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reimpl.data.id2name import read_id2name
from reimpl.dllm2rec.config import DLLM2RecConfig, add_arguments, from_namespace
from reimpl.dllm2rec.train import DLLM2RecData, load_data, train
from reimpl.extensions.cdr import CDRConfig, run_cdr, selected
from reimpl.extensions.hooks import ExtConfig, build_hooks, repr_width
from reimpl.paths import DATA, ROOT, SHARED

TEMPLATE = Path(__file__).with_name("templates") / "extensions.md.j2"
METRICS = ("ndcg@10", "hr@10", "mrr", "ece")
IDENTICAL_TOL = 1e-12   # |loss, hr, ndcg, mrr| per epoch, arm vs baseline run


# ------------------------------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    """One trial arm: the baseline run whose configuration it starts from, plus extension config."""

    name: str
    base: str          # "plain" (the undistilled baseline run) | "dllm2rec" (the distilled one)
    ext: dict          # reimpl.extensions.hooks.ExtConfig fields
    what: str


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("plain", "plain", {}, "the baseline's undistilled student"),
    Arm("dllm2rec", "dllm2rec", {}, "the baseline's distilled student (DLLM2Rec loss, teacher export)"),
    Arm("uamd-exp", "dllm2rec", {"uamd": {"enabled": True, "fn": "exp"}},
        "`dllm2rec` + UAMD: KD weights of row b times w(u_b) = exp(-u_b / median u), mean-normalized"),
    Arm("sel-kl-high", "dllm2rec",
        {"selection": {"policy": "kl", "output": "mask", "ratio": 0.5, "prefer": "high"}},
        "`dllm2rec`, KD only on the half of each batch with the largest KL(teacher || student) over the top-10"),
    Arm("sel-gt-error", "dllm2rec", {"selection": {"policy": "gt_error", "output": "weight"}},
        "`dllm2rec`, KD weights of row b times p_teacher(target) (0 when the target is not in the top-10)"),
    Arm("rdr", "dllm2rec", {"rdr": {"enabled": True, "lam": 0.5}},
        "`dllm2rec` + 0.5 * (1 - cos(proj(h), v_rationale)) on rows with a SmolLM2 rationale"),
    Arm("rdr-only", "plain", {"rdr": {"enabled": True, "lam": 0.5}}, "`plain` + the RDR term (no teacher ranking)"),
    Arm("cdr", "dllm2rec", {}, "cyclic refinement rounds on top of `dllm2rec` (see the CDR section)"),
)}


# ------------------------------------------------------------------------------------------- baseline
@dataclass
class Baseline:
    """Where the verified baseline of one distilled slice lives, and its run matrix."""

    root: Path
    plan: object              # reimpl.baselines.config.Plan
    kd: object                # DatasetSpec of the distilled twin (teacher set)
    plain: object             # DatasetSpec of the undistilled twin

    @property
    def kd_workdir(self) -> Path:
        return self.root / "work" / self.kd.key

    @property
    def plain_workdir(self) -> Path:
        return self.root / "work" / self.plain.key

    @property
    def tocf(self) -> Path:
        return self.kd_workdir / "tocf" / self.kd.name

    @property
    def teacher_dir(self) -> Path:
        from reimpl.baselines.runner import teacher_dir

        return teacher_dir(self.root, self.kd.teacher)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.kd.seeds or self.plan.seeds)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.kd.models or self.plan.models)

    def run_spec(self, model: str, seed: int, base: str, epochs: int | None = None):
        """The plan's reimpl ``fixed`` RunSpec of (model, seed) on the plain or distilled twin."""
        from reimpl.baselines.config import RunSpec

        ds = self.plain if base == "plain" else self.kd
        args = ds.student_args if ds.student_args is not None else self.plan.student_args
        return RunSpec(ds, model, "fixed", seed, epochs or self.plan.epochs, args)

    def workdir(self, spec) -> Path:
        return self.root / "work" / spec.dataset.key


def locate_baseline(root: str | Path, plan, dataset: str | None = None) -> Baseline:
    """The distilled slice of ``plan`` (``dataset``: its key, when the plan has several) under ``root``.
    Raises FileNotFoundError naming what is missing (the teacher export, the working directory)."""
    root = Path(root)
    kds = [d for d in plan.datasets if d.teacher is not None and (dataset is None or d.key == dataset)]
    if len(kds) != 1:
        raise ValueError(f"plan {plan.name}: expected one distilled data set"
                         f"{'' if dataset is None else ' with key ' + dataset}, found {[d.key for d in kds]}")
    kd = kds[0]
    b = Baseline(root, plan, kd, plan.undistilled_twin(kd))
    tj = b.teacher_dir / "teacher.json"
    if not (b.kd_workdir / "manifest.json").is_file() and tj.is_file() and json.loads(tj.read_text()).get("done"):
        # the teacher phase finished but the plan's student runs have not prepared the distilled working
        # directory yet: prepare it as reimpl.baselines.runner.prepare_teacher does (same spec, same files)
        from reimpl.baselines.data import prepare

        prepare(dataclasses.replace(kd, tocf_dir=str(b.teacher_dir / "tocf" / kd.name)), root)
    need = [b.kd_workdir / "data" / kd.name / "train_data.df", b.kd_workdir / "train_rows.txt"]
    need += [b.tocf / f for f in ("myrank_train.txt", "confidence_train.txt", "all_embeddings.pt",
                                  "uncertainty_train.txt", "rows.txt")]
    for p in need:
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: the trial reads the teacher export of plan {plan.name!r} "
                f"(`python -m reimpl.baselines run --plan {plan.name}` writes it under {root})")
    rows = np.loadtxt(b.tocf / "rows.txt", dtype=np.int64, ndmin=1)
    if not np.array_equal(rows, np.loadtxt(b.kd_workdir / "train_rows.txt", dtype=np.int64, ndmin=1)):
        raise ValueError(f"{b.tocf / 'rows.txt'} lists other train rows than {b.kd_workdir / 'train_rows.txt'}: "
                         "teacher rows would be misaligned with the student slice")
    return b


def _train_cli() -> argparse.ArgumentParser:
    """The option set of ``python -m reimpl.dllm2rec.train`` (train.main)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    add_arguments(ap)
    return ap


def student_config(b: Baseline, spec) -> tuple[DLLM2RecConfig, list[str]]:
    """(config, command) of the baseline's run ``spec``: the config is what ``reimpl.dllm2rec.train``
    parses from the command the baseline runner executes for that run."""
    from reimpl.baselines.runner import command

    cmd = command(spec, b.workdir(spec), Path("<run_dir>"))
    if "reimpl.dllm2rec.train" not in cmd:
        raise ValueError(f"run {spec.run_id}: not a reimpl run ({cmd[:3]})")
    argv = cmd[cmd.index("reimpl.dllm2rec.train") + 1:]
    return from_namespace(_train_cli().parse_args(argv)), cmd


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def same_data_files(a: Path, b: Path) -> bool | None:
    """Whether two ``data/<name>`` folders hold byte-identical files (None: one is missing)."""
    if not a.is_dir() or not b.is_dir():
        return None
    fa, fb = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    return fa == fb and all(_sha(a / f) == _sha(b / f) for f in fa)


# -------------------------------------------------------------------------------- baseline identity
def _hist_values(rec: dict) -> list[float]:
    out = [float(rec["loss"])]
    for s in ("val", "test"):
        out += [float(x) for x in rec[s]["hr"]] + [float(x) for x in rec[s]["ndcg"]] + [float(rec[s]["mrr"])]
    return out


def compare_history(mine: list[dict], theirs: list[dict]) -> dict:
    """Per-epoch loss and val/test HR/NDCG@{1,5,10,20}/MRR of two runs: ``{"epochs": [n_mine, n_theirs],
    "max_abs", "identical"}`` (identical: same epochs, every value within IDENTICAL_TOL)."""
    n = min(len(mine), len(theirs))
    worst = 0.0
    for a, b in zip(mine[:n], theirs[:n]):
        va, vb = _hist_values(a), _hist_values(b)
        worst = max(worst, max(abs(x - y) for x, y in zip(va, vb)))
    same = len(mine) == len(theirs) and worst <= IDENTICAL_TOL
    return {"epochs": [len(mine), len(theirs)], "max_abs": worst, "identical": bool(same)}


def baseline_check(b: Baseline, spec, res: dict, work: Path, rerun: bool, log) -> dict:
    """Compare an arm's trainer output with the baseline's result for ``spec`` (module docstring)."""
    from reimpl.baselines.runner import code_version, command, result_path, run_env

    path = result_path(b.root, spec)
    out = {"run_id": spec.run_id}
    if path.is_file():
        r = json.loads(path.read_text())
        if r.get("status") != "finished":
            out.update(source="results", path=str(path), identical=False, note=f"status {r.get('status')}")
            return out
        out.update(source="results", path=str(path), **compare_history(res["history"], r["history"]))
        out["best_epoch"] = [res["best_epoch"], r.get("trainer_best_epoch")]
        out["identical"] = out["identical"] and res["best_epoch"] == r.get("trainer_best_epoch")
        code = r.get("code")
        out["code_sha_same"] = (code.get("code_sha256") == code_version()["code_sha256"]
                                if isinstance(code, dict) else None)
        return out
    if not rerun:
        out.update(source="none", identical=None, note=f"{path} not present")
        return out
    run_dir = work / "baseline_rerun" / spec.run_id
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cmd = command(spec, b.workdir(spec), run_dir)
    log(f"baseline result {path.name} absent: re-running its command ({spec.run_id})")
    p = subprocess.run(cmd, cwd=ROOT, env=run_env(1), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"baseline command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    m = json.loads((run_dir / "metrics.json").read_text())
    out.update(source="rerun", path=str(run_dir / "metrics.json"), **compare_history(res["history"], m["history"]))
    out["best_epoch"] = [res["best_epoch"], m["best_epoch"]]
    out["identical"] = out["identical"] and res["best_epoch"] == m["best_epoch"]
    return out


# ------------------------------------------------------------------------------------------ teacher
def table_width(table: torch.Tensor) -> int:
    """Columns in use of a zero-padded item table ``[I, D]`` (1 + the last column with a non-zero)."""
    nz = (table != 0).any(0).nonzero()
    return int(nz.max()) + 1 if len(nz) else 0


def teacher_facts(b: Baseline, data: DLLM2RecData, u: np.ndarray, k: int) -> dict:
    """What the report says about the iLoRA teacher: teacher.json (training, generation eval, export
    quality) plus the quality of the ranking the students read, recomputed from the files."""
    tj = b.teacher_dir / "teacher.json"
    facts = json.loads(tj.read_text()) if tj.is_file() else {}
    summary = {"teacher_json": str(tj) if tj.is_file() else None, "name": b.kd.teacher}
    if facts:
        summary["spec"] = facts.get("spec", {})
        summary["eval"] = facts.get("eval") or {}
    for split in ("val", "test"):   # teacher.json lists only the splits evaluated in its own process
        ep = b.teacher_dir / f"eval_{split}.json"
        if split not in summary.get("eval", {}) and ep.is_file():
            e = json.loads(ep.read_text())
            summary.setdefault("eval", {})[split] = {k: v for k, v in e.items() if k != "generations"}
        summary["export"] = facts.get("export", {})
        summary["timings"] = facts.get("timings", {})
        tr = facts.get("train", {})
        if tr.get("losses"):
            summary["train"] = {"micro_batches": len(tr["losses"]), "first_loss": tr["losses"][0],
                                "last_loss": tr["losses"][-1], "seconds": tr.get("seconds"),
                                "optimizer_steps": tr.get("global_step")}
    cand = data.candidates[:, :k].numpy()
    hit = cand == data.train_next[:, None]
    pos = np.where(hit.any(1), hit.argmax(1) + 1, 0)
    summary["files"] = {"rows": int(len(cand)), "k": k, "target_in_topk": float(hit.any(1).mean()),
                        "target_at_1": float((pos == 1).mean()),
                        "table_shape": list(data.llm_table.shape), "table_width_used": table_width(data.llm_table),
                        "u_mean": float(u.mean()), "u_median": float(np.median(u)), "u_max": float(u.max()),
                        "u_zero_frac": float((u == 0).mean())}
    return summary


class _PaddedTeacher:
    """A stand-in teacher whose exported item table is zero-padded to the students' ``d_llm`` (so the
    stand-in trial keeps the baseline's trainer configuration, ``d_llm`` included)."""

    def __init__(self, teacher, width: int):
        self.teacher, self.width = teacher, width

    def refine(self, *a, **k):
        return self.teacher.refine(*a, **k)

    def scores(self, *a, **k):
        return self.teacher.scores(*a, **k)

    def export(self, seq, lens, kind: str = "variance") -> dict:
        ex = self.teacher.export(seq, lens, kind=kind)
        e = ex["embeddings"].to(torch.float32)
        ex["embeddings"] = torch.nn.functional.pad(e, (0, self.width - e.shape[1]))
        return ex


def standin_teacher(b: Baseline, data: DLLM2RecData, cfg: DLLM2RecConfig, work: Path, teacher_rows: int,
                    shared: Path, log) -> tuple[DLLM2RecData, np.ndarray, dict, _PaddedTeacher]:
    """Fit (or load) the stand-in on ``teacher_rows`` LastFM train rows (the slice's rows always among
    them; 0: the slice only) and export it for the slice. Returns (data, uncertainty, facts, teacher)."""
    from reimpl.extensions.cdr import teacher_metrics
    from reimpl.extensions.standin import StandInConfig, StandInTeacher

    tcfg = StandInConfig()
    seq, lens, nxt = data.train_seq, data.train_len, data.train_next
    if teacher_rows > 0:
        from reimpl.data.convert import ilora_to_dllm2rec

        src = shared / "data/ilora/lastfm"
        droot = work / "dllm2rec_full"
        if not (droot / "data/lastfm/train_data.df").is_file():
            if not (src / "train_data.df").is_file():
                raise FileNotFoundError(f"{src / 'train_data.df'}: --teacher standin --teacher-rows > 0 needs "
                                        "LastFM (iLoRA layout); pass --teacher-rows 0 to fit on the slice")
            ilora_to_dllm2rec(src, droot / "data/lastfm", name="lastfm")
        full = load_data(droot, "lastfm", need_rank=False, need_emb=False)
        slice_rows = np.loadtxt(b.kd_workdir / "train_rows.txt", dtype=np.int64, ndmin=1)
        perm = np.random.RandomState(0).permutation(len(full.train_next))
        extra = perm[~np.isin(perm, slice_rows)][:max(teacher_rows - len(slice_rows), 0)]
        t_rows = np.sort(np.concatenate([slice_rows, extra]))
        seq, lens, nxt = full.train_seq[t_rows], full.train_len[t_rows], full.train_next[t_rows]
    key = hashlib.sha256(json.dumps([dataclasses.asdict(tcfg), nxt.tolist(), seq.tolist()]).encode()).hexdigest()[:16]
    tpath = work / f"standin_{key}.pt"
    teacher = StandInTeacher(tcfg, data.item_num, data.seq_size)
    if tpath.is_file():
        for m, sd in zip(teacher.experts, torch.load(tpath, weights_only=True)):
            m.load_state_dict(sd)
        fit_s = json.loads(tpath.with_suffix(".json").read_text())["fit_s"]
    else:
        t0 = time.time()
        teacher.fit(seq, lens, nxt, log=log)
        fit_s = time.time() - t0
        torch.save([m.state_dict() for m in teacher.experts], tpath)
        tpath.with_suffix(".json").write_text(json.dumps({"fit_s": fit_s}))
    padded = _PaddedTeacher(teacher, cfg.d_llm)
    ex = padded.export(data.train_seq, data.train_len)
    d = dataclasses.replace(data, candidates=torch.as_tensor(ex["rank"], dtype=torch.long),
                            confidence=torch.as_tensor(ex["confidence"], dtype=torch.float32),
                            llm_table=ex["embeddings"])
    facts = {"name": "stand-in", "cfg": dataclasses.asdict(tcfg), "fit_rows": int(len(nxt)), "fit_s": fit_s,
             "test": teacher_metrics(teacher, data.test), "val": teacher_metrics(teacher, data.val)}
    return d, np.asarray(ex["uncertainty"]), facts, padded


# ---------------------------------------------------------------------------------------------- RDR
def rationales(data: DLLM2RecData, names: dict[int, str], store: Path, n: int | None, log,
               model=None, tokenizer=None, model_id: str | None = None, encoder=None) -> dict:
    """Rationales for ``n`` seeded slice rows (None: all), cached in ``store``; MiniLM vector store."""
    from reimpl.extensions.rdr import GenParams, build_prompt, build_vector_store, generate_rationales

    gen = GenParams(max_new_tokens=32, batch_size=16)
    N = len(data.train_next)
    if n is None or n >= N:
        rows = list(range(N))
    else:
        rows = np.sort(np.random.RandomState(1).choice(N, n, replace=False)).tolist()
    name = lambda i: names.get(int(i), f"item {int(i)}")  # noqa: E731
    prompts = [build_prompt([name(i) for i in data.train_seq[r] if int(i) != data.item_num][-gen.max_history:],
                            name(data.train_next[r])) for r in rows]
    cached_before = 0
    from reimpl.extensions.rdr import CACHE_FILE, read_cache
    if (store / CACHE_FILE).is_file():
        cached_before = len(set(read_cache(store / CACHE_FILE)) & set(rows))
    t0 = time.time()
    recs = generate_rationales(rows, prompts, store, model=model, tokenizer=tokenizer, model_id=model_id, gen=gen)
    gen_s = time.time() - t0
    t0 = time.time()
    vec, index = build_vector_store(recs, store, encoder=encoder)
    lens = [len(recs[r]["rationale"].split()) for r in rows]
    # generation speed from the cache's own per-batch timestamps (meaningful when the rows were cached earlier)
    stamps = sorted(time.mktime(time.strptime(recs[r]["time"], "%Y-%m-%dT%H:%M:%S"))
                    for r in rows if "time" in recs[r])
    cache_rate = ((stamps[-1] - stamps[0]) / (len(stamps) - gen.batch_size)
                  if len(stamps) > gen.batch_size and stamps[-1] > stamps[0] else None)
    return {"store": str(store), "n": len(rows), "coverage": len(rows) / N, "gen_s": gen_s,
            "cached_before": cached_before, "generated": len(rows) - cached_before,
            "s_per_generated_row": gen_s / max(len(rows) - cached_before, 1) if len(rows) > cached_before else None,
            "cache_s_per_row": cache_rate, "encode_s": time.time() - t0, "gen": dataclasses.asdict(gen),
            "model_id": recs[rows[0]]["model_id"],
            "dim": int(vec.shape[1]), "words_mean": float(np.mean(lens)),
            "empty": int(sum(1 for r in rows if not recs[r]["rationale"].strip())),
            "distinct": len({recs[r]["rationale"] for r in rows}),
            "examples": [{"row": r, "prompt": recs[r]["prompt"], "rationale": recs[r]["rationale"]} for r in rows[:3]]}


# ---------------------------------------------------------------------------------------- one run
def _clear_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _peak_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def teacher_view(data: DLLM2RecData, cfg: DLLM2RecConfig, ext: ExtConfig) -> DLLM2RecData:
    """The teacher fields a run reads, as ``reimpl.dllm2rec.train``'s CLI loads them (ranking only when
    ``lam != 0``, the item table only when ``ed_weight != 0``); a shallow copy."""
    need_rank = cfg.lam != 0 or ext.uamd.enabled or ext.selection.policy != "all"
    return dataclasses.replace(data, candidates=data.candidates if need_rank else None,
                               confidence=data.confidence if need_rank else None,
                               llm_table=data.llm_table if cfg.ed_weight != 0 else None)


def train_student(cfg: DLLM2RecConfig, ext: ExtConfig, data: DLLM2RecData, uncertainty, log) -> tuple[dict, object]:
    """One student run with the extension hooks; returns (train() result, the trained model)."""
    d = teacher_view(data, cfg, ext)
    hooks = build_hooks(ext, d, candidate_topk=cfg.candidate_topk, hidden=repr_width(cfg, d.item_num, d.seq_size),
                        uncertainty=uncertainty if ext.uamd.enabled else None)
    box = {}
    hooks.on_end = lambda m: box.__setitem__("model", m)
    res = train(cfg, d, log=log, progress=False, hooks=hooks)
    return res, box["model"]


def summarize(res: dict) -> dict:
    """What results.json keeps of a train() result: selected epoch (with per-row test ranks), history."""
    sel = selected(res)
    return {"best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"], "val": sel["ext"]["val"],
            "test": sel["ext"]["test"],
            "history": [{"epoch": h["epoch"], "loss": h["loss"],
                         "val": {k: h["ext"]["val"][k] for k in METRICS},
                         "test": {k: h["ext"]["test"][k] for k in METRICS}} for h in res["history"]]}


def arm_ext(arm: Arm, seed: int, rdr_store: str | None) -> ExtConfig:
    d = json.loads(json.dumps(arm.ext))
    if "rdr" in d:
        if not rdr_store:
            raise ValueError(f"arm {arm.name}: needs the RDR vector store (rationales were not prepared)")
        d["rdr"].update(store=rdr_store, proj_seed=seed)
    return ExtConfig.from_dict(d)


def refreshed_table(table: torch.Tensor, student, width_used: int) -> torch.Tensor:
    """CDR (iLoRA teacher) step 2 as done here: the teacher-side item table ``[I, D]`` with the student's
    item embeddings ``[I, H]`` written into columns ``width_used .. width_used + H`` (its zero padding)."""
    emb = student.item_embeddings.weight.detach()[:table.shape[0]].to(table.dtype)
    h = emb.shape[1]
    if width_used + h > table.shape[1]:
        raise ValueError(f"refreshed_table: table width {table.shape[1]} has no room for {h} columns after "
                         f"the {width_used} in use")
    out = table.clone()
    out[:, width_used:width_used + h] = emb
    return out


# --------------------------------------------------------------------------------------------- stats
def stats(results: list[dict], arms: list[str], seeds: list[int]) -> dict:
    """Per arm: mean ± std over seeds; vs dllm2rec / plain: Δ test NDCG@10, paired t-test over seeds,
    Wilcoxon over (seed, test row) reciprocal-rank pairs; cost."""
    from scipy import stats as st

    by = {(r["arm"], r["seed"]): r for r in results}
    table = {}
    for a in arms:
        rs = [by[(a, s)] for s in seeds if (a, s) in by]
        if not rs:
            continue
        row = {"n_seeds": len(rs)}
        for split in ("test", "val"):
            for m in METRICS:
                v = np.array([r[split][m] for r in rs])
                row[f"{split}/{m}"] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        row["wall_s"] = float(np.mean([r["wall_s"] for r in rs]))
        row["peak_rss_mib"] = float(np.max([r["peak_rss_mib"] or 0 for r in rs]))
        row["best_epoch"] = [r["best_epoch"] for r in rs]
        row["epochs_run"] = [r.get("epochs_run") for r in rs]
        for ref in ("dllm2rec", "plain"):
            if ref == a or (a, ref) == ("plain", "dllm2rec") or not all((ref, s) in by and (a, s) in by for s in seeds):
                continue
            x = np.array([by[(a, s)]["test"]["ndcg@10"] for s in seeds])
            y = np.array([by[(ref, s)]["test"]["ndcg@10"] for s in seeds])
            d = x - y
            p_t = float(st.ttest_rel(x, y).pvalue) if len(seeds) > 1 and np.any(d != d[0]) else float("nan")
            rx = np.concatenate([1.0 / np.asarray(by[(a, s)]["test"]["ranks"], float) for s in seeds])
            ry = np.concatenate([1.0 / np.asarray(by[(ref, s)]["test"]["ranks"], float) for s in seeds])
            nz = rx != ry
            p_w = float(st.wilcoxon(rx[nz], ry[nz]).pvalue) if nz.sum() >= 10 else float("nan")
            row[f"vs_{ref}"] = {"delta_ndcg10": float(d.mean()), "delta_mrr": float(np.mean(
                [by[(a, s)]["test"]["mrr"] - by[(ref, s)]["test"]["mrr"] for s in seeds])),
                "p_ttest_rel_seeds": p_t, "p_wilcoxon_rows_rr": p_w, "n_pairs": int(nz.sum()),
                "n_rows": int(len(rx)), "wins": int((rx > ry).sum()), "losses": int((rx < ry).sum())}
        table[a] = row
    return table


# --------------------------------------------------------------------------------------------- plots
def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plot_metrics(plt, tables: dict, models: list[str], arms: list[str], path: Path) -> str:
    """Test NDCG@10 / MRR / ECE per arm (mean ± std over seeds), one row of panels per student."""
    fig, axes = plt.subplots(len(models), 3, figsize=(13, 3.6 * len(models)), squeeze=False)
    for i, mdl in enumerate(models):
        present = [a for a in arms if a in tables[mdl]]
        for ax, m in zip(axes[i], ("ndcg@10", "mrr", "ece")):
            mu = [tables[mdl][a][f"test/{m}"][0] for a in present]
            sd = [tables[mdl][a][f"test/{m}"][1] for a in present]
            ax.bar(range(len(present)), mu, yerr=sd, capsize=3,
                   color=["#999999" if a in ("plain", "dllm2rec") else "#4C72B0" for a in present])
            ax.set_xticks(range(len(present)), present, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{mdl}: test {m} (mean ± std over seeds)", fontsize=9)
    return _save(fig, path)


def _plot_curves(plt, res: list[dict], mdl: str, arms: list[str], path: Path) -> str:
    """Val / test NDCG@10 per epoch, mean over seeds, over the epochs every seed ran."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for a in arms:
        runs = [r for r in res if r["arm"] == a and "history" in r]
        if not runs:
            continue
        n = min(len(r["history"]) for r in runs)   # early stopping: the epochs every seed ran
        v = np.mean([[h["val"]["ndcg@10"] for h in r["history"][:n]] for r in runs], 0)
        t = np.mean([[h["test"]["ndcg@10"] for h in r["history"][:n]] for r in runs], 0)
        ls = "-" if a in ("plain", "dllm2rec") else "--"
        axes[0].plot(range(1, n + 1), v, ls, label=a, lw=1.4 if a in ("plain", "dllm2rec") else 1.0)
        axes[1].plot(range(1, n + 1), t, ls, label=a, lw=1.4 if a in ("plain", "dllm2rec") else 1.0)
    for ax, s in zip(axes, ("val", "test")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{s} NDCG@10 (mean over seeds)")
        ax.set_title(f"{mdl}: {s} NDCG@10 per epoch (epochs run by every seed)", fontsize=9)
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def _plot_reliability(plt, res: list[dict], mdl: str, arms: list[str], path: Path) -> str:
    """Reliability diagram (test, seeds pooled, 15 bins) of the plain, dllm2rec and uamd-exp arms."""
    from reimpl.metrics import reliability_bins

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for a in [x for x in ("plain", "dllm2rec", "uamd-exp") if x in arms]:
        runs = [r for r in res if r["arm"] == a]
        if not runs:
            continue
        conf = np.concatenate([r["test"]["conf"] for r in runs])
        ok = np.concatenate([r["test"]["correct"] for r in runs])
        b = reliability_bins(conf, ok, 15)
        keep = b["count"] > 0
        ax.plot(b["conf"][keep], b["acc"][keep], "o-", label=a, ms=3)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("top-1 accuracy")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=8)
    ax.set_title(f"{mdl}: reliability (test, seeds pooled, 15 bins)", fontsize=9)
    return _save(fig, path)


def plots(model_results: dict, tables: dict, arms: list[str], cdr_runs: dict, u: np.ndarray, figdir: Path) -> list[str]:
    """The report's figures under ``figdir``; returns their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    models = list(model_results)
    mdl = models[0]
    res = model_results[mdl]
    out = [_plot_metrics(plt, tables, models, arms, figdir / "ext_metrics.png"),
           _plot_curves(plt, res, mdl, arms, figdir / "ext_curves.png"),
           _plot_reliability(plt, res, mdl, arms, figdir / "ext_reliability.png")]
    if cdr_runs.get(mdl):
        fig, ax = plt.subplots(figsize=(4.8, 3.5))
        for s, rounds in cdr_runs[mdl].items():
            ax.plot([r["round"] for r in rounds], [r["test"]["ndcg@10"] for r in rounds], "o-", label=f"seed {s}")
        ax.set_xlabel("CDR round (0 = dllm2rec)")
        ax.set_ylabel("student test NDCG@10")
        ax.set_title(f"{mdl}: CDR rounds", fontsize=9)
        ax.legend(fontsize=7)
        out.append(_save(fig, figdir / "ext_cdr_rounds.png"))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(u, bins=40, color="#55A868")
    ax.set_xlabel("teacher expert variance u (UAMD)")
    ax.set_ylabel("train rows")
    out.append(_save(fig, figdir / "ext_uncertainty_hist.png"))
    return out


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m reimpl.extensions.trial", description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-root", default=str(ROOT / "runs/baselines/distill"),
                    help="results cache of the baseline plan (its work/, teacher/, results/)")
    ap.add_argument("--plan", default="distill", help="reimpl.baselines plan the root belongs to")
    ap.add_argument("--dataset", default=None, help="key of the distilled data set (when the plan has several)")
    ap.add_argument("--teacher", choices=("ilora", "standin"), default="ilora")
    ap.add_argument("--teacher-rows", type=int, default=12000, help="standin: LastFM train rows it is fit on")
    ap.add_argument("--models", default="SASRec", help="students, e.g. SASRec,GRU,Caser")
    ap.add_argument("--seeds", default=None, help="default: the plan's seeds")
    ap.add_argument("--epochs", type=int, default=None, help="default: the plan's epoch cap")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--rationales", default="all", help="'all' slice rows or a number (seeded subset)")
    ap.add_argument("--cdr-rounds", type=int, default=2)
    ap.add_argument("--no-rerun", action="store_true",
                    help="do not re-run a baseline command whose result file is absent")
    ap.add_argument("--names", default=None, help="id2name.txt (default ../shared/data/ilora/lastfm/id2name.txt)")
    ap.add_argument("--work", default=str(ROOT / "cache/extensions"))
    ap.add_argument("--out", default=str(ROOT / "reports/extensions_slice.md"))
    ap.add_argument("--results", default=str(ROOT / "runs/extensions/results.json"))
    ap.add_argument("--threads", type=int, default=1)
    return ap


# What a CDR round refreshes, per teacher kind (also written into the results file).
WHAT_CDR = {
    "ilora": {"refreshed": ["the injected item table (all_embeddings.pt): the previous round's student item "
                            "embeddings written into its zero padding, the LLM columns kept"],
              "not_refreshed": ["the teacher's ranking (myrank_train.txt)", "its confidences",
                                "its UAMD uncertainty", "the teacher's weights (no LoRA / router / projector "
                                "fine-tuning)"],
              "why": "a real round re-trains and re-exports the SmolLM2 iLoRA teacher (hours of CPU here)"},
    "standin": {"refreshed": ["stand-in experts' item embeddings + output layer (fine-tuned from the student's, "
                              "CE + 0.5 KL(student || teacher), 1 epoch)", "ranking, confidence, uncertainty, "
                              "item table (re-exported)"],
                "not_refreshed": ["the experts' sequence encoders (frozen)"],
                "why": "stand-in teacher: a full round is cheap"},
}


def _selection(a: argparse.Namespace, b: Baseline, plan) -> tuple[list[int], list[str], list[str], int]:
    """(seeds, models, arms, epochs) of the trial, checked against the known arms."""
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else list(b.seeds)
    models = [m for m in a.models.split(",") if m]
    arms = [x for x in a.arms.split(",") if x]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"--arms: unknown {sorted(unknown)}; known {list(ARMS)}")
    if "cdr" in arms and "dllm2rec" not in arms:
        raise SystemExit("--arms: cdr starts from the dllm2rec arm's student (round 0); list dllm2rec too")
    return seeds, models, arms, a.epochs or plan.epochs


def _data_info(a: argparse.Namespace, b: Baseline, plan, data: DLLM2RecData, epochs: int) -> dict:
    return {"teacher_kind": a.teacher, "baseline_root": str(b.root), "plan": plan.name, "kd_key": b.kd.key,
            "plain_key": b.plain.key, "kd_workdir": str(b.kd_workdir), "tocf": str(b.tocf.resolve()),
            "n_train": int(len(data.train_next)), "n_val": int(len(data.val.targets)),
            "n_test": int(len(data.test.targets)), "item_num": int(data.item_num), "epochs": epochs,
            "same_data_as_plain": same_data_files(b.kd_workdir / "data" / b.kd.name,
                                                  b.plain_workdir / "data" / b.plain.name)}


def _run_arm(a: argparse.Namespace, b: Baseline, arm_name: str, spec, cfg, data, u, rinfo, checks: list,
             work: Path, t0: float, log) -> tuple[dict, tuple]:
    """Train one non-CDR arm; the plain and dllm2rec arms are checked against the baseline run.
    Returns (result record, (result, student, record))."""
    mdl, s = spec.model, spec.seed
    ext = arm_ext(ARMS[arm_name], s, rinfo["store"] if rinfo else None)
    res, student = train_student(cfg, ext, data, u, log=lambda m: None)
    rec = {"model": mdl, "arm": arm_name, "seed": s, "wall_s": time.time() - t0,
           "peak_rss_mib": _peak_mib(), **summarize(res)}
    if arm_name in ("plain", "dllm2rec"):
        if a.teacher == "ilora" or arm_name == "plain":
            chk = baseline_check(b, spec, res, work, not a.no_rerun, log)
        else:
            chk = {"run_id": spec.run_id, "source": "n/a", "identical": None,
                   "note": "stand-in teacher: not the baseline's teacher"}
        chk.update(model=mdl, seed=s, arm=arm_name)
        checks.append(chk)
        rec["baseline_check"] = chk
        log(f"   baseline check: {chk.get('source')} identical={chk.get('identical')} "
            f"max_abs={chk.get('max_abs')}")
    return rec, (res, student, rec)


def _cdr_rounds(a: argparse.Namespace, cfg, data, u, student0, rec0: dict, standin_obj) -> list[dict]:
    """Round 0 (the dllm2rec arm's student) + ``a.cdr_rounds`` refinement rounds."""
    rounds = [{"round": 0, "best_epoch": rec0["best_epoch"], "epochs_run": rec0["epochs_run"],
               "val": rec0["val"], "test": rec0["test"], "seconds": rec0["wall_s"]}]
    if a.teacher == "ilora":
        width = table_width(data.llm_table)
        d_r, student = dataclasses.replace(data), student0
        for r in range(1, a.cdr_rounds + 1):
            t1 = time.time()
            d_r = dataclasses.replace(d_r, llm_table=refreshed_table(data.llm_table, student, width))
            res, student = train_student(cfg, ExtConfig(), d_r, u, log=lambda m: None)
            sm = summarize(res)
            rounds.append({"round": r, "best_epoch": sm["best_epoch"], "epochs_run": sm["epochs_run"],
                           "val": sm["val"], "test": sm["test"], "seconds": time.time() - t1})
        return rounds
    runs = run_cdr(CDRConfig(rounds=a.cdr_rounds, student_init="scratch", start="distilled"),
                   cfg, ExtConfig(), data, standin_obj, uncertainty=u, log=lambda m: None)
    for rr in runs[1:]:
        sel = rr["selected"]
        rounds.append({"round": rr["round"], "best_epoch": rr["student"]["best_epoch"],
                       "epochs_run": rr["student"]["epochs_run"],
                       "val": sel["ext"]["val"], "test": sel["ext"]["test"],
                       "teacher_test": rr["teacher"]["test"], "seconds": rr["seconds"]})
    return rounds


def _run_cdr_arm(a: argparse.Namespace, cfg, data, u, students: dict, standin_obj, t0: float
                 ) -> tuple[dict, list[dict]]:
    """The CDR arm from the dllm2rec arm's student: (result record of the last round, per-round summary)."""
    _res0, student0, rec0 = students["dllm2rec"]
    rounds = _cdr_rounds(a, cfg, data, u, student0, rec0, standin_obj)
    summary = [{k: v for k, v in r.items() if k not in ("val", "test")} |
               {"test": {m: r["test"][m] for m in METRICS}, "val": {m: r["val"][m] for m in METRICS}}
               for r in rounds]
    last = rounds[-1]
    rec = {"model": rec0["model"], "arm": "cdr", "seed": rec0["seed"],
           "wall_s": rec0["wall_s"] + (time.time() - t0), "peak_rss_mib": _peak_mib(),
           "best_epoch": last["best_epoch"], "epochs_run": last.get("epochs_run"), "val": last["val"],
           "test": last["test"]}
    return rec, summary


def run_trial(a: argparse.Namespace, *, plan=None, rdr_model=None, rdr_tokenizer=None, rdr_model_id=None,
              encoder=None, log=None, argv_text: str = "") -> dict:
    """The whole trial (module docstring); ``plan``/``rdr_*``/``encoder`` are injectable for tests.
    Returns the results dict also written to ``--results``."""
    from reimpl.baselines.config import PLANS
    from reimpl.extensions.uamd import read_uncertainty

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    torch.set_num_threads(a.threads)
    t_all = time.time()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    plan = plan or PLANS[a.plan]
    b = locate_baseline(a.baseline_root, plan, a.dataset)
    seeds, models, arms, epochs = _selection(a, b, plan)
    cfg0, _ = student_config(b, b.run_spec(models[0], seeds[0], "dllm2rec", epochs))
    data = load_data(b.kd_workdir, b.kd.name, need_rank=True, need_emb=True,
                     candidate_topk=cfg0.candidate_topk, d_llm=cfg0.d_llm)
    u = read_uncertainty(b.tocf, len(data.train_next))
    info = _data_info(a, b, plan, data, epochs)
    ilora = teacher_facts(b, data, u, cfg0.candidate_topk)
    standin = standin_obj = None
    if a.teacher == "standin":
        data, u, standin, standin_obj = standin_teacher(b, data, cfg0, work, a.teacher_rows, SHARED, log)
    rinfo = None
    if any(ARMS[x].ext.get("rdr") for x in arms):
        names = read_id2name(Path(a.names) if a.names else DATA / "ilora/lastfm/id2name.txt", mode="fixed")
        n = None if a.rationales == "all" else int(a.rationales)
        rinfo = rationales(data, names, work / "rdr" / b.kd.key, n, log, model=rdr_model, tokenizer=rdr_tokenizer,
                           model_id=rdr_model_id, encoder=encoder)
    results, checks, configs, cdr_runs = [], [], {}, {}
    for mdl in models:
        cdr_runs[mdl] = {}
        for s in seeds:
            students = {}
            for arm_name in arms:
                spec = b.run_spec(mdl, s, ARMS[arm_name].base, epochs)
                cfg, cmd = student_config(b, spec)
                configs.setdefault(f"{mdl}/{ARMS[arm_name].base}", {
                    "config": dataclasses.asdict(cfg), "command": " ".join(cmd[2:]).replace(str(ROOT) + "/", "")})
                log(f"== {mdl} seed {s} arm {arm_name}")
                _clear_peak()
                t0 = time.time()
                if arm_name != "cdr":
                    rec, students[arm_name] = _run_arm(a, b, arm_name, spec, cfg, data, u, rinfo, checks, work, t0,
                                                      log)
                else:
                    rec, cdr_runs[mdl][s] = _run_cdr_arm(a, cfg, data, u, students, standin_obj, t0)
                results.append(rec)
    tables = {m: stats([r for r in results if r["model"] == m], arms, seeds) for m in models}
    model_results = {m: [r for r in results if r["model"] == m] for m in models}
    figs = plots(model_results, tables, arms, cdr_runs, u, Path(a.out).parent / "figures")
    out = {"info": info, "teacher": ilora, "standin": standin, "rdr": rinfo, "arms": arms, "models": models,
           "seeds": seeds, "results": results, "tables": tables, "baseline_checks": checks,
           "configs": configs, "cdr": {m: {str(k): v for k, v in r.items()} for m, r in cdr_runs.items()},
           "cdr_rounds": a.cdr_rounds, "what_cdr": WHAT_CDR["ilora" if a.teacher == "ilora" else "standin"],
           "figs": figs, "total_min": (time.time() - t_all) / 60,
           "host": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
           "cmd": argv_text, "results_path": str(a.results)}
    rp = Path(a.results)
    rp.parent.mkdir(parents=True, exist_ok=True)
    rp.write_text(json.dumps(out, default=float))
    render(out, Path(a.out), arm_defs=ARMS)
    log(f"wrote {a.out} and {rp} ({out['total_min']:.1f} min)")
    return out


def _rel(p) -> str:
    """A path relative to the repository root when it lies inside it (the report is read from there)."""
    s = str(p)
    try:
        return str(Path(s).resolve().relative_to(ROOT))
    except ValueError:
        return s.replace(str(ROOT) + "/", "")


def render(res: dict, out: Path, arm_defs: dict) -> Path:
    from jinja2 import Environment, StrictUndefined

    env = Environment(undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    env.filters["f"] = lambda v, fmt="%.4f": "—" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt % v
    env.filters["rel"] = _rel
    text = env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(r=res, arm_defs=arm_defs, metrics=METRICS,
                                                                       tol=IDENTICAL_TOL, log2_11=float(np.log2(11)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    run_trial(a, argv_text="make extensions-slice  (= .venv/bin/python -m reimpl.extensions.trial"
                           + (" " + " ".join(argv) if argv else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
