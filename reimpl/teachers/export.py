"""One export contract for every teacher: the files DLLM2Rec reads, and their compact committed form.

DLLM2Rec @ b78cc658 ``main.py:326-343`` reads ``tocf/<data>/``:

* ``myrank_train.txt``     ``[N_train, K]`` item ids, best first, row ``i`` = train-frame row ``i`` (l.434);
* ``confidence_train.txt`` ``[N_train, K]`` distances, weight ``exp(-c)`` (l.451-454);
* ``all_embeddings.pt``    ``[item_num, 4096]`` float32 (``fc_4096_64`` hard-codes 4096, l.62);

and the project adds ``rows.txt`` (the train row of each exported row: the alignment every consumer checks) and,
for teachers with experts or an ensemble, ``uncertainty_train.txt`` ``[N_train]`` (UAMD).

Compact form (``<name>.safetensors``, the committed results store; no file > 20 MB): ``rows`` int32, ``rank`` int32,
``confidence`` float16, ``embeddings`` float16 *unpadded* ``[item_num, d]``, optional ``uncertainty`` float16, and
metadata (``item_num``, ``n_train``, ``teacher``, ``d``). :func:`read_compact` pads the embeddings to ``pad_dim``
(4096) with zero columns, which a Linear maps exactly as it maps the unpadded vector.

Refused at write *and* at read, naming the file and the row (:class:`reimpl.data.DataError`): rows not aligned with
the train split (``rows`` must be ``expect_rows``, by default ``0 .. n_train-1``), item ids outside
``[0, item_num)`` or repeated in a row, non-finite or negative confidences (also after the float16 cast: a
confidence above 65,504 would become inf), non-finite embeddings, and an uncertainty that is not finite and >= 0.
The text files are read back through the typed readers of :mod:`reimpl.data.teacher`. A write goes to a temporary
sibling and is renamed into place only when complete, so a killed export leaves nothing a reader would trust.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reimpl.data import DataError
from reimpl.data import teacher as tf
from reimpl.data.types import fail

ROWS_FILE = "rows.txt"
PAD_DIM = 4096            # DLLM2Rec main.py:62 fc_4096_64
F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class TeacherFiles:
    """One teacher export in memory (shapes: N exported rows, K ranked items, I items, d teacher width)."""

    rows: np.ndarray                          # [N] int64 train-frame rows
    rank: np.ndarray                          # [N, K] int64 item ids, best first
    confidence: np.ndarray                    # [N, K] float64 distances (lower = more confident)
    embeddings: torch.Tensor | None = None    # [I, d] float32 (unpadded in memory unless read padded)
    uncertainty: np.ndarray | None = None     # [N] float64 >= 0


def _expected_rows(n_train: int | None, expect_rows) -> np.ndarray | None:
    if expect_rows is not None:
        return np.asarray(expect_rows, dtype=np.int64).reshape(-1)
    return None if n_train is None else np.arange(n_train, dtype=np.int64)


def check(files: TeacherFiles, item_num: int, n_train: int | None = None, expect_rows=None,
          where: str | Path = "<memory>") -> None:
    """Raise :class:`DataError` ``<where>/<file>: row <i>: field ...`` unless ``files`` is a well-formed export.

    ``n_train``: the train split's row count (rows must lie in ``[0, n_train)``); ``expect_rows``: the exact rows in
    order (default all ``0 .. n_train-1``; DLLM2Rec picks teacher rows by the frame index, main.py:434).
    """
    base = Path(str(where))
    # a compact file names its tensors through the field; a tocf folder names the text file
    at = (lambda name: base) if base.suffix == ".safetensors" else (lambda name: base / name)
    rows = np.asarray(files.rows)
    rank = np.asarray(files.rank)
    conf = np.asarray(files.confidence)
    p_rows, p_rank, p_conf = at(ROWS_FILE), at(tf.RANK_FILE), at(tf.CONF_FILE)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise fail(p_rows, "rows", "[N] integer train rows", f"{rows.dtype} {list(rows.shape)}")
    if rank.ndim != 2 or rank.shape[0] != rows.shape[0]:
        raise fail(p_rank, "rank", f"[N={rows.shape[0]}, K] (one row per entry of {ROWS_FILE})", list(rank.shape))
    if rank.shape[0] < 2 or rank.shape[1] < 2:
        raise fail(p_rank, "rank", "N >= 2 and K >= 2 (DLLM2Rec's np.loadtxt squeezes a single row/column)",
                   list(rank.shape))
    if conf.shape != rank.shape:
        raise fail(p_conf, "confidence", f"the shape of {tf.RANK_FILE} {list(rank.shape)}", list(conf.shape))
    want = _expected_rows(n_train, expect_rows)
    if n_train is not None:
        bad = np.nonzero((rows < 0) | (rows >= n_train))[0]
        if bad.size:
            raise fail(p_rows, "rows", f"train rows in [0, n_train={n_train})", int(rows[bad[0]]), row=int(bad[0]))
    if want is not None:
        if rows.shape != want.shape:
            raise fail(p_rows, "rows", f"{len(want)} rows aligned with the train split", f"{len(rows)} rows")
        bad = np.nonzero(rows != want)[0]
        if bad.size:
            i = int(bad[0])
            raise fail(p_rows, "rows", f"train row {int(want[i])} here (aligned with the train split)", int(rows[i]),
                       row=i)
    if not np.issubdtype(rank.dtype, np.integer):
        raise fail(p_rank, "rank", "integer item ids", str(rank.dtype))
    bad = (rank < 0) | (rank >= item_num)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise fail(p_rank, "rank", f"item ids in [0, item_num={item_num}) (column {j})", int(rank[i, j]), row=int(i))
    srt = np.sort(rank, axis=1)
    dup = np.nonzero((srt[:, 1:] == srt[:, :-1]).any(1))[0]
    if dup.size:
        i = int(dup[0])
        raise fail(p_rank, "rank", "distinct item ids within a row", rank[i].tolist(), row=i)
    badc = ~np.isfinite(conf) | (conf < 0)
    if badc.any():
        i, j = np.argwhere(badc)[0]
        raise fail(p_conf, "confidence", f"finite values >= 0 (column {j})", float(conf[i, j]), row=int(i))
    if files.embeddings is not None:
        e = files.embeddings
        p = at(tf.EMB_FILE)
        if e.dim() != 2 or e.shape[0] != item_num:
            raise fail(p, "embeddings", f"[item_num={item_num}, d]", list(e.shape))
        bad_e = torch.nonzero(~torch.isfinite(e).all(1))
        if bad_e.numel():
            raise fail(p, "embeddings", "finite values in every item row", "a non-finite value", row=int(bad_e[0, 0]))
    if files.uncertainty is not None:
        u = np.asarray(files.uncertainty)
        p = at(tf.UNCERTAINTY_FILE)
        if u.shape != rows.shape:
            raise fail(p, "uncertainty", f"[N={len(rows)}] one value per row", list(u.shape))
        bad = np.nonzero(~np.isfinite(u) | (u < 0))[0]
        if bad.size:
            raise fail(p, "uncertainty", "a finite value >= 0", float(u[bad[0]]), row=int(bad[0]))


def _atomic_dir(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _publish_dir(tmp: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


# ------------------------------------------------------------------------------------- DLLM2Rec text files
def write_tocf(folder: str | Path, files: TeacherFiles, item_num: int, n_train: int | None = None,
               expect_rows=None, pad_dim: int | None = PAD_DIM) -> Path:
    """Write ``folder/{myrank_train.txt, confidence_train.txt, all_embeddings.pt, rows.txt[, uncertainty_train.txt]}``
    (checked first; written to a temporary sibling, renamed when complete). ``pad_dim``: zero-pad the embedding
    width (4096 for the unmodified DLLM2Rec; None keeps d)."""
    folder = Path(folder)
    check(files, item_num, n_train, expect_rows, where=folder)
    tmp = _atomic_dir(folder)
    np.savetxt(tmp / ROWS_FILE, np.asarray(files.rows, np.int64), fmt="%d")
    np.savetxt(tmp / tf.RANK_FILE, np.asarray(files.rank, np.int64), fmt="%d")
    np.savetxt(tmp / tf.CONF_FILE, np.asarray(files.confidence, np.float64), fmt="%.17g")   # exact round trip
    if files.embeddings is not None:
        torch.save(pad_embeddings(files.embeddings, pad_dim).contiguous(), tmp / tf.EMB_FILE)
    if files.uncertainty is not None:
        np.savetxt(tmp / tf.UNCERTAINTY_FILE, np.asarray(files.uncertainty, np.float64), fmt="%.17g")
    _publish_dir(tmp, folder)
    return folder


def read_tocf(folder: str | Path, item_num: int, n_train: int | None = None, expect_rows=None) -> TeacherFiles:
    """Read a ``tocf`` folder through the typed readers (:mod:`reimpl.data.teacher`) and check it as at write."""
    folder = Path(folder)
    p_rows = folder / ROWS_FILE
    if not p_rows.is_file():
        raise DataError(f"{p_rows}: missing (which train row each exported row is; needed to check alignment)")
    try:
        rows = np.loadtxt(p_rows, dtype=np.int64, ndmin=1)
    except ValueError as e:
        raise DataError(f"{p_rows}: not one integer train row per line ({e})") from e
    rank = tf.read_ranking(folder / tf.RANK_FILE, item_num, n_rows=len(rows))
    conf = tf.read_confidence(folder / tf.CONF_FILE, n_rows=len(rows), shape=rank.shape)
    emb = tf.read_embeddings(folder / tf.EMB_FILE, item_num) if (folder / tf.EMB_FILE).is_file() else None
    unc = (tf.read_uncertainty(folder / tf.UNCERTAINTY_FILE, n_rows=len(rows))
           if (folder / tf.UNCERTAINTY_FILE).is_file() else None)
    out = TeacherFiles(rows, rank, conf, emb, unc)
    check(out, item_num, n_train, expect_rows, where=folder)
    return out


def pad_embeddings(emb: torch.Tensor, pad_dim: int | None = PAD_DIM) -> torch.Tensor:
    """``[I, d]`` -> float32 ``[I, pad_dim]`` with zero columns on the right (``pad_dim`` None: unchanged)."""
    emb = emb.detach().to(torch.float32).cpu()
    if pad_dim is None:
        return emb
    if pad_dim < emb.shape[1]:
        raise ValueError(f"pad_embeddings: pad_dim={pad_dim} is smaller than d={emb.shape[1]}")
    return torch.nn.functional.pad(emb, (0, pad_dim - emb.shape[1]))


# -------------------------------------------------------------------------------------------- compact form
def _to_f16(a: np.ndarray, path: Path, field_: str) -> np.ndarray:
    with np.errstate(over="ignore"):   # overflow is reported below, by row
        out = np.asarray(a, np.float64).astype(np.float16)
    bad = ~np.isfinite(out)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise fail(path, field_, f"values representable in float16 (|x| <= {F16_MAX:g})",
                   float(np.asarray(a).reshape(len(out), -1)[i].max()), row=i)
    return out


def write_compact(path: str | Path, files: TeacherFiles, item_num: int, n_train: int | None = None,
                  expect_rows=None, meta: dict | None = None) -> Path:
    """``files`` -> one safetensors file (int32 rows/ranks, float16 confidences/embeddings/uncertainty), checked
    before and after the float16 cast, written atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    check(files, item_num, n_train, expect_rows, where=path)
    if item_num > np.iinfo(np.int32).max:
        raise ValueError(f"write_compact: item_num {item_num} does not fit int32")
    t = {"rows": np.ascontiguousarray(files.rows, np.int32), "rank": np.ascontiguousarray(files.rank, np.int32),
         "confidence": _to_f16(files.confidence, path, "confidence")}
    if files.embeddings is not None:
        t["embeddings"] = _to_f16(files.embeddings.detach().float().cpu().numpy(), path, "embeddings")
    if files.uncertainty is not None:
        t["uncertainty"] = _to_f16(files.uncertainty, path, "uncertainty")
    md = {"item_num": str(item_num), "n_train": str(n_train if n_train is not None else ""),
          "meta": json.dumps(meta or {}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(t, str(tmp), metadata=md)
    os.chmod(tmp, 0o644)   # safetensors creates the file private; a results store is read by everyone
    os.replace(tmp, path)
    return path


def read_compact(path: str | Path, item_num: int, n_train: int | None = None, expect_rows=None,
                 pad_dim: int | None = PAD_DIM) -> tuple[TeacherFiles, dict]:
    """Compact file -> (TeacherFiles in the dtypes DLLM2Rec uses: int64 ranks, float64 confidences, float32
    embeddings padded to ``pad_dim``; its metadata), checked as at write. ``item_num`` must match the file's."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: compact teacher export missing")
    try:
        with safe_open(str(path), framework="np") as f:
            md = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 -- safetensors raises several types for a bad file
        raise DataError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    for k in ("rows", "rank", "confidence"):
        if k not in t:
            raise fail(path, k, f"a tensor '{k}'", "absent")
    if md.get("item_num") and int(md["item_num"]) != item_num:
        raise fail(path, "item_num", f"{item_num} (this data set)", int(md["item_num"]))
    emb = None
    if "embeddings" in t:
        emb = torch.from_numpy(t["embeddings"].astype(np.float32))
    files = TeacherFiles(t["rows"].astype(np.int64), t["rank"].astype(np.int64), t["confidence"].astype(np.float64),
                         emb, t["uncertainty"].astype(np.float64) if "uncertainty" in t else None)
    check(files, item_num, n_train, expect_rows, where=path)
    if emb is not None:
        files.embeddings = pad_embeddings(emb, pad_dim)
    meta = json.loads(md.get("meta", "{}"))
    return files, meta


def compact_to_tocf(compact: str | Path, folder: str | Path, item_num: int, n_train: int | None = None,
                    expect_rows=None, pad_dim: int | None = PAD_DIM) -> Path:
    """Materialise the DLLM2Rec text files from a committed compact export (what a distillation plan reads)."""
    files, _ = read_compact(compact, item_num, n_train, expect_rows, pad_dim=None)
    return write_tocf(folder, files, item_num, n_train, expect_rows, pad_dim=pad_dim)


def ranking_from_scores(scores: torch.Tensor, k: int, item_ids: torch.Tensor | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items and distance-like confidences from inner-product scores.

    scores ``[N, C]`` (higher = better; over all items when ``item_ids`` is None, else over per-row candidates
    ``item_ids [N, C]``). Confidence = ``-log_softmax(scores)`` over the C columns (the teacher's negative
    log-probability), so DLLM2Rec's weight ``exp(-c)`` is the teacher's probability of the item.
    Returns (rank ``[N, k]`` int64, confidence ``[N, k]`` float64).
    """
    s = torch.as_tensor(scores).detach().to(torch.float64)
    if s.dim() != 2 or k > s.shape[1]:
        raise ValueError(f"ranking_from_scores: scores must be [N, C >= k={k}], got {tuple(s.shape)}")
    if torch.isnan(s).any():
        i = int(torch.nonzero(torch.isnan(s))[0, 0])
        raise ValueError(f"ranking_from_scores: scores hold NaN (row {i})")
    top = torch.topk(s, k, dim=1)
    conf = -(top.values - torch.logsumexp(s, dim=1, keepdim=True))
    ids = top.indices if item_ids is None else torch.as_tensor(item_ids).gather(1, top.indices)
    return ids.numpy().astype(np.int64), conf.numpy()


def main(argv=None) -> int:
    """``python -m reimpl.teachers.export COMPACT FOLDER [--item_num 4606] [--n_train 50800]``: the DLLM2Rec files
    (``tocf/<data>/`` layout, embeddings padded to 4096) from a committed compact export."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m reimpl.teachers.export", description=main.__doc__)
    ap.add_argument("compact")
    ap.add_argument("folder")
    ap.add_argument("--item_num", type=int, default=4606)
    ap.add_argument("--n_train", type=int, default=50800)
    ap.add_argument("--pad_dim", type=int, default=PAD_DIM)
    a = ap.parse_args(argv)
    print(compact_to_tocf(a.compact, a.folder, a.item_num, a.n_train, pad_dim=a.pad_dim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
