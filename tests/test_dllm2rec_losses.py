"""Hypothesis sweeps of the DLLM2Rec loss functions against the reference blocks (faithful) and of the
fixed-mode properties: batch size 1, odd sizes, padding-only rows, extreme logits, float32/float64."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reimpl.dllm2rec import losses as L
from reimpl.dllm2rec.weights import candidates_in_topk, rd_weights, student_topk_set

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
I, SEQ = 23, 10


@pytest.fixture(scope="module")
def ref(refs):
    from parity.refs import dllm2rec

    return dllm2rec()


def batch(seed, B, dtype, scale, pad_rows):
    rs = np.random.RandomState(seed)
    seq = rs.randint(0, I, size=(B, SEQ))
    seq[:pad_rows] = I  # padding-only histories
    out = torch.tensor(rs.standard_normal((B, I)) * scale, dtype=dtype)
    return (torch.as_tensor(seq), torch.as_tensor(rs.randint(0, I, size=B)), out,
            torch.tensor(L.propensity_scores(rs.randint(0, I, size=100), I)), rs)


def same(a, b, dtype):
    rtol = 1e-10 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64), rtol=rtol,
                               atol=0 if dtype == torch.float64 else 1e-7, equal_nan=True)


common = dict(seed=st.integers(0, 10_000), B=st.sampled_from([1, 2, 3, 7, 16]),
              dtype=st.sampled_from([torch.float32, torch.float64]),
              scale=st.sampled_from([0.1, 3.0, 30.0]), pad_rows=st.integers(0, 2))


@SETTINGS
@given(**common)
def test_bce_dro_match_reference(ref, seed, B, dtype, scale, pad_rows):
    seq, target, out, ps, _ = batch(seed, B, dtype, scale, min(pad_rows, B))
    args = ref.default_args(batch_size=B)
    torch.manual_seed(seed)
    r_neg = ref.neg_sampling(args=args, item_num=I, device="cpu", seq=seq, target=target)["target_neg"]
    torch.manual_seed(seed)
    neg = L.sample_negatives(seq, target, I)
    assert torch.equal(r_neg, neg)
    rb = ref.bce(args=args, device="cpu", model_output=out, target=target, target_neg=neg,
                 bce_loss=torch.nn.BCEWithLogitsLoss())
    same(rb["loss"], L.bce_loss(out, target, neg), dtype)
    rd = ref.dro(args=args, model_output=out, target=rb["target"], ps=ps, loss=rb["loss"])
    d = L.dro_loss(out, target, ps)
    same(rd["loss_dro"].reshape(-1), d, dtype)
    same(rd["loss_all"], L.compose_loss(L.bce_loss(out, target, neg), d, None, 1.0, 0.0), dtype)
    fixed = L.dro_loss(out, target, ps, mode="fixed")
    assert torch.isfinite(fixed).all()
    finite = torch.isfinite(d)
    np.testing.assert_allclose(fixed[finite], d[finite], rtol=1e-6 if dtype == torch.float32 else 1e-9)


@SETTINGS
@given(K=st.sampled_from([1, 3, 10]), alpha=st.sampled_from([0.0, 1.0]), **common)
def test_rd_matches_reference(ref, seed, B, dtype, scale, pad_rows, K, alpha):
    seq, target, out, ps, rs = batch(seed, B, dtype, scale, min(pad_rows, B))
    if seed % 3 == 0:
        out = torch.round(out)  # ties in the student's top-K
    n = B + 3
    cand = torch.as_tensor(np.stack([rs.permutation(I)[:K + 1] for _ in range(n)]))
    conf = torch.as_tensor(rs.random_sample((n, K + 1)) * 4, dtype=torch.float32)
    sample = rs.choice(n, B, replace=False)
    neg = torch.as_tensor(rs.randint(0, I, size=(B, 1)))
    args = ref.default_args(batch_size=B, candidate_topk=K, alpha=alpha)
    r = ref.ranking_distill(args=args, device="cpu", model_output=out, target_neg=neg, ps=ps,
                            sample=pd.Index(sample), all_candidate=cand, llm_confidence=conf,
                            loss_all=torch.tensor(0.0))
    idx = torch.as_tensor(sample)
    w = rd_weights(out, cand[idx][:, :K], conf[idx][:, :K])
    same(r["weight"], w.weight, torch.float32)
    same(r["weight_com"], w.consistency, torch.float32)
    got = L.rd_loss(out, cand[idx][:, :K], neg, w.weight, ps, alpha)
    same(r["loss_all_rd"], got, dtype)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), B=st.sampled_from([1, 4, 9]), K=st.sampled_from([1, 5]),
       scale=st.sampled_from([1.0, 1e3]))
def test_fixed_rd_finite_and_weights_normalized(seed, B, K, scale):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(B, I, generator=g, dtype=torch.float64) * scale
    cand = torch.stack([torch.randperm(I, generator=g)[:K] for _ in range(B)])
    w = rd_weights(out, cand, torch.rand(B, K, generator=g))
    torch.testing.assert_close(w.weight.sum(1), torch.ones(B), rtol=1e-6, atol=1e-6)
    ps = torch.tensor(L.propensity_scores(np.arange(40) % I, I))
    neg = torch.randint(0, I, (B, 1), generator=g)
    assert torch.isfinite(L.rd_loss(out, cand, neg, w.weight, ps, 1.0, mode="fixed"))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.sampled_from([1, 3, 17]), n=st.sampled_from([4, 12, 40]),
       K=st.sampled_from([1, 3, 10]), levels=st.sampled_from([0, 3, 50]), nan=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_candidates_in_topk_is_the_full_selection(seed, B, n, K, levels, nan, dtype):
    """The screened membership equals main.py's full top-K selection (ties via few levels, NaNs, K >= I)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, n, generator=g, dtype=dtype)
    if levels:
        scores = (scores * levels).round()  # many ties, also at the cut
    if nan:
        scores[torch.rand(B, n, generator=g) < 0.1] = float("nan")
    cand = torch.stack([torch.randperm(n, generator=g)[:min(K, n)] for _ in range(B)])
    top = student_topk_set(scores, cand.size(1))
    full = (cand.unsqueeze(2) == top.unsqueeze(1)).any(2)
    assert torch.equal(candidates_in_topk(scores, cand), full)
    conf = torch.rand(cand.shape, generator=g)
    screened = rd_weights(scores, cand, conf, member=candidates_in_topk(scores, cand))
    assert torch.equal(screened.weight, rd_weights(scores, cand, conf).weight)


def test_rd_neg_term_is_shifted():
    """faithful uses log(sigmoid(1 - s)); fixed log(1 - sigmoid(s)) (DLLM2REC-RD-NEG-TERM)."""
    out = torch.zeros(1, 3, dtype=torch.float64)
    w = torch.ones(1, 1, dtype=torch.float64)
    cand, neg = torch.tensor([[0]]), torch.tensor([[1]])
    f = L.rd_loss(out, cand, neg, w, alpha=0.0)
    x = L.rd_loss(out, cand, neg, w, alpha=0.0, mode="fixed")
    assert abs(f.item() - (np.log(2) - np.log(1 / (1 + np.exp(-1))))) < 1e-12
    assert abs(x.item() - 2 * np.log(2)) < 1e-12


def test_rd_dro_broadcast_is_product_of_means():
    """faithful DRO part = mean(w) * mean(dro) (the [B,1]*[B] -> [B,B] broadcast)."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(5, I, generator=g, dtype=torch.float64)
    cand = torch.randint(0, I, (5, 2), generator=g)
    w = torch.rand(5, 2, generator=g, dtype=torch.float64)
    ps = torch.tensor(L.propensity_scores(np.arange(30) % I, I))
    neg = torch.zeros(5, 1, dtype=torch.long)
    dro = torch.stack([L.dro_loss(out, cand[:, k], ps) for k in range(2)], 1)
    no_dro = L.rd_loss(out, cand, neg, w, ps, 0.0)
    f = L.rd_loss(out, cand, neg, w, ps, 1.0) - no_dro
    torch.testing.assert_close(f, (w.mean(0) * dro.mean(0)).sum(), rtol=1e-12, atol=0)
    x = L.rd_loss(out, cand, neg, w, ps, 1.0, mode="fixed") - L.rd_loss(out, cand, neg, w, ps, 0.0, mode="fixed")
    torch.testing.assert_close(x, (w * dro).mean(0).sum(), rtol=1e-9, atol=0)


def test_bad_inputs_raise_clear_errors():
    seq = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="repeat"):
        L.negative_pool(seq, torch.zeros(2, dtype=torch.long), I)
    assert L.negative_pool(seq, torch.zeros(2, dtype=torch.long), I, mode="fixed").shape == (2, I)
    with pytest.raises(ValueError, match=r"\[B, I\]"):
        L.bce_loss(torch.zeros(I), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="ps must be"):
        L.dro_loss(torch.zeros(2, I), torch.zeros(2, dtype=torch.long), torch.ones(I + 1))
    with pytest.raises(ValueError, match="num_negtive_items"):
        L.sample_negatives(torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, dtype=torch.long), I, 2)
