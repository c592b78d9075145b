"""Sample-selection policies for the distillation (KD) term: which train rows to distill, how much.

Each policy maps a batch to a per-row factor ``f [B]`` that multiplies DLLM2Rec's ranking-distillation
weights (``TrainHooks.kd_weight``; ``main.py:459-486`` is where those weights enter the loss).
Teacher distribution over a row's top-``K`` candidates: ``p_t = softmax(-confidence)`` (DLLM2Rec's
confidence file is a distance, ``exp(-confidence)`` its weight, ``main.py:451-454``); student
distribution over the same candidates: ``q_s = softmax(scores[candidates] / tau)``.

* ``all``:   ``f = 1`` (the reference's behaviour; exists so that "no selection" is a config value).
* ``kl``:    ``d = KL(p_t || q_s)`` per row. ``output="mask"`` keeps the ``ratio`` fraction of the batch
  with the largest ``d`` (``prefer="high"``: distill where the student disagrees most) or the smallest
  (``prefer="low"``); ``output="weight"`` uses ``f = d / mean_B(d)`` (``high``) or
  ``exp(-d) / mean_B(exp(-d))`` (``low``). No gradient flows through ``f``.
* ``gt_error``: the teacher's ground-truth error ``e = 1 - p_t(target)`` (``e = 1`` when the target is
  not among the K candidates). ``mask``: keep rows with ``e <= threshold``; ``weight``: ``f = 1 - e``.
* ``gt_mean``: the control for ``gt_error``/``weight``: every row gets the same factor, the mean of ``1 - e`` over
  the whole train split (:func:`mean_gt_weight`). It distils as much in total as ``gt_error`` does, but not
  selectively, so a gain of ``gt_error`` over it is the selection's and not a smaller distillation weight's.
* ``const``: every row gets ``value`` (``0`` switches the ranking distillation off and keeps DLLM2Rec's DRO on the
  target and its teacher-embedding injection: the ablation that tells those parts from the ranking term).

Masks keep at least one row when ``ratio > 0`` (``ceil(ratio * B)``); ties at the cut keep the lower
batch position (stable sort).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POLICIES = ("all", "kl", "gt_error", "gt_mean", "const")


@dataclass
class SelectionConfig:
    policy: str = "all"
    output: str = "mask"      # mask | weight
    ratio: float = 0.5        # kl/mask: fraction of the batch kept
    prefer: str = "high"      # kl: high | low divergence is kept / up-weighted
    threshold: float = 0.9    # gt_error/mask: keep rows whose teacher error is <= threshold
    tau: float = 1.0          # student temperature for q_s
    value: float | None = None  # const: the factor; gt_mean: the same, filled by build_hooks from the split

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"SelectionConfig.policy must be one of {POLICIES}, got {self.policy!r}")
        if self.output not in ("mask", "weight"):
            raise ValueError(f"SelectionConfig.output must be 'mask' or 'weight', got {self.output!r}")
        if self.prefer not in ("high", "low"):
            raise ValueError(f"SelectionConfig.prefer must be 'high' or 'low', got {self.prefer!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"SelectionConfig.ratio must lie in [0, 1], got {self.ratio}")
        if self.tau <= 0:
            raise ValueError(f"SelectionConfig.tau must be > 0, got {self.tau}")


def _check(scores: torch.Tensor, candidates: torch.Tensor, confidence: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"selection: scores must be [B, I], got {tuple(scores.shape)}")
    if candidates.dim() != 2 or confidence.shape != candidates.shape or candidates.size(0) != scores.size(0):
        raise ValueError(f"selection: candidates and confidence must both be [B={scores.size(0)}, K], got "
                         f"{tuple(candidates.shape)} and {tuple(confidence.shape)}")


def teacher_distribution(confidence: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` = softmax(-confidence) over the K candidates (float64)."""
    return torch.softmax(-confidence.double(), dim=1)


def kl_teacher_student(scores: torch.Tensor, candidates: torch.Tensor, confidence: torch.Tensor,
                       tau: float = 1.0) -> torch.Tensor:
    """``[B]`` KL(p_t || q_s) over the teacher's K candidates (float64, >= 0, no gradient).

    scores ``[B, I]`` student scores; candidates ``[B, K]`` long; confidence ``[B, K]`` distances.
    """
    _check(scores, candidates, confidence)
    p = teacher_distribution(confidence)
    log_q = torch.log_softmax(scores.detach().double().gather(1, candidates) / tau, dim=1)
    log_p = torch.log(p.clamp_min(torch.finfo(torch.float64).tiny))
    return (p * (log_p - log_q)).sum(1).clamp_min(0.0)


def teacher_gt_error(candidates: torch.Tensor, confidence: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]`` ``1 - p_t(target)`` (1 where the target is not a candidate). target ``[B]`` long."""
    if target.shape != (candidates.size(0),):
        raise ValueError(f"teacher_gt_error: target must be [B={candidates.size(0)}], got {tuple(target.shape)}")
    p = teacher_distribution(confidence)
    return 1.0 - (p * (candidates == target.unsqueeze(1))).sum(1)


def mean_gt_weight(candidates: torch.Tensor, confidence: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over rows of ``p_t(target) = 1 - e`` (``[N, K]``, ``[N, K]``, ``[N]``): ``gt_mean``'s constant."""
    return float((1.0 - teacher_gt_error(candidates, confidence, target)).mean())


def top_fraction_mask(score: torch.Tensor, ratio: float, largest: bool = True) -> torch.Tensor:
    """float ``[B]`` 0/1 mask keeping ``ceil(ratio * B)`` rows with the largest (or smallest) score."""
    b = score.numel()
    n_keep = min(b, math.ceil(ratio * b)) if ratio > 0 else 0
    order = torch.sort(score, descending=largest, stable=True).indices
    mask = torch.zeros(b, dtype=torch.float64, device=score.device)
    mask[order[:n_keep]] = 1.0
    return mask


def selection_factor(cfg: SelectionConfig, scores: torch.Tensor, candidates: torch.Tensor,
                     confidence: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row KD factor ``[B]`` (float64) of policy ``cfg`` (module docstring)."""
    _check(scores, candidates, confidence)
    b = scores.size(0)
    if cfg.policy == "all":
        return torch.ones(b, dtype=torch.float64, device=scores.device)
    if cfg.policy in ("gt_mean", "const"):
        if cfg.value is None:
            raise ValueError(f"selection: policy {cfg.policy!r} needs SelectionConfig.value (for gt_mean, "
                             "mean_gt_weight of the train split; build_hooks computes it)")
        return torch.full((b,), float(cfg.value), dtype=torch.float64, device=scores.device)
    if cfg.policy == "kl":
        d = kl_teacher_student(scores, candidates, confidence, cfg.tau)
        if cfg.output == "mask":
            return top_fraction_mask(d, cfg.ratio, largest=cfg.prefer == "high")
        v = d if cfg.prefer == "high" else torch.exp(-d)
        m = v.mean()
        return v / m if m > 0 else torch.ones_like(v)
    e = teacher_gt_error(candidates, confidence, target)
    if cfg.output == "mask":
        return (e <= cfg.threshold).double()
    return 1.0 - e
