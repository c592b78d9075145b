"""A student evaluated for the extension trials: NDCG@10, HR@10, MRR and expected calibration error.

The metrics themselves (and the convention for a missed target) are ``reimpl.metrics``. Ranks are
pessimistic under ties (``1 + #items scoring higher + #other items tying``), the ``fixed`` rule of
:func:`reimpl.dllm2rec.evaluate.target_ranks`; every item is ranked (history included), as in DLLM2Rec's
evaluation (``main.py:198-262``). ECE reads the student's next-item distribution as a ``softmax`` over all
``I`` item scores (``prob="softmax"``) or each score as an independent probability (``"sigmoid"``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reimpl.dllm2rec.evaluate import EvalSplit, target_ranks
from reimpl.dllm2rec.injection import lookup_llm_emb
from reimpl.metrics import expected_calibration_error, ranking_metrics, top1_confidence


@torch.no_grad()
def student_scores(model: nn.Module, split: EvalSplit, llm_table: torch.Tensor | None = None,
                   batch_size: int = 4096) -> torch.Tensor:
    """``[N, I]`` scores of a student on a split, in eval mode (restores the previous mode)."""
    was = model.training
    model.eval()
    out = []
    try:
        for lo in range(0, len(split.targets), batch_size):
            st = torch.as_tensor(split.states[lo:lo + batch_size])
            emb = None if llm_table is None else lookup_llm_emb(st, llm_table)
            out.append(model(st, split.len_states[lo:lo + batch_size], emb).reshape(len(st), -1))
    finally:
        model.train(was)
    return torch.cat(out)


def evaluate_student(model: nn.Module, split: EvalSplit, llm_table: torch.Tensor | None = None, k: int = 10,
                     n_bins: int = 15, prob: str = "softmax", batch_size: int = 4096,
                     return_rows: bool = False) -> dict:
    """``{"ndcg@10", "hr@10", "mrr", "ece", "n"}`` of a student on a split (``return_rows``: plus the
    per-row ``ranks``, top-1 ``conf`` and ``correct`` lists, for paired tests and reliability plots)."""
    scores = student_scores(model, split, llm_table, batch_size)
    ranks = target_ranks(scores, split.targets, mode="fixed")
    res = ranking_metrics(ranks, k)
    t = torch.as_tensor(split.targets.astype(np.int64))
    conf, ok = top1_confidence(scores, t, prob)
    res["ece"] = expected_calibration_error(conf.numpy(), ok.numpy(), n_bins)
    res["n"] = int(len(t))
    if return_rows:
        res.update(ranks=[int(min(r, 2**31)) for r in ranks], conf=conf.tolist(), correct=ok.int().tolist())
    return res
