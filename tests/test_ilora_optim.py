"""Optimizer groups and the warmup-cosine schedule (reimpl/ilora/optim.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reimpl.ilora.optim import (
    OptimConfig,
    WarmupCosineSchedule,
    build_optimizer,
    cosine_lr,
    describe_groups,
    max_steps,
    param_groups,
    warmup_lr,
)


def _parts():
    torch.manual_seed(0)
    proj, router = nn.Linear(3, 4), nn.Linear(4, 2)
    llm = nn.ModuleDict({"base": nn.Linear(4, 4), "lora_A": nn.Linear(4, 2, bias=False),
                         "gating": nn.Linear(4, 2, bias=False)})
    llm["base"].requires_grad_(False)
    return proj, router, llm


def test_groups_faithful_and_fixed():
    proj, router, llm = _parts()
    cfg = OptimConfig(lr=1e-3, weight_decay=1e-5)
    g = describe_groups(build_optimizer(param_groups(proj.named_parameters(), router.named_parameters(),
                                                     llm.named_parameters(), cfg)))
    assert [x["lr"] for x in g] == [1e-3, pytest.approx(3e-4), 1e-3]
    assert [x["weight_decay"] for x in g] == [1e-5, 1e-5, 0.0]
    assert g[2]["n_tensors"] == 3 and g[2]["trainable_names"] == ["lora_A.weight"]  # base kept, gating dropped
    cfg.mode = "fixed"
    g = describe_groups(build_optimizer(param_groups(proj.named_parameters(), router.named_parameters(),
                                                     llm.named_parameters(), cfg)))
    assert g[2]["n_tensors"] == 1 and g[2]["weight_decay"] == 1e-5


def test_max_steps_and_schedule_fixed_case():
    assert max_steps(50_800, 5, 16, 8) == 1984
    opt = build_optimizer([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0} for _ in range(3)])
    s = WarmupCosineSchedule.from_config(opt, OptimConfig(lr=7e-4, lr_decay_min_lr=7e-6, lr_warmup_start_lr=7e-6),
                                         max_step=200)
    assert s.warmup_steps == 10
    assert s.step(0, 0, 200) == [7e-6, pytest.approx(2.1e-6), 7e-6]
    assert s.step(10, 0, 200)[0] == pytest.approx(7e-4)
    assert s.step(200, 4, 200)[0] == pytest.approx(7e-6)
    assert s.step(3, 1, 200)[0] == pytest.approx(cosine_lr(-7, 190, 7e-4, 7e-6))  # no warmup after epoch 0
    with pytest.raises(ValueError, match="exceed"):
        WarmupCosineSchedule.from_config(opt, OptimConfig(), max_step=1).step(5, 1, 0)
    sd = s.state_dict()
    s2 = WarmupCosineSchedule.from_config(opt, OptimConfig(), max_step=20)
    s2.load_state_dict(sd)
    assert s2.lrs_at(5, 0, 200) == s.lrs_at(5, 0, 200)


@settings(max_examples=50, deadline=None)
@given(step=st.integers(0, 500), epoch=st.integers(0, 3), max_step=st.integers(21, 600))
def test_schedule_matches_reference(refs, step, epoch, max_step):
    from parity.refs import ilora

    ref = ilora()
    opt = build_optimizer([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0} for _ in range(3)])
    cfg = OptimConfig()
    ours = WarmupCosineSchedule.from_config(opt, cfg, max_step)
    theirs = ref.LinearWarmupCosineLRScheduler(opt, min_lr_list=ours.min_lr, init_lr_list=ours.init_lr,
                                               warmup_steps=ours.warmup_steps,
                                               warmup_start_lr_list=ours.warmup_start_lr)
    theirs.step(step, epoch, max_step)
    expected = [g["lr"] for g in opt.param_groups]
    assert ours.lrs_at(step, epoch, max_step) == expected


def test_warmup_lr_bounds():
    assert warmup_lr(0, 1.0, 2.0, 0) == 1.0
    assert warmup_lr(10, 1.0, 2.0, 5) == 2.0
    assert math.isclose(cosine_lr(0, 10, 2.0, 1.0), 2.0)
