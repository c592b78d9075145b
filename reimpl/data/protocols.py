"""Standard evaluation protocol beside the published splits: leave-one-out by time for every user.

For every user with interactions ``i_0 .. i_{n-1}`` in time order (``n >= 3``):

* test row: history ``i_{n-1-L} .. i_{n-2}`` (the last ``<= L``), target ``i_{n-1}``;
* validation row: history ``.. i_{n-3}``, target ``i_{n-2}``;
* training rows: every earlier non-empty prefix, ``t = 1 .. n-3``: history ``.. i_{t-1}``, target ``i_t``.

Histories are right-padded with the padding id ``item_num`` to ``max_len`` (10 or 50; configurable), the DLLM2Rec
layout (``len_seq = max(1, #items)``). Evaluation (``reimpl.dllm2rec.evaluate``, fixed mode) ranks the target
against **all** items (no sampled candidates; history items are not removed, as in the reference) with
pessimistic ties (``rank = 1 + #higher + #other equal``).

Sources:

* ``ml-100k``: ``u.data`` (943 users, every rating counts as an interaction by default, ``min_rating=1``: the
  implicit-feedback convention of SASRec / BERT4Rec; ``min_rating=3`` gives the LLaRA/iLoRA filter). Item id =
  movie id - 1. **Equal timestamps**: a user's ratings are sorted by timestamp with a *stable* sort, so ratings
  sharing a (user, timestamp) keep their ``u.data`` file order (machine-independent; the iLoRA split
  builder instead reproduces numpy's old introsort order, ``reimpl/data/movielens.py``, ILORA-ML-TIEBREAK).
  Users in increasing user id.
* ``lastfm``: the iLoRA frames as published (``train_data.df``, ``Val_data.df``, ``Test_data.df``). The train frame
  holds every prefix of each train user's sequence in order (a user starts at an empty history; each next row's
  history is the last 10 items of the sequence so far, checked), so those sequences are recovered whole. A
  val/test row publishes only its last ``<= 10`` history items and the target: such a user's sequence is that
  history + target (earlier items are not published). Users in frame order: train users, then val, then test.

Bad input: a user with fewer than 3 interactions cannot give train, validation and test rows; such users are
dropped and *named* in :attr:`LOOData.dropped` and a warning (file, field, count, first ids), or, with
``short_users="raise"``, refused. An item id outside ``[0, item_num)`` raises a :class:`DataError` naming the
file, field and row.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reimpl.data.types import DataError, SeqDataset, SeqSplit, fail, lens_from_seqs

MIN_INTERACTIONS = 3
SOURCES = ("ml-100k", "lastfm")


@dataclass(frozen=True)
class LOOConfig:
    source: str = "ml-100k"
    max_len: int = 10
    min_rating: int = 1          # ml-100k only: keep ratings >= this (1 = every rating)
    short_users: str = "drop"    # "drop" (named in LOOData.dropped + a warning) | "raise"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"LOOConfig.source must be one of {SOURCES}, got {self.source!r}")
        if self.max_len < 1:
            raise ValueError("LOOConfig.max_len must be >= 1")
        if self.short_users not in ("drop", "raise"):
            raise ValueError(f"LOOConfig.short_users must be 'drop' or 'raise', got {self.short_users!r}")


@dataclass(frozen=True)
class LOOData:
    dataset: SeqDataset                 # splits train / val / test
    users: int                          # users kept (one val and one test row each)
    dropped: dict = field(default_factory=dict)   # {"file", "field", "count", "users"} of short users
    digest: str = ""                    # sha256 of the split arrays (what a results record pins)


def _check_ids(seqs: list[np.ndarray], item_num: int, source: str, what: str) -> None:
    for u, s in enumerate(seqs):
        bad = np.nonzero((s < 0) | (s >= item_num))[0]
        if bad.size:
            raise fail(source, what, f"item ids in [0, {item_num})", int(s[bad[0]]), row=u)


def _window(items: np.ndarray, t: int, L: int, pad: int) -> np.ndarray:
    h = items[max(0, t - L):t]
    return np.concatenate([h, np.full(L - len(h), pad, dtype=np.int64)])


def split_digest(ds: SeqDataset) -> str:
    """sha256 over every split's ``seqs``, ``lens``, ``next`` (name, dtype and shape included)."""
    h = hashlib.sha256()
    for k in sorted(ds.splits):
        s = ds.splits[k]
        for a in (s.seqs, s.lens, s.next):
            h.update(f"{k}:{a.dtype}:{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def leave_one_out(sequences: list[np.ndarray], user_ids: list, item_num: int, cfg: LOOConfig, name: str,
                  source: str) -> LOOData:
    """Time-ordered item sequences (one per user) -> LOO splits (module docstring)."""
    _check_ids(sequences, item_num, source, "item")
    short = [u for u, s in zip(user_ids, sequences) if len(s) < MIN_INTERACTIONS]
    dropped = {}
    if short:
        msg = (f"{source}: field 'user': {len(short)} user(s) with fewer than {MIN_INTERACTIONS} interactions "
               f"cannot give train/validation/test rows (first: {short[:5]})")
        if cfg.short_users == "raise":
            raise DataError(msg)
        warnings.warn(msg + "; dropped", stacklevel=2)
        dropped = {"file": str(source), "field": "user", "count": len(short), "users": [str(u) for u in short]}
    L, pad = cfg.max_len, item_num
    rows = {"train": [], "val": [], "test": []}
    kept = 0
    for s in sequences:
        n = len(s)
        if n < MIN_INTERACTIONS:
            continue
        kept += 1
        for t in range(1, n - 2):
            rows["train"].append((_window(s, t, L, pad), s[t]))
        rows["val"].append((_window(s, n - 2, L, pad), s[n - 2]))
        rows["test"].append((_window(s, n - 1, L, pad), s[n - 1]))
    splits = {}
    for k, r in rows.items():
        seqs = np.array([a for a, _ in r], dtype=np.int64).reshape(len(r), L)
        splits[k] = SeqSplit(name=k, seqs=seqs, lens=lens_from_seqs(seqs, pad),
                             next=np.array([b for _, b in r], dtype=np.int64), padding_id=pad, item_num=item_num,
                             source=str(source))
    ds = SeqDataset(name=name, item_num=item_num, padding_id=pad, seq_len=L, splits=splits, titles=None)
    return LOOData(ds, kept, dropped, split_digest(ds))


def ml100k_sequences(u_data: str | Path, min_rating: int = 1) -> tuple[list[np.ndarray], list[int], int]:
    """(sequences, user ids, item_num) from ``u.data``: stable time order, users by id."""
    from reimpl.data.movielens import ITEM_NUM, read_u_data

    r = read_u_data(u_data)
    bad = np.nonzero(r.item > ITEM_NUM)[0]
    if bad.size:
        raise fail(u_data, "item", f"movie ids in [1, {ITEM_NUM}]", int(r.item[bad[0]]), row=int(bad[0]))
    keep = r.rating >= min_rating
    user, item, ts = r.user[keep], r.item[keep] - 1, r.ts[keep]
    order = np.lexsort((ts, user))  # by user, then timestamp; lexsort is stable: ties keep file order
    user, item = user[order], item[order]
    ids, start = np.unique(user, return_index=True)
    seqs = np.split(item, start[1:])
    return seqs, ids.tolist(), ITEM_NUM


def lastfm_sequences(frames_dir: str | Path) -> tuple[list[np.ndarray], list[str], int]:
    """(sequences, user labels, item_num) recovered from the published iLoRA LastFM frames (module docstring)."""
    from reimpl.data.ilora import load_ilora

    d = Path(frames_dir)
    ds = load_ilora(d, "lastfm")
    pad = ds.padding_id
    tr = ds["train"]
    seqs, labels, cur = [], [], None
    for i in range(tr.n):
        h = tr.seqs[i][tr.seqs[i] != pad]
        if h.size == 0:
            cur = []
            seqs.append(cur)
            labels.append(f"train:{i}")
        elif cur is None or h.tolist() != cur[-tr.seq_len:]:
            raise fail(d / "train_data.df", "seq", "the last items of the running user sequence (every prefix of a "
                       "user's sequence, in order, from an empty history)", h.tolist(), row=i)
        cur.append(int(tr.next[i]))
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
    for split in ("val", "test"):
        s = ds[split]
        for i in range(s.n):
            h = s.seqs[i][s.seqs[i] != pad]
            seqs.append(np.concatenate([h, [s.next[i]]]).astype(np.int64))
            labels.append(f"{split}:{i}")
    return seqs, labels, ds.item_num


def build(cfg: LOOConfig, shared: str | Path | None = None) -> LOOData:
    """The LOO protocol of ``cfg.source`` from ``<shared>/data`` (default :data:`reimpl.paths.DATA`)."""
    from reimpl.paths import DATA

    data = Path(shared) / "data" if shared is not None else DATA
    if cfg.source == "ml-100k":
        path = data / "ml-100k" / "u.data"
        seqs, users, item_num = ml100k_sequences(path, cfg.min_rating)
        return leave_one_out(seqs, users, item_num, cfg, "ml100k-loo", path)
    path = data / "ilora" / "lastfm"
    seqs, users, item_num = lastfm_sequences(path)
    return leave_one_out(seqs, users, item_num, cfg, "lastfm-loo", path)


def to_student_data(ds: SeqDataset):
    """A :class:`reimpl.dllm2rec.train.DLLM2RecData` (no teacher files) for the engine / fixed mode."""
    from reimpl.dllm2rec.evaluate import EvalSplit
    from reimpl.dllm2rec.train import DLLM2RecData

    ev = {k: EvalSplit(ds[k].seqs, ds[k].lens, ds[k].next.astype(np.float64), str(ds[k].source))
          for k in ("val", "test")}
    tr = ds["train"]
    return DLLM2RecData(ds.item_num, ds.seq_len, tr.seqs, tr.lens, tr.next, ev["val"], ev["test"])
