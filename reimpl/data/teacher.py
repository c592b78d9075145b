"""Teacher files a DLLM2Rec student reads (``tocf/<data>/``), and the extension files beside them.

DLLM2Rec @ b78cc658 ``main.py:326-343`` loads, relative to its working directory:

* ``myrank_train.txt``     ``np.loadtxt`` -> ``torch.LongTensor`` ``[N_train, K]``: item ids, best first, row ``i``
  for train-frame row ``i`` (rows are picked by the frame index, l.434);
* ``confidence_train.txt`` ``np.loadtxt`` -> float ``[N_train, K]``, used as ``exp(-confidence)`` (l.451-454): a
  distance, lower = more confident;
* ``all_embeddings.pt``    ``torch.load`` -> ``[item_num, d_llm]``, looked up by item id (l.396-399) and fed to the
  float32 ``fc_4096_64`` (l.62).

Added by the extensions (not in the reference): ``uncertainty_train.txt`` ``[N_train]`` (UAMD) and the RDR
rationale store ``vectors.npy`` ``[M, D]`` + ``index.json`` (``rows``: the train row of each vector).

Every reader validates at load and raises :class:`DataError` as ``<file>: row <i>: field '<f>': expected <...>,
got <...>`` (rows are data rows, 0-based, as ``np.loadtxt`` counts them: blank lines and ``#`` comments are skipped).
The values returned are exactly what the reference's own loading lines produce for a valid file (same
``np.loadtxt`` call), so validation changes nothing downstream. Rules: docs/data.md.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .types import DataError, fail

RANK_FILE = "myrank_train.txt"
CONF_FILE = "confidence_train.txt"
EMB_FILE = "all_embeddings.pt"
UNCERTAINTY_FILE = "uncertainty_train.txt"
VECTORS_FILE = "vectors.npy"
INDEX_FILE = "index.json"


def _loadtxt(path: Path, field_: str, what: str) -> np.ndarray:
    """``np.loadtxt(path, ndmin=2)`` (float64) as the reference calls it; a ragged or non-numeric row is
    reported by row instead of numpy's message."""
    if not path.is_file():
        raise DataError(f"{path}: {what} file missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # "input contained no data": reported below
            return np.loadtxt(path, ndmin=2)
    except ValueError:
        pass
    width = None
    rows = [ln.split("#", 1)[0].split() for ln in path.read_text(errors="replace").splitlines()]
    for i, toks in enumerate(r for r in rows if r):
        if width is None:
            width = len(toks)
        if len(toks) != width:
            raise fail(path, field_, f"{width} whitespace-separated values per row (as row 0)", f"{len(toks)} values",
                       row=i)
        for t in toks:
            try:
                float(t)
            except ValueError:
                raise fail(path, field_, "numbers only", t, row=i) from None
    raise DataError(f"{path}: not readable by np.loadtxt")


def _rows_match(a: np.ndarray, path: Path, field_: str, n_rows: int | None) -> None:
    if n_rows is not None and a.shape[0] != n_rows:
        raise fail(path, field_, f"one row per train row (N_train = {n_rows} rows)", f"{a.shape[0]} rows")


def _first_bad(mask: np.ndarray) -> tuple[int, int]:
    i, j = np.argwhere(mask)[0]
    return int(i), int(j)


def read_ranking(path: str | Path, item_num: int, n_rows: int | None = None, min_k: int = 1) -> np.ndarray:
    """``myrank_train.txt`` -> int64 ``[N, K]`` item ids in ``[0, item_num)``.

    Refused: non-numbers, ragged rows, NaN/inf or fractional ids, ids outside ``[0, item_num)`` (the padding id
    ``item_num`` is not an item), an id twice in one row (a ranking lists each candidate once), fewer than
    ``min_k`` columns, and a row count other than ``n_rows`` (the train split's).
    """
    path = Path(path)
    a = _loadtxt(path, "rank", "teacher ranking")
    _rows_match(a, path, "rank", n_rows)
    if a.shape[1] < min_k:
        raise fail(path, "rank", f">= candidate_topk = {min_k} ids per row", f"{a.shape[1]} ids")
    bad = ~np.isfinite(a) | (a != np.round(a))
    if bad.any():
        i, j = _first_bad(bad)
        raise fail(path, "rank", f"integer item ids (finite, integral; column {j})", float(a[i, j]), row=i)
    bad = (a < 0) | (a >= item_num)
    if bad.any():
        i, j = _first_bad(bad)
        what = f"item ids in [0, {item_num}) (column {j}"
        what += f"; {item_num} is the padding id, not an item)" if a[i, j] == item_num else ")"
        raise fail(path, "rank", what, int(a[i, j]), row=i)
    ids = a.astype(np.int64)
    srt = np.sort(ids, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        i = int(np.nonzero(dup)[0][0])
        raise fail(path, "rank", "distinct item ids within a row (a ranking lists each candidate once)",
                   ids[i].tolist(), row=i)
    return ids


def read_confidence(path: str | Path, n_rows: int | None = None, shape: tuple[int, int] | None = None
                    ) -> np.ndarray:
    """``confidence_train.txt`` -> float64 ``[N, K]``, finite and ``>= 0``.

    ``exp(-confidence)`` weighs each candidate (main.py:451-454): NaN propagates into the loss, ``-inf`` and large
    negative values overflow it, so only finite non-negative distances are accepted. ``shape``: the ranking's
    ``[N, K]``, which the confidences must match column for column.
    """
    path = Path(path)
    a = _loadtxt(path, "confidence", "teacher confidence")
    _rows_match(a, path, "confidence", n_rows)
    if shape is not None and a.shape != tuple(shape):
        raise fail(path, "confidence", f"the shape of {RANK_FILE} {list(shape)}", list(a.shape))
    bad = ~np.isfinite(a) | (a < 0)
    if bad.any():
        i, j = _first_bad(bad)
        raise fail(path, "confidence", f"finite values >= 0 (a distance, weight exp(-c); column {j})",
                   float(a[i, j]), row=i)
    return a


def read_embeddings(path: str | Path, item_num: int, d_llm: int | None = None) -> torch.Tensor:
    """``all_embeddings.pt`` -> float32 ``[item_num, d_llm]``, every row finite.

    Loaded with ``weights_only=True`` (a plain tensor; no code runs). Integer or bool tables are refused: the
    students' ``fc_4096_64`` is a float32 Linear.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: teacher embedding file missing")
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a bad file
        raise DataError(f"{path}: not a readable torch.save tensor ({type(e).__name__}: {e})") from e
    if not isinstance(t, torch.Tensor):
        raise fail(path, "embeddings", "a tensor [item_num, d_llm]", type(t).__name__)
    if t.dtype != torch.float32:
        raise fail(path, "embeddings", "dtype float32 (the students' fc_4096_64 is float32)", str(t.dtype))
    want = f"shape [item_num={item_num}, d_llm={d_llm if d_llm else 'd'}]"
    if t.dim() != 2 or t.size(0) != item_num or (d_llm and t.size(1) != d_llm):
        raise fail(path, "embeddings", want, list(t.shape))
    bad = ~torch.isfinite(t).all(dim=1)
    if bad.any():
        i = int(torch.nonzero(bad)[0, 0])
        raise fail(path, "embeddings", "finite values in every item row", "a non-finite value", row=i)
    return t


def read_uncertainty(path: str | Path, n_rows: int | None = None) -> np.ndarray:
    """``uncertainty_train.txt`` (UAMD) -> float64 ``[N]``, finite and ``>= 0`` (variance or JSD)."""
    path = Path(path)
    a = _loadtxt(path, "uncertainty", "teacher uncertainty")
    if a.shape[1] != 1:
        raise fail(path, "uncertainty", "one value per row", f"{a.shape[1]} values")
    a = a[:, 0]
    _rows_match(a, path, "uncertainty", n_rows)
    bad = ~np.isfinite(a) | (a < 0)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise fail(path, "uncertainty", "a finite value >= 0", float(a[i]), row=i)
    return a


def read_rationale_vectors(store_dir: str | Path, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """RDR store -> (train rows int64 ``[M]``, vectors float32 ``[M, D]``): ``index.json`` ``rows`` distinct ids in
    ``[0, n_rows)``, one finite vector per listed row."""
    store = Path(store_dir)
    vp, ip = store / VECTORS_FILE, store / INDEX_FILE
    for p in (vp, ip):
        if not p.is_file():
            raise DataError(f"{p}: RDR vector store file missing")
    try:
        index = json.loads(ip.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{ip}: not JSON ({e})") from e
    rows = index.get("rows") if isinstance(index, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
        raise fail(ip, "rows", "a list of integer train rows", type(rows).__name__)
    rows_a = np.asarray(rows, dtype=np.int64)
    bad = np.nonzero((rows_a < 0) | (rows_a >= n_rows))[0]
    if bad.size:
        raise fail(ip, "rows", f"train rows in [0, {n_rows})", int(rows_a[bad[0]]), row=int(bad[0]))
    if len(set(rows)) != len(rows):
        raise fail(ip, "rows", "distinct train rows", "duplicates")
    try:
        vec = np.load(vp, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{vp}: not a readable .npy array ({e})") from e
    if vec.dtype != np.float32 or vec.ndim != 2 or vec.shape[0] != len(rows):
        raise fail(vp, "vectors", f"float32 [len(index.rows)={len(rows)}, D]", f"{vec.dtype} {list(vec.shape)}")
    bad = np.nonzero(~np.isfinite(vec).all(axis=1))[0]
    if bad.size:
        raise fail(vp, "vectors", "finite values", "a non-finite value", row=int(bad[0]))
    return rows_a, vec
