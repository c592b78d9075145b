"""Collaborative embedding injection: the teacher's item embeddings added to the student's inputs.

Mirrors DLLM2Rec ``main.py:395-401`` (lookup of ``all_embeddings.pt`` rows for a batch of sequences,
zeros for the padding id) and ``main.py:67-69`` / ``:121-123`` / ``:177-179`` (projection by
``fc_4096_64`` and ``emb + ed_weight * projected``).

Memory: the lookup materializes ``[B, L, d_llm]`` for one batch only (the reference does the same per
batch, and for a whole evaluation split at once; :mod:`reimpl.dllm2rec.evaluate` batches rows instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# main.py:396 / :222 allocate the lookup buffer with torch.zeros' default dtype (float32) whatever the
# table's dtype: a float64 table is rounded to float32 here (reproduced).
LOOKUP_DTYPE = torch.float32


def _check_lookup(seq: torch.Tensor, table: torch.Tensor) -> None:
    if seq.dim() != 2:
        raise ValueError(f"lookup_llm_emb: seq must be [B, L], got shape {tuple(seq.shape)}")
    if table.dim() != 2:
        raise ValueError(f"lookup_llm_emb: table (all_embeddings.pt) must be [item_num, d_llm], "
                         f"got shape {tuple(table.shape)}")


def lookup_llm_emb(seq: torch.Tensor, table: torch.Tensor, dtype: torch.dtype = LOOKUP_DTYPE
                   ) -> torch.Tensor:
    """Teacher embeddings of the items in ``seq``; zeros where the id is not a row of ``table``.

    seq: ``[B, L]`` long item ids (padding id ``item_num`` == ``table.size(0)``);
    table: ``[item_num, d_llm]``. Returns ``[B, L, d_llm]`` in ``dtype``.
    """
    _check_lookup(seq, table)
    valid = seq < table.size(0)
    # one gather (padding ids read row 0) then zero those rows: the same values as filling a zero
    # buffer and copying the valid rows into it (main.py:396-401), in one pass over [B, L, d_llm]
    out = table[torch.where(valid, seq, 0)].to(dtype)
    return out.masked_fill_(~valid.unsqueeze(-1), 0)


@dataclass(frozen=True)
class ProjectedLLMEmb:
    """Teacher embeddings already passed through the student's ``fc_4096_64``: ``values`` ``[B, L, H]``.

    Accepted by :func:`inject` in place of ``llm_emb`` ``[B, L, d_llm]`` when ``proj`` is the module the
    student would apply (checked). Built by :func:`lookup_projected` for evaluation, where the weights
    are fixed: gathering rows of ``proj(table)`` is ~d_llm / H times less work than projecting the
    gathered ``[B, L, d_llm]`` rows, with the same values when the matmul's row results do not depend
    on how many rows it is given (see :func:`projection_matches`).
    """
    values: torch.Tensor
    proj: nn.Module


def project_table(table: torch.Tensor, proj: nn.Linear, dtype: torch.dtype = LOOKUP_DTYPE,
                  chunk: int = 4096) -> torch.Tensor:
    """``[item_num + 1, H]``: ``proj`` of every table row (in ``dtype``, as the lookup buffer) and, last,
    ``proj`` of the zero row the lookup gives the padding id. Call under ``torch.no_grad()``."""
    if table.dim() != 2:
        raise ValueError(f"project_table: table (all_embeddings.pt) must be [item_num, d_llm], "
                         f"got shape {tuple(table.shape)}")
    n = table.size(0)
    size = -(-n // max(1, -(-n // chunk)))  # equal chunks: no tiny tail matrix for the BLAS
    rows = [proj(table[i:i + size].to(dtype)) for i in range(0, n, size)]
    rows.append(proj(torch.zeros(1, table.size(1), dtype=dtype, device=table.device)))
    return torch.cat(rows)


def lookup_projected(seq: torch.Tensor, ptable: torch.Tensor, proj: nn.Module) -> ProjectedLLMEmb:
    """Rows of :func:`project_table`'s ``ptable`` ``[item_num + 1, H]`` for ``seq`` ``[B, L]`` (ids
    ``>= item_num`` read the padding row). Negative ids are refused (the plain lookup wraps them)."""
    if seq.dim() != 2:
        raise ValueError(f"lookup_projected: seq must be [B, L], got shape {tuple(seq.shape)}")
    if seq.numel() and int(seq.min()) < 0:
        raise ValueError("lookup_projected: negative item ids; use lookup_llm_emb")
    n = ptable.size(0) - 1
    return ProjectedLLMEmb(ptable[seq.clamp(max=n)], proj)


def projection_matches(seq: torch.Tensor, table: torch.Tensor, ptable: torch.Tensor, proj: nn.Module,
                       dtype: torch.dtype = LOOKUP_DTYPE) -> bool:
    """Whether :func:`lookup_projected` gives bit for bit ``proj(lookup_llm_emb(seq, table))`` on ``seq``
    (the BLAS in use may sum a row differently depending on the matrix size or threads)."""
    return torch.equal(lookup_projected(seq, ptable, proj).values, proj(lookup_llm_emb(seq, table, dtype)))


def inject(emb: torch.Tensor, llm_emb: torch.Tensor | None, proj: nn.Linear, ed_weight: float
           ) -> torch.Tensor:
    """``emb + ed_weight * proj(llm_emb)``; ``emb`` unchanged when ``llm_emb`` is None.

    emb: ``[B, L, H]``; llm_emb: ``[B, L, d_llm]`` (or a :class:`ProjectedLLMEmb` already through
    ``proj``); proj: ``d_llm -> H``. Returns ``[B, L, H]``.
    """
    if llm_emb is None:
        return emb
    if isinstance(llm_emb, ProjectedLLMEmb):
        if llm_emb.proj is not proj or llm_emb.values.shape != emb.shape:
            raise ValueError(f"inject: projected teacher embeddings must come from this student's "
                             f"fc_4096_64 and be [B, L, H] = {tuple(emb.shape)}, got "
                             f"{tuple(llm_emb.values.shape)}")
        return emb + ed_weight * llm_emb.values
    if llm_emb.shape[:2] != emb.shape[:2] or llm_emb.size(-1) != proj.in_features:
        raise ValueError(f"inject: llm_emb must be [B, L, d_llm] = [{emb.size(0)}, {emb.size(1)}, "
                         f"{proj.in_features}], got {tuple(llm_emb.shape)}")
    if proj.out_features != emb.size(-1):
        raise ValueError(f"inject: projection fc_4096_64 outputs {proj.out_features} features but the "
                         f"item embeddings have {emb.size(-1)} (the reference hard-codes 64: set "
                         "hidden_factor=64, or use mode='fixed' which sizes it to hidden_factor)")
    return emb + ed_weight * proj(llm_emb)
