"""The extension trial on the research engine (issue 17): arms on top of a distilled plan, records in ``results/``.

For one data set of :data:`reimpl.baselines.distilled.PLANS` (students at their tuned points, the plan's teacher
export read from the results store), every arm trains the same student and seeds through :func:`reimpl.engine.train`
with the extension hooks of :func:`reimpl.extensions.hooks.build_hooks`:

* ``plain`` and ``dllm2rec`` are the distilled plan's own ``plain`` / ``kd`` runs (``results/distilled/``), not
  re-trained here;
* ``sel-kl-high``, ``sel-gt-error``: sample selection on the distillation term (:mod:`reimpl.extensions.selection`);
* ``uamd-exp``: UAMD's uncertainty weight (needs a teacher export with ``uncertainty``: a teacher with experts or
  an ensemble; refused with that reason otherwise);
* ``rdr``, ``rdr-only``: the rationale term (needs a rationale vector store for the split; refused otherwise).

Each finished run is one record in ``results/extensions/`` (config, data digest incl. the teacher file, history,
the selected epoch's TEST metrics, and the selected student's per-row TEST ranks, for paired tests and popularity
buckets). :func:`report` renders ``reports/extensions.md`` from the records alone: per arm mean ± 95 % CI,
Δ against ``dllm2rec`` and against ``plain`` paired by seed with Holm's correction over the arms of a student, and
a sentence per arm (helps / hurts / cannot be told apart).

Usage::

    python -m reimpl.extensions.engine_trial run [--dataset ml100k-loo] [--arm sel-kl-high] [--model M]
        [--seed S] [--jobs N] [--commit]
    python -m reimpl.extensions.engine_trial report
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from reimpl.baselines import distilled as dz
from reimpl.baselines.converged import best_row, ci95, tag, template_env
from reimpl.baselines.stats import holm
from reimpl.paths import REPORTS, ROOT, RUNS

PLAN_NAME = "extensions"
# arm -> (the distilled arm it builds on, ExtConfig fields, what it is)
ARMS = {
    "plain": ("plain", None, "the undistilled student (results/distilled/)"),
    "dllm2rec": ("kd", None, "DLLM2Rec's distillation (results/distilled/)"),
    "sel-kl-high": ("kd", {"selection": {"policy": "kl", "output": "mask", "ratio": 0.5, "prefer": "high"}},
                    "`dllm2rec`, distillation only on the half of each batch with the largest KL(teacher ‖ student)"),
    "sel-gt-error": ("kd", {"selection": {"policy": "gt_error", "output": "weight"}},
                     "`dllm2rec`, distillation weights of a row times p_teacher(target)"),
    "sel-gt-mean": ("kd", {"selection": {"policy": "gt_mean", "output": "weight"}},
                    "`dllm2rec`, distillation weights of every row times the train split's mean p_teacher(target) "
                    "(the control for `sel-gt-error`: as much distillation, not selective)"),
    "kd-no-rank": ("kd", {"selection": {"policy": "const", "output": "weight", "value": 0.0}},
                   "`dllm2rec` without its ranking distillation (weights times 0): DRO on the target and the "
                   "teacher-embedding injection only"),
    "kd-half": ("kd", {"selection": {"policy": "const", "output": "weight", "value": 0.5}},
                "`dllm2rec`, distillation weights of every row times 0.5 (the control for `sel-kl-high`: as "
                "much distillation, not selective)"),
    "uamd-exp": ("kd", {"uamd": {"enabled": True, "fn": "exp"}},
                 "`dllm2rec`, distillation weights of a row times exp(-u / median u), mean-normalised"),
    "uamd-inverse": ("kd", {"uamd": {"enabled": True, "fn": "inverse"}},
                     "`dllm2rec`, distillation weights of a row times 1 / (1 + u / median u), mean-normalised"),
    "uamd-gt-first": ("kd", {"uamd": {"enabled": True, "fn": "threshold"}},
                      "`dllm2rec`, but a row whose uncertainty is above the median learns from its ground truth "
                      "only (the seed's \"ground truth first when uncertain\"; the kept rows' weights are "
                      "mean-normalised, so as much distillation as `dllm2rec`)"),
    "uamd-gt-random": ("kd", {"uamd": {"enabled": True, "fn": "threshold", "permute_seed": 0}},
                       "`uamd-gt-first`'s weights dealt to the rows in a fixed random order (the control for "
                       "`uamd-gt-first`: as many rows without distillation, the same mass, not chosen by u)"),
    "dro-only": ("plain", {}, "`plain` + DLLM2Rec's DRO term on the target (alpha 1): no teacher at all"),
    "emb-only": ("kd", {}, "`plain` + DLLM2Rec's teacher-embedding injection (ed_weight 0.2): no ranking, no DRO"),
    "rdr": ("kd", {"rdr": {"enabled": True, "lam": 0.5}},
            "`dllm2rec` + 0.5 (1 - cos(proj(h), v_rationale)) on the rows with a SmolLM2 rationale"),
    "rdr-only": ("plain", {"rdr": {"enabled": True, "lam": 0.5}}, "`plain` + the RDR term (no teacher ranking)"),
}
# the decomposition arms change the base run's DLLM2Rec weights (lam, ed_weight, alpha) instead of adding a hook
STUDENT_OVERRIDES = {"dro-only": {"lam": 0.0, "ed_weight": 0.0, "alpha": 1.0},
                     "emb-only": {"lam": 0.0, "ed_weight": 0.2, "alpha": 0.0}}
# paired contrasts that take DLLM2Rec's gain apart, one part at a time: (arm, against, what the difference measures)
CONTRASTS = (("dro-only", "plain", "DRO alone (no teacher)"),
             ("emb-only", "plain", "the teacher's item embeddings alone"),
             ("kd-no-rank", "dro-only", "the teacher's item embeddings, on top of DRO"),
             ("dllm2rec", "kd-no-rank", "the teacher's ranking distillation, on top of DRO and the embeddings"),
             ("sel-gt-error", "sel-gt-mean", "choosing rows by p_teacher(target), at the same distillation mass"),
             ("sel-kl-high", "kd-half", "choosing the half of each batch by KL, at the same distillation mass"),
             ("uamd-exp", "dllm2rec", "UAMD's uncertainty weights on the ranking distillation"),
             ("uamd-gt-first", "dllm2rec", "no distillation on the uncertain rows, at the same distillation mass"),
             ("uamd-gt-first", "uamd-gt-random", "dropping the uncertain rows rather than as many random ones"))
RATIONALE_GEN = {"max_new_tokens": 32, "batch_size": 16}
# ml-100k's rationales (twice LastFM's rows) in bfloat16: 0.44 against 0.78 CPU s per rationale here, wording differs
# from float32's on about half the rows (docs/notes.md, session 10); LastFM's were generated in float32
RATIONALE_DTYPE = {"ml100k-loo": "bfloat16"}
TEMPLATES = Path(__file__).parent / "templates"
TRAINED = tuple(a for a, (_, ext, _) in ARMS.items() if ext is not None)


@dataclass(frozen=True)
class TrialRun:
    base: dz.DistilledRun     # the distilled run whose config it starts from (arm "kd" or "plain")
    arm: str

    @property
    def run_id(self) -> str:
        b = self.base
        return f"{b.dataset}__{b.model}__{tag(b.overrides)}__{self.arm}__{b.teacher}__s{b.seed}"

    def ext(self) -> dict:
        return dict(ARMS[self.arm][1], metrics_each_epoch=False)

    def engine_config(self):
        """The base run's engine config, with the arm's :data:`STUDENT_OVERRIDES` (if any)."""
        ecfg = self.base.engine_config()
        ov = STUDENT_OVERRIDES.get(self.arm)
        return ecfg if ov is None else dataclasses.replace(ecfg, student=dataclasses.replace(ecfg.student, **ov))

    def config(self) -> dict:
        cfg = {**self.base.config(), "arm": self.arm, "ext": self.ext()}
        if self.arm in STUDENT_OVERRIDES:
            cfg["engine"] = self.engine_config().as_dict()
        return cfg


def trial_runs(plan: dz.DistilledPlan, arms: tuple = TRAINED, tuned: dict | None = None) -> list[TrialRun]:
    return [TrialRun(r, a) for r in plan.runs(tuned) for a in arms if ARMS[a][0] == r.arm]


# ------------------------------------------------------------------------------------------------ rationales
def rationale_dir(dataset: str) -> Path:
    """Where a split's rationales live: the JSONL cache is committed (text, compact); vectors are a cache."""
    return ROOT / "results" / "rationales" / dataset


def rationale_rows(n_train: int, fraction: float, seed: int = 1) -> np.ndarray:
    """The declared fraction of train rows that get a rationale (seeded, sorted)."""
    k = max(1, int(round(fraction * n_train)))
    return np.sort(np.random.default_rng(seed).choice(n_train, k, replace=False))


def generate(dataset: str, fraction: float, max_rows: int | None = None, log=print) -> dict:
    """Generate (resuming) the rationales of the declared fraction, at most ``max_rows`` new ones per call."""
    from reimpl.extensions.rdr import CACHE_FILE, GenParams, build_prompt, generate_rationales, read_cache
    from reimpl.teachers import common
    from reimpl.teachers.run import RunOptions

    d = common.load_dataset(dataset, RunOptions().data_dir)
    rows = rationale_rows(len(d.train), fraction)
    cache = rationale_dir(dataset) / CACHE_FILE
    done = set(read_cache(cache)) if cache.is_file() else set()
    todo = [int(r) for r in rows if int(r) not in done][:max_rows]
    gen = GenParams(**RATIONALE_GEN, dtype=RATIONALE_DTYPE.get(dataset, "float32"))
    template = (TEMPLATES / f"rationale_prompt_{d.domain}.txt").read_text(encoding="utf-8") \
        if (TEMPLATES / f"rationale_prompt_{d.domain}.txt").is_file() else None   # LastFM: rdr.py's own template
    prompts = [build_prompt([d.titles[i] for i in d.train.history(r)][-gen.max_history:],
                            d.titles[int(d.train.next[r])], template) for r in todo]
    t0 = time.perf_counter()
    generate_rationales(todo, prompts, rationale_dir(dataset), gen=gen)
    secs = time.perf_counter() - t0
    have = len(set(read_cache(cache)) & set(rows.tolist()))
    log(f"{dataset}: {len(todo)} rationales generated in {secs:.0f} s; {have} of {len(rows)} "
        f"({100 * fraction:g} % of {len(d.train)} train rows) done")
    return {"generated": len(todo), "seconds": secs, "done": have, "planned": len(rows)}


def vector_store(dataset: str) -> tuple[str, str]:
    """(store folder in runs/, digest of its rows and keys) built from the committed JSONL (MiniLM)."""
    import hashlib

    from reimpl.extensions.rdr import CACHE_FILE, build_vector_store, read_cache

    cache = rationale_dir(dataset) / CACHE_FILE
    if not cache.is_file():
        raise ValueError(f"RDR needs rationales: {cache} is missing (python -m reimpl.extensions.engine_trial "
                         f"rationales --dataset {dataset} --fraction 0.1)")
    recs = read_cache(cache)
    store = RUNS / "rationales" / dataset
    build_vector_store(recs, store)
    key = hashlib.sha256(json.dumps([[r, recs[r]["key"]] for r in sorted(recs)]).encode()).hexdigest()
    return str(store.relative_to(ROOT)), key


def run_one(run: TrialRun, store_root: str | None = None, threads: int = 1,
            runs_root: str | Path | None = None) -> str:
    from reimpl.extensions.hooks import ExtConfig, build_hooks, repr_width
    from reimpl.results.runs import add_selected_rows, train_record

    b = run.base
    data, digest, facts = dz.load(b.teacher if b.arm == "kd" else None, b.dataset,
                                  b.protocol() if b.dataset != "lastfm" else None)
    ext_d = run.ext()
    if "rdr" in ext_d:
        store, key = vector_store(b.dataset)
        ext_d = {**ext_d, "rdr": {**ext_d["rdr"], "store": str(ROOT / store)}}
        digest = hashlib.sha256(f"{digest}:{key}".encode()).hexdigest()
        facts = {**facts, "rationales": {"store": store, "sha256": key}}
    ext = ExtConfig.from_dict(ext_d)
    unc = getattr(data, "uncertainty", None)
    if ext.uamd.enabled and unc is None:
        unc, digest, facts = _ensemble_uncertainty(b, len(data.train_next), digest, facts)
    ecfg = run.engine_config()
    hooks = build_hooks(ext, data, candidate_topk=ecfg.student.candidate_topk,
                        hidden=repr_width(ecfg.student, data.item_num, data.seq_size), uncertainty=unc)
    if ext.selection.policy == "gt_mean":    # the constant is derived from the teacher export: record it
        facts = {**facts, "gt_mean_value": ext.selection.value}

    finish = add_selected_rows(ecfg, data)
    if ext.rdr.enabled:   # the rationale view of the selected student, for the RDR figure
        finish = _with_view(finish, ecfg, data, ext.rdr.store)
    return train_record(PLAN_NAME, run.run_id, run.config(), digest, {"facts": facts}, ecfg, data,
                        store_root=store_root, runs_root=runs_root or RUNS / PLAN_NAME, threads=threads,
                        hooks=hooks, finish=finish)


def _with_view(finish, ecfg, data, store: str):
    """``finish`` that also stores the selected student's rationale view (:mod:`reimpl.extensions.rdr_view`)."""
    from reimpl.dllm2rec.student import build_student
    from reimpl.extensions.rdr_view import student_view

    def both(res: dict, rec: dict) -> None:
        m = build_student(ecfg.student, data.item_num, data.seq_size)
        m.load_state_dict(res["best_state"])
        rec["rdr_view"] = student_view(m, data, ecfg.student.ed_weight, store)
        finish(res, rec)
    return both


VIEWS = "extensions-views"


def view_path(run_id: str, store_root: str | None = None) -> Path:
    return Path(store_root or ROOT / "results") / VIEWS / f"{run_id}.json"


def view_baseline(dataset: str, arm: str, seed: int, model: str = "SASRec", store_root: str | None = None) -> Path:
    """The rationale view of a stored ``plain`` / ``dllm2rec`` run (no RDR term), for the RDR figure: the run is
    trained again (the engine is deterministic) and must give the stored record's history epoch by epoch
    (:class:`RecordMismatch` otherwise, nothing written); writes ``results/extensions-views/<run id>.json``."""
    from reimpl.dllm2rec.student import build_student
    from reimpl.engine.train import train
    from reimpl.extensions.rdr_view import student_view
    from reimpl.results.store import RecordMismatch, code_version

    if arm not in ("plain", "dllm2rec"):
        raise ValueError(f"view_baseline: arm must be plain or dllm2rec (an RDR arm keeps its view in its record), "
                         f"got {arm!r}")
    b_arm = ARMS[arm][0]
    run = next((r for r in dz.PLANS[dataset].runs() if r.model == model and r.arm == b_arm and r.seed == seed), None)
    if run is None:
        raise ValueError(f"view_baseline: plan {dataset} has no {model} {b_arm} run with seed {seed}")
    stored = dz.records(store_root).get(run.run_id)
    if stored is None:
        raise ValueError(f"view_baseline: {run.run_id} has no record yet (python -m reimpl.baselines.distilled run)")
    store, key = vector_store(dataset)
    data, _, _ = dz.load(run.teacher if b_arm == "kd" else None, dataset, run.protocol())
    ecfg = run.engine_config()
    t0 = time.perf_counter()
    res = train(ecfg, data, keep_best=True)
    keys = ("epoch", "loss", "val", "test")
    a = [{k: h.get(k) for k in keys} for h in stored["history"]]
    b = [{k: h.get(k) for k in keys} for h in json.loads(json.dumps(res["history"]))]
    if a != b:
        raise RecordMismatch(f"view_baseline: training {run.run_id} again gave another history than its record")
    m = build_student(ecfg.student, data.item_num, data.seq_size)
    m.load_state_dict(res["best_state"])
    out = {"run_id": run.run_id, "dataset": dataset, "arm": arm, "model": model, "seed": seed,
           "rationales": {"store": store, "sha256": key}, "identical_history": True, "code": code_version(),
           "wall_s": round(time.perf_counter() - t0, 1),
           "rdr_view": student_view(m, data, ecfg.student.ed_weight, ROOT / store)}
    path = view_path(run.run_id, store_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, separators=(",", ":")))
    tmp.replace(path)
    return path


def _ensemble_uncertainty(b, n: int, digest: str, facts: dict):
    """(uncertainty [N], digest, facts) from ``<teacher>.uncertainty.safetensors`` (reimpl.teachers.ensemble), for a
    teacher export without its own; the file's sha256 joins the run's data digest."""
    import hashlib

    from reimpl.teachers import ensemble

    path = ensemble.path_for(dz.teacher_path(b.teacher, b.dataset))
    if not path.is_file():
        raise ValueError(f"UAMD needs a per-row uncertainty: the teacher export {facts['teacher']['file']} has none "
                         f"and {path} (an ensemble's disagreement, python -m reimpl.teachers.ensemble) is missing")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    facts = {**facts, "uncertainty": {"file": str(path), "sha256": sha}}
    return ensemble.read(path, n), hashlib.sha256(f"{digest}:{sha}".encode()).hexdigest(), facts


def _job(args: tuple) -> str:
    return run_one(*args)


# ------------------------------------------------------------------------------------------------ report
def _cost(records) -> dict | None:
    """Mean wall-clock minutes per run (train + evaluation) and mean epochs run, over ``records``; None without."""
    recs = [r for r in records if r.get("timing", {}).get("wall_s") is not None]
    if not recs:
        return None
    return {"min": float(np.mean([r["timing"]["wall_s"] for r in recs])) / 60,
            "epochs": float(np.mean([r.get("epochs_run", 0) for r in recs]))}


def _metric(rec: dict, metric: str = "ndcg", k: int = 10) -> float:
    return best_row(rec)["test"][metric][rec["config"]["engine"]["student"]["topk"].index(k)]


def verdict(delta: dict, p_adj: float, against: str) -> str:
    if delta["n"] == 0:
        return f"pending against `{against}` (no paired seed yet)"
    if delta["n"] < 2 or p_adj != p_adj:
        return f"cannot be told apart from `{against}` ({delta['n']} paired seed(s))"
    if p_adj < 0.05:
        return f"{'helps' if delta['mean'] > 0 else 'hurts'} against `{against}` (Holm p {p_adj:.2g})"
    return f"cannot be told apart from `{against}` (Holm p {p_adj:.2g})"


LOO_PLANS = tuple(k for k in dz.PLANS if k != "lastfm")
# the report's verdict per method: (method, arm, against); the Δ and Holm p come from the arm's row (against
# dllm2rec / plain, Holm over the arms of a student) or from :data:`CONTRASTS` (Holm over the contrasts)
SUMMARY = (("DLLM2Rec's distillation", "dllm2rec", "plain"),
           ("UAMD, w(u) = exp(-u / median)", "uamd-exp", "dllm2rec"),
           ("UAMD, w(u) = 1 / (1 + u / median)", "uamd-inverse", "dllm2rec"),
           ("UAMD, ground truth first when uncertain", "uamd-gt-first", "dllm2rec"),
           ("UAMD ground truth first: u's rows against random ones", "uamd-gt-first", "uamd-gt-random"),
           ("selection by KL (half of each batch)", "sel-kl-high", "kd-half"),
           ("selection by the teacher's ground-truth error", "sel-gt-error", "sel-gt-mean"),
           ("RDR on top of DLLM2Rec", "rdr", "dllm2rec"),
           ("RDR alone", "rdr-only", "plain"))


def report(datasets: tuple = LOO_PLANS, store_root: str | None = None, out: Path | None = None,
           tuned: dict | None = None) -> str:
    """``reports/extensions.md`` (``make extensions``): a part per distilled plan (data set and teacher), from
    records only."""
    from reimpl.baselines.converged import records_by_id
    from reimpl.results.store import Store

    trial = {r["run_id"]: r for r in Store(store_root).records(PLAN_NAME)}
    base = dz.records(store_root)
    conv = records_by_id(store_root)
    parts = [{"dataset": d, "plan": dz.PLANS[d],
              "sections": _sections(dz.PLANS[d], trial, base, tuned, conv, store_root)} for d in datasets]
    figdir = (out.parent if out else REPORTS) / "figures"
    for part in parts:
        part["reliability_fig"] = plot_reliability(part["dataset"], part["sections"], figdir)
        part["rdr_fig"] = plot_views(part["dataset"], part["sections"], figdir)
        part["uncertainty"] = _uncertainty_meta(part["plan"])
        part["teacher"] = _teacher_facts(part["plan"], part["sections"])
        part["rationales"] = _rationale_facts(part["plan"].dataset)
        part["second"] = part["dataset"] != part["plan"].dataset   # a second teacher on a split: a check, not the trial
    cdr = cdr_rows(Store(store_root).records("extensions-cdr"))
    paired = cdr_paired(cdr)
    text = template_env(Path(__file__).parent / "templates").get_template("engine_trial.md.j2").render(
        parts=parts, n_trial=len(trial), cdr=cdr, cdr_fig=plot_cdr(cdr, figdir), cdr_paired=paired,
        summary=summary(parts, paired))
    (out or REPORTS / "extensions.md").write_text(text)
    return text


def _rationale_facts(dataset: str) -> dict | None:
    """How many train rows of ``dataset`` have a committed rationale, and how they were generated; None without."""
    from reimpl.extensions.rdr import CACHE_FILE, read_cache

    cache = rationale_dir(dataset) / CACHE_FILE
    recs = read_cache(cache) if cache.is_file() else {}
    if not recs:
        return None
    gens = {json.dumps(r["gen"], sort_keys=True) for r in recs.values()}
    first = next(iter(recs.values()))
    return {"n": len(recs), "model_id": first["model_id"], "dtype": first["gen"].get("dtype", "float32"),
            "max_new_tokens": first["gen"]["max_new_tokens"], "mixed": len(gens) > 1,
            "file": str(cache.relative_to(ROOT))}


def _teacher_facts(plan, sections: list[dict], model: str = "SASRec") -> dict | None:
    """The plan's teacher on TEST over all items (its record in ``results/teachers/``), the share of train rows whose
    target its export holds in the top k, chance, and the ``plain`` ``model`` student's TEST NDCG@10; None without
    a record."""
    from reimpl.baselines.converged import chance

    path = dz.teacher_path(plan.teacher, plan.dataset).with_suffix(".json")
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    test = rec.get("eval", {}).get("test", {}).get("all_items")
    if not test:
        return None
    sec = next((x for x in sections if x["model"] == model), None)
    plain = next((r["ndcg10"] for r in sec["rows"] if r["arm"] == "plain"), None) if sec else None
    return {"ndcg10": test["NDCG@10"], "hr10": test["HR@10"], "chance": chance(test["n_items"])["NDCG@10"],
            "k": rec.get("export", {}).get("k"), "in_topk": rec.get("export", {}).get("target_in_topk_all_items"),
            "model": model, "plain": plain}


def _uncertainty_meta(plan) -> dict | None:
    """The metadata (base, members, k) of the plan's teacher's ensemble uncertainty file, or None."""
    from reimpl.teachers import ensemble

    path = ensemble.path_for(dz.teacher_path(plan.teacher, plan.dataset))
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}")) or None


def summary(parts: list[dict], paired: list[dict], model: str = "SASRec") -> list[dict]:
    """The verdict per method (:data:`SUMMARY`, then CDR round 1 − round 0) on each part's ``model`` section."""
    out = []
    for part in parts:
        sec = next((x for x in part["sections"] if x["model"] == model), None)
        if sec is None:
            continue
        rows = {r["arm"]: r for r in sec["rows"]}
        cons = {(c["arm"], c["against"]): c for c in sec["contrasts"]}
        for method, arm, against in SUMMARY:
            d = rows[arm]["delta"][against] if against in ("dllm2rec", "plain") else cons.get((arm, against))
            if d is None or (d["n"] == 0 and part["second"]):   # a second teacher: only what it has records for
                continue
            out.append({"dataset": part["dataset"], "method": method, "arm": arm, "against": against, "n": d["n"],
                        "mean": d.get("mean"), "half": d.get("half"), "p": d.get("p_holm"),
                        "verdict": d["verdict"]})
        for g in paired:
            if g["split"] == part["dataset"] and g["model"] == model:
                p = g.get("p")
                verdict = ("pending (fewer than 2 seeds)" if g["n"] < 2 or p != p else
                           f"{'helps' if g['mean'] > 0 else 'hurts'} against round 0 (p {p:.2g})" if p < 0.05 else
                           f"cannot be told apart from round 0 (p {p:.2g})")
                out.append({"dataset": part["dataset"], "method": f"CDR, init {g['init']}, round 1",
                            "arm": "cdr", "against": "round 0", "n": g["n"], "mean": g["mean"],
                            "half": g["half"], "p": p, "verdict": verdict})
    return out


def _trial_record(trial: dict, run: TrialRun) -> dict | None:
    """``run``'s record; an arm on ``plain`` reads no teacher, so the same run of a plan with another teacher on
    the same split (identical config, another run id) is that record too: trained once, shown in both parts."""
    rec = trial.get(run.run_id)
    if rec is not None or ARMS[run.arm][0] != "plain":
        return rec
    cfg = json.loads(json.dumps(run.config()))   # names the split, arm, student, seed; no teacher
    return next((r for r in trial.values() if r.get("config") == cfg), None)


def _sections(plan, trial: dict, base: dict, tuned: dict | None, converged: dict | None = None,
              store_root: str | None = None) -> list[dict]:
    from reimpl.extensions.buckets import pooled_reliability

    runs = plan.runs(tuned)
    sections = []
    for m in plan.models:
        per_arm, run_ids = {}, {}   # run_ids: the plan's id of each record (a LOO plain record is the converged run's)
        for arm, (b_arm, ext, _what) in ARMS.items():
            seeds, ids = {}, {}
            for r in runs:
                if r.model != m or r.arm != b_arm:
                    continue
                run = r if ext is None else TrialRun(r, arm)
                rec = base.get(run.run_id) if ext is None else _trial_record(trial, run)
                if rec is not None:
                    seeds[r.seed] = rec
                    ids[r.seed] = run.run_id
            per_arm[arm] = seeds
            run_ids[arm] = ids
        rows, tests = [], []
        for arm, seeds in per_arm.items():
            vals = [_metric(x) for x in seeds.values()]
            row = {"arm": arm, "what": ARMS[arm][2], "n": len(vals), "ndcg10": ci95(vals) if vals else None,
                   "hr10": ci95([_metric(x, "hr") for x in seeds.values()]) if vals else None, "delta": {},
                   "cost": _cost(seeds.values())}
            for against in ("dllm2rec", "plain"):   # an arm against itself: all-zero differences, p NaN
                row["delta"][against] = dz.paired_delta({s: _metric(x) for s, x in seeds.items()},
                                                        {s: _metric(x) for s, x in per_arm[against].items()})
                tests.append((row, against))
            rows.append(row)
        for against in ("dllm2rec", "plain"):
            ts = [r for r, a in tests if a == against]
            for r, p in zip(ts, holm([r["delta"][against]["p"] for r in ts])):
                r["delta"][against]["p_holm"] = p
                r["delta"][against]["verdict"] = verdict(r["delta"][against], p, against)
        ref = softmax_reference(runs[0].dataset if runs else "", m, per_arm, converged)
        sections.append({"model": m, "rows": rows, "softmax": ref, "contrasts": contrasts(per_arm),
                         "n_trial_arms": sum(1 for a, x in per_arm.items() if x and a not in ("plain", "dllm2rec")),
                         "buckets": bucket_rows(per_arm, split_targets(runs[0]) if runs else None),
                         "reliability": pooled_reliability(per_arm),
                         "views": rationale_views(per_arm, store_root, run_ids)})
    return sections


def rationale_views(per_arm: dict, store_root: str | None = None, run_ids: dict | None = None) -> list[dict]:
    """Per arm with rationale views (an RDR arm's records; a plain / dllm2rec run's view file): silhouette and
    10-NN agreement over seeds, chance, and the lowest seed's points for the figure."""
    out = []
    for arm, seeds in per_arm.items():
        views = {}
        for seed, rec in sorted(seeds.items()):
            v = rec.get("rdr_view")
            if v is None:
                # the view file is named by the plan's run id, which a LOO plain record (the converged run) lacks
                p = view_path(((run_ids or {}).get(arm) or {}).get(seed, rec["run_id"]), store_root)
                v = json.loads(p.read_text())["rdr_view"] if p.is_file() else None
            if v is not None:
                views[seed] = v
        if views:
            first = views[min(views)]
            out.append({"arm": arm, "n": len(views), "seeds": sorted(views),
                        "silhouette": ci95([v["silhouette"] for v in views.values()]),
                        "knn": ci95([v["knn_agree"] for v in views.values()]), "chance": first["knn_chance"],
                        "k": first["k"], "rows": first["rows"], "points": first["points"], "seed": min(views)})
    return out


def plot_views(dataset: str, sections: list[dict], figdir: Path) -> str | None:
    """``ext_engine_rdr_<dataset>.png``: t-SNE of each arm's representations (lowest seed with a view), coloured by
    rationale cluster; None without views."""
    panels = [(sec["model"], v) for sec in sections for v in sec.get("views", [])]
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False)
    for ax, (model, v) in zip(axes[0], panels):
        xy = np.asarray(v["points"]["xy"])
        ax.scatter(xy[:, 0], xy[:, 1], c=v["points"]["label"], cmap="tab10", s=3, vmin=0, vmax=9)
        ax.set_title(f"{model} {v['arm']} (seed {v['seed']})\nsilhouette {v['silhouette'][0]:.3f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    name = f"ext_engine_rdr_{dataset}.png"
    fig.savefig(figdir / name, dpi=110)
    plt.close(fig)
    return name


def contrasts(per_arm: dict) -> list[dict]:
    """:data:`CONTRASTS` as paired Δ TEST NDCG@10 by seed, Holm over the contrasts with >= 2 pairs."""
    out = []
    for a, b, what in CONTRASTS:
        d = dz.paired_delta({s: _metric(x) for s, x in per_arm.get(a, {}).items()},
                            {s: _metric(x) for s, x in per_arm.get(b, {}).items()})
        out.append({"arm": a, "against": b, "what": what, **d})
    for c, p in zip(out, holm([c["p"] for c in out])):
        c["p_holm"] = p
        c["verdict"] = verdict(c, p, c["against"])
    return out


def cdr_rows(records: list[dict]) -> list[dict]:
    """One entry per CDR record (``reimpl.extensions.cdr_engine``): its run, and per round TEST NDCG@10 / HR@10,
    the export's target-in-top-10 on the train rows and the cost of each phase (s)."""
    out, rate = [], {}
    for rec in sorted(records, key=lambda r: r["run_id"]):
        k = rec["config"]["engine"]["student"]["topk"].index(10)
        facts = rec["data"].get("facts", {})
        teacher = facts.get("teacher", {}).get("file")   # round 0 distils the committed export: its own rate
        if teacher and teacher not in rate:   # one read per teacher, not per record
            t_json = ROOT / teacher.replace(".safetensors", ".json")
            rate[teacher] = (json.loads(t_json.read_text())["export"]["target_in_topk_all_items"]
                             if t_json.is_file() else None)
        t0 = rate.get(teacher)
        rounds = [{"round": h["round"], "ndcg10": h["test"]["ndcg"][k], "hr10": h["test"]["hr"][k],
                   "target_in_top10": h.get("export_target_in_top10", t0 if h["round"] == 0 else None),
                   "cost": h.get("cost_s"), "same_as_kd": h.get("matches_stored_kd_record"),
                   "refine": (h["refine_curve"][:25], h["refine_curve"][-25:]) if h.get("refine_curve") else None}
                  for h in rec["history"]]
        out.append({"run_id": rec["run_id"], "run": rec["config"]["run"], "cdr": rec["config"]["cdr"],
                    "rounds": rounds, "wall_s": rec["timing"]["wall_s"], "n_items": facts.get("item_num"),
                    "ln_items": math.log(facts["item_num"]) if facts.get("item_num") else None})
    return out


def cdr_paired(cdr: list[dict]) -> list[dict]:
    """Per (split, student): round 1 minus round 0 TEST NDCG@10, paired by seed (:func:`dz.paired_delta`)."""
    groups: dict = {}
    for c in cdr:
        split, model, *_, seed = c["run"].split("__")   # <split>__<model>__<tag>__kd__<teacher>__s<seed>
        if len(c["rounds"]) > 1:
            r0, r1 = c["rounds"][0], c["rounds"][1]
            g = groups.setdefault((split, model, c["cdr"].get("init", "copy")), {
                "round1": {}, "round0": {}, "ce_end": [], "rates": [],
                "uniform_ce": c["ln_items"], "refine_rows": c["cdr"]["refine_rows"]})
            g["round1"][seed], g["round0"][seed] = r1["ndcg10"], r0["ndcg10"]
            if r1["refine"]:   # how good the round-1 teacher is: its refinement's end CE and its export's rate
                g["ce_end"].append(float(np.mean(r1["refine"][1])))
            if r0["target_in_top10"] is not None and r1["target_in_top10"] is not None:
                g["rates"].append((r0["target_in_top10"], r1["target_in_top10"]))
    out = []
    for (split, model, init), g in sorted(groups.items()):
        rates = np.array(g["rates"]).mean(0) if g["rates"] else (None, None)
        out.append({"split": split, "model": model, "init": init, "round0": ci95(list(g["round0"].values())),
                    "round1": ci95(list(g["round1"].values())), **dz.paired_delta(g["round1"], g["round0"]),
                    "refine_end_ce": ci95(g["ce_end"]) if g["ce_end"] else None, "uniform_ce": g["uniform_ce"],
                    "refine_rows": g["refine_rows"],
                    "rate0": None if rates[0] is None else float(rates[0]),
                    "rate1": None if rates[1] is None else float(rates[1])})
    return out


def plot_cdr(cdr: list[dict], figdir: Path) -> str | None:
    """``ext_engine_cdr.png``: TEST NDCG@10 per CDR round, one line per record; None without records."""
    if not cdr:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for c in cdr:
        ax.plot([r["round"] for r in c["rounds"]], [r["ndcg10"] for r in c["rounds"]], "o-", label=c["run"])
    ax.set_xlabel("CDR round (0: the distilled student)")
    ax.set_ylabel("TEST NDCG@10")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(figdir / "ext_engine_cdr.png", dpi=110)
    plt.close(fig)
    return "ext_engine_cdr.png"


def plot_reliability(dataset: str, sections: list[dict], figdir: Path) -> str | None:
    """``ext_engine_reliability_<dataset>.png``: a reliability diagram per student (TEST rows of all seeds pooled,
    10 equal-mass bins, log axes: a student's top-1 confidence over thousands of items is mostly < 0.1); the file
    name, or None where no arm keeps per-row confidences."""
    panels = [s for s in sections if s["reliability"]]
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, s in zip(axes[0], panels):
        lo = 1.0
        for arm, b in s["reliability"].items():
            keep = b["count"] > 0
            lo = min(lo, float(b["conf"][keep].min()))
            ax.plot(b["conf"][keep], b["acc"][keep], "o-", ms=3, lw=1.4 if arm in ("plain", "dllm2rec") else 1.0,
                    label=f"{arm} ({b['seeds']} seeds)")
        ax.plot([lo, 1], [lo, 1], "k:", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("top-1 confidence (bin mean)")
        ax.set_ylabel("top-1 accuracy (HR@1 in the bin)")
        ax.set_title(f"{dataset} {s['model']}: reliability, TEST, seeds pooled", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = figdir / f"ext_engine_reliability_{dataset}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


@lru_cache(maxsize=None)
def _targets(proto) -> tuple | None:
    from reimpl.baselines.converged import load_protocol

    try:
        data = load_protocol(proto)[0]
    except (FileNotFoundError, OSError, ValueError):   # no ../shared here: the section says so
        return None
    return (np.asarray(data.train_next, dtype=np.int64), np.asarray(data.test.targets, dtype=np.int64),
            int(data.item_num))


def split_targets(run) -> tuple | None:
    """(train targets, test targets, item_num) of a LOO run's split, or None where the data is absent."""
    return None if run.dataset == "lastfm" else _targets(run.protocol())


def bucket_rows(per_arm: dict, targets: tuple | None) -> dict | None:
    """Per arm with per-row TEST ranks in every seed: NDCG@10 per popularity bucket and ECE, mean ± CI."""
    from reimpl.extensions.buckets import BUCKETS, bucket_metrics, popularity_buckets

    if targets is None:
        return None
    train_t, test_t, item_num = targets
    b = popularity_buckets(train_t, item_num)
    rows = []
    for arm, seeds in per_arm.items():
        sel = [x["selected"] for x in seeds.values() if x.get("selected")]
        if not seeds:
            continue
        if len(sel) < len(seeds):
            rows.append({"arm": arm, "n": len(sel), "missing": len(seeds) - len(sel)})
            continue
        per = [bucket_metrics(np.asarray(x["ranks"]), test_t, b) for x in sel]
        rows.append({"arm": arm, "n": len(sel), "missing": 0,
                     **{k: ci95([p[k]["ndcg"] for p in per]) for k in BUCKETS},
                     "ece": ci95([x["ece"] for x in sel])})
    n_rows = {k: int((b[test_t] == i).sum()) for i, k in enumerate(BUCKETS)}
    n_items = {k: int((b == i).sum()) for i, k in enumerate(BUCKETS)}
    return {"rows": rows, "n_rows": n_rows, "n_items": n_items}


def softmax_reference(dataset: str, model: str, per_arm: dict, converged: dict | None) -> dict | None:
    """The strongest undistilled student of the same split: the converged plan's full-softmax cell at its tuned
    point (another objective than every arm here, so compared unpaired: Welch's t-test, Holm over the arms)."""
    from scipy.stats import ttest_ind

    from reimpl.baselines.converged import CONVERGED

    if converged is None or dataset not in dict.fromkeys(d for d, _, _ in CONVERGED.cells()):
        return None
    cell = (dataset, model, "softmax")
    point = CONVERGED.chosen(converged).get(cell)
    if point is None:
        return None
    recs = [converged[r.run_id] for r in (CONVERGED.run(cell, s, point) for s in CONVERGED.seeds)
            if r.run_id in converged]
    if len(recs) < 2:
        return None
    ref = [_metric(x) for x in recs]
    out = {"tag": tag(point), "n": len(ref), "ndcg10": ci95(ref), "arms": {}}
    names = [a for a, seeds in per_arm.items() if len(seeds) >= 2]
    ps = [float(ttest_ind([_metric(x) for x in per_arm[a].values()], ref, equal_var=False).pvalue) for a in names]
    for a, p, p_adj in zip(names, ps, holm(ps)):
        diff = float(np.mean([_metric(x) for x in per_arm[a].values()]) - np.mean(ref))
        word = ("above" if diff > 0 else "below") if p_adj < 0.05 else "cannot be told apart from"
        out["arms"][a] = {"diff": diff, "p": p, "p_holm": p_adj, "verdict": word}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.extensions.engine_trial", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", choices=tuple(dz.PLANS), default="ml100k-loo")
    r.add_argument("--arm", action="append", choices=TRAINED)
    r.add_argument("--model", action="append")
    r.add_argument("--seed", action="append", type=int)
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--backend", choices=("local", "ray", "submitit"), default="local")
    r.add_argument("--commit", action="store_true")
    g = sub.add_parser("rationales", help="generate (resuming) the split's RDR rationales with SmolLM2")
    g.add_argument("--dataset", choices=tuple(dz.PLANS), default="ml100k-loo")
    g.add_argument("--fraction", type=float, default=0.1)
    g.add_argument("--max-rows", type=int, default=None, help="at most this many new rationales in this call")
    g.add_argument("--commit", action="store_true")
    v = sub.add_parser("view", help="the rationale view of a stored plain / dllm2rec run (trained again, checked)")
    v.add_argument("--dataset", choices=tuple(dz.PLANS), default="lastfm-loo")
    v.add_argument("--arm", choices=("plain", "dllm2rec"), action="append")
    v.add_argument("--model", default="SASRec")
    v.add_argument("--seed", type=int, action="append")
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--commit", action="store_true")
    rp = sub.add_parser("report")
    rp.add_argument("--dataset", action="append", choices=tuple(dz.PLANS), help="default: every LOO plan")
    a = ap.parse_args(argv)
    if a.cmd == "report":
        print(report(tuple(a.dataset or LOO_PLANS)))
        return 0
    if a.cmd == "view":
        import torch

        torch.set_num_threads(a.threads)
        for arm in a.arm or ("plain", "dllm2rec"):
            for seed in a.seed or (1,):
                p = view_baseline(a.dataset, arm, seed, a.model)
                print(f"finished {p}")
                if a.commit:
                    from reimpl.results.runs import git_commit

                    git_commit(str(p))
        return 0
    if a.cmd == "rationales":
        generate(a.dataset, a.fraction, a.max_rows)
        if a.commit:
            from reimpl.extensions.rdr import CACHE_FILE
            from reimpl.results.runs import git_commit

            git_commit(str(rationale_dir(a.dataset) / CACHE_FILE))
        return 0
    base = dz.PLANS[a.dataset]
    plan = dataclasses.replace(base, models=tuple(a.model or base.models), seeds=tuple(a.seed or base.seeds))
    from reimpl.results.runs import dispatch
    from reimpl.results.store import Store

    have = {x["run_id"] for x in Store().records(PLAN_NAME)}
    todo = [x for x in trial_runs(plan, tuple(a.arm or TRAINED)) if x.run_id not in have]
    dispatch(_job, [(x, None, a.threads) for x in todo], backend=a.backend, jobs=a.jobs, commit=a.commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
