"""Top-K evaluation of a DLLM2Rec student: HR/NDCG@{1,5,10,20} (+ MRR).

Mirrors ``main.py:198-262`` (``myevaluate``) and ``utility.py:75-82`` (``calculate_hit``):
scores are sorted ascending with ``torch.argsort``, the last ``k`` columns are the top-k, the rank of
the target is ``k - position``, NDCG adds ``1 / log2(rank + 1)``; every item is ranked (history items
included), and the means are over all rows.

* faithful: the target's rank is its place in that argsort: ``1 + #items scoring higher`` (NaN counts as
  higher, the sort puts it last) when no other item ties with the target, else (rare) the row is
  argsorted, because the CPU sort is not stable beyond 16 items and only it knows its tie order;
  NDCG sums accumulate in row order in float64;
  the model is evaluated as the reference leaves it, in train mode (dropout on, drawing from the global
  torch RNG; DLLM2REC-EVAL-DROPOUT). Rows are scored ``batch_size`` at a time (bounded memory); with
  ``batch_size >= N`` the dropout draws equal the reference's single forward.
* fixed: ``model.eval()``; rank = 1 + #items scoring higher + #other items tying with the target
  (pessimistic, independent of the sort; DLLM2REC-EVAL-TIES).

Teacher embeddings: ``fc_4096_64`` is applied once to the whole table (``[I + 1, H]``, padding row
included) and rows are gathered per batch, instead of projecting ``[b, L, d_llm]`` per batch; used only
when it gives bit for bit the per-batch projection on this machine (checked on the first batch; the
BLAS may sum a row differently for very small matrices on several threads), else the per-batch path.

Memory: ``[b, I]`` scores, ``[I + 1, H]`` projected table (and ``[b, L, d_llm]`` teacher embeddings on
the per-batch path) for ``b <= batch_size`` rows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reimpl.deviations import check_mode
from reimpl.dllm2rec.injection import lookup_llm_emb, lookup_projected, project_table, projection_matches
from reimpl.metrics import NO_RANK, TOPK, rank_metrics


@dataclass
class EvalSplit:
    states: np.ndarray   # [N, L] int64
    len_states: np.ndarray  # [N] int64
    targets: np.ndarray  # [N] float64 (the reference reads `next` with float())
    path: str = ""


def read_split(path: str | Path, state_size: int | None = None, item_num: int | None = None
               ) -> EvalSplit:
    """Read a ``seq,len_seq,next`` CSV (``seq`` a quoted list literal) like main.py:204-213."""
    import ast

    path = Path(path)
    states, lens, targets = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"seq", "len_seq", "next"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected seq,len_seq,next")
        for n, row in enumerate(reader, 2):
            seq = ast.literal_eval(row["seq"])
            if not isinstance(seq, (list, tuple)):
                raise ValueError(f"{path}:{n}: field seq must be a list literal, got {row['seq']!r}")
            states.append(seq)
            lens.append(int(row["len_seq"]))
            targets.append(float(row["next"]))
    widths = {len(s) for s in states}
    if len(widths) > 1 or (state_size is not None and widths and widths != {state_size}):
        raise ValueError(f"{path}: field seq must have length {state_size or 'equal'} in every row, "
                         f"found lengths {sorted(widths)}")
    arr = np.asarray(states, dtype=np.int64).reshape(len(states), -1)
    if item_num is not None and arr.size and (arr.min() < 0 or arr.max() > item_num):
        raise ValueError(f"{path}: field seq holds ids outside [0, {item_num}] (padding id {item_num})")
    return EvalSplit(arr, np.asarray(lens, dtype=np.int64), np.asarray(targets, dtype=np.float64),
                     str(path))


def _row_counts(scores: torch.Tensor, s_t: torch.Tensor, *tests, chunk: int = 32) -> list[torch.Tensor]:
    """Per row of ``scores`` ``[b, I]`` and each ``test(s, s_t) -> bool``, the number of items passing it
    (int64 ``[b]``).

    Counted ``chunk`` rows at a time into int32 (exact for ``I < 2**31``): summing a whole ``[b, I]``
    bool mask converts it to int64 first, several times slower than the comparison itself.
    """
    b = scores.size(0)
    out = [torch.empty(b, dtype=torch.int64, device=scores.device) for _ in tests]
    for lo in range(0, b, chunk):
        s, t = scores[lo:lo + chunk], s_t[lo:lo + chunk]
        for o, test in zip(out, tests):
            o[lo:lo + chunk] = test(s, t).sum(1, dtype=torch.int32)
    return out


def target_ranks(scores: torch.Tensor, targets: np.ndarray, mode: str = "faithful") -> np.ndarray:
    """1-based rank ``[b]`` of each target among ``scores`` ``[b, I]`` (``NO_RANK`` for a non-item)."""
    check_mode(mode)
    b, n_items = scores.shape
    t = np.asarray(targets, dtype=np.float64)
    is_item = (t == np.floor(t)) & (t >= 0) & (t < n_items)
    ti = torch.as_tensor(np.where(is_item, t, 0).astype(np.int64), device=scores.device)
    s_t = scores.gather(1, ti[:, None])  # [b, 1]
    if mode == "faithful":
        # the target's place in the ascending argsort (main.py:231) without sorting: with no other item
        # tying with it, exactly the items scoring higher (NaN included: the sort puts NaN last) rank
        # above it. The CPU sort is not stable beyond 16 items, so the order among tied scores is the
        # sort's own: rows where the target ties (or is NaN) are argsorted, as the reference does.
        at_or_below, ties = _row_counts(scores, s_t, torch.le, torch.eq)
        rank = n_items - at_or_below + 1
        amb = (ties != 1) & torch.as_tensor(is_item, device=scores.device)
        if bool(amb.any()):
            rows = amb.nonzero(as_tuple=True)[0]
            order = torch.argsort(scores[rows])
            pos = (order == ti[rows, None]).int().argmax(1)
            rank[rows] = n_items - pos
    else:
        # pessimistic: every other tied item ranks above (DLLM2REC-EVAL-TIES); NaN never counts
        above, ties = _row_counts(scores, s_t, torch.gt, torch.eq)
        rank = above + ties
    rank = rank.cpu().numpy().astype(np.int64)
    return np.where(is_item, rank, NO_RANK)


def metrics_from_ranks(ranks: np.ndarray, topk=TOPK) -> dict[str, list[float] | float]:
    """HR@k, NDCG@k lists (in ``topk`` order), MRR and ``n`` from 1-based ranks ``[N]``
    (``reimpl.metrics.rank_metrics``). Terms are summed in row order (``sequential=True``), the
    reference's ``+=`` accumulation (``utility.py:80-82``), in both modes."""
    return rank_metrics(ranks, topk, sequential=True)


@torch.no_grad()
def predict_ranks(model: nn.Module, split: EvalSplit, llm_table: torch.Tensor | None = None,
                  batch_size: int = 4096, mode: str = "faithful") -> np.ndarray:
    """Ranks ``[N]`` of the split's targets under ``model``, ``batch_size`` rows per forward."""
    check_mode(mode)
    was_training = model.training
    model.train(mode == "faithful")  # the reference never calls model.eval()
    device = next(iter(model.parameters())).device
    out = []
    proj = getattr(model, "fc_4096_64", None)
    ptable = None
    if llm_table is not None and proj is not None and split.states.size and split.states.min() >= 0:
        ptable = project_table(llm_table.to(device), proj)
    try:
        for lo in range(0, len(split.targets), batch_size):
            states = torch.as_tensor(split.states[lo:lo + batch_size], device=device)
            lens = split.len_states[lo:lo + batch_size]
            if ptable is not None and lo == 0:
                # project once, gather per batch; kept only if it is bit for bit the per-batch projection
                # on this machine (checked on the first rows of the first batch)
                if not projection_matches(states[:256], llm_table, ptable, proj):
                    ptable = None
            if llm_table is None:
                llm_emb = None
            elif ptable is not None:
                llm_emb = lookup_projected(states, ptable, proj)
            else:
                llm_emb = lookup_llm_emb(states, llm_table)
            scores = model(states, lens, llm_emb).reshape(len(lens), -1)  # undo a B == 1 squeeze
            out.append(target_ranks(scores, split.targets[lo:lo + batch_size], mode))
    finally:
        model.train(was_training)
    return np.concatenate(out)


def evaluate(model: nn.Module, split: EvalSplit, llm_table: torch.Tensor | None = None,
             batch_size: int = 4096, topk=TOPK, mode: str = "faithful") -> dict:
    """``{"hr": [..], "ndcg": [..], "mrr": float, "n": N}`` for ``topk``."""
    res = metrics_from_ranks(predict_ranks(model, split, llm_table, batch_size, mode), topk)
    res["n"] = int(len(split.targets))
    return res
