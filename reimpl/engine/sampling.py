"""Uniform negatives by rejection sampling. Same distribution as :func:`reimpl.dllm2rec.losses.sample_negatives`
(``torch.multinomial`` over the ``[B, I]`` 0/1 pool, main.py:382-392), without building the pool.

Each row draws ``j ~ U{0, ..., I-1}`` and keeps it iff ``j`` is neither in the row's history nor its target;
rejected rows draw again. An accepted draw is therefore uniform over the allowed set, exactly the
multinomial's law over equal weights. Cost: ``O(B * (L + 1))`` per round, expected rounds
``<= 1 / (1 - (L + 1) / I)`` (e.g. 1.002 for LastFM's ``I = 4606, L = 10``). Different random stream.
"""

from __future__ import annotations

import torch

MAX_ROUNDS = 10_000  # a row whose acceptance rate is > 0 is essentially never rejected this often


def sample_negatives(seq: torch.Tensor, target: torch.Tensor, item_num: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, 1]`` long: one negative per row, uniform over items not in ``seq[b]`` and ``!= target[b]``.

    seq: ``[B, L]`` long (padding id ``item_num`` never collides with a draw); target: ``[B]`` long.
    """
    B, L = seq.shape
    if target.shape != (B,):
        raise ValueError(f"sample_negatives: target must be [B={B}], got {tuple(target.shape)}")
    forbidden = torch.cat([seq, target.view(B, 1)], 1)  # [B, L + 1]
    if item_num <= L + 1:  # tiny catalogues: a row may forbid every item (the multinomial raises there too)
        seen = torch.zeros(B, item_num + 1, dtype=torch.bool)
        seen.scatter_(1, forbidden.clamp(0, item_num), True)
        if bool(seen[:, :item_num].all(1).any()):
            raise ValueError("sample_negatives: a row's history and target cover every item; no negative exists")
    out = torch.empty(B, dtype=torch.long, device=seq.device)
    todo = torch.arange(B, device=seq.device)
    for _ in range(MAX_ROUNDS):
        cand = torch.randint(0, item_num, (todo.numel(),), generator=generator, device=seq.device)
        ok = (forbidden[todo] != cand.unsqueeze(1)).all(1)
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
        if todo.numel() == 0:
            return out.view(B, 1)
    raise RuntimeError(f"sample_negatives: {todo.numel()} rows rejected {MAX_ROUNDS} draws in a row")
