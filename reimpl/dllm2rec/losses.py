"""DLLM2Rec training objectives as pure functions.

* :func:`negative_pool` / :func:`sample_negatives`  main.py:382-392 (one uniform negative per row,
  excluding the row's history and target; draws from ``generator`` or the global torch RNG exactly
  as ``torch.multinomial`` does in the reference, so seeded runs see the same negatives)
* :func:`bce_loss`            main.py:407-417 (BCE-with-logits over the positive and the sampled negative)
* :func:`propensity_scores`   main.py:264-275 (popularity of train targets, smoothed, ``** 0.05``)
* :func:`dro_loss`            main.py:419-428 (DROS robust loss; float64 because ``ps`` is float64)
* :func:`rd_loss`             main.py:461-485 (importance-weighted ranking distillation, all K
  candidates at once; weights from :mod:`reimpl.dllm2rec.weights`)
* :func:`compose_loss`        main.py:429-431, 486 (``bce + alpha * mean(dro) + lam * rd``)

Shapes: ``B`` batch, ``I`` items (scores exclude the padding id ``I``), ``L`` sequence length,
``K`` teacher candidates per row.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reimpl.deviations import check_mode

# main.py:385 indexes the history with a row index repeated a hard-coded 10 times.
REF_SEQ_LEN = 10
DRO_EPS = 1e-24  # main.py:428, :481


def _check_scores(name: str, model_output: torch.Tensor) -> None:
    if model_output.dim() != 2:
        raise ValueError(f"{name}: model_output must be [B, I] scores, got shape "
                         f"{tuple(model_output.shape)} (a faithful SASRec squeezes B == 1 to [I], "
                         "which the reference cannot train on either)")


def negative_pool(seq: torch.Tensor, target: torch.Tensor, item_num: int, mode: str = "faithful"
                  ) -> torch.Tensor:
    """0/1 float32 ``[B, I]``: 1 for items that may be drawn as negatives (not in history, not target).

    seq: ``[B, L]`` long (padding id ``item_num``); target: ``[B]`` long.
    """
    check_mode(mode)
    B, L = seq.shape
    if target.shape != (B,):
        raise ValueError(f"negative_pool: target must be [B={B}], got {tuple(target.shape)}")
    if mode == "faithful" and L != REF_SEQ_LEN:
        raise ValueError(f"negative_pool (faithful): seq has length {L}, but the reference's mask "
                         f"(main.py:385, repeat(1, {REF_SEQ_LEN})) only broadcasts for length "
                         f"{REF_SEQ_LEN}; use mode='fixed' (DLLM2REC-NEG-MASK-10)")
    seen = torch.zeros(B, item_num + 1, device=seq.device)  # extra column: the padding id
    rows = torch.arange(B, device=seq.device)
    seen[rows.unsqueeze(1).expand(B, L), seq] = 1
    seen[rows, target] = 1
    return 1 - seen[:, :-1]


def sample_negatives(seq: torch.Tensor, target: torch.Tensor, item_num: int,
                     num_negatives: int = 1, *, generator: torch.Generator | None = None,
                     mode: str = "faithful") -> torch.Tensor:
    """``[B, num_negatives]`` long negatives, uniform over :func:`negative_pool`, with replacement.

    ``generator=None`` draws from the global torch RNG (the reference's behaviour).
    """
    if num_negatives != 1:
        # not a mode switch: the losses below are defined for one negative per row only
        raise ValueError("sample_negatives: the reference reshapes negatives to [B, 1] "
                         f"(main.py:408); num_negtive_items={num_negatives} is not supported")
    pool = negative_pool(seq, target, item_num, mode)
    return torch.multinomial(pool, num_negatives, replacement=True, generator=generator)


def bce_loss(model_output: torch.Tensor, target: torch.Tensor, target_neg: torch.Tensor
             ) -> torch.Tensor:
    """Scalar mean BCE-with-logits of ``B`` positives (label 1) and ``B * n`` negatives (label 0).

    model_output: ``[B, I]``; target: ``[B]`` long; target_neg: ``[B, n]`` long.
    Labels are float32 as in main.py:411-412 (``BCEWithLogitsLoss`` then returns float32 even for
    float64 scores).
    """
    _check_scores("bce_loss", model_output)
    B = model_output.size(0)
    pos = torch.gather(model_output, 1, target.view(B, 1))
    neg = torch.gather(model_output, 1, target_neg.view(B, -1)).T.reshape(-1, 1)  # negatives after positives
    scores = torch.cat((pos, neg), 0)
    labels = torch.cat((torch.ones(pos.shape), torch.zeros(neg.shape)), 0).to(scores.device)
    return F.binary_cross_entropy_with_logits(scores, labels)


def propensity_scores(next_items, item_num: int) -> np.ndarray:
    """``[item_num]`` float64: ``((count + 1) / sum(count + 1)) ** 0.05`` over the train *targets*.

    next_items: ``[N]`` item ids (the train frame's ``next`` column); ids outside ``[0, item_num)``
    are ignored, as the reference only reads counts of ``0..item_num-1``.
    """
    ids = np.asarray(next_items)
    if ids.ndim != 1:
        raise ValueError(f"propensity_scores: next_items must be 1-D [N], got shape {ids.shape}")
    as_int = ids.astype(np.int64)
    # a count only for exact integer ids in range (the reference's Counter keys matched against range())
    ok = (as_int == ids) & (as_int >= 0) & (as_int < item_num)
    pop = np.bincount(as_int[ok], minlength=item_num)[:item_num]
    ps = pop + 1
    ps = ps / np.sum(ps)
    return np.power(ps, 0.05)


def _div(x: torch.Tensor, beta: float) -> torch.Tensor:
    # x / 1.0 == x bit for bit (and so is its gradient): skip the [B, I] division for the default beta
    return x if beta == 1.0 else x / beta


def _dro_terms(model_output: torch.Tensor, idx: torch.Tensor, ps: torch.Tensor, beta: float
               ) -> torch.Tensor:
    """fixed mode: ``log(sum_j e^{a_j} - e^{a_t} + e^{b_t})`` for every column ``t`` of ``idx`` ``[B, K]``
    -> ``[B, K]``, computed without overflow.

    ``a = o*o*ps / beta``, ``b = (o-1)*(o-1)*ps / beta``. The squares are taken in the scores' dtype and
    then multiplied by ``ps`` (float64 promotes), as main.py:421-428 does.
    Only ``a`` is needed over all items; ``b`` only at ``idx``, so it is computed on the gathered scores
    (the same elementwise operations, hence the same values, without the reference's ``[B, I]`` pass).
    The scores are gathered twice on purpose: the reference's ``(o - 1) * (o - 1)`` evaluates ``o - 1``
    twice, so two gradients reach ``o`` from this branch; two gathers keep that count and order, which
    keeps the summed gradient of ``o`` bit for bit equal to the reference's.
    """
    _check_scores("dro_loss", model_output)
    if ps.dim() != 1 or ps.numel() != model_output.size(1):
        raise ValueError(f"dro_loss: ps must be [I={model_output.size(1)}], got {tuple(ps.shape)}")
    dt = torch.promote_types(model_output.dtype, ps.dtype)
    # the explicit cast gives the promoted product's exact values (and gradients), faster than mixed dtypes
    a = torch.mul((model_output * model_output).to(dt), ps.to(dt))  # [B, I]
    b_t = torch.mul(((torch.gather(model_output, 1, idx) - 1) * (torch.gather(model_output, 1, idx) - 1)
                     ).to(dt), ps.to(dt)[idx])  # [B, K]
    a_t = torch.gather(a, 1, idx)
    # the same sum, shifted by its max so it never overflows (DLLM2REC-DRO-OVERFLOW)
    a, a_t, b_t = _div(a, beta), _div(a_t, beta), _div(b_t, beta)
    m_a = a.amax(1, keepdim=True)  # [B, 1]
    s = torch.exp(a - m_a).sum(1, keepdim=True)
    m = torch.maximum(m_a, b_t)  # [B, K]
    inner = s * torch.exp(m_a - m) - torch.exp(a_t - m) + torch.exp(b_t - m)
    return m + torch.log(inner.clamp_min(torch.finfo(inner.dtype).tiny))


def _dro_faithful(model_output: torch.Tensor, col: torch.Tensor, ps: torch.Tensor, beta: float
                  ) -> torch.Tensor:
    """Faithful DROS term ``[B]`` for one column ``col`` ``[B, 1]`` of positives, op for op as
    main.py:420-428 (and :474-481 per candidate).

    The reference builds ``o*o*ps`` twice and ``o - 1`` twice: four separate branches of the autograd
    graph from ``o``, each cast float64 -> float32 on the way back when the scores are float32. Building
    the same nodes in the same order keeps the float32 gradient of ``o`` bit for bit the reference's
    (a shared ``o*o*ps`` sums the branches in float64 first and rounds once).
    """
    a_t = torch.gather(torch.mul(model_output * model_output, ps), 1, col).squeeze(1)
    b_t = torch.gather(torch.mul((model_output - 1) * (model_output - 1), ps), 1, col).squeeze(1)
    total = torch.sum(torch.exp(_div(torch.mul(model_output * model_output, ps), beta)), 1)
    return torch.log(total - torch.exp(_div(a_t, beta)) + torch.exp(_div(b_t, beta)) + DRO_EPS)


def dro_loss(model_output: torch.Tensor, target: torch.Tensor, ps: torch.Tensor, beta: float = 1.0,
             mode: str = "faithful") -> torch.Tensor:
    """Per-row DROS loss ``[B]`` (float64 when ``ps`` is float64). target: ``[B]`` long.

    faithful: the reference's operations (:func:`_dro_faithful`); fixed: the overflow-safe form of
    :func:`_dro_terms` (DLLM2REC-DRO-OVERFLOW), in its own order (DLLM2REC-FIXED-OP-ORDER).
    """
    check_mode(mode)
    _check_scores("dro_loss", model_output)
    B = model_output.size(0)
    if mode == "faithful":
        if ps.dim() != 1 or ps.numel() != model_output.size(1):
            raise ValueError(f"dro_loss: ps must be [I={model_output.size(1)}], got {tuple(ps.shape)}")
        return _dro_faithful(model_output, target.view(B, 1), ps, beta)
    return _dro_terms(model_output, target.view(B, 1), ps, beta)[:, 0]


def _rd_faithful(model_output: torch.Tensor, candidates: torch.Tensor, target_neg: torch.Tensor,
                 weight: torch.Tensor, ps: torch.Tensor | None, alpha: float, beta: float) -> torch.Tensor:
    """main.py:461-485 op for op: one pass per candidate, each with its own gathers, ``[B, 1]`` terms
    and means (a ``[B, 1]`` mean and a column mean of ``[B, K]`` round differently in float32), the
    DRO term ``mean([B, 1] * [B])`` over the broadcast ``[B, B]`` (DLLM2REC-RD-DRO-BROADCAST) and
    ``log(sigmoid(1 - s_neg))`` (DLLM2REC-RD-NEG-TERM); the scalars are summed in candidate order."""
    B, K = candidates.shape
    ones = torch.ones((B, 1), device=model_output.device)  # main.py:468-469: labels 1 and 0, float32
    zeros = torch.zeros((B, 1), device=model_output.device)
    total = None
    for k in range(K):
        col = candidates[:, k:k + 1]  # [B, 1]
        pos = torch.gather(model_output, 1, col)
        neg = torch.gather(model_output, 1, target_neg)
        bce = -(ones * torch.log(torch.sigmoid(pos)) + (1 - zeros) * torch.log(torch.sigmoid(1 - neg)))
        w = weight[:, k:k + 1]
        term = (w * bce).mean()
        if alpha != 0:
            term = term + alpha * (w * _dro_faithful(model_output, col, ps, beta)).mean()  # [B,1]*[B] -> [B,B]
        total = term if total is None else total + term
    return total


def rd_loss(model_output: torch.Tensor, candidates: torch.Tensor, target_neg: torch.Tensor,
            weight: torch.Tensor, ps: torch.Tensor | None = None, alpha: float = 1.0,
            beta: float = 1.0, mode: str = "faithful") -> torch.Tensor:
    """Importance-weighted ranking distillation over the ``K`` teacher candidates as positives.

    model_output ``[B, I]``; candidates ``[B, K]`` long; target_neg ``[B, 1]`` long (the batch's
    sampled negative, shared by every candidate); weight ``[B, K]``; ps ``[I]`` (used iff alpha != 0).
    Returns the scalar ``sum_k mean_b(w_bk * bce_bk) + alpha * sum_k D_k`` where, faithful,
    ``D_k = mean_b(w_bk) * mean_b(dro_bk)`` (main.py:483 multiplies ``[B, 1]`` by ``[B]``, which
    broadcasts to ``[B, B]``; DLLM2REC-RD-DRO-BROADCAST) and, fixed, ``D_k = mean_b(w_bk * dro_bk)``.
    The negative term is ``log(sigmoid(1 - s_neg))`` faithful (main.py:470) and
    ``log(sigmoid(-s_neg)) = log(1 - sigmoid(s_neg))`` fixed (DLLM2REC-RD-NEG-TERM).
    faithful follows the reference's operation order (:func:`_rd_faithful`); fixed computes all K
    candidates as one ``[B, K]`` tensor (DLLM2REC-FIXED-OP-ORDER).
    """
    check_mode(mode)
    _check_scores("rd_loss", model_output)
    B, K = candidates.shape
    if weight.shape != (B, K):
        raise ValueError(f"rd_loss: weight must be [B, K] = [{B}, {K}], got {tuple(weight.shape)}")
    if alpha != 0 and ps is None:
        raise ValueError("rd_loss: alpha != 0 needs the propensity scores ps [I]")
    if alpha != 0 and (ps.dim() != 1 or ps.numel() != model_output.size(1)):
        raise ValueError(f"rd_loss: ps must be [I={model_output.size(1)}], got {tuple(ps.shape)}")
    if K == 0:
        raise ValueError("rd_loss: no candidates (K = 0); the reference adds nothing and keeps the int 0")
    if mode == "faithful":
        return _rd_faithful(model_output, candidates, target_neg.view(B, 1), weight, ps, alpha, beta)
    pos = torch.gather(model_output, 1, candidates)  # [B, K]
    neg = torch.gather(model_output, 1, target_neg.view(B, 1))  # [B, 1]
    bce = -(F.logsigmoid(pos) + F.logsigmoid(-neg))
    per_k = (weight * bce).mean(0)  # [K]
    if alpha != 0:
        per_k = per_k + alpha * (weight * _dro_terms(model_output, candidates, ps, beta)).mean(0)
    total = per_k[0]
    for k in range(1, K):  # K scalars, summed in candidate order
        total = total + per_k[k]
    return total


def compose_loss(loss_bce: torch.Tensor, loss_dro: torch.Tensor | None, loss_rd: torch.Tensor | None,
                 alpha: float, lam: float) -> torch.Tensor:
    """``bce + alpha * mean(dro) + lam * rd`` (terms with a zero weight are left out, as in main.py)."""
    loss = loss_bce
    if alpha != 0:
        loss = loss + alpha * torch.mean(loss_dro)
    if lam != 0:
        loss = loss + lam * loss_rd
    return loss
