"""Engine training loop: fixed mode's run (:func:`reimpl.dllm2rec.train.train`, main.py:284-524 with the
declared fixes) with tensors resident and the step of :mod:`reimpl.engine.losses`.

Same as fixed mode: student, Adam (lr, eps 1e-8, l2_decay), ``int(N / batch_size)`` batches per epoch, each
``batch_size`` rows drawn without replacement independently of the others (main.py:355-360), evaluation in
eval mode with pessimistic ties, selection and early stopping on VAL NDCG@20 (first evaluation counts,
then strictly greater), TEST reported at the best VAL epoch.

Different random streams (same distributions): batches from ``numpy.random.default_rng(seed)``, negatives
from a ``torch.Generator`` seeded with ``seed`` (rejection sampling), dropout from the global torch RNG
seeded with ``seed`` before the student is built (so the initial weights equal fixed mode's).

Added options (:class:`EngineConfig`): ``objective`` ("bce" the reference's, "softmax" full cross-entropy),
``eval_every`` (evaluate every N epochs and at the last; patience counts epochs since the best evaluated
epoch, which is fixed mode's counter when N = 1), ``epoch_order`` ("draws" as above, or "permutation": one
shuffled pass over the rows in ``int(N / batch_size)`` batches).

Hooks (``hooks``, :class:`reimpl.dllm2rec.train.TrainHooks`, what :mod:`reimpl.extensions` builds): the same
points as fixed mode's loop: ``init_model`` after the student is built, ``extra_params`` as a second Adam group,
``kd_weight(rows, out)`` on the normalised distillation weights, ``extra_loss(rows, r)`` on the representation
``r`` ``[B, D]`` that ``s_fc`` reads, ``on_epoch_end(model, epoch)`` stored as the epoch's ``ext``, ``on_end``.
As in fixed mode, state held by the hooks is not checkpointed.

Checkpoint (``checkpoint=path``): written atomically (temporary file + rename) after every epoch with
the model, optimizer, every RNG state and the history; a killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from reimpl import checkpoint as ckpt_io
from reimpl.dllm2rec import losses as dlosses
from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.evaluate import evaluate
from reimpl.dllm2rec.student import build_student
from reimpl.dllm2rec.train import DLLM2RecData, TrainHooks
from reimpl.engine import forward, losses
from reimpl.engine.sampling import sample_negatives

EPOCH_ORDERS = ("draws", "permutation")


@dataclass
class EngineConfig:
    student: DLLM2RecConfig = field(default_factory=lambda: DLLM2RecConfig(mode="fixed"))
    objective: str = "bce"
    eval_every: int = 1
    epoch_order: str = "draws"

    def __post_init__(self) -> None:
        if isinstance(self.student, dict):
            self.student = DLLM2RecConfig(**self.student)
        if self.student.mode != "fixed":
            raise ValueError("EngineConfig.student.mode must be 'fixed' (the engine computes fixed mode; faithful "
                             "runs through reimpl.dllm2rec.train)")
        if self.objective not in losses.OBJECTIVES:
            raise ValueError(f"EngineConfig.objective must be one of {losses.OBJECTIVES}, got {self.objective!r}")
        if self.epoch_order not in EPOCH_ORDERS:
            raise ValueError(f"EngineConfig.epoch_order must be one of {EPOCH_ORDERS}, got {self.epoch_order!r}")
        if self.eval_every < 1:
            raise ValueError("EngineConfig.eval_every must be >= 1")

    def objective_spec(self) -> losses.Objective:
        s = self.student
        return losses.Objective(self.objective, s.alpha, s.beta, s.lam, s.candidate_topk, s.gamma_position,
                                s.gamma_confidence, s.gamma_consistency, s.rank_temperature)

    def as_dict(self) -> dict:
        return _jsonable(asdict(self))


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


CKPT_KIND = "engine-run"


class Batches:
    """Row indices of an epoch's batches ``[nb, B]`` from a numpy Generator (see module docstring)."""

    def __init__(self, n: int, batch_size: int, num_batches: int, order: str, seed: int):
        self.n, self.b, self.nb, self.order = n, batch_size, num_batches, order
        self.rng = np.random.default_rng(seed)

    def epoch(self) -> np.ndarray:
        if self.order == "permutation":
            return self.rng.permutation(self.n)[: self.nb * self.b].reshape(self.nb, self.b)
        return np.stack([self.rng.choice(self.n, self.b, replace=False) for _ in range(self.nb)])


class Session:
    """Student, optimizer, resident tensors and random streams of one run; :meth:`step` is one optimizer step."""

    def __init__(self, cfg: EngineConfig, data: DLLM2RecData, hooks: TrainHooks | None = None):
        s = self.s = cfg.student
        self.cfg, self.data, self.obj = cfg, data, cfg.objective_spec()
        self.hooks = hooks or TrainHooks()
        torch.manual_seed(s.seed)
        self.model = build_student(s, data.item_num, data.seq_size)
        if self.hooks.init_model is not None:
            self.hooks.init_model(self.model)
        params = list(self.model.parameters())
        if self.hooks.extra_params:
            params = [{"params": params}, {"params": list(self.hooks.extra_params)}]
        # fused: one kernel over all parameters (same update formula; ~5x faster than the per-tensor loop on CPU)
        self.opt = torch.optim.Adam(params, lr=s.lr, eps=1e-8, weight_decay=s.l2_decay, fused=True)
        self.gen = torch.Generator().manual_seed(s.seed)
        self.seq, self.lens, self.nxt = (torch.from_numpy(np.array(a, dtype=np.int64)) for a in
                                         (data.train_seq, data.train_len, data.train_next))
        obj = self.obj
        self.ps = (torch.tensor(dlosses.propensity_scores(data.train_next, data.item_num), dtype=torch.float32)
                   if obj.alpha != 0 else None)
        if obj.lam != 0 and data.candidates is None:
            raise ValueError("lam != 0 needs the teacher ranking (tocf/<data>/myrank_train.txt)")
        self.table = data.llm_table if s.ed_weight != 0 else None
        if s.ed_weight != 0 and self.table is None:
            raise ValueError("ed_weight != 0 needs the teacher embeddings (tocf/<data>/all_embeddings.pt)")
        self.table_ext = forward.trim_table(forward.extend_table(self.table)) if self.table is not None else None
        self.need_neg = cfg.objective == "bce" or obj.lam != 0
        self.full = losses.needs_full_scores(obj)
        n = len(data.train_next)
        if n < s.batch_size:
            raise ValueError(f"train split has {n} rows, fewer than batch_size={s.batch_size}")
        nb = int(n / s.batch_size)
        if s.max_batches_per_epoch is not None:
            nb = min(nb, s.max_batches_per_epoch)
        self.batches = Batches(n, s.batch_size, nb, cfg.epoch_order, s.seed)

    def step(self, rows: torch.Tensor) -> torch.Tensor:
        """One optimizer step on train rows ``rows`` ``[B]``; returns the (detached) loss."""
        obj, data = self.obj, self.data
        b_seq, b_len, b_t = self.seq[rows], self.lens[rows], self.nxt[rows]
        neg = sample_negatives(b_seq, b_t, data.item_num, self.gen) if self.need_neg else None
        hk = self.hooks
        r = forward.representation(self.model, b_seq, b_len, self.table_ext)  # [B, D]
        if self.full:
            kd_weight = None if hk.kd_weight is None else (lambda out: hk.kd_weight(rows.numpy(), out))
            loss, _ = losses.loss(self.model.s_fc(r), b_t, neg, obj, ps=self.ps,
                                  candidates=None if obj.lam == 0 else data.candidates[rows],
                                  confidence=None if obj.lam == 0 else data.confidence[rows], kd_weight=kd_weight)
        else:  # BCE only: two columns of the head
            o = forward.head_at(self.model, r, torch.cat([b_t.view(-1, 1), neg], 1))
            loss = losses.bce_at(o[:, :1], o[:, 1:])
        if hk.extra_loss is not None:
            loss = loss + hk.extra_loss(rows.numpy(), r)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"engine: training loss is {loss.item()}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


def train(cfg: EngineConfig, data: DLLM2RecData, *, checkpoint: str | Path | None = None, log=print,
          on_epoch=None, hooks: TrainHooks | None = None, keep_best: bool = False) -> dict:
    """Train, evaluate every ``eval_every`` epochs, early-stop; returns the metrics dict (history per epoch).

    ``on_epoch(rec)`` is called after each epoch with its record (for stores / progress); ``hooks``: see the
    module docstring; ``keep_best``: also return the student's weights at the selected epoch (``best_state``;
    not kept across a resume)."""
    sess = Session(cfg, data, hooks)
    hooks = sess.hooks
    s, model, opt, gen, batches, table = sess.s, sess.model, sess.opt, sess.gen, sess.batches, sess.table
    nb = batches.nb
    state = {"epoch": 0, "best_score": 0.0, "best_epoch": 0, "history": [], "best": None,
             "stopped_early": False, "train_s": 0.0, "eval_s": 0.0}
    ck_path = Path(checkpoint) if checkpoint else None
    best_state = None
    if ck_path is not None and ck_path.is_file():
        ck = ckpt_io.load(ck_path, kind=CKPT_KIND)
        if ck["config"] != cfg.as_dict():
            raise ValueError(f"{ck_path}: checkpoint written with a different engine config; refusing to resume")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"]["torch"])
        gen.set_state(ck["rng"]["gen"])
        batches.rng.bit_generator.state = ck["rng"]["numpy"]
        state = ck["state"]
        best_state = ck.get("best_model") if keep_best else None
        log(f"resumed from {ck_path} after epoch {state['epoch']}")
    while state["epoch"] < s.epoch and not state["stopped_early"]:
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        total = torch.zeros((), dtype=torch.float64)
        for rows in torch.as_tensor(batches.epoch()):
            total += sess.step(rows)
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        state["epoch"] += 1
        state["train_s"] += train_s
        rec = {"epoch": state["epoch"], "loss": float(total) / nb, "train_s": train_s, "train_cpu_s": train_cpu_s}
        last = state["epoch"] >= s.epoch
        if state["epoch"] % cfg.eval_every == 0 or last:
            t1 = time.perf_counter()
            for split in ("val", "test"):
                rec[split] = evaluate(model, getattr(data, split), table, s.eval_batch_size, s.topk, "fixed")
            rec["eval_s"] = time.perf_counter() - t1
            state["eval_s"] += rec["eval_s"]
            score = rec["val"]["ndcg"][-1]
            if score > state["best_score"] or state["best"] is None:
                state.update(best_score=score, best_epoch=state["epoch"], best=rec)
                if keep_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif state["epoch"] - state["best_epoch"] >= s.patience:
                state["stopped_early"] = True
            log(f"epoch {state['epoch']}: loss {rec['loss']:.5f} val ndcg@{s.topk[-1]} {score:.5f} "
                f"best epoch {state['best_epoch']}")
            if hooks.on_epoch_end is not None:
                extra = hooks.on_epoch_end(model, state["epoch"])
                if extra is not None:
                    rec["ext"] = extra
        state["history"].append(rec)
        if ck_path is not None:
            ckpt_io.save(ck_path, {"config": cfg.as_dict(), "model": model.state_dict(),
                                   "optimizer": opt.state_dict(),
                                   "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state(),
                                           "numpy": batches.rng.bit_generator.state}, "state": state,
                                   **({"best_model": best_state} if best_state is not None else {})},
                         kind=CKPT_KIND)
        if on_epoch is not None:
            on_epoch(rec)
    if hooks.on_end is not None:
        hooks.on_end(model)
    extra = {"best_state": best_state} if keep_best else {}
    return {**extra, "config": cfg.as_dict(), "selected_on": "val", "best_epoch": state["best_epoch"],
            "best": state["best"], "epochs_run": state["epoch"], "stopped_early": state["stopped_early"],
            "history": state["history"], "train_s": state["train_s"], "eval_s": state["eval_s"]}
