"""The engine computes fixed mode's maths: on the same batch, weights, dropout masks and negatives its loss and
gradients equal ``reimpl.dllm2rec.train.batch_loss(mode="fixed")``'s (float64 1e-10, float32 1e-6), and its
rejection-sampled negatives follow the pool's uniform law (chi-square)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from reimpl.dllm2rec import losses as dlosses
from reimpl.dllm2rec import train as dtrain
from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.student import build_student
from reimpl.engine import forward, losses
from reimpl.engine.losses import ExpSquareSum
from reimpl.engine.sampling import sample_negatives
from reimpl.engine.train import EngineConfig

TOL = {torch.float64: 1e-10, torch.float32: 1e-6}


def _batch(seed, B, I, L, K, d_llm, pad=0):
    rs = np.random.RandomState(seed)
    lens = rs.randint(0, L + 1, size=B)
    seq = rs.randint(0, I, size=(B, L))
    seq[np.arange(L)[None] >= lens[:, None]] = I
    tgt = rs.randint(0, I, size=B)
    cand = np.stack([rs.permutation(I)[:K + 2] for _ in range(B)])
    conf = rs.random_sample((B, K + 2)) * 3
    ps = dlosses.propensity_scores(rs.randint(0, I, size=5 * I), I)
    table = torch.tensor(rs.standard_normal((I, d_llm)) * 0.5, dtype=torch.float32)
    table[:, d_llm - pad:] = 0  # a narrower teacher zero-padded to d_llm (the engine trims the zero columns)
    return (torch.as_tensor(seq), torch.as_tensor(lens), torch.as_tensor(tgt), torch.as_tensor(cand),
            torch.tensor(conf, dtype=torch.float32), torch.as_tensor(ps), table)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, scale: float) -> bool:
    # max-abs error relative to the tensor's own size, or to the gradient's global size for tensors whose true
    # gradient is 0 (e.g. linear_k.bias: softmax is invariant to it; both sides hold rounding noise)
    err = (a.double() - b.double()).abs().max().item()
    return err <= tol * max(b.abs().max().item(), 0.0) or err <= tol * scale


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(["SASRec", "GRU", "Caser"]), dtype=st.sampled_from([torch.float64, torch.float32]),
       lam=st.sampled_from([0.0, 0.8]), alpha=st.sampled_from([0.0, 1.0]), ed=st.sampled_from([0.0, 0.2]),
       beta=st.sampled_from([1.0, 0.7]), B=st.integers(2, 9), I=st.integers(14, 40), L=st.sampled_from([5, 10]),
       pad=st.sampled_from([0, 7]), hooked=st.booleans(), seed=st.integers(0, 10_000))
def test_loss_and_gradients_equal_fixed_mode(model, dtype, lam, alpha, ed, beta, B, I, L, pad, hooked, seed):
    if dtype == torch.float64:
        ed = 0.0  # fixed mode's lookup buffer is float32 (main.py:396): a float64 student cannot inject
    K = 4
    # SASRec: the engine draws dropout only where it is used (engine/forward.py), so masks cannot be matched
    # element for element; Caser runs the model's own forward and sees the same masks (GRU has no dropout)
    drop = 0.0 if model == "SASRec" else 0.1
    cfg = DLLM2RecConfig(model_name=model, mode="fixed", hidden_factor=8, d_llm=12, lam=lam, alpha=alpha,
                         ed_weight=ed, beta=beta, candidate_topk=K, num_filters=3, seed=seed, dropout_rate=drop,
                         num_heads=2 if seed % 2 else 1)
    seq, lens, tgt, cand, conf, ps, table = _batch(seed, B, I, L, K, cfg.d_llm, pad)
    torch.manual_seed(seed)
    ref = build_student(cfg, I, L).to(dtype)
    if model == "SASRec":
        # at initialisation the query mask sign(|sum(ln_1(x))|) is rounding noise (docs/reference-quirks.md,
        # SASRecModules_ori.py:77-80): an ulp from another summation order (the trimmed teacher columns) flips it;
        # a trained ln_1 has moved off bias 0, so the test moves it too
        with torch.no_grad():
            ref.ln_1.bias.copy_(torch.linspace(-0.3, 0.5, ref.ln_1.bias.numel(), dtype=dtype))
    eng = copy.deepcopy(ref)
    neg = sample_negatives(seq, tgt, I, torch.Generator().manual_seed(seed))

    # the extension hooks (reimpl.extensions): a per-row KD factor computed from the scores, and an extra loss
    # on the representation s_fc reads; fixed mode captures that representation with a pre-hook on s_fc
    # (the factor is a constant of the step, as UAMD's and the selection's are: its product with the float32
    # distillation weights would otherwise put a float32 rounding into a float64 gradient)
    kd_weight = (lambda out: torch.sigmoid(out[:, 0]).detach() + 0.5) if hooked else None
    extra = (lambda rep: 0.01 * (rep * rep).sum()) if hooked else None
    captured = []
    handle = ref.s_fc.register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
    orig = dlosses.sample_negatives
    dlosses.sample_negatives = lambda *a, **k: neg  # the same negatives on both sides
    try:
        torch.manual_seed(seed + 1)  # the same dropout masks on both sides
        r = dtrain.batch_loss(ref, cfg, seq, lens, tgt, ps=ps, candidates=cand, confidence=conf,
                              llm_table=table if ed else None, item_num=I, kd_weight=kd_weight)
    finally:
        dlosses.sample_negatives = orig
        handle.remove()
    if extra is not None:
        r.loss = r.loss + extra(captured[-1])
    r.loss.backward()

    obj = EngineConfig(cfg).objective_spec()
    torch.manual_seed(seed + 1)
    table_ext = forward.trim_table(forward.extend_table(table)) if ed else None
    if ed and pad:
        assert table_ext.size(1) == cfg.d_llm - pad
    rep = forward.representation(eng, seq, lens, table_ext)
    if losses.needs_full_scores(obj):
        e_loss, parts = losses.loss(eng.s_fc(rep), tgt, neg, obj, ps=ps, candidates=cand, confidence=conf,
                                    kd_weight=kd_weight)
    else:
        o = forward.head_at(eng, rep, torch.cat([tgt.view(-1, 1), neg], 1))
        e_loss = parts_main = losses.bce_at(o[:, :1], o[:, 1:])
        parts = {"main": parts_main}
    if extra is not None:
        e_loss = e_loss + extra(rep)
    e_loss.backward()

    tol = TOL[dtype]
    # fixed mode's BCEWithLogitsLoss returns a float32 value even for float64 scores (float32 labels,
    # main.py:411-412; its gradient is float64): the BCE term is compared at float32 precision, the rest of the
    # loss (DRO + distillation, float64 on both sides) at the dtype's tolerance
    bce_ref = r.parts["loss_bce"].item()
    assert abs(parts["main"].item() - bce_ref) <= TOL[torch.float32] * abs(bce_ref), (parts["main"].item(), bce_ref)
    rest, rest_ref = (e_loss - parts["main"]).item(), r.loss.item() - bce_ref
    assert abs(rest - rest_ref) <= tol * abs(r.loss.item()), (rest, rest_ref)
    if alpha:
        assert abs(parts["dro"].item() - r.parts["loss_dro"].mean().item()) <= tol * abs(parts["dro"].item())
    if lam:
        assert abs(parts["rd"].item() - r.parts["loss_rd"].item()) <= tol * abs(r.parts["loss_rd"].item())
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    scale = max(g.abs().max().item() for g in grads.values())
    for n, p in eng.named_parameters():
        if n not in grads:
            assert p.grad is None or not p.grad.any(), n
            continue
        assert p.grad is not None, n
        assert _close(p.grad, grads[n], tol, scale), (n, (p.grad - grads[n]).abs().max().item())


def test_exp_square_sum_gradcheck():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    ps = torch.rand(7, dtype=torch.float64, generator=g) + 0.5
    def lse(x, beta):  # S alone depends on the (constant-treated) shift m; log(S) + m does not
        s, m = ExpSquareSum.apply(x, ps, beta)
        return torch.log(s) + m

    for beta in (1.0, 0.6):
        assert torch.autograd.gradcheck(lambda x, b=beta: lse(x, b), (o,))
        assert torch.allclose(lse(o, beta), torch.logsumexp(o * o * ps / beta, 1, keepdim=True), rtol=1e-12)


def test_gru_recurrence_and_shifted_sums_gradcheck():
    """The two hand-written backwards against finite differences (float64), ragged lengths included."""
    from reimpl.engine.forward import _ShiftedSums
    from reimpl.engine.gru import GRURecurrence, packed_steps

    g = torch.Generator().manual_seed(0)
    H, L = 3, 5
    _, _, ks = packed_steps(torch.tensor([5, 1, 3, 3, 2]), L)
    assert ks == [5, 4, 3, 1, 1]
    gi = torch.randn(sum(ks), 3 * H, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3 * H, H, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3 * H, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda gi, w, b: GRURecurrence.apply(gi, ks, w, b), (gi, w, b))
    y = torch.randn(2, L, 2 * 2 + 3 * 1, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: _ShiftedSums.apply(y, (2, 3), (2, 1)), (y,))
    with pytest.raises(ValueError, match="lengths must lie in"):
        packed_steps(torch.tensor([0, 2]), L)


def test_softmax_objective_is_cross_entropy():
    g = torch.Generator().manual_seed(1)
    out, t = torch.randn(5, 11, dtype=torch.float64, generator=g), torch.randint(0, 11, (5,), generator=g)
    obj = losses.Objective("softmax", alpha=0.0, lam=0.0)
    l, _ = losses.loss(out, t, None, obj)
    assert torch.allclose(l, -torch.log_softmax(out, 1)[torch.arange(5), t].mean(), rtol=1e-12)


def test_rejection_sampler_distribution():
    """Each row's negatives are uniform over the items outside its history and target (chi-square, seeded)."""
    I, draws = 23, 6000
    rows = torch.tensor([[0, 1, 2, 3, 4], [5, 5, 9, I, I], [I, I, I, I, I]])
    tgt = torch.tensor([7, 9, 22])
    seq, t = rows.repeat_interleave(draws, 0), tgt.repeat_interleave(draws)
    neg = sample_negatives(seq, t, I, torch.Generator().manual_seed(123)).view(3, draws)
    for r in range(3):
        allowed = sorted(set(range(I)) - set(rows[r].tolist()) - {int(tgt[r])})
        counts = torch.bincount(neg[r], minlength=I)
        assert counts[[i for i in range(I) if i not in allowed]].sum() == 0
        p = stats.chisquare(counts[allowed].numpy()).pvalue
        assert p > 1e-3, (r, p)


def test_rejection_sampler_refuses_full_rows():
    with pytest.raises(ValueError, match="cover every item"):
        sample_negatives(torch.tensor([[0, 1, 2]]), torch.tensor([3]), 4)


def test_train_runs_every_hook():
    """The engine's loop calls the extension hooks where fixed mode's does (reimpl.dllm2rec.train.TrainHooks)."""
    from reimpl.data.protocols import to_student_data
    from reimpl.data.synthetic import synthetic_dataset
    from reimpl.dllm2rec.train import TrainHooks
    from reimpl.engine.train import train

    data = to_student_data(synthetic_dataset(n_train=300, n_val=20, n_test=20, item_num=30, seq_len=5, seed=0))
    n = len(data.train_next)
    rs = np.random.RandomState(0)
    data.candidates = torch.as_tensor(np.stack([rs.permutation(30)[:4] for _ in range(n)]))
    data.confidence = torch.rand(n, 4)
    calls = {"init": 0, "epoch": [], "end": 0, "kd_rows": 0}
    extra_w = torch.nn.Parameter(torch.ones(()))

    def kd_weight(rows, out):
        assert isinstance(rows, np.ndarray) and out.shape == (len(rows), 30)
        calls["kd_rows"] += len(rows)
        return torch.full((len(rows),), 0.5)

    hooks = TrainHooks(kd_weight=kd_weight, extra_loss=lambda rows, r: (extra_w * r).pow(2).mean(),
                       extra_params=[extra_w], init_model=lambda m: calls.__setitem__("init", calls["init"] + 1),
                       on_epoch_end=lambda m, e: calls["epoch"].append(e) or {"e": e},
                       on_end=lambda m: calls.__setitem__("end", calls["end"] + 1))
    cfg = EngineConfig(DLLM2RecConfig(model_name="SASRec", mode="fixed", epoch=2, hidden_factor=8, d_llm=12,
                                      ed_weight=0.0, candidate_topk=4, batch_size=64, seed=3))
    res = train(cfg, data, log=lambda m: None, hooks=hooks)
    assert calls["init"] == 1 and calls["end"] == 1 and calls["epoch"] == [1, 2]
    assert calls["kd_rows"] == 2 * (n // 64) * 64 and [h["ext"] for h in res["history"]] == [{"e": 1}, {"e": 2}]
    assert extra_w.item() != 1.0  # the extra parameter group is optimised
