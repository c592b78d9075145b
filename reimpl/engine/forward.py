"""Student forward for the engine: fixed mode's scores ``[B, I]``, computed with less work.

* Teacher embeddings (``ed_weight != 0``): fixed mode gathers ``[B, L, d_llm]`` rows of ``all_embeddings.pt``
  (zeros at padding, :func:`reimpl.dllm2rec.injection.lookup_llm_emb`) and projects every position with
  ``fc_4096_64`` (main.py:395-401, :67-69). Here each *distinct* id of the batch is projected once,
  ``P = fc(T[u])`` ``[U, H]`` with ``U <= B * L``, and scattered back, ``P[inverse]``; the padding id reads an
  appended zero row (``fc(0) = bias``, what the zero lookup gives). ``fc(x)`` of a row does not depend on the
  other rows, so the values are the same up to the BLAS's summation order, and autograd sums the gradient of
  ``fc``'s weight over each distinct row's positions (the same sum, regrouped).
* GRU4Rec (one layer, :func:`gru_repr`): the input projection once per distinct id of the running positions,
  then :class:`reimpl.engine.gru.GRURecurrence`, the packed GRU's recurrence with a hand-written backward (same
  equations and packed layout); more layers run the model's own forward.
* SASRec (:func:`sasrec_repr`): only the representation at position ``len - 1`` is read (main.py:190-193),
  and after the attention everything is position-wise, so the query, the feed-forward block and the last
  layer norm are computed at that position only (``[B, H]`` instead of ``[B, L, H]``); keys and values use
  every position, as they must. The 1x1 ``Conv1d`` layers of the feed-forward block are applied as the
  matrix products they are (``F.linear`` with the ``[H, H, 1]`` weight viewed ``[H, H]``; ~8x faster here).
  Dropout is the model's modules; the attention and feed-forward dropouts act on the read position's elements
  only: the same law per element, fewer draws. With one head (the default) the head split is the identity.
* Caser (:func:`caser_repr`): each horizontal ``Conv2d(1, F, (h, H))`` is ``sum_r x[t + r] . W[r]``, computed as
  one product of ``x`` with every filter row at once (per distinct id: ``x`` depends only on the id) followed
  by shifted sums with a hand-written backward, and the vertical ``Conv2d(1, 1, (L, 1))`` a weighted sum over
  positions; the same sums as main.py:124-137 without the convolution kernels (whose CPU backward dominates
  the step). Dropout is the model's, on the same ``[B, F * n + H]`` tensor (same draws).
* Scores at a few columns (:func:`scores_at`): every student ends in ``s_fc(r)`` with ``r`` ``[B, D]`` its
  sequence representation, and ``s_fc(r)[b, j] = r_b . W_j + c_j``. When a loss reads only ``[B, J]``
  columns (the BCE with one negative and no DRO / distillation) the ``[B, I]`` head is not computed.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from reimpl.dllm2rec.injection import LOOKUP_DTYPE, ProjectedLLMEmb, inject
from reimpl.engine.gru import GRURecurrence, packed_steps
from reimpl.models import GRU, Caser, SASRec
from reimpl.models.sasrec import MASK_VALUE


def extend_table(table: torch.Tensor, dtype: torch.dtype = LOOKUP_DTYPE) -> torch.Tensor:
    """``[item_num + 1, d_llm]``: the teacher table in the lookup dtype with a zero row for the padding id."""
    if table.dim() != 2:
        raise ValueError(f"extend_table: table (all_embeddings.pt) must be [item_num, d_llm], got {tuple(table.shape)}")
    return torch.cat([table.to(dtype), torch.zeros(1, table.size(1), dtype=dtype)]).contiguous()


def trim_table(table_ext: torch.Tensor) -> torch.Tensor:
    """``table_ext`` without its trailing all-zero columns ``[item_num + 1, w]`` (``w >= 1``).

    A teacher narrower than 4,096 is stored zero-padded to 4,096 (``reimpl.teachers.export.pad_embeddings``);
    zero columns add exactly 0 to every projected value and receive a zero gradient, so :func:`project_batch`
    multiplies only the first ``w`` columns of ``fc_4096_64`` (E4SRec's 64-d table: 64x fewer FLOPs)."""
    nz = table_ext.ne(0).any(0).nonzero()
    w = int(nz.max()) + 1 if nz.numel() else 1
    return table_ext if w == table_ext.size(1) else table_ext[:, :w].contiguous()


def distinct(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uniq [U], where [*ids.shape])``: the sorted distinct values of ``ids`` (in ``[0, n)``) and, for each
    entry, its row in ``uniq`` (``uniq[where] == ids``). One pass over a ``[n]`` mark instead of a sort."""
    mark = torch.zeros(n, dtype=torch.bool, device=ids.device)
    mark[ids.reshape(-1)] = True
    uniq = mark.nonzero().squeeze(1)
    return uniq, (torch.cumsum(mark, 0) - 1)[ids]


def _project(table_ext: torch.Tensor, uniq: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    x = table_ext.index_select(0, uniq)  # [U, w]; index_select: half the time of table_ext[uniq] here
    w = x.size(1)
    return proj(x) if w == proj.in_features else F.linear(x, proj.weight[:, :w], proj.bias)  # [U, H]


def project_batch(seq: torch.Tensor, table_ext: torch.Tensor, proj: nn.Linear) -> ProjectedLLMEmb:
    """``proj`` of the teacher rows of ``seq`` ``[B, L]`` (ids in ``[0, item_num]``), each distinct id once.

    table_ext: :func:`extend_table` ``[item_num + 1, d_llm]``, or its first ``w`` columns
    (:func:`trim_table`: the rest are zero). Returns ``[B, L, H]`` values (with grad).
    """
    uniq, where = distinct(seq, table_ext.size(0))
    return ProjectedLLMEmb(_project(table_ext, uniq, proj)[where], proj)


def item_inputs(m: nn.Module, uniq: torch.Tensor, table_ext: torch.Tensor | None) -> torch.Tensor:
    """``[U, H]``: the student's input row of each id in ``uniq`` (its embedding, plus ``ed_weight`` times the
    projected teacher row when injecting, main.py:67-69 / :121-123): what every position holding that id reads."""
    x = m.item_embeddings(uniq)
    if table_ext is not None and m.ed_weight != 0:
        fc = m.fc_4096_64
        x = inject(x, ProjectedLLMEmb(_project(table_ext, uniq, fc), fc), fc, m.ed_weight)
    return x


@contextmanager
def _headless(model: nn.Module):
    """The student with ``s_fc`` replaced by the identity: its forward returns ``r`` ``[B, D]``."""
    head = model.s_fc
    model.s_fc = nn.Identity()
    try:
        yield head
    finally:
        model.s_fc = head


def representation(model: nn.Module, seq: torch.Tensor, len_seq: torch.Tensor,
                   table_ext: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, D]``: the sequence representation ``r`` that ``s_fc`` maps to scores (``scores = s_fc(r)``)."""
    with _headless(model):
        return scores(model, seq, len_seq, table_ext)


def head_at(model: nn.Module, r: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[B, J]`` = ``s_fc(r)[b, cols[b, j]]`` without the ``[B, I]`` head. r: ``[B, D]``; cols: ``[B, J]`` long."""
    head = model.s_fc
    return torch.baddbmm(head.bias[cols].unsqueeze(2), head.weight[cols], r.unsqueeze(2)).squeeze(2)


def scores_at(model: nn.Module, seq: torch.Tensor, len_seq: torch.Tensor, cols: torch.Tensor,
              table_ext: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, J]`` = ``scores(...)[b, cols[b, j]]`` without the ``[B, I]`` head. cols: ``[B, J]`` long."""
    return head_at(model, representation(model, seq, len_seq, table_ext), cols)


def scores(model: nn.Module, seq: torch.Tensor, len_seq: torch.Tensor,
           table_ext: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, I]`` fixed-mode scores of ``model`` (a :mod:`reimpl.models` student built with mode="fixed")."""
    if getattr(model, "mode", None) != "fixed":
        raise ValueError("engine.forward.scores: the engine computes fixed mode; build the student with mode='fixed'")
    if isinstance(model, GRU) and model.gru.num_layers == 1:  # these two project their own distinct ids
        return model.s_fc(gru_repr(model, seq, len_seq, table_ext))
    if isinstance(model, Caser):
        return model.s_fc(caser_repr(model, seq, table_ext))
    llm = None
    if table_ext is not None and model.ed_weight != 0:
        llm = project_batch(seq, table_ext, model.fc_4096_64)
    if isinstance(model, SASRec):
        return model.s_fc(sasrec_repr(model, seq, len_seq, llm))
    return model(seq, len_seq, llm)


def gru_repr(m: GRU, states: torch.Tensor, len_states: torch.Tensor,
             table_ext: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, H]``: the input of ``s_fc`` in :class:`reimpl.models.GRU` (fixed, one layer), i.e. the packed GRU's
    last hidden state (main.py:65-74).

    A position's GRU input ``x W_ih^T + b_ih`` depends only on its item id (embedding, plus the projected teacher
    row when injecting), so it is computed once per distinct id among the running positions and gathered into
    the packed layout; autograd sums the gradients of each distinct id's positions. The recurrence is
    :class:`reimpl.engine.gru.GRURecurrence`."""
    B, L = states.shape
    # main.py:70-71: an empty history runs as length 1 (it reads the padding embedding)
    lengths = torch.as_tensor(len_states, dtype=torch.int64).clamp(min=1)
    order, run, ks = packed_steps(lengths, L)
    ids = states[order].t()[run]  # [n_run]: the running positions' ids, step-major (packed order)
    uniq, where = distinct(ids, m.item_num + 1)
    x = item_inputs(m, uniq, table_ext)  # [U, H]
    g = m.gru
    gi = F.linear(x, g.weight_ih_l0, g.bias_ih_l0).index_select(0, where)  # [n_run, 3H]
    h = GRURecurrence.apply(gi, ks, g.weight_hh_l0, g.bias_hh_l0)  # [B, H], sorted rows
    return h.index_select(0, torch.argsort(order))


def sasrec_repr(m: SASRec, states: torch.Tensor, len_states: torch.Tensor, llm=None) -> torch.Tensor:
    """``[B, H]``: the input of ``s_fc`` in :class:`reimpl.models.SASRec` (fixed), at position ``len - 1`` only."""
    B, L = states.shape
    if L != m.state_size:
        raise ValueError(f"SASRec: states must be [B, state_size={m.state_size}], got [{B}, {L}]")
    x = inject(m.item_embeddings(states), llm, m.fc_4096_64, m.ed_weight) + m.positional_embeddings.weight
    mask = torch.ne(states, m.item_num).float().unsqueeze(-1)  # [B, L, 1]
    seq = m.emb_dropout(x) * mask
    rows = torch.arange(B, device=states.device)
    pos = (len_states.to(states.device) - 1) % L  # len 0 reads position -1 = L - 1, as the reference does
    att = m.mh_attn
    nh = att.num_heads
    q_in = m.ln_1(seq[rows, pos])  # [B, H]: ln_1 is position-wise
    # [.., C] -> [h*B, .., C/h]; one head (DLLM2Rec's default) is the tensor itself: a split + cat would copy it
    # forward and concatenate its gradient backward for nothing
    heads = (lambda t: t) if nh == 1 else (lambda t: torch.cat(t.split(t.size(-1) // nh, dim=-1), dim=0))  # noqa: E731
    q = heads(att.linear_q(q_in)).unsqueeze(1)  # [h*B, 1, C/h]
    k, v = heads(att.linear_k(seq)), heads(att.linear_v(seq))  # [h*B, L, C/h]
    logits = torch.bmm(q, k.transpose(1, 2)) / att.hidden_size ** 0.5  # [h*B, 1, L]
    key_valid = seq.sum(-1).abs().sign().repeat(nh, 1)[:, None, :]
    logits = torch.where(key_valid == 0, MASK_VALUE, logits)
    causal = torch.arange(L, device=states.device)[None, :] <= pos[:, None]  # [B, L]
    logits = torch.where(causal.repeat(nh, 1)[:, None, :], logits, MASK_VALUE)
    a = torch.softmax(logits, dim=-1) * q_in.sum(-1).abs().sign().repeat(nh)[:, None, None]  # query mask
    h = torch.bmm(att.dropout(a), v).squeeze(1)  # [h*B, C/h]
    h = (h if nh == 1 else torch.cat(h.split(B, dim=0), dim=1)) + q_in  # [B, H], residual to the queries
    ff = m.feed_forward
    z = m.ln_2(h)
    out = F.linear(F.relu(F.linear(z, ff.w_1.weight.squeeze(-1), ff.w_1.bias)), ff.w_2.weight.squeeze(-1),
                   ff.w_2.bias)
    z = ff.layer_norm(ff.dropout(out) + z)
    return m.ln_3(z * mask[rows, pos])


class _ShiftedSums(torch.autograd.Function):
    """``c_h[b, t, f] = sum_r y[b, t + r, off_h + r F_h + f]`` (``t < L - h + 1``) for each filter height ``h``.

    y: ``[B, L, sum_h h F_h]``. The backward writes each ``g_h`` into its ``h`` column blocks of one zero
    buffer (every block is read by one ``r`` only); autograd over the slices would zero-fill a full ``y``-sized
    buffer per slice (~half of Caser's undistilled step)."""

    @staticmethod
    def forward(ctx, y, sizes, nfs):
        L = y.size(1)
        out, off = [], 0
        for h, nf in zip(sizes, nfs):
            T = L - h + 1
            c = y[:, :T, off:off + nf].clone()  # the same additions, in the same order, as the sum over r
            for r in range(1, h):
                c += y[:, r:r + T, off + r * nf: off + (r + 1) * nf]
            out.append(c)
            off += h * nf
        ctx.shape, ctx.spec = y.shape, (sizes, nfs)
        return tuple(out)

    @staticmethod
    def backward(ctx, *gs):
        dy = gs[0].new_zeros(ctx.shape)
        L, off = ctx.shape[1], 0
        for g, h, nf in zip(gs, *ctx.spec):
            T = L - h + 1
            for r in range(h):
                dy[:, r:r + T, off + r * nf: off + (r + 1) * nf] = g
            off += h * nf
        return dy, None, None


def caser_repr(m: Caser, states: torch.Tensor, table_ext: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, F * n + H]``: the input of ``s_fc`` in :class:`reimpl.models.Caser` (fixed), dropout applied.

    The masked input ``x`` and its product with the filters ``y`` depend only on each position's id, so both
    are computed once per distinct id and gathered (autograd sums each id's gradients)."""
    B, L = states.shape
    uniq, where = distinct(states, m.item_num + 1)
    xu = item_inputs(m, uniq, table_ext) * torch.ne(uniq, m.item_num).float().unsqueeze(-1)  # [U, H], padding 0
    H = xu.size(-1)
    # every (filter, row r of its window) pair in one product: y[b, l, (f, r)] = x[b, l] . W_f[r]; the
    # convolution at time t is then sum_r y[b, t + r, (f, r)]
    ws = [conv.weight.view(conv.out_channels, h, H).transpose(0, 1).reshape(h * conv.out_channels, H)
          for conv, h in zip(m.horizontal_cnn, m.filter_sizes)]
    flat = where.view(-1)
    y = F.linear(xu, torch.cat(ws)).index_select(0, flat).view(B, L, -1)  # [B, L, sum_h h * F]
    sums = _ShiftedSums.apply(y, tuple(m.filter_sizes), tuple(c.out_channels for c in m.horizontal_cnn))
    pooled = [F.relu(conv.bias + c).max(dim=1).values for conv, c in zip(m.horizontal_cnn, sums)]
    x = xu.index_select(0, flat).view(B, L, H)
    v = F.relu(torch.einsum("blh,l->bh", x, m.vertical_cnn.weight.view(L)) + m.vertical_cnn.bias)  # [B, H]
    return m.dropout(torch.cat([*pooled, v], 1))
