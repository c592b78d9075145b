"""Teacher export in the layout DLLM2Rec reads (``tocf/<data>/``).

DLLM2Rec @ b78cc658 ``main.py:326-343`` loads, relative to its working directory:

* ``tocf/<data>/myrank_train.txt``   -- ``np.loadtxt`` -> ``torch.LongTensor``: ``[N_train, K]`` item ids,
  best first, row ``i`` for train-frame row ``i`` (rows are picked by the frame's index, l.434);
* ``tocf/<data>/confidence_train.txt`` -- ``np.loadtxt`` -> float tensor ``[N_train, K]``; used as
  ``exp(-confidence)`` (l.451-454), i.e. a *distance*: lower = more confident;
* ``tocf/<data>/all_embeddings.pt``  -- ``torch.load`` -> ``[item_num, d_llm]``; rows looked up by item id
  for ids ``< item_num`` (l.396-399). The students' ``fc_4096_64`` (l.62, 117, 172) hard-code
  ``d_llm = 4096`` (Llama-2-7B); a smaller teacher (SmolLM2: 576) needs ``pad_dim=4096``: zero columns
  added on the right, which a Linear maps exactly as it maps the unpadded vector (the extra weight
  columns only ever see zeros, so they get zero gradient).

How the iLoRA teacher fills these is documented in :mod:`reimpl.ilora.teacher`
(``score_candidates`` / ``item_embeddings``); this module only writes, validates and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

RANK_FILE = "myrank_train.txt"
CONF_FILE = "confidence_train.txt"
EMB_FILE = "all_embeddings.pt"


@dataclass
class TeacherExport:
    rank: np.ndarray          # [N, K] int64 item ids, best first
    confidence: np.ndarray    # [N, K] float64 distance-like (lower = more confident)
    embeddings: torch.Tensor  # [item_num, d_llm] float32


def validate(rank: np.ndarray, confidence: np.ndarray, embeddings: torch.Tensor | None, item_num: int,
             where: str = "teacher export") -> None:
    """Raise ValueError naming the field and the expected shape unless the export is well formed."""
    rank = np.asarray(rank)
    confidence = np.asarray(confidence)
    if rank.ndim != 2:
        raise ValueError(f"{where}: {RANK_FILE} must be [N_train, K], got shape {rank.shape}")
    if confidence.shape != rank.shape:
        raise ValueError(f"{where}: {CONF_FILE} must have the shape of {RANK_FILE} {rank.shape}, "
                         f"got {confidence.shape}")
    n, k = rank.shape
    if n < 2 or k < 2:
        # np.loadtxt (default ndmin=0) squeezes a single row/column to 1-D and DLLM2Rec's
        # ``candidate[:, :k]`` then fails: refuse here instead of producing an unreadable file.
        raise ValueError(f"{where}: {RANK_FILE} shape {rank.shape}: DLLM2Rec's np.loadtxt squeezes N=1 or "
                         "K=1 to 1-D; export at least 2 rows and 2 columns")
    if not np.issubdtype(rank.dtype, np.integer):
        raise ValueError(f"{where}: {RANK_FILE} must hold integer item ids, got dtype {rank.dtype}")
    if rank.min() < 0 or rank.max() >= item_num:
        raise ValueError(f"{where}: {RANK_FILE} ids must lie in [0, item_num={item_num}), got "
                         f"[{rank.min()}, {rank.max()}]")
    if not np.isfinite(confidence).all():
        raise ValueError(f"{where}: {CONF_FILE} holds non-finite values")
    if embeddings is not None:
        if embeddings.ndim != 2 or embeddings.shape[0] != item_num:
            raise ValueError(f"{where}: {EMB_FILE} must be [item_num={item_num}, d_llm], "
                             f"got {tuple(embeddings.shape)}")
        if not torch.isfinite(embeddings).all():
            raise ValueError(f"{where}: {EMB_FILE} holds non-finite values")


def write_tocf(out_dir: str | Path, data: str, rank: np.ndarray, confidence: np.ndarray,
               embeddings: torch.Tensor | None, item_num: int, pad_dim: int | None = None) -> Path:
    """Write ``<out_dir>/tocf/<data>/{myrank_train.txt, confidence_train.txt, all_embeddings.pt}``.

    rank ``[N, K]`` int, confidence ``[N, K]`` float, embeddings ``[item_num, d]`` (or None to skip).
    ``pad_dim``: zero-pad the embedding width to this size (4096 for the unmodified DLLM2Rec).
    Returns the ``tocf/<data>`` folder.
    """
    rank = np.asarray(rank)
    confidence = np.asarray(confidence, dtype=np.float64)
    if embeddings is not None:
        embeddings = embeddings.detach().to(torch.float32).cpu()
        if pad_dim is not None:
            if pad_dim < embeddings.shape[1]:
                raise ValueError(f"write_tocf: pad_dim={pad_dim} is smaller than d_llm={embeddings.shape[1]}")
            embeddings = torch.nn.functional.pad(embeddings, (0, pad_dim - embeddings.shape[1]))
    validate(rank, confidence, embeddings, item_num, where=f"write_tocf({data})")
    folder = Path(out_dir) / "tocf" / data
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / RANK_FILE, rank.astype(np.int64), fmt="%d")
    # %.17g round-trips float64 exactly through np.loadtxt
    np.savetxt(folder / CONF_FILE, confidence, fmt="%.17g")
    if embeddings is not None:
        torch.save(embeddings.contiguous(), folder / EMB_FILE)
    return folder


def read_tocf(folder: str | Path, item_num: int) -> TeacherExport:
    """Read an export back (``ndmin=2`` so that our own reader never squeezes) and validate it."""
    folder = Path(folder)
    for f in (RANK_FILE, CONF_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"read_tocf: {folder / f} is missing")
    rank = np.loadtxt(folder / RANK_FILE, ndmin=2).astype(np.int64)
    conf = np.loadtxt(folder / CONF_FILE, ndmin=2)
    emb = torch.load(folder / EMB_FILE, weights_only=True) if (folder / EMB_FILE).is_file() else None
    validate(rank, conf, emb, item_num, where=str(folder))
    return TeacherExport(rank, conf, emb)


def ranking_from_scores(scores: torch.Tensor, item_ids: torch.Tensor, k: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item ids and their distance-like confidences from per-candidate teacher scores.

    scores ``[N, C]`` (higher = better, e.g. candidate log-likelihoods; ``-inf`` = not a candidate),
    item_ids ``[N, C]`` the item id of each column. Confidence = ``-log_softmax(scores)`` over the
    C candidates (the teacher's negative log-probability of the item among the candidates), so
    DLLM2Rec's ``exp(-confidence)`` weight is the teacher's candidate probability.
    Ties keep column order (stable sort). Returns ``(rank [N, k] int64, confidence [N, k] float64)``.
    """
    if scores.ndim != 2 or scores.shape != item_ids.shape:
        raise ValueError(f"ranking_from_scores: scores {tuple(scores.shape)} and item_ids "
                         f"{tuple(item_ids.shape)} must both be [N, C]")
    if k > scores.shape[1]:
        raise ValueError(f"ranking_from_scores: k={k} exceeds the number of candidates C={scores.shape[1]}")
    s = scores.detach().to(torch.float64)
    if torch.isnan(s).any():
        raise ValueError("ranking_from_scores: scores hold NaN")
    finite_per_row = torch.isfinite(s).sum(1)
    if (finite_per_row < k).any():
        raise ValueError(f"ranking_from_scores: some rows have fewer than k={k} finite candidate scores")
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    conf = -torch.log_softmax(s, dim=1).gather(1, order)
    return item_ids.gather(1, order).cpu().numpy().astype(np.int64), conf.cpu().numpy()
