"""Optimizer parameter groups and the linear-warmup + cosine LR schedule of the iLoRA teacher.

Mirrors iLoRA @ 28e47371:

* ``MInterface.configure_optimizers`` (model/model_interface.py:222-287): one Adam with three groups
    0. projector parameters, ``lr``, ``weight_decay``
    1. router parameters, ``lr * 0.3``, ``weight_decay``
    2. every LLM parameter whose name lacks ``"gating"``, ``lr``, **no** weight_decay key
       (so Adam's default 0 applies: the LoRA experts get no weight decay, the others do).
  The group-2 list also holds the frozen base weights (requires_grad False): Adam skips them since
  their ``.grad`` stays None; the per-layer ``gating`` modules of the vendored MoE-LoRA (trainable,
  but never called because the gate comes from the router) are left out of every group.
  ``max_step // 20`` warmup steps; init/min/warmup-start LR lists are scaled by (1, 0.3, 1).
* ``LinearWarmupCosineLRScheduler`` (optims.py:3-42), stepped by ``training_step`` (l.135-136) at
  the start of *every micro-batch* with ``(trainer.global_step, current_epoch, trainer.max_steps)``;
  warmup applies only while ``cur_epoch == 0``.
* ``main.py:92``: ``max_steps = len(trainset) * max_epochs // (accumulate_grad_batches * batch_size)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch

from reimpl.deviations import check_mode
from reimpl.ilora import deviations_teacher  # noqa: F401  (declares ILORA-OPTIM-LLM-NO-WD)

GROUP_NAMES = ("projector", "router", "llm")
GROUP_LR_SCALE = (1.0, 0.3, 1.0)  # model_interface.py:228-232 and the *_list scalings l.253-267


@dataclass
class OptimConfig:
    """Defaults: main.py argparse + train_lastfm.sh (lr 7e-4, warmup start / min 7e-6)."""
    lr: float = 7e-4
    weight_decay: float = 1e-5
    lr_scheduler: str | None = "cosine"
    lr_decay_min_lr: float = 7e-6
    lr_warmup_start_lr: float = 7e-6
    warmup_divisor: int = 20                # warmup_steps = max_step // 20 (l.248)
    mode: str = "faithful"


def max_steps(n_train: int, max_epochs: int, accumulate_grad_batches: int, batch_size: int) -> int:
    """main.py:92 (note: counts ``len(trainset)``, not the drop_last batches actually seen)."""
    return n_train * max_epochs // (accumulate_grad_batches * batch_size)


def param_groups(projector: Iterable[tuple[str, torch.nn.Parameter]],
                 router: Iterable[tuple[str, torch.nn.Parameter]],
                 llm: Iterable[tuple[str, torch.nn.Parameter]],
                 cfg: OptimConfig) -> list[dict]:
    """Adam param groups ``[projector, router, llm-without-gating]`` (model_interface.py:227-236).

    Each group dict also carries ``"name"`` and ``"param_names"`` (ignored by torch.optim) so the
    structure can be compared with the reference's.
    """
    check_mode(cfg.mode)
    proj = list(projector)
    rout = list(router)
    llm_kept = [(n, p) for n, p in llm if "gating" not in n]
    if cfg.mode == "fixed":  # ILORA-OPTIM-LLM-NO-WD: only trainable tensors, with weight decay
        llm_kept = [(n, p) for n, p in llm_kept if p.requires_grad]
    groups = [
        {"name": "projector", "params": [p for _, p in proj], "param_names": [n for n, _ in proj],
         "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"name": "router", "params": [p for _, p in rout], "param_names": [n for n, _ in rout],
         "lr": cfg.lr * 0.3, "weight_decay": cfg.weight_decay},
        # faithful: no weight_decay key -> Adam default 0 (l.232)
        {"name": "llm", "params": [p for _, p in llm_kept], "param_names": [n for n, _ in llm_kept],
         "lr": cfg.lr},
    ]
    if cfg.mode == "fixed":
        groups[2]["weight_decay"] = cfg.weight_decay
    return groups


def build_optimizer(groups: list[dict]) -> torch.optim.Adam:
    return torch.optim.Adam(groups)


def describe_groups(optimizer: torch.optim.Optimizer, names: list[list[str]] | None = None) -> list[dict]:
    """JSON-able structure of an optimizer's groups: lr, weight_decay, #tensors, #elements,
    #trainable elements and (when known) the parameter names, for deepdiff against the reference."""
    out = []
    for i, g in enumerate(optimizer.param_groups):
        ps = g["params"]
        d = {"lr": float(g["lr"]), "weight_decay": float(g["weight_decay"]),
             "n_tensors": len(ps), "numel": int(sum(p.numel() for p in ps)),
             "trainable_numel": int(sum(p.numel() for p in ps if p.requires_grad)),
             "n_trainable_tensors": int(sum(1 for p in ps if p.requires_grad))}
        pn = g.get("param_names") if names is None else names[i]
        if pn is not None:
            d["trainable_names"] = sorted(n for n, p in zip(pn, ps) if p.requires_grad)
        out.append(d)
    return out


def warmup_lr(step: int, start_lr: float, max_lr: float, warmup_steps: int) -> float:
    """optims.py:33-36: linear from ``start_lr`` to ``max_lr``, capped at ``max_lr``."""
    return min(max_lr, start_lr + (max_lr - start_lr) * step / max(warmup_steps, 1))


def cosine_lr(step: int, max_step: int, init_lr: float, min_lr: float) -> float:
    """optims.py:28-31."""
    return (init_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * step / max_step)) + min_lr


@dataclass
class WarmupCosineSchedule:
    """Per-group LR schedule (optims.py:3-42). ``step(global_step, epoch, max_step)`` sets each
    group's lr; call it before every micro-batch, like ``training_step`` does."""
    optimizer: torch.optim.Optimizer
    init_lr: list[float]
    min_lr: list[float]
    warmup_start_lr: list[float]
    warmup_steps: int
    last_lrs: list[float] = field(default_factory=list)

    @classmethod
    def from_config(cls, optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_step: int
                    ) -> "WarmupCosineSchedule":
        if cfg.lr_scheduler != "cosine":
            raise ValueError(f"OptimConfig.lr_scheduler: only 'cosine' is supported (as in the reference), "
                             f"got {cfg.lr_scheduler!r}")
        n = len(optimizer.param_groups)
        scale = GROUP_LR_SCALE if n == 3 else (1.0,) * n
        return cls(optimizer,
                   init_lr=[cfg.lr * s for s in scale],
                   min_lr=[cfg.lr_decay_min_lr * s for s in scale],
                   warmup_start_lr=[cfg.lr_warmup_start_lr * s for s in scale],
                   warmup_steps=max_step // cfg.warmup_divisor)

    def lrs_at(self, cur_step: int, cur_epoch: int, max_step: int) -> list[float]:
        out = []
        for i in range(len(self.optimizer.param_groups)):
            if cur_step < self.warmup_steps and cur_epoch == 0:  # warmup only in epoch 0
                out.append(warmup_lr(cur_step, self.warmup_start_lr[i], self.init_lr[i], self.warmup_steps))
            else:
                if max_step - self.warmup_steps <= 0:
                    raise ValueError(f"WarmupCosineSchedule: max_step={max_step} must exceed warmup_steps="
                                     f"{self.warmup_steps} (the reference divides by their difference)")
                out.append(cosine_lr(cur_step - self.warmup_steps, max_step - self.warmup_steps,
                                     self.init_lr[i], self.min_lr[i]))
        return out

    def step(self, cur_step: int, cur_epoch: int, max_step: int) -> list[float]:
        lrs = self.lrs_at(cur_step, cur_epoch, max_step)
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self.last_lrs = lrs
        return lrs

    def state_dict(self) -> dict:
        return {"init_lr": self.init_lr, "min_lr": self.min_lr, "warmup_start_lr": self.warmup_start_lr,
                "warmup_steps": self.warmup_steps, "last_lrs": self.last_lrs}

    def load_state_dict(self, sd: dict) -> None:
        for k in ("init_lr", "min_lr", "warmup_start_lr", "warmup_steps", "last_lrs"):
            setattr(self, k, sd[k])
