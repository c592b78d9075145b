"""Training loop of a DLLM2Rec student. Mirrors DLLM2Rec ``main.py:284-524``.

Usage::

    python -m reimpl.dllm2rec.train --data-dir DIR --data NAME [--model_name SASRec ...] \
        [--mode faithful|fixed] [--epoch N] [--out metrics.json] [--checkpoint ckpt.pt [--resume]]

``DIR`` holds the reference layout: ``data/NAME/{data_statis.df, train_data.df, val_data.csv,
test_data.csv}`` and ``tocf/NAME/{myrank_train.txt, confidence_train.txt, all_embeddings.pt}``
(the teacher files only when ``lam != 0`` / ``ed_weight != 0``).

An "epoch" is ``int(N / batch_size)`` batches, each ``batch_size`` rows drawn without replacement
independently of the others (``DataFrame.sample``, main.py:360), from a ``numpy.RandomState(seed)``,
which draws exactly what the reference's globally seeded ``np.random`` draws. Negatives and dropout use
the global torch RNG seeded with ``seed`` before the student is built, as the reference does.

After each epoch VAL and TEST are evaluated. faithful: the best epoch is the one with the highest
TEST NDCG@20 (strictly greater), training stops after ``patience`` epochs without improvement
(DLLM2REC-SELECT-ON-TEST). fixed: the same on VAL NDCG@20; the reported test metrics are those of the
best validation epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from reimpl import checkpoint as ckpt
from reimpl.cliconf import build, check_writable
from reimpl.data import load_dllm2rec
from reimpl.data import teacher as teacher_files
from reimpl.data.dllm2rec import STATIS
from reimpl.dllm2rec import losses
from reimpl.dllm2rec.config import DLLM2RecConfig, add_arguments, from_namespace
from reimpl.dllm2rec.evaluate import EvalSplit, evaluate
from reimpl.dllm2rec.injection import lookup_llm_emb
from reimpl.dllm2rec.student import build_student
from reimpl.dllm2rec.weights import rd_weights


@dataclass
class DLLM2RecData:
    item_num: int
    seq_size: int
    train_seq: np.ndarray     # [N, L] int64
    train_len: np.ndarray     # [N] int64
    train_next: np.ndarray    # [N] int64
    val: EvalSplit
    test: EvalSplit
    candidates: torch.Tensor | None = None   # [N, K0] long (myrank_train.txt)
    confidence: torch.Tensor | None = None   # [N, K0] float32 (confidence_train.txt)
    llm_table: torch.Tensor | None = None    # [item_num, d_llm] (all_embeddings.pt)
    files: dict = field(default_factory=dict)  # {field: source file} (provenance, in error messages)


def load_data(data_dir: str | Path, name: str, *, need_rank: bool, need_emb: bool,
              candidate_topk: int = 10, d_llm: int | None = None) -> DLLM2RecData:
    """Read ``data/<name>/`` through :func:`reimpl.data.load_dllm2rec` and the teacher files through
    :mod:`reimpl.data.teacher`; every rule of docs/data.md is checked here, before any training.

    The arrays are the values main.py:315-343 reads (``next`` of val/test as float, ``np.loadtxt`` teacher
    files, the ranking as ``LongTensor``, confidences as float32)."""
    root = Path(data_dir)
    ddir, tdir = root / "data" / name, root / "tocf" / name
    ds = load_dllm2rec(ddir, name=name, splits=("train", "val", "test"))
    tr = ds["train"]

    def ev(s) -> EvalSplit:  # writable copies: callers may index and modify
        return EvalSplit(np.array(s.seqs), np.array(s.lens), s.next.astype(np.float64), str(s.source))

    data = DLLM2RecData(ds.item_num, ds.seq_len, np.array(tr.seqs), np.array(tr.lens), np.array(tr.next),
                        ev(ds["val"]), ev(ds["test"]))
    data.files = {k: str(ds[k].source) for k in ("train", "val", "test")}
    data.files["statis"] = str(ddir / STATIS)
    if need_rank:
        rank = teacher_files.read_ranking(tdir / teacher_files.RANK_FILE, ds.item_num, tr.n, min_k=candidate_topk)
        conf = teacher_files.read_confidence(tdir / teacher_files.CONF_FILE, tr.n, shape=rank.shape)
        data.candidates = torch.LongTensor(rank)
        data.confidence = torch.tensor(conf, dtype=torch.float)
        data.files.update(candidates=str(tdir / teacher_files.RANK_FILE),
                          confidence=str(tdir / teacher_files.CONF_FILE))
    if need_emb:
        data.llm_table = teacher_files.read_embeddings(tdir / teacher_files.EMB_FILE, ds.item_num, d_llm)
        data.files["llm_table"] = str(tdir / teacher_files.EMB_FILE)
    return data


@dataclass
class TrainHooks:
    """Optional extension points (used by :mod:`reimpl.extensions`); all ``None`` = the reference loop,
    bit for bit. Not in the reference.

    * ``kd_weight(rows [B], model_output [B, I]) -> [B]``: per-row factor on the ranking-distillation
      weights (``weight[b, :] *= f[b]``, after their normalization); only used when ``lam != 0``.
    * ``extra_loss(rows [B], seq_repr [B, H]) -> scalar``: added to the loss (already weighted);
      ``seq_repr`` is the student's sequence representation, the input of its output layer ``s_fc``.
    * ``extra_params``: trained with the student (a second Adam parameter group, same lr/decay).
    * ``init_model(model)``: called once after the student is built, before the optimizer (warm starts).
    * ``on_epoch_end(model, epoch) -> dict | None``: extra metrics stored as ``rec["ext"]``.
    * ``on_end(model)``: called with the final student.

    Checkpoints hold the student and its optimizer only: state kept by the hooks themselves (e.g. the
    ``extra_params`` values) is not saved, so resuming a hooked run restarts those from their init.
    """
    kd_weight: Callable[[np.ndarray, torch.Tensor], torch.Tensor] | None = None
    extra_loss: Callable[[np.ndarray, torch.Tensor], torch.Tensor] | None = None
    extra_params: list = field(default_factory=list)
    init_model: Callable[[nn.Module], None] | None = None
    on_epoch_end: Callable[[nn.Module, int], dict | None] | None = None
    on_end: Callable[[nn.Module], None] | None = None


@dataclass
class StepResult:
    loss: torch.Tensor
    parts: dict = field(default_factory=dict)


def batch_loss(model: nn.Module, cfg: DLLM2RecConfig, seq: torch.Tensor, len_seq: torch.Tensor,
               target: torch.Tensor, *, ps: torch.Tensor | None, candidates: torch.Tensor | None,
               confidence: torch.Tensor | None, llm_table: torch.Tensor | None,
               item_num: int, generator: torch.Generator | None = None,
               kd_weight: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepResult:
    """Loss of one batch (main.py:381-486). seq ``[B, L]``, len_seq ``[B]``, target ``[B]``,
    candidates/confidence ``[B, >=K]`` rows of the teacher files for this batch.
    ``kd_weight(model_output [B, I]) -> [B]`` (added, not in the reference): per-row factor on the
    ranking-distillation weights."""
    neg = losses.sample_negatives(seq, target, item_num, cfg.num_negtive_items, generator=generator,
                                  mode=cfg.mode)
    llm_emb = lookup_llm_emb(seq, llm_table) if llm_table is not None else None
    out = model(seq, len_seq, llm_emb)
    l_bce = losses.bce_loss(out, target, neg)
    l_dro = losses.dro_loss(out, target, ps, cfg.beta, cfg.mode) if cfg.alpha != 0 else None
    l_rd, w = None, None
    if cfg.lam != 0:
        K = cfg.candidate_topk
        cand, conf = candidates[:, :K], confidence[:, :K]
        w = rd_weights(out, cand, conf, cfg.gamma_position, cfg.gamma_confidence,
                       cfg.gamma_consistency, cfg.rank_temperature).weight
        if kd_weight is not None:
            f = kd_weight(out)
            if f.shape != (out.size(0),):
                raise ValueError(f"kd_weight: expected a per-row factor [B={out.size(0)}], got {tuple(f.shape)}")
            w = w * f.to(w.dtype).unsqueeze(1)
        l_rd = losses.rd_loss(out, cand, neg, w, ps,
                              cfg.alpha, cfg.beta, cfg.mode)
    loss = losses.compose_loss(l_bce, l_dro, l_rd, cfg.alpha, cfg.lam)
    return StepResult(loss, dict(model_output=out, target_neg=neg, loss_bce=l_bce, loss_dro=l_dro,
                                 loss_rd=l_rd, weight=w))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: DLLM2RecConfig,
               data: DLLM2RecData, rows: np.ndarray, ps: torch.Tensor | None,
               generator: torch.Generator | None = None, hooks: TrainHooks | None = None) -> StepResult:
    """One optimizer step on train rows ``rows`` ``[B]`` (main.py:360-492); ``hooks``: see :class:`TrainHooks`."""
    seq = torch.as_tensor(data.train_seq[rows])
    len_seq = torch.as_tensor(data.train_len[rows])
    target = torch.as_tensor(data.train_next[rows])
    optimizer.zero_grad()
    idx = torch.as_tensor(rows)
    kd_weight, captured, handle = None, [], None
    if hooks is not None and hooks.kd_weight is not None:
        kd_weight = lambda out: hooks.kd_weight(rows, out)  # noqa: E731
    if hooks is not None and hooks.extra_loss is not None:
        # the student's sequence representation = the input of its output layer (all three students)
        handle = model.s_fc.register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
    try:
        res = batch_loss(model, cfg, seq, len_seq, target, ps=ps,
                         candidates=None if data.candidates is None else data.candidates[idx],
                         confidence=None if data.confidence is None else data.confidence[idx],
                         llm_table=data.llm_table, item_num=data.item_num, generator=generator,
                         kd_weight=kd_weight)
    finally:
        if handle is not None:
            handle.remove()
    if captured:
        extra = hooks.extra_loss(rows, captured[-1])
        res.parts["loss_extra"] = extra
        res.loss = res.loss + extra
    if torch.isnan(res.loss).any():
        raise FloatingPointError("DLLM2Rec training loss is NaN (the reference exits with -1, main.py:488)")
    res.loss.backward()
    optimizer.step()
    return res


def _rng_state(rs: np.random.RandomState) -> dict:
    return {"numpy": rs.get_state(), "torch": torch.get_rng_state()}


CKPT_KIND = "dllm2rec-student"
CODE = ("dllm2rec", "models", "data", "checkpoint.py")   # reimpl/ sources a student run depends on
RESUMABLE = ("epoch",)   # config fields a resume may change: more epochs continue the same trajectory


def data_digest(data: DLLM2RecData) -> dict:
    """sha256 per array a run reads (train/val/test, teacher ranking/confidence/table), for resume checks."""
    arrays = {"train_seq": data.train_seq, "train_len": data.train_len, "train_next": data.train_next,
              "val_states": data.val.states, "val_len": data.val.len_states, "val_targets": data.val.targets,
              "test_states": data.test.states, "test_len": data.test.len_states, "test_targets": data.test.targets,
              "candidates": data.candidates, "confidence": data.confidence, "llm_table": data.llm_table}
    return {k: (None if v is None else ckpt.digest(v)) for k, v in arrays.items()}


def run_identity(cfg: DLLM2RecConfig, data: DLLM2RecData) -> dict:
    """Config (less :data:`RESUMABLE`), data digest, code version, threads: what a resume must match."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE}
    return ckpt.run_identity(conf, data_digest(data), ckpt.code_version(*CODE))


def train(cfg: DLLM2RecConfig, data: DLLM2RecData, *, checkpoint: str | Path | None = None,
          resume: bool = False, log=print, progress: bool = True, hooks: TrainHooks | None = None) -> dict:
    """Train, evaluate each epoch, early-stop; returns the metrics dict written by the CLI.
    ``hooks``: optional extension points (:class:`TrainHooks`); None = the reference loop."""
    from tqdm.auto import tqdm

    rs = np.random.RandomState(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_student(cfg, data.item_num, data.seq_size)
    if hooks is not None and hooks.init_model is not None:
        hooks.init_model(model)
    params = list(model.parameters())
    if hooks is not None and hooks.extra_params:
        params = [{"params": params}, {"params": list(hooks.extra_params)}]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=1e-8, weight_decay=cfg.l2_decay)
    ps = (torch.tensor(losses.propensity_scores(data.train_next, data.item_num))
          if cfg.alpha != 0 else None)
    if cfg.lam != 0 and data.candidates is None:
        raise ValueError("lam != 0 needs the teacher ranking (tocf/<data>/myrank_train.txt)")
    if cfg.ed_weight == 0:
        data = dataclasses.replace(data, llm_table=None)  # a copy: never mutate the caller's data
    elif data.llm_table is None:
        raise ValueError("ed_weight != 0 needs the teacher embeddings (tocf/<data>/all_embeddings.pt)")
    n = len(data.train_next)
    if n < cfg.batch_size:
        raise ValueError(f"--batch_size: expected at most the train split's {n} rows "
                         f"({data.files.get('train', 'train split')}), got {cfg.batch_size}")
    num_batches = int(n / cfg.batch_size)
    if cfg.max_batches_per_epoch is not None:
        num_batches = min(num_batches, cfg.max_batches_per_epoch)
    state = {"epoch": 0, "best_score": 0.0, "best_epoch": 0, "patience": 0, "history": [],
             "best": None, "stopped_early": False}
    identity = run_identity(cfg, data) if checkpoint else None
    if resume and checkpoint and Path(checkpoint).is_file():
        ck = ckpt.load(checkpoint, kind=CKPT_KIND)
        ckpt.check_resume(checkpoint, ck.get("identity"), identity)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        rs.set_state(ck["rng"]["numpy"])
        torch.set_rng_state(ck["rng"]["torch"])
        state = ck["state"]
        log(f"resumed from {checkpoint} after epoch {state['epoch']}")
    select_split = "test" if cfg.mode == "faithful" else "val"
    t_start = time.time()
    while state["epoch"] < cfg.epoch and not state["stopped_early"]:
        model.train()
        t0 = time.time()
        bar = tqdm(range(num_batches), desc=f"epoch {state['epoch'] + 1}", disable=not progress,
                   leave=False)
        for _ in bar:
            rows = rs.choice(n, cfg.batch_size, replace=False)  # == DataFrame.sample(n=batch_size)
            res = train_step(model, optimizer, cfg, data, rows, ps, hooks=hooks)
            bar.set_postfix(loss=f"{res.loss.item():.4f}")
        train_s = time.time() - t0
        ev = {s: evaluate(model, getattr(data, s), data.llm_table, cfg.eval_batch_size, cfg.topk,
                          cfg.mode) for s in ("val", "test")}
        state["epoch"] += 1
        rec = {"epoch": state["epoch"], "loss": float(res.loss.item()), "train_s": train_s, **ev}
        if hooks is not None and hooks.on_epoch_end is not None:
            extra = hooks.on_epoch_end(model, state["epoch"])
            if extra is not None:
                rec["ext"] = extra
        state["history"].append(rec)
        score = ev[select_split]["ndcg"][-1]
        # faithful: strictly greater than the running best, which starts at 0 (main.py:507), so a run
        # whose every epoch scores 0 selects nothing; fixed: the first epoch always counts
        if score > state["best_score"] or (cfg.mode == "fixed" and state["best"] is None):
            state.update(best_score=score, best_epoch=state["epoch"], patience=0, best=rec)
        else:
            state["patience"] += 1
        log(f"epoch {state['epoch']}: loss {rec['loss']:.5f} val ndcg@{cfg.topk[-1]} "
            f"{ev['val']['ndcg'][-1]:.5f} test ndcg@{cfg.topk[-1]} {ev['test']['ndcg'][-1]:.5f} "
            f"best epoch {state['best_epoch']} patience {state['patience']}")
        if state["patience"] >= cfg.patience:
            state["stopped_early"] = True
        if checkpoint:
            ckpt.save(checkpoint, {"identity": identity, "config": asdict(cfg), "model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "rng": _rng_state(rs), "state": state},
                      kind=CKPT_KIND)
    if hooks is not None and hooks.on_end is not None:
        hooks.on_end(model)
    return {"config": asdict(cfg), "selected_on": select_split, "best_epoch": state["best_epoch"],
            "best": state["best"], "epochs_run": state["epoch"], "stopped_early": state["stopped_early"],
            "history": state["history"], "wall_s": time.time() - t_start, "environment": ckpt.environment()}


def main(argv: list[str] | None = None) -> int:
    """CLI: options checked first (each error names its flag), then the data, then training; the metrics JSON
    (config, per-epoch metrics, environment) goes to ``--out`` (written atomically) or stdout."""
    ap = argparse.ArgumentParser(prog="python -m reimpl.dllm2rec.train", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder holding data/<name>/ and tocf/<name>/")
    ap.add_argument("--out", default=None, help="metrics JSON path (default: stdout)")
    ap.add_argument("--checkpoint", default=None, help="checkpoint written after every epoch")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    ap.add_argument("--no-progress", action="store_true")
    add_arguments(ap)
    a = ap.parse_args(argv)
    cfg = build(ap, lambda: from_namespace(a))

    def check_paths() -> None:
        if a.resume and not a.checkpoint:
            raise ValueError("--resume: needs --checkpoint (the file to resume from)")
        check_writable(a.out, "--out")
        check_writable(a.checkpoint, "--checkpoint")
        if not Path(a.data_dir).is_dir():
            raise ValueError(f"--data-dir {a.data_dir}: not a folder")
    build(ap, check_paths)
    log = (lambda m: print(m, file=sys.stderr))
    try:
        data = load_data(a.data_dir, cfg.data, need_rank=cfg.lam != 0, need_emb=cfg.ed_weight != 0,
                         candidate_topk=cfg.candidate_topk, d_llm=cfg.d_llm)
        metrics = train(cfg, data, checkpoint=a.checkpoint, resume=a.resume, log=log,
                        progress=not a.no_progress)
    except ValueError as e:   # DataError, CheckpointError, an option the data cannot satisfy: names file/flag
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    text = json.dumps(metrics, indent=1, default=float)
    if a.out:
        ckpt.write_text_atomic(a.out, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
