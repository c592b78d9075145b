"""reimpl/metrics.py (one-cutoff ranking metrics, expected calibration error) and reimpl/extensions/metrics.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.extensions.metrics import evaluate_student
from reimpl.metrics import expected_calibration_error, ranking_metrics, reliability_bins, top1_confidence


def test_ranking_metrics_fixed_case():
    m = ranking_metrics(np.array([1, 2, 11, 4]), k=10)
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(5)) / 4)
    assert m["mrr"] == pytest.approx((1 + 0.5 + 1 / 11 + 0.25) / 4)
    assert ranking_metrics(np.array([0, 1]), k=10) == {"ndcg@10": 0.5, "hr@10": 0.5, "mrr": 0.5}  # 0: unrankable
    with pytest.raises(ValueError, match="non-empty"):
        ranking_metrics(np.array([]))


def test_ece_fixed_case():
    # bins of width 0.5: (0, .5] holds .2 (wrong), .4 (right); (.5, 1] holds .9 (right), .7 (wrong)
    conf = np.array([0.2, 0.4, 0.9, 0.7])
    ok = np.array([0, 1, 1, 0])
    want = 2 / 4 * abs(0.5 - 0.3) + 2 / 4 * abs(0.5 - 0.8)
    assert expected_calibration_error(conf, ok, n_bins=2) == pytest.approx(want)
    b = reliability_bins(conf, ok, 2)
    assert b["count"].tolist() == [2, 2]
    # a confidence exactly on an edge belongs to the lower bin; 0 goes to the first bin
    assert reliability_bins(np.array([0.5, 0.0]), np.array([1, 0]), 2)["count"].tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([1.5]), np.array([1]))


def test_ece_perfect_and_worst():
    assert expected_calibration_error(np.ones(5), np.ones(5)) == 0.0
    assert expected_calibration_error(np.ones(5), np.zeros(5)) == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), i=st.integers(2, 13), scale=st.sampled_from([1.0, 1e4]),
       dtype=st.sampled_from([torch.float32, torch.float64]), prob=st.sampled_from(["softmax", "sigmoid"]),
       bins=st.integers(1, 20))
def test_ece_properties(n, i, scale, dtype, prob, bins):
    g = torch.Generator().manual_seed(n * 31 + i)
    scores = (torch.randn(n, i, generator=g) * scale).to(dtype)
    t = torch.randint(0, i, (n,), generator=g)
    conf, ok = top1_confidence(scores, t, prob)
    assert conf.shape == (n,) and torch.isfinite(conf).all() and (conf >= 0).all() and (conf <= 1).all()
    e = expected_calibration_error(conf.numpy(), ok.numpy(), bins)
    assert 0.0 <= e <= 1.0
    if prob == "softmax":
        assert (conf >= 1.0 / i - 1e-12).all()


def test_evaluate_student_tiny_sasrec():
    from reimpl.models import SASRec
    from tests.ext_helpers import tiny_data

    d = tiny_data(teacher=False)
    torch.manual_seed(0)
    m = SASRec(16, d.item_num, d.seq_size, 0.1, 1, d_llm=16, d_proj=16, ed_weight=0.0, mode="fixed")
    m.train()
    r = evaluate_student(m, d.test, return_rows=True)
    assert set(r) >= {"ndcg@10", "hr@10", "mrr", "ece", "n", "ranks", "conf", "correct"}
    assert r["n"] == 12 and len(r["ranks"]) == 12 and m.training  # mode restored
    assert r == evaluate_student(m, d.test, return_rows=True)    # eval mode: deterministic
