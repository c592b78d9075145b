"""Trainer hook points (reimpl/dllm2rec/train.py TrainHooks) and their composition (reimpl/extensions/hooks.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.student import build_student
from reimpl.dllm2rec.train import TrainHooks, batch_loss, train
from reimpl.extensions.hooks import ExtConfig, build_hooks
from tests.ext_helpers import tiny_data


def _cfg(**kw):
    base = dict(data="toy", batch_size=16, epoch=2, hidden_factor=64, d_llm=64, mode="fixed", candidate_topk=10)
    base.update(kw)
    return DLLM2RecConfig(**base)


def _strip(res):
    return [{k: v for k, v in h.items() if k not in ("train_s", "ext")} for h in res["history"]]


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_default_hooks_bit_identical(mode):
    cfg = _cfg(mode=mode, d_llm=4096 if mode == "faithful" else 64)
    d = tiny_data(d_llm=cfg.d_llm)
    ref = train(cfg, dataclasses.replace(d), progress=False, log=lambda m: None)
    for hooks in (TrainHooks(), build_hooks(ExtConfig(), d, candidate_topk=10, hidden=64)):
        got = train(cfg, dataclasses.replace(d), progress=False, log=lambda m: None, hooks=hooks)
        assert _strip(got) == _strip(ref)


def test_kd_weight_zero_equals_no_distillation_and_one_equals_none():
    cfg = _cfg()
    d = tiny_data()
    torch.manual_seed(0)
    model = build_student(cfg, d.item_num, d.seq_size)
    rows = np.arange(16)
    args = (torch.as_tensor(d.train_seq[rows]), torch.as_tensor(d.train_len[rows]),
            torch.as_tensor(d.train_next[rows]))
    kw = dict(ps=None, candidates=d.candidates[rows], confidence=d.confidence[rows], llm_table=None,
              item_num=d.item_num)
    cfg0 = dataclasses.replace(cfg, alpha=0.0)

    def run(c, **extra):
        g = torch.Generator().manual_seed(3)
        torch.manual_seed(5)  # dropout masks
        return batch_loss(model, c, *args, generator=g, **kw, **extra).loss
    assert torch.equal(run(cfg0, kd_weight=lambda o: torch.zeros(o.size(0))), run(dataclasses.replace(cfg0, lam=0.0)))
    assert torch.equal(run(cfg0, kd_weight=lambda o: torch.ones(o.size(0))), run(cfg0))
    assert not torch.equal(run(cfg0, kd_weight=lambda o: torch.rand(o.size(0))), run(cfg0))
    with pytest.raises(ValueError, match=r"\[B=16\]"):
        run(cfg0, kd_weight=lambda o: torch.ones(3))


@pytest.mark.parametrize("model_name", ["SASRec", "GRU", "Caser"])
def test_extra_loss_sees_sequence_representation(model_name):
    cfg = _cfg(model_name=model_name, epoch=1, lam=0.0, ed_weight=0.0)
    d = tiny_data()
    seen, head = [], torch.nn.Linear(64 if model_name != "Caser" else 64 + 16 * 3, 4)

    def extra(rows, h):
        seen.append((len(rows), tuple(h.shape), h.requires_grad))
        return head(h).pow(2).mean()
    before = head.weight.detach().clone()
    got = {}
    train(cfg, d, progress=False, log=lambda m: None,
          hooks=TrainHooks(extra_loss=extra, extra_params=list(head.parameters()),
                           on_end=lambda m: got.setdefault("m", m)))
    assert seen and all(s[0] == 16 and s[1][0] == 16 and s[2] for s in seen)
    assert not torch.equal(before, head.weight)       # the extra parameters are trained
    assert isinstance(got["m"], torch.nn.Module)


def test_uamd_and_selection_compose():
    d = tiny_data()
    u = np.linspace(0, 1, len(d.train_next))
    ext = ExtConfig.from_dict({"uamd": {"enabled": True, "fn": "exp", "scale": 1.0, "normalize": False},
                               "selection": {"policy": "gt_error", "output": "weight"}})
    h = build_hooks(ext, d, candidate_topk=10, hidden=64, uncertainty=u)
    rows = np.array([0, 5, 47])
    f = h.kd_weight(rows, torch.randn(3, d.item_num))
    from reimpl.extensions.selection import teacher_gt_error
    e = teacher_gt_error(d.candidates[rows, :10], d.confidence[rows, :10], torch.as_tensor(d.train_next[rows]))
    torch.testing.assert_close(f, torch.exp(-torch.as_tensor(u[rows])) * (1 - e))
    with pytest.raises(ValueError, match="N_train=48"):
        build_hooks(ext, d, candidate_topk=10, hidden=64, uncertainty=u[:5])
    with pytest.raises(ValueError, match="unknown field"):
        ExtConfig.from_dict({"uamd": {}, "foo": 1})
    res = train(_cfg(epoch=1), d, progress=False, log=lambda m: None, hooks=h)
    assert np.isfinite(res["history"][0]["loss"]) and "ext" in res["history"][0]


def test_the_permuted_uamd_control_keeps_the_weights_but_not_their_rows():
    d = tiny_data()
    n = len(d.train_next)
    u = np.linspace(0, 1, n)
    rows = np.arange(n)
    out = torch.randn(n, d.item_num)
    first = build_hooks(ExtConfig.from_dict({"uamd": {"enabled": True, "fn": "threshold"}}), d,
                        candidate_topk=10, hidden=64, uncertainty=u).kd_weight(rows, out)
    ctrl = build_hooks(ExtConfig.from_dict({"uamd": {"enabled": True, "fn": "threshold", "permute_seed": 0}}), d,
                       candidate_topk=10, hidden=64, uncertainty=u).kd_weight(rows, out)
    # the same multiset of weights (kept fraction and mass), dealt to other rows, the same way every run
    assert torch.equal(torch.sort(first).values, torch.sort(ctrl).values)
    assert not torch.equal(first, ctrl) and float(ctrl.mean()) == pytest.approx(1.0)
    again = build_hooks(ExtConfig.from_dict({"uamd": {"enabled": True, "fn": "threshold", "permute_seed": 0}}), d,
                        candidate_topk=10, hidden=64, uncertainty=u).kd_weight(rows, out)
    assert torch.equal(ctrl, again)
