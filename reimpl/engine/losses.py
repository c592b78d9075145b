"""The fixed-mode objective of :func:`reimpl.dllm2rec.train.batch_loss` in one fused pass.

    loss = main + alpha * mean_b dro(o_b, t_b) + lam * sum_k mean_b w_bk (bce_bk + alpha * dro(o_b, c_bk))

main.py:407-431, :461-486 with the fixes DLLM2REC-RD-NEG-TERM, -RD-DRO-BROADCAST and -DRO-OVERFLOW
(:mod:`reimpl.dllm2rec.losses`, mode="fixed"). ``main`` is the reference's BCE with one sampled negative
(``objective="bce"``: ``mean`` of ``softplus(-o_t)`` and ``softplus(o_neg)`` over the ``2B`` scores) or,
added, the full-softmax cross-entropy ``objective="softmax"`` (``-log softmax(o)_t``, no negative).

Sharing: ``dro(o, j) = log(sum_i e^{a_i} - e^{a_j} + e^{b_j})`` with ``a = o^2 ps / beta``,
``b = (o - 1)^2 ps / beta`` needs ``S = sum_i e^{a_i - m}`` over all ``I`` items once per row; the target's
term and the ``K`` candidates' terms then read ``S`` and ``[B, 1 + K]`` gathered scores.
:class:`ExpSquareSum` computes ``S`` and its gradient ``dS/do = e^{a - m} * 2 o ps / beta`` in a few
``[B, I]`` passes (autograd over the unfused form takes about twice as many). ``m`` (row max of ``a``) and
the log-sum-exp shift are treated as constants: the expression equals the unshifted one for any shift.

dtype: everything runs in the scores' dtype. fixed mode promotes the DRO to float64 (``ps`` is float64); the
engine's float32 DRO agrees with it to float32 rounding (tests/test_engine_equivalence.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reimpl.dllm2rec.weights import candidates_in_topk, rd_weights

OBJECTIVES = ("bce", "softmax")


class ExpSquareSum(torch.autograd.Function):
    """``(S [B, 1], m [B, 1])``: ``m = max_i a_i``, ``S = sum_i exp(a_i - m)``, ``a = o*o*ps / beta``.

    o: ``[B, I]``; ps: ``[I]``. ``m`` carries no gradient."""

    @staticmethod
    def forward(ctx, o: torch.Tensor, ps: torch.Tensor, beta: float):
        a = o * o * ps
        if beta != 1.0:
            a = a / beta
        m = a.amax(1, keepdim=True)
        e = torch.exp(a.sub_(m))
        ctx.save_for_backward(o, ps, e)
        ctx.beta = beta
        ctx.mark_non_differentiable(m)
        return e.sum(1, keepdim=True), m

    @staticmethod
    def backward(ctx, g_s: torch.Tensor, g_m: torch.Tensor):
        o, ps, e = ctx.saved_tensors
        coef = g_s * (2.0 / ctx.beta)  # [B, 1]
        return (o * ps).mul_(e).mul_(coef), None, None  # e stays intact (backward may run twice)


def _dro_at(o: torch.Tensor, o_j: torch.Tensor, ps_j: torch.Tensor, ps: torch.Tensor, beta: float) -> torch.Tensor:
    """``[B, J]`` DRO terms of columns whose scores are ``o_j`` ``[B, J]`` and propensities ``ps_j`` ``[B, J]``
    (log-sum-exp form, DLLM2REC-DRO-OVERFLOW). o: ``[B, I]``; ps: ``[I]``."""
    s, m_a = ExpSquareSum.apply(o, ps, beta)
    a_j, b_j = o_j * o_j * ps_j, (o_j - 1) * (o_j - 1) * ps_j
    if beta != 1.0:
        a_j, b_j = a_j / beta, b_j / beta
    m = torch.maximum(m_a, b_j).detach()  # [B, J]
    inner = s * torch.exp(m_a - m) - torch.exp(a_j - m) + torch.exp(b_j - m)
    return m + torch.log(inner.clamp_min(torch.finfo(inner.dtype).tiny))


@dataclass
class Objective:
    """What the loss needs besides the scores; the reference's defaults (main.py:30-39)."""
    objective: str = "bce"
    alpha: float = 1.0
    beta: float = 1.0
    lam: float = 0.8
    candidate_topk: int = 10
    gamma_position: float = 0.3
    gamma_confidence: float = 0.5
    gamma_consistency: float = 0.1
    rank_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Objective.objective must be one of {OBJECTIVES}, got {self.objective!r}")


def needs_full_scores(obj: Objective) -> bool:
    """Whether the loss reads all ``[B, I]`` scores (else only the target's and the negative's)."""
    return obj.objective != "bce" or obj.alpha != 0 or obj.lam != 0


def bce_at(o_t: torch.Tensor, o_n: torch.Tensor) -> torch.Tensor:
    """The reference's BCE (main.py:407-417) from the positive ``[B, 1]`` and negative ``[B, 1]`` scores."""
    return (F.softplus(-o_t).sum() + F.softplus(o_n).sum()) / (2 * o_t.size(0))


def loss(out: torch.Tensor, target: torch.Tensor, neg: torch.Tensor | None, obj: Objective, *,
         ps: torch.Tensor | None = None, candidates: torch.Tensor | None = None,
         confidence: torch.Tensor | None = None, kd_weight=None) -> tuple[torch.Tensor, dict]:
    """Scalar loss and its parts. out ``[B, I]``; target ``[B]``; neg ``[B, 1]`` (objective "bce" or
    lam != 0); ps ``[I]`` (alpha != 0, any float dtype: cast to the scores'); candidates / confidence
    ``[B, >= K]`` (lam != 0); ``kd_weight(out) -> [B]``: per-row factor on the normalised distillation weights
    (``reimpl.dllm2rec.train.batch_loss``'s hook, main.py has none)."""
    B = out.size(0)
    K = obj.candidate_topk
    t = target.view(B, 1)
    cand = candidates[:, :K] if obj.lam != 0 else None
    # one gather for every column the loss reads (target, negative, candidates): its backward is one scatter
    # into a [B, I] buffer instead of one per term
    cols = torch.cat([t] + ([neg.view(B, 1)] if neg is not None else []) + ([cand] if cand is not None else []), 1)
    o_cols = out.gather(1, cols)
    o_t = o_cols[:, :1]
    o_n = o_cols[:, 1:2] if neg is not None else None
    o_c = o_cols[:, 1 + (neg is not None):] if cand is not None else None
    if obj.objective == "bce":
        main = bce_at(o_t, o_n)
    else:
        main = F.cross_entropy(out, target)
    parts = {"main": main}
    total = main
    dro = None
    if obj.alpha != 0:
        ps = ps.to(out.dtype)
        o_j = o_t if cand is None else torch.cat([o_t, o_c], 1)
        idx = t if cand is None else torch.cat([t, cand], 1)
        dro = _dro_at(out, o_j, ps[idx], ps, obj.beta)  # [B, 1 (+ K)]
        parts["dro"] = dro[:, 0].mean()
        total = total + obj.alpha * parts["dro"]
    if obj.lam != 0:
        w = rd_weights(out, cand, confidence[:, :K], obj.gamma_position, obj.gamma_confidence,
                       obj.gamma_consistency, obj.rank_temperature, member=candidates_in_topk(out, cand)).weight
        if kd_weight is not None:
            f = kd_weight(out)
            if f.shape != (B,):
                raise ValueError(f"kd_weight: expected a per-row factor [B={B}], got {tuple(f.shape)}")
            w = w * f.to(w.dtype).unsqueeze(1)
        w = w.to(out.dtype)
        per = -(F.logsigmoid(o_c) + F.logsigmoid(-o_n))  # [B, K]
        if dro is not None:
            per = per + obj.alpha * dro[:, 1:]
        parts["rd"] = (w * per).sum() / B
        parts["weight"] = w
        total = total + obj.lam * parts["rd"]
    return total, parts
