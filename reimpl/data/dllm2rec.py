"""DLLM2Rec layout: ``data/<name>/{data_statis.df, train_data.df, val_data.csv, test_data.csv}``.

What the reference reads: ``data_statis.df`` row 0 ``seq_size``/``item_num`` (DLLM2Rec/main.py:284-288);
``train_data.df`` pickled frame sampled by row and indexed by its index into the teacher files
(main.py:326, 360-375, 472-474), ``seq`` a list of ints or a string it literal-evals; ``val_data.csv`` /
``test_data.csv`` read by ``csv.DictReader`` with ``seq`` eval'd, ``len_seq`` int, ``next`` float
(main.py:198-212). Padding id = ``item_num`` (embedding table ``item_num + 1``, mask ``!= item_num``).
The training loop scatters ``seq`` with a hard-coded ``repeat(1, 10)`` (main.py:384), so it runs only
with ``seq_size == 10``; readers here accept any length, ``write_dllm2rec`` refuses others unless told.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pandas as pd

from .frames import int_column, read_pickle_frame, require_columns, select_splits, split_to_frame
from .types import DataError, SeqDataset, SeqSplit, fail, to_int, to_int64_matrix

FILES = {"train": "train_data.df", "val": "val_data.csv", "test": "test_data.csv"}
STATIS = "data_statis.df"
REFERENCE_SEQ_LEN = 10  # main.py:384 hard-codes it


def read_statis(path: str | Path) -> tuple[int, int]:
    """``data_statis.df`` -> (seq_size, item_num) from row 0, as the reference reads it."""
    path = Path(path)
    df = read_pickle_frame(path)
    require_columns(df, path, ("seq_size", "item_num"))
    if len(df) < 1:
        raise fail(path, "seq_size", "at least one row", "0 rows")
    vals = []
    for c in ("seq_size", "item_num"):
        v = to_int(df[c].iloc[0], path, c, 0)
        if v <= 0:
            raise fail(path, c, "a positive integer", v, row=0)
        vals.append(v)
    return vals[0], vals[1]


def _parse_seq(text: str, path: Path, row: int) -> list:
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise fail(path, "seq", "a Python list literal '[i, j, ...]'", text, row=row) from None
    if not isinstance(v, (list, tuple)):
        raise fail(path, "seq", "a Python list literal '[i, j, ...]'", text, row=row)
    return list(v)


def read_eval_csv(path: str | Path, name: str, item_num: int, seq_len: int) -> SeqSplit:
    """``val_data.csv``/``test_data.csv`` -> SeqSplit. Rows are CSV rows after the header (row 0 = first)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file missing")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("seq", "len_seq", "next") if c not in cols]
        if missing:
            raise fail(path, missing[0], "header with columns ['seq', 'len_seq', 'next']", cols)
        seqs, lens, nxt = [], [], []
        for i, row in enumerate(reader):
            if None in row or any(row[c] is None for c in ("seq", "len_seq", "next")):
                raise fail(path, "row", "exactly 3 fields (seq, len_seq, next)", row, row=i)
            seqs.append(_parse_seq(row["seq"], path, i))
            lens.append(_num(row["len_seq"], path, "len_seq", i))
            nxt.append(_num(row["next"], path, "next", i))
    arr = to_int64_matrix(seqs, path, "seq", seq_len)
    return SeqSplit(name=name, seqs=arr.reshape(len(seqs), seq_len), lens=np.array(lens, dtype=np.int64),
                    next=np.array(nxt, dtype=np.int64), padding_id=item_num, item_num=item_num, source=str(path))


def _num(text: str, path: Path, field_: str, row: int) -> int:
    """A CSV number: ints, or integral floats like ``4881.0`` (how the shipped ``next`` is written)."""
    try:
        v: float | int = int(text)
    except ValueError:
        try:
            v = float(text)
        except ValueError:
            raise fail(path, field_, "an integer", text, row=row) from None
    return to_int(v, path, field_, row)


def read_train_frame(path: str | Path, item_num: int, seq_len: int) -> SeqSplit:
    """``train_data.df`` -> SeqSplit; ``seq`` may be lists or their string form (main.py:370-373).
    The index must be 0..N-1 in file order: the teacher files are addressed by it."""
    path = Path(path)
    df = read_pickle_frame(path)
    require_columns(df, path)
    if not df.index.equals(pd.RangeIndex(len(df))):
        raise fail(path, "index", "0..N-1 in order (teacher rows are picked by index)", list(df.index[:5]))
    seqs = [(_parse_seq(s, path, i) if isinstance(s, str) else s) for i, s in enumerate(df["seq"])]
    nxt = [(_num(s, path, "next", i) if isinstance(s, str) else s) for i, s in enumerate(df["next"])]
    arr = to_int64_matrix(seqs, path, "seq", seq_len)
    return SeqSplit(name="train", seqs=arr.reshape(len(seqs), seq_len),
                    lens=int_column(df["len_seq"], path, "len_seq"), next=int_column(nxt, path, "next"),
                    padding_id=item_num, item_num=item_num, source=str(path))


def load_dllm2rec(data_dir: str | Path, name: str | None = None,
                  splits: tuple[str, ...] | None = None) -> SeqDataset:
    """A DLLM2Rec ``data/<name>`` directory -> SeqDataset (no titles in this layout).

    splits None: every split file present (at least one); a named split whose file is absent raises.
    """
    data_dir = Path(data_dir)
    seq_len, item_num = read_statis(data_dir / STATIS)
    out = {}
    for k, path in select_splits(data_dir, FILES, splits).items():
        out[k] = (read_train_frame(path, item_num, seq_len) if k == "train"
                  else read_eval_csv(path, k, item_num, seq_len))
    return SeqDataset(name=name or data_dir.name, item_num=item_num, padding_id=item_num, seq_len=seq_len,
                      splits=out, titles=None)


def write_eval_csv(s: SeqSplit, path: str | Path) -> None:
    """Byte layout of the shipped CSVs: header ``seq,len_seq,next``, ``"[a, b, ...]"``, int, float, LF."""
    lines = ["seq,len_seq,next\n"]
    for seq, n, t in zip(s.seqs.tolist(), s.lens.tolist(), s.next.tolist()):
        lines.append(f'"{seq}",{n},{float(t)!r}\n')
    Path(path).write_text("".join(lines), encoding="utf-8")


def write_dllm2rec(ds: SeqDataset, data_dir: str | Path, allow_any_seq_len: bool = False) -> Path:
    """SeqDataset -> the four DLLM2Rec files in ``data_dir`` (the ``data/<name>`` folder). Ratings are dropped
    (DLLM2Rec reads ids only). ``seq_len != 10`` is refused unless ``allow_any_seq_len`` (see module doc)."""
    data_dir = Path(data_dir)
    if ds.seq_len != REFERENCE_SEQ_LEN and not allow_any_seq_len:
        raise DataError(f"{data_dir}: field 'seq_size': expected {REFERENCE_SEQ_LEN} (DLLM2Rec/main.py:384 "
                        f"hard-codes it), got {ds.seq_len}; pass allow_any_seq_len=True to write anyway")
    data_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"seq_size": [ds.seq_len], "item_num": [ds.item_num]}, dtype=np.int64).to_pickle(
        data_dir / STATIS)
    for k, s in ds.splits.items():
        if k not in FILES:
            raise DataError(f"{data_dir}: cannot write split {k!r} in the DLLM2Rec layout (expected {list(FILES)})")
        ids_only = SeqSplit(s.name, s.seqs, s.lens, s.next, s.padding_id, s.item_num, s.source)
        if k == "train":
            split_to_frame(ids_only).to_pickle(data_dir / FILES[k])
        else:
            write_eval_csv(ids_only, data_dir / FILES[k])
    return data_dir
