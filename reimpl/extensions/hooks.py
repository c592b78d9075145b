"""Compose UAMD, sample selection and RDR into the trainer's hook points from one config.

:func:`build_hooks` returns a :class:`reimpl.dllm2rec.train.TrainHooks`; with every extension off it
returns hooks whose only effect is the per-epoch student metrics (``on_epoch_end``), which run in eval
mode and draw no random numbers, so the training trajectory equals ``train(cfg, data)`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.train import DLLM2RecData, TrainHooks
from reimpl.extensions.metrics import evaluate_student
from reimpl.extensions.rdr import RDRConfig, RDRHead, load_vector_store
from reimpl.extensions.selection import SelectionConfig, mean_gt_weight, selection_factor
from reimpl.extensions.uamd import UAMDConfig, permute_weights, read_uncertainty, uncertainty_weight


@dataclass
class ExtConfig:
    uamd: UAMDConfig = field(default_factory=UAMDConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    rdr: RDRConfig = field(default_factory=RDRConfig)
    ece_bins: int = 15
    metrics_each_epoch: bool = True

    @classmethod
    def from_dict(cls, d: dict | None) -> "ExtConfig":
        d = dict(d or {})
        unknown = set(d) - {"uamd", "selection", "rdr", "ece_bins", "metrics_each_epoch"}
        if unknown:
            raise ValueError(f"ExtConfig: unknown field(s) {sorted(unknown)}")
        return cls(uamd=UAMDConfig(**d.pop("uamd", {})), selection=SelectionConfig(**d.pop("selection", {})),
                   rdr=RDRConfig(**d.pop("rdr", {})), **d)


def build_hooks(ext: ExtConfig, data: DLLM2RecData, *, candidate_topk: int, hidden: int,
                tocf_dir: str | Path | None = None, uncertainty: np.ndarray | None = None) -> TrainHooks:
    """Hooks for one student run. ``uncertainty`` ``[N]`` overrides reading ``tocf_dir``'s file."""
    n = len(data.train_next)
    hooks = TrainHooks()
    u_w = None
    if ext.uamd.enabled:
        if uncertainty is None:
            if tocf_dir is None:
                raise ValueError("build_hooks: UAMD needs tocf_dir (uncertainty_train.txt) or uncertainty=[N]")
            uncertainty = read_uncertainty(tocf_dir, n)
        if np.asarray(uncertainty).shape != (n,):
            raise ValueError(f"build_hooks: uncertainty must be [N_train={n}], got {np.asarray(uncertainty).shape}")
        u_w = uncertainty_weight(uncertainty, ext.uamd.fn, ext.uamd.scale, ext.uamd.normalize)
        if ext.uamd.permute_seed is not None:
            u_w = permute_weights(u_w, ext.uamd.permute_seed)
    sel = ext.selection
    if u_w is not None or sel.policy != "all":
        if data.candidates is None:
            raise ValueError("build_hooks: UAMD / sample selection act on the KD term and need the teacher "
                             "ranking (lam != 0)")
        if sel.policy == "gt_mean" and sel.value is None:   # once, over every train row
            sel.value = mean_gt_weight(data.candidates[:, :candidate_topk], data.confidence[:, :candidate_topk],
                                       torch.as_tensor(data.train_next))

        def kd_weight(rows: np.ndarray, out: torch.Tensor) -> torch.Tensor:
            idx = torch.as_tensor(rows)
            f = torch.ones(len(rows), dtype=torch.float64)
            if u_w is not None:
                f = f * u_w[idx]
            if sel.policy != "all":
                f = f * selection_factor(sel, out, data.candidates[idx, :candidate_topk],
                                         data.confidence[idx, :candidate_topk],
                                         torch.as_tensor(data.train_next[rows]))
            return f
        hooks.kd_weight = kd_weight
    if ext.rdr.enabled:
        if not ext.rdr.store:
            raise ValueError("build_hooks: RDRConfig.store (vector store folder) is empty")
        vec, has = load_vector_store(ext.rdr.store, n)
        head = RDRHead(hidden, vec, has, ext.rdr.lam, ext.rdr.proj_seed)
        hooks.extra_loss = head
        hooks.extra_params = list(head.parameters())
    if ext.metrics_each_epoch:
        def on_epoch_end(model, epoch):
            return {s: evaluate_student(model, getattr(data, s), data.llm_table, n_bins=ext.ece_bins,
                                        return_rows=s == "test") for s in ("val", "test")}
        hooks.on_epoch_end = on_epoch_end
    return hooks


def repr_width(cfg: DLLM2RecConfig, item_num: int, seq_size: int) -> int:
    """Width of the student's sequence representation (the input of its output layer ``s_fc``, what the
    RDR head projects): ``hidden_factor`` for SASRec/GRU, ``hidden_factor + num_filters * len(filter_sizes)``
    for Caser. Read off a throw-away student built under a forked RNG (the run's RNG stream is untouched)."""
    from reimpl.dllm2rec.student import build_student

    with torch.random.fork_rng(devices=[]):
        return int(build_student(cfg, item_num, seq_size).s_fc.in_features)
