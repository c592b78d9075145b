"""CDR: cyclic distillation refinement (issue 8, seed 000 §2.3, "Cyclic Dual-Refinement").

One run = round 0 + ``rounds`` refinement rounds:

* round 0 (step 1, student pre-training): a plain student (``lam = 0``, ``ed_weight = 0``), or, with
  ``start="distilled"``, a one-pass DLLM2Rec student distilled from the initial teacher;
* round r >= 1: **step 2** teacher refinement -- the teacher's item embeddings are initialized from the
  previous round's student, everything else frozen, embeddings fine-tuned with the teacher's task loss
  plus reverse distillation towards the student (``teacher.refine``); the teacher is re-exported and the
  fields in ``refresh`` replace the student's teacher data (``rank`` = ranking + confidence,
  ``embeddings`` = the injected item table, ``uncertainty`` = UAMD's per-row uncertainty);
  **step 3** student distillation from the refined teacher, the student built from scratch
  (``student_init="scratch"``) or warm-started from the previous round's student (``"warm"``).

Every round logs the student's metrics (:mod:`reimpl.extensions.metrics`, the selected epoch) and the
teacher's own test metrics. The teacher is any object with ``refine(student, seq, lens, nxt,
student_logits, log, round_)``, ``export(seq, lens, kind) -> dict`` and ``scores(states, lens) -> [N, I]``
(:class:`reimpl.extensions.standin.StandInTeacher`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.evaluate import target_ranks
from reimpl.dllm2rec.injection import lookup_llm_emb
from reimpl.dllm2rec.train import DLLM2RecData, train
from reimpl.extensions.hooks import ExtConfig, build_hooks, repr_width
from reimpl.metrics import ranking_metrics

REFRESHABLE = ("rank", "embeddings", "uncertainty")


@dataclass
class CDRConfig:
    rounds: int = 2
    refresh: tuple[str, ...] = ("rank", "embeddings", "uncertainty")
    student_init: str = "scratch"   # scratch | warm
    start: str = "plain"            # plain | distilled (round 0's student)

    def __post_init__(self) -> None:
        self.refresh = tuple(self.refresh)
        bad = set(self.refresh) - set(REFRESHABLE)
        if bad:
            raise ValueError(f"CDRConfig.refresh: unknown field(s) {sorted(bad)}; choose from {REFRESHABLE}")
        if self.rounds < 0:
            raise ValueError(f"CDRConfig.rounds must be >= 0, got {self.rounds}")
        if self.student_init not in ("scratch", "warm"):
            raise ValueError(f"CDRConfig.student_init must be 'scratch' or 'warm', got {self.student_init!r}")
        if self.start not in ("plain", "distilled"):
            raise ValueError(f"CDRConfig.start must be 'plain' or 'distilled', got {self.start!r}")


def _student_logits(model: nn.Module, data: DLLM2RecData):
    @torch.no_grad()
    def f(rows):
        was = model.training
        model.eval()
        try:
            st = torch.as_tensor(data.train_seq[rows])
            emb = None if data.llm_table is None else lookup_llm_emb(st, data.llm_table)
            return model(st, torch.as_tensor(data.train_len[rows]), emb).reshape(len(rows), -1)
        finally:
            model.train(was)
    return f


def selected(res: dict) -> dict:
    """The epoch record a run reports: ``train()``'s best epoch, or the last epoch when no epoch scored
    above 0 on the selection split (``train()`` then leaves ``best`` empty)."""
    return res["best"] if res["best"] is not None else res["history"][-1]


def teacher_metrics(teacher, split, k: int = 10) -> dict:
    scores = teacher.scores(split.states, split.len_states)
    return ranking_metrics(target_ranks(scores, split.targets, mode="fixed"), k)


def _one_student(cfg: DLLM2RecConfig, ext: ExtConfig, data: DLLM2RecData, uncertainty, init_from, log):
    box = {}
    hooks = build_hooks(ext, data, candidate_topk=cfg.candidate_topk,
                        hidden=repr_width(cfg, data.item_num, data.seq_size),
                        uncertainty=uncertainty)
    hooks.on_end = lambda m: box.__setitem__("model", m)
    if init_from is not None:
        state = copy.deepcopy(init_from.state_dict())
        hooks.init_model = lambda m: m.load_state_dict(state)
    # train() drops data.llm_table when ed_weight == 0: give it a shallow copy
    res = train(cfg, dataclasses.replace(data), log=log, progress=False, hooks=hooks)
    return res, box["model"]


def run_cdr(cdr: CDRConfig, cfg: DLLM2RecConfig, ext: ExtConfig, data: DLLM2RecData, teacher,
            uncertainty: np.ndarray | None = None, log=print) -> list[dict]:
    """Run CDR; returns one record per round ``{"round", "student": train() metrics, "teacher": {...},
    "seconds"}``. ``data`` holds the initial teacher export (used by round 0 when ``start="distilled"``)."""
    data = dataclasses.replace(data)  # the rounds swap teacher fields; the caller's object is left alone
    out = []
    t0 = time.time()
    if cdr.start == "plain":
        c0 = dataclasses.replace(cfg, lam=0.0, ed_weight=0.0)
        e0 = dataclasses.replace(ext, uamd=dataclasses.replace(ext.uamd, enabled=False),
                                 selection=dataclasses.replace(ext.selection, policy="all"))
        res, student = _one_student(c0, e0, data, None, None, log)
    else:
        res, student = _one_student(cfg, ext, data, uncertainty, None, log)
    out.append({"round": 0, "student": res, "selected": selected(res),
                "teacher": {"test": teacher_metrics(teacher, data.test)}, "seconds": time.time() - t0})
    for r in range(1, cdr.rounds + 1):
        t0 = time.time()
        teacher.refine(student, data.train_seq, data.train_len, data.train_next,
                       student_logits=_student_logits(student, data), log=log, round_=r)
        exp = teacher.export(data.train_seq, data.train_len, kind=ext.uamd.kind)
        if "rank" in cdr.refresh:
            data.candidates = torch.as_tensor(exp["rank"], dtype=torch.long)
            data.confidence = torch.as_tensor(exp["confidence"], dtype=torch.float32)
        if "embeddings" in cdr.refresh and data.llm_table is not None:
            data.llm_table = exp["embeddings"].to(torch.float32)
        if "uncertainty" in cdr.refresh:
            uncertainty = exp["uncertainty"]
        res, student = _one_student(cfg, ext, data, uncertainty,
                                    student if cdr.student_init == "warm" else None, log)
        out.append({"round": r, "student": res, "selected": selected(res),
                    "teacher": {"test": teacher_metrics(teacher, data.test)}, "seconds": time.time() - t0})
    return out

