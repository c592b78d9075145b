"""reimpl/extensions/selection.py: KD sample-selection policies."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.extensions.selection import (
    SelectionConfig,
    kl_teacher_student,
    selection_factor,
    teacher_gt_error,
    top_fraction_mask,
)


def _batch(b, i, k, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, i, generator=g) * scale
    cand = torch.stack([torch.randperm(i, generator=g)[:k] for _ in range(b)])
    conf = torch.rand(b, k, generator=g) * 3
    target = torch.randint(0, i, (b,), generator=g)
    return scores, cand, conf, target


def test_kl_zero_when_student_matches_teacher():
    scores, cand, conf, _ = _batch(4, 20, 5)
    s = torch.full((4, 20), -50.0)
    s.scatter_(1, cand, -conf)              # student log-odds over candidates = -confidence
    assert torch.allclose(kl_teacher_student(s, cand, conf), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert (kl_teacher_student(scores, cand, conf) > 0).all()


def test_gt_error_fixed_case():
    cand = torch.tensor([[3, 1], [0, 2]])
    conf = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # row 1: p = [3/4, 1/4]
    e = teacher_gt_error(cand, conf, torch.tensor([1, 5]))
    assert torch.allclose(e, torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_policies_and_errors():
    scores, cand, conf, t = _batch(8, 30, 6)
    assert torch.equal(selection_factor(SelectionConfig(), scores, cand, conf, t), torch.ones(8, dtype=torch.float64))
    m = selection_factor(SelectionConfig(policy="kl", ratio=0.25), scores, cand, conf, t)
    d = kl_teacher_student(scores, cand, conf)
    assert m.sum() == 2 and d[m.bool()].min() >= d[~m.bool()].max()
    lo = selection_factor(SelectionConfig(policy="kl", ratio=0.25, prefer="low"), scores, cand, conf, t)
    assert d[lo.bool()].max() <= d[~lo.bool()].min()
    w = selection_factor(SelectionConfig(policy="kl", output="weight"), scores, cand, conf, t)
    assert w.mean().item() == pytest.approx(1.0)
    g = selection_factor(SelectionConfig(policy="gt_error", output="weight"), scores, cand, conf, t)
    assert torch.allclose(g, 1 - teacher_gt_error(cand, conf, t))
    with pytest.raises(ValueError, match="policy"):
        SelectionConfig(policy="random")
    with pytest.raises(ValueError, match=r"\[B=8, K\]"):
        selection_factor(SelectionConfig(policy="kl"), scores, cand[:, :3], conf, t)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 9), k=st.integers(1, 6), ratio=st.floats(0, 1), scale=st.sampled_from([1.0, 1e4]),
       policy=st.sampled_from(["all", "kl", "gt_error"]), output=st.sampled_from(["mask", "weight"]),
       prefer=st.sampled_from(["high", "low"]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_factor_shape_and_range(b, k, ratio, scale, policy, output, prefer, dtype):
    scores, cand, conf, t = _batch(b, 12, k, seed=b * 7 + k, scale=scale)
    cfg = SelectionConfig(policy=policy, output=output, ratio=ratio, prefer=prefer)
    f = selection_factor(cfg, scores.to(dtype), cand, conf.to(dtype), t)
    assert f.shape == (b,) and torch.isfinite(f).all() and (f >= 0).all()
    if policy == "kl" and output == "mask":
        assert f.sum() == min(b, math.ceil(ratio * b))


def test_top_fraction_mask_ties_stable():
    assert top_fraction_mask(torch.tensor([1.0, 1.0, 1.0]), 1 / 3).tolist() == [1.0, 0.0, 0.0]
    assert top_fraction_mask(torch.tensor([1.0, 2.0]), 0.0).tolist() == [0.0, 0.0]
