"""reimpl/extensions/selection.py: KD sample-selection policies."""

from __future__ import annotations

import math

import numpy as np
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


def test_gt_mean_is_the_constant_mean_of_gt_error_weights():
    from reimpl.extensions.hooks import ExtConfig, build_hooks
    from reimpl.extensions.selection import mean_gt_weight
    from tests.ext_helpers import tiny_data

    d = tiny_data()
    c = mean_gt_weight(d.candidates[:, :10], d.confidence[:, :10], torch.as_tensor(d.train_next))
    h_mean = build_hooks(ExtConfig.from_dict({"selection": {"policy": "gt_mean", "output": "weight"}}), d,
                         candidate_topk=10, hidden=64)
    h_err = build_hooks(ExtConfig.from_dict({"selection": {"policy": "gt_error", "output": "weight"}}), d,
                        candidate_topk=10, hidden=64)
    every = np.arange(len(d.train_next))
    f_err = h_err.kd_weight(every, torch.randn(len(every), d.item_num))
    # the same total distillation weight over the split, spread evenly
    assert abs(float(f_err.mean()) - c) < 1e-12
    f = h_mean.kd_weight(np.array([0, 3, 7]), torch.randn(3, d.item_num))
    assert torch.equal(f, torch.full((3,), c, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs SelectionConfig.value"):
        selection_factor(SelectionConfig(policy="gt_mean", output="weight"), torch.randn(2, 5),
                         torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_const_zero_switches_the_ranking_term_off():
    """kd-no-rank: factor 0 leaves exactly the loss of lam = 0 with DRO and the embedding injection kept."""
    from reimpl.engine.losses import Objective, loss

    torch.manual_seed(0)
    B, n_items = 6, 30
    out = torch.randn(B, n_items, dtype=torch.float64, requires_grad=True)
    tgt, neg = torch.randint(0, n_items, (B,)), torch.randint(0, n_items, (B, 1))
    cand, conf = torch.randint(0, n_items, (B, 10)), torch.rand(B, 10, dtype=torch.float64)
    ps = torch.rand(n_items, dtype=torch.float64)
    f = selection_factor(SelectionConfig(policy="const", output="weight", value=0.0), out, cand, conf, tgt)
    kd, _ = loss(out, tgt, neg, Objective(lam=0.8, alpha=1.0), ps=ps, candidates=cand, confidence=conf,
                 kd_weight=lambda o: f)
    off, _ = loss(out, tgt, neg, Objective(lam=0.0, alpha=1.0), ps=ps)
    torch.testing.assert_close(kd, off, rtol=1e-12, atol=0)
