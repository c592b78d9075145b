"""Importance weights of the teacher's top-K candidates. Mirrors DLLM2Rec ``main.py:434-459``.

``weight = normalize(g_pos * w_rank + g_conf * w_confidence + g_cons * w_consistency)`` with
``w_rank = softmax(-rank / temperature)`` over ranks ``1..K`` (temperature hard-coded 1, ``_lambda``),
``w_confidence = normalize(exp(-confidence) + 1e-8)`` (the teacher's confidence file holds distances:
lower is better) and ``w_consistency = 1[candidate in the student's top-K] + 1e-8``.

The 1e-8 of the consistency weight is added to an int tensor, giving float32: ``1 + 1e-8`` rounds
to 1 there, ``0 + 1e-8`` stays 1e-8 (kept in both modes; its effect on ``weight`` is below 1e-8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RDWeights:
    rank: torch.Tensor         # [B, K] float32
    consistency: torch.Tensor  # [B, K] float32
    confidence: torch.Tensor   # [B, K] float32 (dtype of the confidence input)
    weight: torch.Tensor       # [B, K] normalized composition


def student_topk_set(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]`` ids holding, per row, the same *set* as ``(-scores).argsort(dim=1)[:, :k]`` (main.py:446).

    Only membership is used downstream, so ``topk(k + 1)`` (O(I) per row) replaces the full sort. The
    set is ambiguous only where the k-th and (k+1)-th largest scores tie (the sort's tie order then
    decides which ids make the cut) or a NaN reaches the cut (sort and topk order NaN differently):
    those rows alone fall back to the reference's full argsort, so the set is identical in every case.
    """
    B, n = scores.shape
    neg = -scores
    if n <= k:  # the slice keeps every item
        return neg.argsort(dim=1)[:, :k]
    vals, idx = neg.topk(k + 1, dim=1, largest=False)  # ascending, like the sort of -scores
    idx = idx[:, :k]
    amb = (vals[:, k - 1] == vals[:, k]) | torch.isnan(vals[:, k]) if k > 0 else None
    if amb is not None and bool(amb.any()):
        rows = amb.nonzero(as_tuple=True)[0]
        idx = idx.clone()
        idx[rows] = neg[rows].argsort(dim=1)[:, :k]
    return idx


def _in_set(candidates: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: ``candidates[b, k]`` is one of ``top[b]`` (``[B, k]`` ids)."""
    return (candidates.unsqueeze(2) == top.unsqueeze(1)).any(dim=2)


def candidates_in_topk(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: ``candidates[b, k]`` is in :func:`student_topk_set` ``(scores, K)[b]``, the same answer,
    with the top-K selection run only on rows that need it.

    A row where at least ``K`` items score strictly above its best candidate has no candidate in its top-K set
    whatever the sort's tie order (NaN scores are never counted, and sort last); only the other rows
    (about half in training on LastFM) run :func:`student_topk_set`. scores ``[B, I]``; candidates ``[B, K]``."""
    K = candidates.size(1)
    s = scores.detach()
    best = s.gather(1, candidates).amax(1, keepdim=True)  # [B, 1]
    # s - best > 0 implies s > best in IEEE arithmetic, also with denormals flushed (which can only undercount,
    # sending a row to the full selection); ~3x faster here than the broadcast comparison s > best. A NaN best
    # counts 0 items above it, so its row takes the full selection too.
    above = (s - best).gt_(0).sum(1)  # [B], exact counts (float sums of 0/1 below 2^24)
    rows = above < K
    member = torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    if bool(rows.any()):
        idx = rows.nonzero().squeeze(1)
        top = student_topk_set(s.index_select(0, idx), K)
        member[idx] = _in_set(candidates[idx], top)
    return member


def rd_weights(model_output: torch.Tensor, candidates: torch.Tensor, confidence: torch.Tensor,
               gamma_position: float = 0.3, gamma_confidence: float = 0.5,
               gamma_consistency: float = 0.1, rank_temperature: float = 1.0, *,
               member: torch.Tensor | None = None) -> RDWeights:
    """model_output ``[B, I]``; candidates ``[B, K]`` long; confidence ``[B, K]``. No gradient flows.

    member: ``[B, K]`` bool, whether each candidate is in the student's top-K (:func:`candidates_in_topk`);
    computed here with main.py's full selection when None."""
    if candidates.dim() != 2 or confidence.shape != candidates.shape:
        raise ValueError(f"rd_weights: candidates and confidence must both be [B, K], got "
                         f"{tuple(candidates.shape)} and {tuple(confidence.shape)}")
    B, K = candidates.shape
    if member is not None and member.shape != candidates.shape:
        raise ValueError(f"rd_weights: member must be [B, K] = {tuple(candidates.shape)}, got {tuple(member.shape)}")
    w_static = torch.exp(-torch.arange(1, K + 1, dtype=torch.float32) / rank_temperature)
    w_static = w_static.unsqueeze(0).repeat(B, 1)
    w_rank = (w_static / w_static.sum(1, keepdim=True)).to(candidates.device)
    if member is None:
        member = _in_set(candidates, student_topk_set(model_output.detach(), K))
    w_cons = member.int() + 1e-8
    w_conf = torch.exp(-confidence) + 1e-8
    w_conf = w_conf / w_conf.sum(1, keepdim=True)
    fin = gamma_position * w_rank + gamma_confidence * w_conf + gamma_consistency * w_cons
    return RDWeights(rank=w_rank, consistency=w_cons, confidence=w_conf,
                     weight=fin / fin.sum(1, keepdim=True))
