"""iLoRA trainable parameters, optimizer groups and the warmup-cosine LR schedule."""

from __future__ import annotations

import contextlib
import io
import types

import numpy as np

from parity.case import Case, register
from parity.cases.ilora_teacher_step import build_reference, build_reimpl_teacher

MAX_STEP = 200  # steps of the simulated run (warmup = 200 // 20 = 10)


def make_inputs(seed: int) -> dict:
    # (global_step, epoch) pairs covering warmup, the epoch-0 boundary, cosine and the last step
    steps = [0, 1, 5, 9, 10, 11, 40, 99, 100, 150, 199, 200]
    epochs = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 4]
    # step 3 in epoch 1: the reference skips warmup outside epoch 0 (cosine of a negative step)
    steps.append(3)
    epochs.append(1)
    return {"lr": 7e-4, "lr_decay_min_lr": 7e-6, "lr_warmup_start_lr": 7e-6, "weight_decay": 1e-5,
            "max_step": MAX_STEP, "steps": steps, "epochs": epochs}


def _describe(optimizer, names_by_id) -> list[dict]:
    from reimpl.ilora.optim import describe_groups

    names = [[names_by_id.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups]
    return describe_groups(optimizer, names)


def _schedule(sched, inputs) -> np.ndarray:
    return np.array([list(_lrs(sched, s, e, inputs["max_step"]))
                     for s, e in zip(inputs["steps"], inputs["epochs"])], dtype=np.float64)


def _lrs(sched, step, epoch, max_step):
    sched.step(step, epoch, max_step)
    return [g["lr"] for g in sched.optimizer.param_groups]


def run_reference(inputs: dict) -> dict:
    _, m = build_reference()
    m.hparams.lr = inputs["lr"]
    m.hparams.lr_decay_min_lr = inputs["lr_decay_min_lr"]
    m.hparams.lr_warmup_start_lr = inputs["lr_warmup_start_lr"]
    m.hparams.weight_decay = inputs["weight_decay"]
    # configure_optimizers reads self.trainer.max_steps (model_interface.py:247): a stand-in trainer
    m._trainer = types.SimpleNamespace(max_steps=inputs["max_step"])
    with contextlib.redirect_stdout(io.StringIO()):
        opt = m.configure_optimizers()
    names = {id(p): n for n, p in m.named_parameters()}
    groups = _describe(opt, names)
    trainable = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    return {"trainable": trainable, "groups": groups, "warmup_steps": int(m.scheduler.warmup_steps),
            "lrs": _schedule(m.scheduler, inputs)}


def run_reimpl(inputs: dict, mode: str) -> dict:
    from reimpl.ilora.optim import OptimConfig, WarmupCosineSchedule, build_optimizer, param_groups
    from reimpl.ilora.teacher import reference_key, trainable_names

    t = build_reimpl_teacher(mode)
    cfg = OptimConfig(lr=inputs["lr"], weight_decay=inputs["weight_decay"],
                      lr_decay_min_lr=inputs["lr_decay_min_lr"], lr_warmup_start_lr=inputs["lr_warmup_start_lr"],
                      mode=mode)
    opt = build_optimizer(param_groups(t.projector.named_parameters(), t.router.named_parameters(),
                                       t.llama_model.named_parameters(), cfg))
    sched = WarmupCosineSchedule.from_config(opt, cfg, inputs["max_step"])
    names = {id(p): reference_key(n) for n, p in t.named_parameters()}
    return {"trainable": trainable_names(t), "groups": _describe(opt, names),
            "warmup_steps": int(sched.warmup_steps), "lrs": _schedule(sched, inputs)}


register(Case(
    name="ilora.trainable",
    system="iLoRA",
    component="trainable",
    title="Trainable tensors, Adam parameter groups and the warmup-cosine schedule",
    ref_lines=["model/model_interface.py:222-287", "optims.py:3-42", "model/peft/tuners/moelora.py:554-569"],
    reimpl_symbol="reimpl/ilora/optim.py:param_groups, WarmupCosineSchedule",
    seed=2024, dtype="float64",
    make_inputs=make_inputs, run_reference=run_reference, run_reimpl=run_reimpl,
    deviations=["ILORA-OPTIM-LLM-NO-WD", "ILORA-MOELORA-DEAD-GATING"],
    needs=["shared"],
    description="MInterface around the tiny Llama with train_lastfm.sh hparams; configure_optimizers with a "
                "stand-in trainer (max_steps 200). Structural outputs: the sorted names of all trainable tensors "
                "and, per Adam group, lr, weight_decay, tensor/element counts and trainable names (deepdiff). "
                "Numeric: the per-group learning rates the scheduler sets over warmup, the epoch boundary and "
                "the cosine decay.",
))
