"""Dropout with the law of ``nn.Dropout`` (training mode), drawn from uniforms instead of ``bernoulli_``.

``F.dropout(x, p)`` is ``x * noise`` with ``noise = bernoulli(1 - p) / (1 - p)`` elementwise (ATen
``native/Dropout.cpp``, ``_dropout_impl``). Here ``keep = rand_like(x) < 1 - p``: each element kept
independently with probability ``1 - p`` (up to the uniform's resolution, 2^-24 in float32), and
``noise = keep / (1 - p)`` multiplied in the same order, so a kept element has exactly the value
``F.dropout`` gives it. A different random stream than fixed mode's (the engine's streams differ anyway,
:mod:`reimpl.engine.train`).

Why: on this CPU, one thread, ``bernoulli_`` over SASRec's ``[256, 10, 64]`` embedding dropout takes
~1.0 ms at p = 0.1, this ~0.7 ms (``docs/notes.md``, session 12).
"""

from __future__ import annotations

import torch
from torch import nn


def dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in law: identity in eval mode or at ``p = 0``; zeros (with zero gradient) at ``p = 1``."""
    p = module.p
    if not module.training or p == 0:
        return x
    if p == 1:
        return x * torch.zeros((), dtype=x.dtype)
    noise = (torch.rand_like(x) < 1 - p).to(x.dtype).div_(1 - p)
    return x * noise
