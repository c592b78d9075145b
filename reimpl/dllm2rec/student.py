"""Builder of the DLLM2Rec student named by a config (``main.py:304-313``)."""

from __future__ import annotations

from torch import nn

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.models import GRU, Caser, SASRec


def build_student(cfg: DLLM2RecConfig, item_num: int, state_size: int) -> nn.Module:
    """The student, created with the reference's module/initialization order (seed before calling)."""
    common = dict(d_llm=cfg.d_llm, d_proj=cfg.d_proj, ed_weight=cfg.ed_weight, mode=cfg.mode)
    if cfg.model_name == "GRU":
        return GRU(cfg.hidden_factor, item_num, state_size, cfg.gru_layers, **common)
    if cfg.model_name == "SASRec":
        return SASRec(cfg.hidden_factor, item_num, state_size, cfg.dropout_rate, cfg.num_heads, **common)
    return Caser(cfg.hidden_factor, item_num, state_size, cfg.num_filters, cfg.filter_sizes,
                 cfg.dropout_rate, **common)
