"""CDR as the seed specifies, with the E4SRec teacher, on the research engine (issue 17 item 3).

Round 0 is the distilled plan's ``kd`` student (re-trained here with its weights kept; its TEST metrics must equal
the stored record's, which the round record checks). Each round ``r >= 1``:

1. initialise the teacher's item table from the previous round's student (``E4SRec.items <- student item
   embeddings``, both ``[I, 64]``). ``init="copy"`` is the seed's step as written; ``init="align"`` first maps the
   student's table into the teacher's item space (:func:`align_items`: the least-squares affine map ``S W + b``
   closest to the teacher's current table), because the copy starts the refinement above uniform CE (the
   teacher's projection was trained on its own table, not on the student's coordinates);
2. fine-tune only that table, the LLM, its LoRA and the projections frozen (reverse distillation: the teacher
   adapts to the student's item space), CE over all items on ``refine_rows`` seeded train rows;
3. re-export: the teacher's top-10 and confidences for every train row and its refined item table;
4. distil a new student from that export (engine, the ``kd`` arm's configuration and seed).

Rounds stop at ``rounds`` or once TEST NDCG@10 has not beaten every earlier round, round 0 included, for
``patience`` rounds (saturation). Each finished round's student is cached (``runs/cdr/<run id>/round<r>.ckpt``):
a killed run resumes at the next round. Every round
is one record in ``results/extensions-cdr/`` (TEST metrics, the refinement's loss curve, the export's
target-in-top-10 on the train rows, costs per phase); the round's export is a cache under ``runs/cdr/``. The
teacher is rebuilt from the committed adapter (``results/teachers/<split>/<teacher>.adapter.safetensors``) and
the frozen SmolLM2.

Usage::

    python -m reimpl.extensions.cdr_engine --dataset ml100k-loo --model SASRec --seed 1 [--rounds 3]
        [--refine-rows 4000] [--init copy|align] [--commit]
    python -m reimpl.extensions.cdr_engine --dataset ml100k-loo --seed 1 --probe   # CE of each init, no training
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reimpl.baselines import distilled as dz
from reimpl.paths import ROOT, RUNS

PLAN_NAME = "extensions-cdr"
ROUND_KIND = "cdr-round"
INITS = ("copy", "align")


@dataclass(frozen=True)
class CDRConfig:
    rounds: int = 3
    patience: int = 1
    refine_rows: int = 4000
    refine_lr: float = 1e-3
    refine_batch: int = 16
    refine_seed: int = 0
    init: str = "copy"           # copy | align (module docstring, step 1)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"CDRConfig.init must be one of {INITS}, got {self.init!r}")

    @property
    def suffix(self) -> str:
        """What the run id and cache folders add for a non-default init ('' for the seed's copy)."""
        return "" if self.init == "copy" else f"-{self.init}"


def align_items(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(S W + b, R^2)``: the student's item table ``S [I, D]`` mapped by the affine least-squares fit onto the
    teacher's table ``T [I, D']`` (float64 solve, returned in T's dtype), and the fit's R^2 over all of T."""
    if student.dim() != 2 or teacher.dim() != 2 or student.size(0) != teacher.size(0):
        raise ValueError(f"align_items: tables must be [I, D] and [I, D'] with the same I, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    s = torch.cat([student.double(), torch.ones(student.size(0), 1, dtype=torch.float64)], 1)
    t = teacher.double()
    w = torch.linalg.lstsq(s, t).solution
    fit = s @ w
    r2 = 1.0 - float(((t - fit) ** 2).sum() / ((t - t.mean(0)) ** 2).sum().clamp_min(1e-300))
    return fit.to(teacher.dtype), r2


def refine_items(model, seqs: np.ndarray, target: np.ndarray, item_num_pad: int, cfg: CDRConfig,
                 log=None) -> list[float]:
    """Fine-tune ``model.items`` only (every other parameter frozen for the call, restored after); returns the
    loss per step."""
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n == "items")
    opt = torch.optim.AdamW([model.items], lr=cfg.refine_lr, weight_decay=0.0)
    g = np.random.default_rng(cfg.refine_seed)
    rows = g.choice(len(target), min(cfg.refine_rows, len(target)), replace=False)
    curve = []
    model.train()
    try:
        for s in range(0, len(rows) - cfg.refine_batch + 1, cfg.refine_batch):
            idx = rows[s:s + cfg.refine_batch]
            loss = F.cross_entropy(model(torch.as_tensor(seqs[idx], dtype=torch.long), item_num_pad),
                                   torch.as_tensor(target[idx], dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(round(loss.item(), 5))
            if log and len(curve) % 25 == 0:
                log(f"refine step {len(curve)}: loss {loss.item():.4f}")
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(frozen[n])
        model.eval()
    return curve


def build_teacher(dataset: str, name: str):
    """(E4SRec rebuilt from its committed adapter, its teacher data set)."""
    from reimpl.llm.real import load_smollm2
    from reimpl.teachers import common, e4srec
    from reimpl.teachers.bar import train_bar
    from reimpl.teachers.run import RunOptions

    folder = ROOT / "results" / "teachers" / dataset
    rec = json.loads((folder / f"{name}.json").read_text())
    cfg = e4srec.E4SRecConfig(**rec["config"])
    d = common.load_dataset(dataset, RunOptions().data_dir)
    bar, _ = train_bar(dataset)
    llm, tok = load_smollm2()
    prefix, _, suffix = common.DOMAIN_TEXT[d.domain]
    model = e4srec.E4SRec(cfg, llm, tok, bar, prefix=prefix.rstrip(), suffix=suffix)
    e4srec.load_adapter(folder / f"{name}.adapter.safetensors", model)
    return model.eval(), d


def _student(run: dz.DistilledRun, data, log):
    """Train the kd student on ``data``; (result, student with the selected epoch's weights)."""
    from reimpl.dllm2rec.student import build_student
    from reimpl.engine.train import train

    cfg = run.engine_config()
    res = train(cfg, data, log=log, keep_best=True)
    m = build_student(cfg.student, data.item_num, data.seq_size)
    m.load_state_dict(res.pop("best_state"))
    return res, m


def rounds_since_best(ndcg10: list[float]) -> int:
    """Rounds after the last one that beat every earlier round (round 0 included): the saturation count."""
    best = max(range(len(ndcg10)), key=lambda i: (ndcg10[i], -i))   # the first round with the highest value
    return len(ndcg10) - 1 - best


def _identity(run: dz.DistilledRun, cfg: CDRConfig) -> dict:
    """What a cached round must match: the kd run, its engine config and the refinement (not the round cap or the
    patience, so a longer run reuses the rounds done)."""
    c = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("rounds", "patience")
         and not (k == "init" and v == "copy")}   # records cached before ``init`` existed stay valid
    return json.loads(json.dumps({"run": run.run_id, "engine": run.engine_config().as_dict(), "cdr": c}))


def save_round(folder, r: int, history: list[dict], student, identity: dict):
    """``round<r>.ckpt``: the rounds so far and round r's student (what round r + 1 starts from), atomically."""
    from reimpl import checkpoint as ckpt_io

    return ckpt_io.save(folder / f"round{r}.ckpt", {"identity": identity, "history": history,
                                                     "student": student.state_dict()}, kind=ROUND_KIND)


def load_rounds(folder, identity: dict, max_round: int):
    """(history, student state) of the last cached round <= ``max_round``, or None; a cache of another run is
    refused (CheckpointError naming the file and the differences)."""
    from reimpl import checkpoint as ckpt_io

    done = sorted((int(p.stem[5:]) for p in folder.glob("round*.ckpt") if p.stem[5:].isdigit()), reverse=True)
    for r in done:
        if r <= max_round:
            path = folder / f"round{r}.ckpt"
            ck = ckpt_io.load(path, kind=ROUND_KIND)
            if ck["identity"] != identity:
                ckpt_io.check_resume(path, ck["identity"], identity)
            return ck["history"], ck["student"]
    return None


def _with_export(data, files):
    out = dataclasses.replace(data)
    out.candidates = torch.from_numpy(files.rank)
    out.confidence = torch.tensor(files.confidence, dtype=torch.float)
    out.llm_table = files.embeddings
    return out


def run_cdr(dataset: str, model_name: str, seed: int, cfg: CDRConfig = CDRConfig(), store_root: str | None = None,
            log=print, cache_root=None) -> list[str]:
    """The CDR rounds of the ``kd`` run (dataset, model, seed); each finished round is cached in
    ``runs/cdr/<run id>/round<r>.ckpt`` (its student), so a killed run resumes at the next round."""
    from reimpl.baselines.converged import best_row
    from reimpl.dllm2rec.student import build_student
    from reimpl.results.store import Store, make_record
    from reimpl.teachers import e4srec
    from reimpl.teachers import export as ex
    from reimpl.teachers.run import _export

    plan = dz.PLANS[dataset]
    run = next(r for r in plan.runs() if r.model == model_name and r.arm == "kd" and r.seed == seed)
    data, digest, facts = dz.load(run.teacher, dataset, run.protocol())
    k10 = run.engine_config().student.topk.index(10)
    store, paths = Store(store_root), []
    t0 = time.perf_counter()
    root = Path(cache_root) if cache_root is not None else RUNS / "cdr"
    folder, identity = root / f"{run.run_id}{cfg.suffix}", _identity(run, cfg)
    cached = load_rounds(folder, identity, cfg.rounds)
    if cached is None and cfg.suffix:   # round 0 (the kd student) does not depend on the init: reuse the copy run's
        plain = dataclasses.replace(cfg, init="copy")
        if (root / run.run_id / "round0.ckpt").is_file():
            cached = load_rounds(root / run.run_id, _identity(run, plain), 0)
    if cached is None:
        res, student = _student(run, data, log)
        stored = dz.records(store_root).get(run.run_id)
        same = None if stored is None else best_row(stored)["test"] == res["best"]["test"]
        history = [{"round": 0, "test": best_row(res)["test"], "student_s": time.perf_counter() - t0,
                    "matches_stored_kd_record": same}]
        save_round(folder, 0, history, student, identity)
    else:
        history, state = cached
        student = build_student(run.engine_config().student, data.item_num, data.seq_size)
        student.load_state_dict(state)
        log(f"CDR: rounds 0..{history[-1]['round']} from {folder}")
    base = {"run": run.run_id, "cdr": dataclasses.asdict(cfg), "engine": run.engine_config().as_dict()}
    teacher, d = build_teacher(dataset, run.teacher)
    if teacher.items.shape[1] != student.item_embeddings.weight.shape[1]:
        raise ValueError(f"CDR: the student's item width {student.item_embeddings.weight.shape[1]} (tuned point "
                         f"{run.overrides}) differs from the teacher's item table width {teacher.items.shape[1]}")
    for r in range(history[-1]["round"] + 1, cfg.rounds + 1):
        if rounds_since_best([h["test"]["ndcg"][k10] for h in history]) >= cfg.patience:
            break
        t1 = time.perf_counter()
        fit = None
        with torch.no_grad():
            table = student.item_embeddings.weight[: teacher.item_num]
            if cfg.init == "align":
                table, fit = align_items(table, teacher.items)
                log(f"CDR round {r}: student table aligned to the teacher's, R^2 {fit:.3f}")
            teacher.items.copy_(table.to(teacher.items.dtype))
        curve = refine_items(teacher, d.train.seqs, d.train.next, d.item_num, cfg, log)
        t2 = time.perf_counter()
        xfolder = root / f"{run.run_id}{cfg.suffix}__r{r}"
        info = _export(str(xfolder), "export", lambda rows: e4srec.score_all(teacher, rows.seqs, d.item_num), d,
                       teacher.items.detach(), {"teacher": f"{run.teacher}+cdr{r}", "round": r}, chunk=256)
        files, _ = ex.read_compact(xfolder / "export.safetensors", d.item_num, n_train=len(d.train))
        t3 = time.perf_counter()
        res, student = _student(run, _with_export(data, files), log)
        t4 = time.perf_counter()
        test = best_row(res)["test"]
        history.append({"round": r, "test": test, "best_epoch": res["best_epoch"],
                        "refine_curve": curve, "export_target_in_top10": info["target_in_topk_all_items"],
                        **({} if fit is None else {"align_r2": fit}),
                        "cost_s": {"refine": t2 - t1, "export": t3 - t2, "student": t4 - t3}})
        log(f"CDR round {r}: TEST NDCG@10 {test['ndcg'][k10]:.4f}")
        save_round(folder, r, history, student, identity)
    rid = f"{run.run_id}__cdr{cfg.rounds}{cfg.suffix}"
    rec = make_record(plan=PLAN_NAME, run_id=rid, config=base, data={"digest": digest, "facts": facts},
                      result={"history": history, "best_epoch": None, "stopped_early": len(history) <= cfg.rounds,
                              "epochs_run": len(history) - 1, "train_s": time.perf_counter() - t0, "eval_s": 0.0},
                      threads=torch.get_num_threads(), wall_s=time.perf_counter() - t0)
    paths.append(str(store.put(rec)))
    return paths


def probe_init(dataset: str, model_name: str, seed: int, n_rows: int = 96, cache_root=None, log=print) -> dict:
    """CE over all items of the frozen teacher on ``n_rows`` seeded train rows with its own item table, the copied
    student table and the aligned one (round 0's cached student): what each init starts the refinement from."""
    from reimpl import checkpoint as ckpt_io
    from reimpl.dllm2rec.student import build_student

    plan = dz.PLANS[dataset]
    run = next(r for r in plan.runs() if r.model == model_name and r.arm == "kd" and r.seed == seed)
    path = (Path(cache_root) if cache_root is not None else RUNS / "cdr") / run.run_id / "round0.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"probe_init: {path} is missing (run the CDR rounds of seed {seed} first)")
    teacher, d = build_teacher(dataset, run.teacher)
    data, _, _ = dz.load(run.teacher, dataset, run.protocol())
    student = build_student(run.engine_config().student, data.item_num, data.seq_size)
    student.load_state_dict(ckpt_io.load(path, kind=ROUND_KIND)["student"])
    own = teacher.items.detach().clone()
    table = student.item_embeddings.weight[: teacher.item_num].detach().to(own.dtype)
    aligned, r2 = align_items(table, own)
    rows = np.random.default_rng(seed).choice(len(d.train.next), min(n_rows, len(d.train.next)), replace=False)
    out = {"rows": len(rows), "uniform": float(np.log(d.item_num)), "align_r2": r2}
    with torch.no_grad():
        for name, t in (("own", own), ("copy", table), ("align", aligned)):
            teacher.items.copy_(t)
            logits = teacher(torch.as_tensor(d.train.seqs[rows], dtype=torch.long), d.item_num)
            out[f"ce_{name}"] = F.cross_entropy(logits, torch.as_tensor(d.train.next[rows], dtype=torch.long)).item()
        teacher.items.copy_(own)
    log(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.extensions.cdr_engine", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml100k-loo", choices=[k for k in dz.PLANS if k != "lastfm"])
    ap.add_argument("--model", default="SASRec")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--refine-rows", type=int, default=4000)
    ap.add_argument("--init", choices=INITS, default="copy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--commit", action="store_true")
    ap.add_argument("--probe", action="store_true", help="only print the teacher's CE with its own, the copied and "
                    "the aligned item table (probe_init)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.probe:
        probe_init(a.dataset, a.model, a.seed)
        return 0
    for p in run_cdr(a.dataset, a.model, a.seed, CDRConfig(rounds=a.rounds, refine_rows=a.refine_rows,
                                                            init=a.init)):
        print(f"finished {p}")
        if a.commit:
            from reimpl.results.runs import git_commit

            git_commit(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
