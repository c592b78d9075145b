"""Collaborative embedding injection: the teacher's item embeddings added to the student's inputs.

Mirrors DLLM2Rec ``main.py:395-401`` (lookup of ``all_embeddings.pt`` rows for a batch of sequences,
zeros for the padding id) and ``main.py:67-69`` / ``:121-123`` / ``:177-179`` (projection by
``fc_4096_64`` and ``emb + ed_weight * projected``).

Memory: the lookup materializes ``[B, L, d_llm]`` for one batch only (the reference does the same per
batch, and for a whole evaluation split at once; :mod:`reimpl.dllm2rec.evaluate` batches rows instead).
"""

from __future__ import annotations

import torch
from torch import nn

# main.py:396 / :222 allocate the lookup buffer with torch.zeros' default dtype (float32) whatever the
# table's dtype: a float64 table is rounded to float32 here (reproduced).
LOOKUP_DTYPE = torch.float32


def lookup_llm_emb(seq: torch.Tensor, table: torch.Tensor, dtype: torch.dtype = LOOKUP_DTYPE
                   ) -> torch.Tensor:
    """Teacher embeddings of the items in ``seq``; zeros where the id is not a row of ``table``.

    seq: ``[B, L]`` long item ids (padding id ``item_num`` == ``table.size(0)``);
    table: ``[item_num, d_llm]``. Returns ``[B, L, d_llm]`` in ``dtype``.
    """
    if seq.dim() != 2:
        raise ValueError(f"lookup_llm_emb: seq must be [B, L], got shape {tuple(seq.shape)}")
    if table.dim() != 2:
        raise ValueError(f"lookup_llm_emb: table (all_embeddings.pt) must be [item_num, d_llm], "
                         f"got shape {tuple(table.shape)}")
    out = torch.zeros(seq.size(0), seq.size(1), table.size(1), dtype=dtype, device=seq.device)
    valid = seq < table.size(0)
    out[valid] = table[seq[valid]].to(dtype)
    return out


def inject(emb: torch.Tensor, llm_emb: torch.Tensor | None, proj: nn.Linear, ed_weight: float
           ) -> torch.Tensor:
    """``emb + ed_weight * proj(llm_emb)``; ``emb`` unchanged when ``llm_emb`` is None.

    emb: ``[B, L, H]``; llm_emb: ``[B, L, d_llm]``; proj: ``d_llm -> H``. Returns ``[B, L, H]``.
    """
    if llm_emb is None:
        return emb
    if llm_emb.shape[:2] != emb.shape[:2] or llm_emb.size(-1) != proj.in_features:
        raise ValueError(f"inject: llm_emb must be [B, L, d_llm] = [{emb.size(0)}, {emb.size(1)}, "
                         f"{proj.in_features}], got {tuple(llm_emb.shape)}")
    if proj.out_features != emb.size(-1):
        raise ValueError(f"inject: projection fc_4096_64 outputs {proj.out_features} features but the "
                         f"item embeddings have {emb.size(-1)} (the reference hard-codes 64: set "
                         "hidden_factor=64, or use mode='fixed' which sizes it to hidden_factor)")
    return emb + ed_weight * proj(llm_emb)
