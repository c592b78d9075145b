"""A per-row teacher uncertainty from an ensemble of committed exports, for UAMD (issues 16-17).

UAMD weighs each row's distillation term by the teacher's uncertainty about that row. iLoRA's experts give one
(the variance across one-expert passes); the inner-product teachers here have a single head, but the results
store holds several teachers of the same split, trained differently (E4SRec on SmolLM2, a dense MiniLM retriever,
...). Their disagreement on a row is an ensemble uncertainty::

    u_b = mean over members m of (1 - |top-k(base)_b ∩ top-k(m)_b| / k)

in ``[0, 1]``: 0 where every member puts the same k items first, 1 where no member shares any of the base
teacher's top k. The base teacher's own export is left as it is; the uncertainty is written beside it as
``<base>.uncertainty.safetensors`` (``rows`` int32, ``uncertainty`` float16, metadata naming the members and k),
rows checked against the split's train rows for every member, refused at write and at read as the export
contract says (:mod:`reimpl.teachers.export`).

Usage::

    python -m reimpl.teachers.ensemble --dataset ml100k-loo --base ml100k-loo-e4srec-smollm2 \\
        --member ml100k-loo-dense-minilm-mean-id [--member ...] [--k 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from reimpl.data import DataError
from reimpl.data.types import fail

SUFFIX = ".uncertainty.safetensors"


def disagreement(base: np.ndarray, members: list[np.ndarray], k: int) -> np.ndarray:
    """``[N]`` mean over members of 1 - |top-k overlap| / k. base, members: ``[N, >= k]`` item ids, best first."""
    if not members:
        raise ValueError("disagreement: at least one member besides the base teacher is needed")
    b = base[:, :k]
    out = np.zeros(len(b))
    for m in members:
        if m.shape[0] != b.shape[0] or m.shape[1] < k:
            raise ValueError(f"disagreement: member ranks {m.shape} do not match the base's [{b.shape[0]}, >= {k}]")
        overlap = (b[:, :, None] == m[:, None, :k]).any(2).sum(1)
        out += 1.0 - overlap / k
    return out / len(members)


def path_for(base_export: Path) -> Path:
    return base_export.with_name(base_export.name.replace(".safetensors", SUFFIX))


def write(path: Path, rows: np.ndarray, u: np.ndarray, meta: dict) -> Path:
    from safetensors.numpy import save_file

    if not np.isfinite(u).all() or (u < 0).any():
        raise fail(path, "uncertainty", "finite values >= 0", "a non-finite or negative value")
    tmp = path.with_name(path.name + ".tmp")
    save_file({"rows": rows.astype(np.int32), "uncertainty": u.astype(np.float16)}, str(tmp),
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)
    return path


def read(path: Path, n_train: int) -> np.ndarray:
    """``[n_train]`` float64 uncertainty, rows checked to be ``0 .. n_train - 1``."""
    from safetensors import safe_open

    if not path.is_file():
        raise DataError(f"{path}: ensemble uncertainty missing (python -m reimpl.teachers.ensemble)")
    with safe_open(str(path), framework="np") as f:
        rows, u = f.get_tensor("rows"), f.get_tensor("uncertainty").astype(np.float64)
    if rows.shape != (n_train,) or not np.array_equal(rows, np.arange(n_train)):
        raise fail(path, "rows", f"0 .. {n_train - 1} in order (the train split)", f"{rows.shape[0]} rows")
    if not np.isfinite(u).all() or (u < 0).any():
        raise fail(path, "uncertainty", "finite values >= 0", "a non-finite or negative value")
    return u


def main(argv: list[str] | None = None) -> int:
    from reimpl.baselines.distilled import teacher_path
    from reimpl.data.protocols import LOOConfig, build
    from reimpl.teachers.export import read_compact

    ap = argparse.ArgumentParser(prog="python -m reimpl.teachers.ensemble", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=("ml100k-loo", "lastfm-loo"))
    ap.add_argument("--base", required=True)
    ap.add_argument("--member", action="append", required=True)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args(argv)
    ds = build(LOOConfig("ml-100k" if a.dataset == "ml100k-loo" else "lastfm")).dataset
    n, items = ds["train"].n, ds.item_num
    base_p = teacher_path(a.base, a.dataset)
    base, _ = read_compact(base_p, items, n_train=n, pad_dim=None)
    members = [read_compact(teacher_path(m, a.dataset), items, n_train=n, pad_dim=None)[0].rank for m in a.member]
    u = disagreement(base.rank, members, a.k)
    out = write(path_for(base_p), np.arange(n), u, {"base": a.base, "members": a.member, "k": a.k,
                                                    "kind": "ensemble top-k disagreement"})
    print(f"{out}: mean {u.mean():.3f}, median {np.median(u):.3f}, min {u.min():.3f}, max {u.max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
