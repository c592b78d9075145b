"""Tiny in-memory DLLM2Rec data for the extension tests (no files)."""

from __future__ import annotations

import numpy as np
import torch

from reimpl.dllm2rec.evaluate import EvalSplit
from reimpl.dllm2rec.train import DLLM2RecData

I, L = 30, 10


def _rows(rs, n):
    lens = rs.randint(1, L + 1, size=n)
    seq = rs.randint(0, I, size=(n, L))
    seq[np.arange(L)[None] >= lens[:, None]] = I
    return seq.astype(np.int64), lens.astype(np.int64), rs.randint(0, I, size=n).astype(np.int64)


def tiny_data(n: int = 48, k: int = 12, d_llm: int = 64, seed: int = 0, teacher: bool = True) -> DLLM2RecData:
    rs = np.random.RandomState(seed)
    seq, lens, nxt = _rows(rs, n)
    vs, vl, vt = _rows(rs, 12)
    ts, tl, tt = _rows(rs, 12)
    d = DLLM2RecData(I, L, seq, lens, nxt, EvalSplit(vs, vl, vt.astype(np.float64)),
                     EvalSplit(ts, tl, tt.astype(np.float64)))
    if teacher:
        d.candidates = torch.as_tensor(np.stack([rs.permutation(I)[:k] for _ in range(n)]))
        d.confidence = torch.as_tensor(rs.random_sample((n, k)), dtype=torch.float32)
        d.llm_table = torch.as_tensor(rs.randn(I, d_llm), dtype=torch.float32)
    return d
