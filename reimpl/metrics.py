"""Ranking metrics (HR@k, NDCG@k, MRR) and calibration (ECE): the project's one implementation.

Ranks are 1-based: rank 1 = the target scored highest among all ``I`` items.

**A missed target.** A row stays in the denominator ``N`` whatever happens to its target. A target ranked
beyond ``k`` adds 0 to HR@k and NDCG@k and ``1 / rank`` to MRR. A target that cannot be ranked at all
(its id is not an item: ``NO_RANK``, or a rank ``< 1``, which is how the reference-run capture
``parity/shims/dllm2rec_main.py`` writes it) adds 0 to every metric. This is what DLLM2Rec's
``calculate_hit`` does (``utility.py:75-82``: a row whose target is not in the top-k list adds nothing, and the
sum is divided by all rows, ``main.py:250-256``); the reference computes no MRR.

**Accumulation order.** By default per-row terms are averaged with numpy's pairwise ``mean``.
``sequential=True`` sums them in row order (``np.cumsum``), the order of ``calculate_hit``'s ``+=`` loop: the
DLLM2Rec trainer's evaluation (``reimpl.dllm2rec.evaluate``) uses it so its numbers equal the reference's bit
for bit. The two differ by a few ulps on large splits, never more.

ECE (top-label, Guo et al. 2017): confidence = probability of the top-1 item, correct = top-1 is the target;
``n_bins`` (default 15) equal-width bins ``(b/M, (b+1)/M]`` (the first bin also takes 0);
``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``; empty bins contribute 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TOPK = (1, 5, 10, 20)                 # DLLM2Rec's cutoffs (main.py:203)
NO_RANK = np.iinfo(np.int64).max      # rank of a target that is not an item id: never a hit
PROBS = ("softmax", "sigmoid")


def _terms(ranks) -> tuple[np.ndarray, np.ndarray]:
    """(float ranks ``[N]`` with unrankable targets set to 1, rankable mask ``[N]``)."""
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranking metrics: ranks must be a non-empty [N] array, got shape {r.shape}")
    ok = (r >= 1) & (r != NO_RANK)
    return np.where(ok, r, 1).astype(np.float64), ok


def _mean(x: np.ndarray, sequential: bool) -> float:
    return float(np.cumsum(x)[-1]) / len(x) if sequential else float(np.mean(x))


def rank_metrics(ranks, topk: Sequence[int] = TOPK, sequential: bool = False) -> dict:
    """``{"hr": [len(topk)], "ndcg": [len(topk)], "mrr", "n"}`` from 1-based ranks ``[N]`` (module docstring:
    a missed target, ``sequential``)."""
    r, ok = _terms(ranks)
    hr, ndcg = [], []
    for k in topk:
        hit = ok & (r <= k)
        hr.append(float(hit.sum()) / len(r))
        ndcg.append(_mean(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0), sequential))
    mrr = _mean(np.where(ok, 1.0 / r, 0.0), sequential)
    return {"hr": hr, "ndcg": ndcg, "mrr": mrr, "n": int(len(r))}


def ranking_metrics(ranks, k: int = 10) -> dict[str, float]:
    """``{"ndcg@k", "hr@k", "mrr"}`` at one cutoff (the extension trials' view of :func:`rank_metrics`)."""
    m = rank_metrics(ranks, (k,))
    return {f"ndcg@{k}": m["ndcg"][0], f"hr@{k}": m["hr"][0], "mrr": m["mrr"]}


def top1_confidence(scores: torch.Tensor, targets: torch.Tensor, prob: str = "softmax"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence ``[N]``, correct ``[N]`` bool) of the top-1 item. scores ``[N, I]``, targets ``[N]`` long.

    ``prob="softmax"``: the next-item distribution is a softmax over all item scores; ``"sigmoid"`` reads each
    score as an independent probability (the BCE training view)."""
    if prob not in PROBS:
        raise ValueError(f"top1_confidence: prob must be one of {PROBS}, got {prob!r}")
    if scores.dim() != 2 or targets.shape != (scores.size(0),):
        raise ValueError(f"top1_confidence: scores [N, I] and targets [N] expected, got "
                         f"{tuple(scores.shape)} and {tuple(targets.shape)}")
    s = scores.double()
    top, arg = s.max(1)
    conf = torch.exp(top - torch.logsumexp(s, 1)) if prob == "softmax" else torch.sigmoid(top)
    return conf, arg == targets


def _conf_correct(confidence, correct, n_bins: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """confidence and correct as float64 ``[N]``, checked: same non-empty shape, confidence in [0, 1], n_bins >= 1."""
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.shape != y.shape or c.size == 0:
        raise ValueError(f"{who}: confidence and correct must be non-empty [N], got {c.shape}, {y.shape}")
    if n_bins < 1:
        raise ValueError(f"{who}: n_bins must be >= 1, got {n_bins}")
    if not np.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise ValueError(f"{who}: confidence must lie in [0, 1]")
    return c, y


def reliability_bins(confidence, correct, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin ``count``, mean ``conf`` and ``acc`` (NaN for empty bins) and the bin ``edges`` ``[M+1]``."""
    c, y = _conf_correct(confidence, correct, n_bins, "reliability_bins")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (b/M, (b+1)/M], 0 -> bin 0
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(b, weights=c, minlength=n_bins) / count
        acc = np.bincount(b, weights=y, minlength=n_bins) / count
    return {"count": count, "conf": conf, "acc": acc, "edges": edges}


def equal_mass_bins(confidence, correct, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Adaptive reliability bins: rows sorted by confidence ``[N]`` and cut into ``n_bins`` runs of (nearly) equal
    size; per bin ``count``, mean ``conf`` and ``acc``. Equal-width bins put every row of a student whose top-1
    confidence over thousands of items stays below 1/15 into one bin."""
    c, y = _conf_correct(confidence, correct, n_bins, "equal_mass_bins")
    parts = np.array_split(np.argsort(c, kind="stable"), min(n_bins, c.size))
    return {"count": np.array([p.size for p in parts], dtype=np.float64),
            "conf": np.array([c[p].mean() for p in parts]), "acc": np.array([y[p].mean() for p in parts])}


def expected_calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """Top-label ECE (module docstring). confidence ``[N]`` in [0, 1], correct ``[N]`` bool/0-1."""
    r = reliability_bins(confidence, correct, n_bins)
    n = r["count"].sum()
    keep = r["count"] > 0
    return float((r["count"][keep] / n * np.abs(r["acc"][keep] - r["conf"][keep])).sum())
