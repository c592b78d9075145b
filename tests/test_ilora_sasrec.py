"""reimpl/ilora/sasrec.py: checkpoint reading, shapes, quirks (faithful vs fixed), parity against the reference."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.ilora.sasrec import SASRec, SASRecConfig, load_checkpoint, read_checkpoint

CKPTS = {"lastfm.pt": 4606, "steam.pt": 3581, "movielens.pt": 1682, "SASRec_steam.pt": 3581,
         "SASRec_movielens.pt": 1682}


def _model(mode="faithful", seed=0, **kw):
    cfg = SASRecConfig(**{"hidden_size": 16, "item_num": 30, "state_size": 6, "dropout": 0.2, **kw}, mode=mode)
    torch.manual_seed(seed)
    return SASRec(cfg).eval()


def _states(b, t, item_num, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, item_num, (b, t), generator=g)
    for i, n in enumerate(lens):
        s[i, n:] = item_num
    return s


@pytest.mark.parametrize("name", sorted(CKPTS))
def test_checkpoints_load(shared_dir, name):
    cfg, sd = read_checkpoint(shared_dir / "data" / "ilora" / "rec_model" / name)
    assert (cfg.hidden_size, cfg.item_num, cfg.state_size, cfg.num_heads, cfg.dropout) == (64, CKPTS[name], 10, 1, 0.1)
    m = load_checkpoint(shared_dir / "data" / "ilora" / "rec_model" / name)
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert torch.equal(m.item_embeddings.weight, sd["item_embeddings.weight"])


def test_restricted_unpickler_refuses_foreign_globals(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save(collections.Counter(a=1), bad)
    with pytest.raises(pickle.UnpicklingError, match="collections.Counter"):
        read_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")


def test_forward_batch_one_squeeze():
    s = _states(1, 6, 30, [4])
    faithful, fixed = _model("faithful"), _model("fixed")
    assert faithful(s, torch.tensor([4])).shape == (30,)          # ILORA-SASREC-SQUEEZE-B1
    assert fixed(s, torch.tensor([4])).shape == (1, 30)
    assert torch.equal(faithful(s, torch.tensor([4])), fixed(s, torch.tensor([4]))[0])


def test_len_zero():
    s = _states(2, 6, 30, [3, 0])
    m = _model("faithful")
    h = m.user_state(s, torch.tensor([3, 0]))
    assert torch.equal(h[1], m.log_feats(s)[1, -1])               # ILORA-SASREC-LEN0: wraps to position -1
    with pytest.raises(ValueError, match="len_states"):
        _model("fixed").user_state(s, torch.tensor([3, 0]))


@pytest.mark.parametrize("bad,match", [
    (lambda m: m.user_state(torch.zeros(2, 5, dtype=torch.long), torch.tensor([1, 1])), r"\[B, 6\]"),
    (lambda m: m.user_state(torch.full((1, 6), 31), torch.tensor([1])), "padding"),
    (lambda m: m.user_state(torch.zeros(1, 6, dtype=torch.long), torch.tensor([7])), "len_states"),
    (lambda m: m.user_state(torch.zeros(2, 6, dtype=torch.long), torch.tensor([1])), r"\[B\]=2"),
    (lambda m: m.user_state(torch.zeros(1, 6), torch.tensor([1])), "integer"),
    (lambda m: m.item_embed(torch.tensor([-1])), "ids"),
])
def test_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        bad(_model())


def test_dropout_override_and_modes():
    m = _model()
    s, lens = _states(3, 6, 30, [6, 2, 4]), torch.tensor([6, 2, 4])
    ev = m.user_state(s, lens)
    m.train()
    assert torch.equal(m.user_state(s, lens, dropout=False), ev)
    torch.manual_seed(1)
    a = m.user_state(s, lens)
    torch.manual_seed(1)
    b = m.user_state(s, lens)
    assert torch.equal(a, b) and not torch.allclose(a, ev)
    assert m.cacul_h(s, lens, dropout=False).shape == (3, 1, 16)
    assert torch.equal(m.cacu_x(s), m.item_embeddings(s))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 5), heads=st.sampled_from([1, 2, 4]), dtype=st.sampled_from([torch.float32, torch.float64]),
       data=st.data())
def test_rows_independent_and_finite(b, heads, dtype, data):
    lens = data.draw(st.lists(st.integers(1, 6), min_size=b, max_size=b))
    pad_only = data.draw(st.booleans())
    m = _model(num_heads=heads).to(dtype)
    s = _states(b, 6, 30, lens, seed=b)
    if pad_only:
        s[0] = 30   # a padding-only row (len 1): every key masked -> uniform attention, still finite
    lens_t = torch.tensor(lens)
    h = m.user_state(s, lens_t)
    assert h.shape == (b, 16) and h.dtype == dtype and torch.isfinite(h).all()
    single = torch.cat([m.user_state(s[i:i + 1], lens_t[i:i + 1]) for i in range(b)])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(single, h, rtol=tol, atol=tol)
    scores = _model("fixed", num_heads=heads).to(dtype)(s, lens_t)
    assert scores.shape == (b, 30)


def test_parity_random_case(refs):
    from parity.cases import ilora_sasrec as case

    inp = case.make_inputs_random(7)
    ref, mine = case.run_reference_random(inp), case.run_reimpl_random(inp, "faithful")
    for k in ref:
        np.testing.assert_allclose(mine[k].numpy(), ref[k].numpy(), rtol=1e-10, atol=0)


def test_parity_lastfm_checkpoint(refs, shared_dir):
    from parity.cases import ilora_sasrec as case

    inp = case.make_inputs_lastfm(3)
    ref, mine = case.run_reference_lastfm(inp), case.run_reimpl_lastfm(inp, "faithful")
    for k in ref:
        np.testing.assert_allclose(mine[k].numpy(), ref[k].numpy(), rtol=1e-10, atol=0)
