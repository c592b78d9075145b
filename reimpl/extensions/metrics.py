"""Student metrics for the extension trials: NDCG@10, HR@10, MRR and expected calibration error.

Ranks are pessimistic under ties (``1 + #items scoring higher + #other items tying``), the
``fixed`` rule of :func:`reimpl.dllm2rec.evaluate.target_ranks`; every item is ranked (history
included), as in DLLM2Rec's evaluation (``main.py:198-262``).

ECE (top-label, Guo et al. 2017): the student's next-item distribution is ``softmax`` over all
``I`` item scores (``prob="softmax"``; ``"sigmoid"`` reads each score as an independent
probability, the BCE training view). Confidence = probability of the top-1 item, correct = top-1
is the target. ``n_bins`` (default 15) equal-width bins ``(b/M, (b+1)/M]`` (the first bin also
takes 0); ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``; empty bins contribute 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reimpl.dllm2rec.evaluate import EvalSplit, target_ranks
from reimpl.dllm2rec.injection import lookup_llm_emb

PROBS = ("softmax", "sigmoid")


def ranking_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """``{"ndcg@k", "hr@k", "mrr"}`` from 1-based ranks ``[N]`` (a huge rank counts as a miss)."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranking_metrics: ranks must be a non-empty [N] array, got shape {r.shape}")
    if (r < 1).any():
        raise ValueError("ranking_metrics: ranks are 1-based; got a rank < 1")
    hit = r <= k
    return {f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).mean()),
            f"hr@{k}": float(hit.mean()), "mrr": float((1.0 / r).mean())}


def top1_confidence(scores: torch.Tensor, targets: torch.Tensor, prob: str = "softmax"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence ``[N]``, correct ``[N]`` bool) of the top-1 item. scores ``[N, I]``, targets ``[N]`` long."""
    if prob not in PROBS:
        raise ValueError(f"top1_confidence: prob must be one of {PROBS}, got {prob!r}")
    if scores.dim() != 2 or targets.shape != (scores.size(0),):
        raise ValueError(f"top1_confidence: scores [N, I] and targets [N] expected, got "
                         f"{tuple(scores.shape)} and {tuple(targets.shape)}")
    s = scores.double()
    top, arg = s.max(1)
    conf = torch.exp(top - torch.logsumexp(s, 1)) if prob == "softmax" else torch.sigmoid(top)
    return conf, arg == targets


def reliability_bins(confidence, correct, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin ``count``, mean ``conf`` and ``acc`` (NaN for empty bins) and the bin ``edges`` ``[M+1]``."""
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.shape != y.shape or c.size == 0:
        raise ValueError(f"reliability_bins: confidence and correct must be non-empty [N], got {c.shape}, {y.shape}")
    if n_bins < 1:
        raise ValueError(f"reliability_bins: n_bins must be >= 1, got {n_bins}")
    if not np.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise ValueError("reliability_bins: confidence must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (b/M, (b+1)/M], 0 -> bin 0
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(b, weights=c, minlength=n_bins) / count
        acc = np.bincount(b, weights=y, minlength=n_bins) / count
    return {"count": count, "conf": conf, "acc": acc, "edges": edges}


def expected_calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """Top-label ECE (module docstring). confidence ``[N]`` in [0, 1], correct ``[N]`` bool/0-1."""
    r = reliability_bins(confidence, correct, n_bins)
    n = r["count"].sum()
    keep = r["count"] > 0
    return float((r["count"][keep] / n * np.abs(r["acc"][keep] - r["conf"][keep])).sum())


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
