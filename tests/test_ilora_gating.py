"""reimpl/ilora/router.py + gating.py: shapes, train/eval behaviour, batch size 1, quirks, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.ilora.gating import GATINGS, GatingConfig, build_gating
from reimpl.ilora.router import CVRouter, RouterConfig, build_router


def _router(mode="faithful", num_moe=4, seed=0):
    torch.manual_seed(seed)
    return build_router(RouterConfig(num_moe=num_moe, mode=mode))


def test_router_shapes_train_eval_b1():
    r = _router()
    x = torch.randn(5, 1, 64)
    r.train()
    g = r(x)
    assert g.shape == (5, 4)
    torch.testing.assert_close(g.sum(-1), torch.ones(5))
    assert r.bn1.num_batches_tracked.item() == 1 and not torch.equal(r.bn1.running_mean, torch.zeros(16))
    assert r(x[:1]).shape == (1, 4)                         # batch size 1 in train mode works
    r.eval()
    e = r(x)
    torch.testing.assert_close(r(x[2:3]), e[2:3])           # eval: rows independent of the batch
    torch.testing.assert_close(r(x[:, 0]), e)               # [B, H] accepted as [B, 1, H]


def test_router_train_mode_couples_rows():
    r = _router().train()
    x = torch.randn(4, 1, 64)
    assert not torch.allclose(r(x)[:1], r(x[:1]))           # batch statistics


def test_router_num_experts():
    assert _router("faithful", num_moe=3)(torch.randn(2, 64)).shape == (2, 4)   # ILORA-ROUTER-NUM-EXPERTS
    assert _router("fixed", num_moe=3)(torch.randn(2, 64)).shape == (2, 3)


def test_router_errors():
    with pytest.raises(ValueError, match=r"\[B, 1, H\]"):
        _router()(torch.randn(2, 3, 64))
    with pytest.raises(ValueError, match="share"):
        RouterConfig(kind="unshare")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        CVRouter()(torch.randn(2, 1, 8, 8))


def test_cvr_router():
    m = build_router(RouterConfig(kind="cvr", num_moe=3)).train()
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 3)
    m.eval()
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("kind", sorted(GATINGS))
def test_gating_shapes(kind):
    torch.manual_seed(0)
    g = build_gating(GatingConfig(kind=kind)).eval()
    y = g(torch.randn(3, 2, 64))
    assert y.shape == (3, 2, 4)
    torch.testing.assert_close(y.sum(-1), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"\[\.\.\., 64\]"):
        g(torch.randn(3, 32))


def test_gating_config_errors():
    with pytest.raises(ValueError, match="Standard"):
        GatingConfig(kind="Standard")
    with pytest.raises(ValueError, match="topk"):
        GatingConfig(kind="topK", topk=5)


def test_topk_resoftmax():
    torch.manual_seed(0)
    cfg = dict(kind="topK", topk=2)
    f, x = build_gating(GatingConfig(**cfg)), torch.randn(4, 64) * 5
    fx = build_gating(GatingConfig(**cfg, mode="fixed"))
    fx.load_state_dict(f.state_dict())
    p = torch.softmax(f.linear_layer(x), -1)
    v, i = p.topk(2, -1)
    torch.testing.assert_close(fx(x).gather(-1, i), v / v.sum(-1, keepdim=True))   # fixed: renormalized
    torch.testing.assert_close(f(x).gather(-1, i), torch.softmax(v, -1))            # faithful: re-softmaxed
    one = build_gating(GatingConfig(kind="topK"))
    assert set(one(x).unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("kind", ["Noise", "MLP_noise"])
def test_noise_in_eval(kind):
    torch.manual_seed(0)
    f = build_gating(GatingConfig(kind=kind)).eval()
    fx = build_gating(GatingConfig(kind=kind, mode="fixed")).eval()
    fx.load_state_dict(f.state_dict())
    x = torch.randn(3, 64)
    assert not torch.equal(f(x), f(x))                      # ILORA-GATING-NOISE-IN-EVAL
    assert torch.equal(fx(x), fx(x))
    fx.train()
    assert not torch.equal(fx(x), fx(x))


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 6), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       dtype=st.sampled_from([torch.float32, torch.float64]), train=st.booleans())
def test_router_finite_any_batch(b, scale, dtype, train):
    r = _router().to(dtype).train(train)
    g = r(torch.randn(b, 1, 64, dtype=dtype) * scale)
    assert g.shape == (b, 4) and g.dtype == dtype and torch.isfinite(g).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(b, dtype=dtype))


@pytest.mark.parametrize("name", ["router_share", "router_cvr", "gating_variants"])
def test_parity_against_reference(refs, name):
    from parity.cases import ilora_gating as case

    mk, ref, mine = {"router_share": (case.make_inputs_share, case.run_reference_share, case.run_reimpl_share),
                     "router_cvr": (case.make_inputs_cvr, case.run_reference_cvr, case.run_reimpl_cvr),
                     "gating_variants": (case.make_inputs_gating, case.run_reference_gating,
                                         case.run_reimpl_gating)}[name]
    inp = mk(11)
    a, b = ref(inp), mine(inp, "faithful")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-10, atol=0, err_msg=k)
