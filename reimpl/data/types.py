"""One typed form for every next-item data set: ``SeqSplit`` (one split) and ``SeqDataset`` (all splits).

Both references read fixed-length, right-padded histories with a padding id equal to the item count:
DLLM2Rec masks ``states != item_num`` (DLLM2Rec/main.py:137-141, SASRec forward) and sizes embeddings
``item_num + 1`` (main.py:49-52); iLoRA hard-codes ``padding_item_id`` = item count
(iLoRA/data/lastfm_data.py:19, movielens_data.py:18, steam_data.py:18).

``len_seq`` rule, measured on every published frame (see docs/data.md): ``len_seq == max(1, #non-padding)``.
Rows with an empty history (all padding) carry ``len_seq == 1``, not 0 (LastFM train: 976 rows, Steam test: 1).
DLLM2Rec's SASRec gathers position ``len_seq - 1`` (main.py:187), so 0 would index position -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PADDING_RATING = 0  # iLoRA MovieLens pads (item, rating) with (1682, 0) (movielens_data.py:19)


class DataError(ValueError):
    """Malformed data set: the message names the file, row, field and what was expected."""


def fail(source: str | Path | None, field_: str, expected: str, got: object = None,
         row: int | None = None) -> DataError:
    """Build a DataError whose message is ``<file>: row <i>: field '<f>': expected <...>, got <...>``."""
    where = f"{source if source is not None else '<memory>'}"
    if row is not None:
        where += f": row {row}"
    msg = f"{where}: field '{field_}': expected {expected}"
    if got is not None:
        msg += f", got {got!r}"
    return DataError(msg)


def lens_from_seqs(seqs: np.ndarray, padding_id: int) -> np.ndarray:
    """``len_seq`` as the published frames carry it: ``max(1, #non-padding)``. [N, L] -> [N]."""
    return np.maximum(1, (seqs != padding_id).sum(axis=1)).astype(np.int64)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class SeqSplit:
    """One split of next-item samples.

    seqs    int64 [N, L]  item ids, right-padded with ``padding_id``
    lens    int64 [N]     ``max(1, #non-padding)`` per row
    next    int64 [N]     target item id in [0, item_num)
    seq_ratings  int64 [N, L] | None   MovieLens only: rating per history slot, 0 at padding
    next_ratings int64 [N] | None      MovieLens only: rating of the target
    """

    name: str
    seqs: np.ndarray
    lens: np.ndarray
    next: np.ndarray
    padding_id: int
    item_num: int
    source: str | None = None
    seq_ratings: np.ndarray | None = None
    next_ratings: np.ndarray | None = None

    def __post_init__(self) -> None:
        for f in ("seqs", "lens", "next", "seq_ratings", "next_ratings"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, _frozen(np.asarray(v)))
        object.__setattr__(self, "padding_id", int(self.padding_id))
        object.__setattr__(self, "item_num", int(self.item_num))
        validate_split(self)

    @property
    def n(self) -> int:
        return int(self.seqs.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.seqs.shape[1])

    def __len__(self) -> int:
        return self.n

    def __eq__(self, other: object) -> bool:  # array-aware equality; ``source`` is provenance, not content
        if not isinstance(other, SeqSplit):
            return NotImplemented
        if (self.name, self.padding_id, self.item_num) != (other.name, other.padding_id, other.item_num):
            return False
        for f in ("seqs", "lens", "next", "seq_ratings", "next_ratings"):
            a, b = getattr(self, f), getattr(other, f)
            if (a is None) != (b is None):
                return False
            if a is not None and (a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b)):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def select(self, rows: np.ndarray) -> "SeqSplit":
        """Rows ``rows`` (int indices or bool mask) as a new split."""
        r = lambda a: None if a is None else a[rows]  # noqa: E731
        return SeqSplit(self.name, self.seqs[rows], self.lens[rows], self.next[rows], self.padding_id,
                        self.item_num, self.source, r(self.seq_ratings), r(self.next_ratings))


def validate_split(s: SeqSplit) -> None:
    """Raise DataError at the first violated invariant (file, row, field, expected)."""
    src = s.source
    if s.padding_id != s.item_num:
        raise fail(src, "padding_id", f"padding id == item_num == {s.item_num} (both references require it)",
                   s.padding_id)
    if s.item_num <= 0:
        raise fail(src, "item_num", "a positive item count", s.item_num)
    if s.seqs.ndim != 2 or s.seqs.dtype != np.int64:
        raise fail(src, "seq", "int64 array [N, L]", f"{s.seqs.dtype} array of shape {s.seqs.shape}")
    n, L = s.seqs.shape
    if L == 0:
        raise fail(src, "seq", "sequence length L >= 1", L)
    for f, shape in (("lens", (n,)), ("next", (n,))):
        a = getattr(s, f)
        if a.dtype != np.int64 or a.shape != shape:
            raise fail(src, "len_seq" if f == "lens" else f, f"int64 array of shape {shape}",
                       f"{a.dtype} array of shape {a.shape}")
    seqs, pad = s.seqs, s.padding_id
    bad = (seqs != pad) & ((seqs < 0) | (seqs >= s.item_num))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise fail(src, "seq", f"item ids in [0, {s.item_num}) or padding {pad} (position {j})",
                   int(seqs[i, j]), row=int(i))
    is_pad = seqs == pad
    # right padding: once a padding slot appears, the rest of the row is padding
    after_pad = np.cumsum(is_pad, axis=1) > 0
    bad_rows = np.nonzero((after_pad & ~is_pad).any(axis=1))[0]
    if bad_rows.size:
        i = int(bad_rows[0])
        raise fail(src, "seq", f"right-padded history (all padding {pad} after the first padding slot)",
                   seqs[i].tolist(), row=i)
    want = lens_from_seqs(seqs, pad)
    bad_rows = np.nonzero(s.lens != want)[0]
    if bad_rows.size:
        i = int(bad_rows[0])
        raise fail(src, "len_seq", f"max(1, #non-padding items) = {int(want[i])}", int(s.lens[i]), row=i)
    bad_rows = np.nonzero((s.next < 0) | (s.next >= s.item_num))[0]
    if bad_rows.size:
        i = int(bad_rows[0])
        raise fail(src, "next", f"item id in [0, {s.item_num})", int(s.next[i]), row=i)
    if (s.seq_ratings is None) != (s.next_ratings is None):
        raise fail(src, "rating", "both seq and next ratings, or neither")
    if s.seq_ratings is not None:
        r, nr = s.seq_ratings, s.next_ratings
        if r.dtype != np.int64 or r.shape != seqs.shape:
            raise fail(src, "seq rating", f"int64 array of shape {seqs.shape}", f"{r.dtype} {r.shape}")
        if nr.dtype != np.int64 or nr.shape != (n,):
            raise fail(src, "next rating", f"int64 array of shape {(n,)}", f"{nr.dtype} {nr.shape}")
        bad = np.argwhere(is_pad & (r != PADDING_RATING))
        if bad.size:
            i, j = bad[0]
            raise fail(src, "seq rating", f"rating {PADDING_RATING} at padding slot {j}", int(r[i, j]), row=int(i))
        bad = np.argwhere(~is_pad & (r < 1))
        if bad.size:
            i, j = bad[0]
            raise fail(src, "seq rating", f"rating >= 1 at item slot {j}", int(r[i, j]), row=int(i))
        bad_rows = np.nonzero(nr < 1)[0]
        if bad_rows.size:
            i = int(bad_rows[0])
            raise fail(src, "next rating", "rating >= 1", int(nr[i]), row=i)


@dataclass(frozen=True, eq=False)
class SeqDataset:
    """A named data set: its splits (``train``/``val``/``test``, any subset) and optional titles."""

    name: str
    item_num: int
    padding_id: int
    seq_len: int
    splits: dict[str, SeqSplit] = field(default_factory=dict)
    titles: dict[int, str] | None = None

    def __post_init__(self) -> None:
        for k, s in self.splits.items():
            if s.item_num != self.item_num or s.padding_id != self.padding_id or s.seq_len != self.seq_len:
                raise fail(s.source, "split " + k,
                           f"item_num={self.item_num}, padding_id={self.padding_id}, seq_len={self.seq_len}",
                           f"item_num={s.item_num}, padding_id={s.padding_id}, seq_len={s.seq_len}")
        if self.titles is not None:
            bad = [i for i in self.titles if not 0 <= i < self.item_num]
            if bad:
                raise fail(None, "titles", f"title ids in [0, {self.item_num})", bad[:5])

    def __getitem__(self, split: str) -> SeqSplit:
        if split not in self.splits:
            raise DataError(f"data set {self.name!r}: split {split!r} missing (has {sorted(self.splits)})")
        return self.splits[split]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeqDataset):
            return NotImplemented
        return ((self.name, self.item_num, self.padding_id, self.seq_len, self.titles)
                == (other.name, other.item_num, other.padding_id, other.seq_len, other.titles)
                and self.splits.keys() == other.splits.keys()
                and all(self.splits[k] == other.splits[k] for k in self.splits))

    __hash__ = None  # type: ignore[assignment]


def to_int64_matrix(rows: list, source: str | Path | None, field_: str, width: int | None = None) -> np.ndarray:
    """List of equal-length integer lists -> int64 [N, L]; ragged rows, floats, NaN, bools raise."""
    if width is None and rows:
        width = len(rows[0]) if isinstance(rows[0], (list, tuple, np.ndarray)) else None
    if all(isinstance(r, (list, tuple, np.ndarray)) and len(r) == width for r in rows):
        try:  # fast path: a clean integer matrix
            a = np.asarray(rows)
        except (ValueError, TypeError):
            a = None
        # bools would pass as 0/1 through asarray: require genuine integer cells
        if (a is not None and a.ndim == 2 and a.dtype.kind in "iu"
                and all(issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_))
                        for t in {type(x) for r in rows for x in r})):
            return a.astype(np.int64).reshape(len(rows), width or 0)
    out = np.empty((len(rows), width or 0), dtype=np.int64)
    for i, r in enumerate(rows):
        if not isinstance(r, (list, tuple, np.ndarray)):
            raise fail(source, field_, "a list of item ids", r, row=i)
        if len(r) != width:
            raise fail(source, field_, f"{width} entries (constant sequence length)", f"{len(r)} entries", row=i)
        for j, x in enumerate(r):
            out[i, j] = to_int(x, source, field_, i)
    return out


def to_int(x: object, source: str | Path | None, field_: str, row: int) -> int:
    """One integer cell; accepts ints and integral floats (DLLM2Rec CSVs write ``next`` as ``4881.0``)."""
    if isinstance(x, (bool, np.bool_)):
        raise fail(source, field_, "an integer item id", x, row=row)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        if np.isfinite(x) and float(x).is_integer():
            return int(x)
        raise fail(source, field_, "an integer item id (finite, integral)", x, row=row)
    raise fail(source, field_, "an integer item id", x, row=row)
