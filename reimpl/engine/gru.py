"""GRU4Rec's recurrence with a hand-written backward: fixed mode's packed one-layer ``nn.GRU`` (main.py:70-74,
``reimpl.models.gru.GRU``), the same equations, without autograd's per-step bookkeeping.

PyTorch's GRU (``torch.nn.GRU`` docs; weights ``[W_r | W_z | W_n]``)::

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
    h' = (1 - z) * n + z * h          (computed as n + z * (h - n))

A packed run over the first ``len`` positions of each row returns ``h`` after step ``len - 1``; packing sorts
the rows by length so that the rows still running at step ``t`` are a prefix ``[:k_t]``, and so does
:func:`packed_steps`. The input projections arrive precomputed (``reimpl.engine.forward.gru_repr``); the
backward is BPTT written out, with the weight gradient as one product over all steps. Only the summation order
differs from ``nn.GRU``: tests/test_engine_equivalence.py checks values and gradients (float64 1e-10,
float32 1e-6).

Why: autograd over the packed GRU zero-fills a full-size gradient buffer for every per-step slice of the packed
input (``slice_backward``, ~20 % of GRU4Rec's undistilled step on LastFM), and records ~30 nodes per step.
"""

from __future__ import annotations

import torch


class GRURecurrence(torch.autograd.Function):
    """``[k_0, H]``: the hidden state of each row after its last step, rows in the packed (sorted) order.

    gi: ``[sum(ks), 3H]`` the input projections ``x W_ih^T + b_ih`` of the running positions, step-major
    (step ``t`` holds rows ``[:ks[t]]``, as a packed sequence does); ks: rows running at each step
    (non-increasing, ``ks[0] = B``); w_hh ``[3H, H]``, b_hh ``[3H]``; ``h_0 = 0``."""

    @staticmethod
    def forward(ctx, gi, ks, w_hh, b_hh):
        H = w_hh.size(1)
        n_run = gi.size(0)
        hp = gi.new_empty(n_run, H)  # h before each step, steps stacked
        rz = gi.new_empty(n_run, 2 * H)
        nn_, hn = gi.new_empty(n_run, H), gi.new_empty(n_run, H)
        h = gi.new_zeros(ks[0], H)
        off = 0
        for k in ks:
            s = slice(off, off + k)
            hp[s] = h[:k]
            gh = torch.addmm(b_hh, hp[s], w_hh.t())  # [k, 3H]
            torch.add(gi[s, :2 * H], gh[:, :2 * H], out=rz[s]).sigmoid_()
            hn[s] = gh[:, 2 * H:]
            n = torch.addcmul(gi[s, 2 * H:], rz[s, :H], hn[s], out=nn_[s]).tanh_()
            h[:k] = torch.addcmul(n, rz[s, H:], hp[s] - n)
            off += k
        ctx.save_for_backward(w_hh, hp, rz, nn_, hn)
        ctx.ks = ks
        return h

    @staticmethod
    def backward(ctx, g):
        w_hh, hp, rz, n, hn = ctx.saved_tensors
        H = w_hh.size(1)
        dh = g.clone()
        dgi = g.new_empty(hp.size(0), 3 * H)
        dgh = g.new_empty(hp.size(0), 3 * H)
        off = hp.size(0)
        for k in reversed(ctx.ks):
            off -= k
            s = slice(off, off + k)
            d, r, z, dg = dh[:k], rz[s, :H], rz[s, H:], dgi[s]
            # h' = n + z (h - n): dz = d (h - n), dn = d (1 - z)
            torch.mul(d, hp[s] - n[s], out=dg[:, H:2 * H])
            dpn = torch.mul(d, 1 - z, out=dg[:, 2 * H:]).mul_(1 - n[s] * n[s])  # through tanh
            torch.mul(dpn, hn[s], out=dg[:, :H])  # dr
            dg[:, :2 * H].mul_(rz[s] * (1 - rz[s]))  # through both sigmoids
            dgh[s, :2 * H] = dg[:, :2 * H]
            torch.mul(dpn, r, out=dgh[s, 2 * H:])  # d(h W_hn^T + b_hn)
            dh[:k] = torch.addmm(d * z, dgh[s], w_hh)
        return dgi, None, dgh.t().mm(hp), dgh.sum(0)


def packed_steps(lengths: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Rows sorted by length and where each step's running rows sit, as ``pack_padded_sequence`` lays them out.

    lengths: ``[B]`` in ``[1, L]``. Returns ``order`` ``[B]`` (rows by length, descending; stable),
    ``run`` ``[L, B]`` bool (step ``t`` runs sorted row ``j``) and ``ks`` (rows running at each step, zeros
    dropped)."""
    if lengths.numel() and not (1 <= int(lengths.min()) and int(lengths.max()) <= L):
        raise ValueError(f"GRU: lengths must lie in [1, L={L}], got [{int(lengths.min())}, {int(lengths.max())}]")
    order = torch.argsort(lengths, descending=True, stable=True)
    run = torch.arange(L).unsqueeze(1) < lengths[order].unsqueeze(0)
    ks = [k for k in run.sum(1).tolist() if k > 0]
    return order, run, ks
