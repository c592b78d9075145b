"""pandas frame <-> SeqSplit conversion shared by the iLoRA and DLLM2Rec layouts.

Both references keep a split as a DataFrame with columns ``seq`` (a list per row), ``len_seq`` and ``next``
(iLoRA/data/lastfm_data.py:70-71, DLLM2Rec/main.py:360-366). MovieLens frames hold ``(item, rating)``
tuples in ``seq`` and a tuple in ``next`` (iLoRA/data/movielens_data.py:101-106).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from .types import PADDING_RATING, DataError, SeqSplit, fail, to_int, to_int64_matrix

COLUMNS = ("seq", "len_seq", "next")


def select_splits(data_dir: Path, files: dict[str, str], splits) -> dict[str, Path]:
    """{split: path} for the requested splits (None: every split whose file exists, at least one)."""
    if splits is None:
        splits = tuple(k for k, f in files.items() if (data_dir / f).is_file())
        if not splits:
            raise DataError(f"{data_dir}: no split file ({', '.join(files.values())}) found")
    for k in splits:
        if k not in files:
            raise DataError(f"{data_dir}: unknown split {k!r} (expected one of {list(files)})")
    return {k: data_dir / files[k] for k in splits}


def read_pickle_frame(path: Path) -> pd.DataFrame:
    """Unpickle a DataFrame; a missing file or any other object raises DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file missing")
    try:
        df = pd.read_pickle(path)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable pandas pickle ({type(e).__name__}: {e})") from e
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{path}: expected a pandas DataFrame, got {type(df).__name__}")
    return df


def require_columns(df: pd.DataFrame, path: Path | str, columns=COLUMNS) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise fail(path, missing[0], f"columns {list(columns)}", f"columns {list(df.columns)}")


def int_column(values, path, field_: str) -> np.ndarray:
    """Column -> int64 [N]; NaN, non-integral floats and non-numbers raise naming the row."""
    if isinstance(values, (pd.Series, np.ndarray)) and values.dtype.kind in "iu":
        return np.asarray(values).astype(np.int64)
    return np.array([to_int(x, path, field_, i) for i, x in enumerate(values)], dtype=np.int64)


def frame_to_split(df: pd.DataFrame, path: Path | str, name: str, item_num: int,
                   seq_len: int | None = None, rated: bool | None = None) -> SeqSplit:
    """A reference frame -> validated SeqSplit. ``rated`` None: detect ``(item, rating)`` tuples in ``seq``."""
    require_columns(df, path)
    seqs_raw = list(df["seq"])
    nxt_raw = list(df["next"])
    if rated is None:
        first = next((r for r in seqs_raw if isinstance(r, (list, tuple)) and len(r)), None)
        rated = first is not None and isinstance(first[0], tuple)
    seq_r = next_r = None
    if rated:
        pairs = []
        for i, r in enumerate(seqs_raw):
            if not isinstance(r, (list, tuple)) or not all(isinstance(p, tuple) and len(p) == 2 for p in r):
                raise fail(path, "seq", "a list of (item_id, rating) tuples", r, row=i)
            pairs.append(r)
        width = seq_len if seq_len is not None else (len(pairs[0]) if pairs else 0)
        seqs = to_int64_matrix([[p[0] for p in r] for r in pairs], path, "seq", width)
        seq_r = to_int64_matrix([[p[1] for p in r] for r in pairs], path, "seq rating", width)
        for i, t in enumerate(nxt_raw):
            if not (isinstance(t, tuple) and len(t) == 2):
                raise fail(path, "next", "an (item_id, rating) tuple", t, row=i)
        nxt = np.array([to_int(t[0], path, "next", i) for i, t in enumerate(nxt_raw)], dtype=np.int64)
        next_r = np.array([to_int(t[1], path, "next rating", i) for i, t in enumerate(nxt_raw)], dtype=np.int64)
    else:
        width = seq_len
        if width is None and seqs_raw and isinstance(seqs_raw[0], (list, tuple)):
            width = len(seqs_raw[0])
        seqs = to_int64_matrix(seqs_raw, path, "seq", width)
        nxt = int_column(df["next"], path, "next")
    if seq_len is not None and seqs.shape[1] != seq_len:
        raise fail(path, "seq", f"sequence length {seq_len}", seqs.shape[1])
    lens = int_column(df["len_seq"], path, "len_seq")
    return SeqSplit(name=name, seqs=seqs, lens=lens, next=nxt,
                    padding_id=item_num, item_num=item_num, source=str(path),
                    seq_ratings=seq_r,
                    next_ratings=next_r)


def split_to_frame(s: SeqSplit, columns=COLUMNS) -> pd.DataFrame:
    """SeqSplit -> frame with Python-int lists in ``seq`` (as the shipped LastFM/Steam frames hold) or,
    for rated splits, ``(np.int64, np.int64)`` tuples with padding ``(padding_id, 0)`` as Python ints
    (as the shipped MovieLens frames hold); ``len_seq``/``next`` int64; index 0..N-1."""
    if s.seq_ratings is None:
        seq_col = s.seqs.tolist()
        next_col = s.next.astype(np.int64)
    else:
        seq_col = []
        for ids, rs in zip(s.seqs, s.seq_ratings):
            seq_col.append([(s.padding_id, PADDING_RATING) if i == s.padding_id else (np.int64(i), np.int64(r))
                            for i, r in zip(ids, rs)])
        next_col = pd.Series([(np.int64(i), np.int64(r)) for i, r in zip(s.next, s.next_ratings)], dtype=object)
    data = {"seq": pd.Series(seq_col, dtype=object), "len_seq": s.lens.astype(np.int64), "next": next_col}
    return pd.DataFrame({c: data[c] for c in columns}, index=pd.RangeIndex(s.n))
