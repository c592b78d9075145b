"""Prepared working directories for the baseline runs: ``<root>/work/<key>/data/<name>/`` in the
DLLM2Rec layout (what ``main.py:295-299, 319`` reads relative to its working directory and what
``reimpl.dllm2rec.train --data-dir`` reads), written by the data layer (``reimpl.data``).

* LastFM: iLoRA's published train/val/test, re-laid out unchanged (``reimpl.data.convert.ilora_to_dllm2rec``).
* ml-100k: built from raw ``u.data`` (``build_movielens_layouts``, introsort tie-break, val/test users
  taken from iLoRA's published MovieLens frames, so val/test equal the published rows).
* Amazon Games: DLLM2Rec's published ``val_data.csv``/``test_data.csv``/``data_statis.df`` are read and
  validated; no train split is published, so nothing can be trained on it (``main.py:319`` reads
  ``train_data.df`` unconditionally). ``prepare`` returns its facts only.

A slice (``train_rows``/``eval_rows``) takes a seeded random subset of rows (``default_rng(slice_seed)``,
kept in file order; train rows only among those with ``>= min_history`` history items) and re-indexes it
0..N-1; ``train_rows.txt`` lists the original index of each train row (the order a teacher export follows).
Every prepared directory gets a ``manifest.json`` with the sha256 of its source files and of the files written
(the "data version" the report quotes).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from reimpl.baselines.config import DatasetSpec
from reimpl.paths import SHARED
from reimpl.refs_lock import sha256_file as sha256


def source_files(spec: DatasetSpec, shared: Path = SHARED) -> list[Path]:
    d = shared / "data"
    if spec.source == "ilora-lastfm":
        src = d / "ilora" / "lastfm"
        return [src / "train_data.df", src / "Val_data.df", src / "Test_data.df", src / "id2name.txt"]
    if spec.source == "ml-100k":
        return [d / "ml-100k" / "u.data", d / "ilora" / "movielens" / "Val_data.df",
                d / "ilora" / "movielens" / "Test_data.df"]
    g = d / "dllm2rec" / "game"
    return [g / "data_statis.df", g / "val_data.csv", g / "test_data.csv"]


def slice_rows(split, n: int | None, rng: np.random.Generator, min_history: int = 0) -> np.ndarray | None:
    """Sorted original row indices of a seeded slice (None: all rows). ``min_history``: draw only among rows
    with at least that many non-padding history items."""
    pool = np.arange(split.n)
    if min_history > 0:
        pool = pool[(split.seqs != split.padding_id).sum(1) >= min_history]
    if (n is None or n >= len(pool)) and len(pool) == split.n:
        return None
    if n is None or n >= len(pool):
        return pool
    return np.sort(rng.choice(pool, n, replace=False))


def _slice(split, n: int | None, rng: np.random.Generator, min_history: int = 0):
    rows = slice_rows(split, n, rng, min_history)
    return (split, None) if rows is None else (split.select(rows), rows)


def _facts(ds) -> dict:
    return {"item_num": int(ds.item_num), "seq_size": int(ds.seq_len),
            "rows": {k: int(s.n) for k, s in ds.splits.items()}}


def prepare(spec: DatasetSpec, root: Path, shared: Path = SHARED) -> dict:
    """Write (once) the working directory of ``spec`` under ``root/work``; returns its manifest.

    The manifest holds ``workdir``, ``facts`` (item_num, seq_size, rows per split), ``sources`` and
    ``written`` ({path: sha256}). An existing manifest whose sources still hash the same is reused.
    Raises FileNotFoundError naming the missing source file.
    """
    from reimpl.data.convert import build_movielens_layouts, ilora_to_dllm2rec
    from reimpl.data.dllm2rec import load_dllm2rec, write_dllm2rec
    from reimpl.data.types import SeqDataset

    missing = [p for p in source_files(spec, shared) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"baseline data {spec.name!r} ({spec.source}): missing source file {missing[0]}")
    sources = {str(p): sha256(p) for p in source_files(spec, shared)}
    work = Path(root) / "work" / spec.key
    man_path = work / "manifest.json"
    if man_path.is_file():
        man = json.loads(man_path.read_text())
        if man.get("sources") == sources and man.get("spec") == asdict(spec) and all(
                Path(p).is_file() and sha256(Path(p)) == h for p, h in man["written"].items()):
            return man
    out_dir = work / "data" / spec.name
    if spec.source == "dllm2rec-game":
        ds = load_dllm2rec(shared / "data" / "dllm2rec" / "game", name=spec.name)
        man = {"spec": asdict(spec), "workdir": None, "facts": _facts(ds), "sources": sources, "written": {},
               "trainable": False,
               "why_not": "DLLM2Rec publishes val_data.csv and test_data.csv for Games but no train_data.df; "
                          "main.py:319 reads train_data.df unconditionally and every epoch samples from it "
                          "(main.py:354-360), and reimpl trains on the same file, so neither side can train."}
        work.mkdir(parents=True, exist_ok=True)
        man_path.write_text(json.dumps(man, indent=1))
        return man
    tmp = work / "build"
    if spec.source == "ilora-lastfm":
        ds = ilora_to_dllm2rec(shared / "data" / "ilora" / "lastfm", tmp / spec.name, spec.name)
    else:
        ds = build_movielens_layouts(shared / "data" / "ml-100k" / "u.data", tmp, layout="dllm2rec",
                                     users_from=shared / "data" / "ilora" / "movielens")
    full_facts = _facts(ds)
    rng = np.random.default_rng(spec.slice_seed)
    train, train_rows = _slice(ds["train"], spec.train_rows, rng, spec.min_history)
    splits = {"train": train, "val": _slice(ds["val"], spec.eval_rows, rng)[0],
              "test": _slice(ds["test"], spec.eval_rows, rng)[0]}
    sliced = SeqDataset(name=spec.name, item_num=ds.item_num, padding_id=ds.padding_id, seq_len=ds.seq_len,
                        splits=splits, titles=None)
    write_dllm2rec(sliced, out_dir)
    _rmtree(tmp)
    rows_file = work / "train_rows.txt"   # original train-row index of every slice row (teacher export order)
    np.savetxt(rows_file, train_rows if train_rows is not None else np.arange(ds["train"].n), fmt="%d")
    if spec.tocf_dir is not None:  # teacher files (issue 7 parts 2-3): main.py:327 reads ./tocf/<name>/
        _link_tocf(spec, work, rows_file)
    written = {str(p): sha256(p) for p in [*sorted(out_dir.iterdir()), rows_file]}
    man = {"spec": asdict(spec), "workdir": str(work), "facts": _facts(sliced), "full_facts": full_facts,
           "sources": sources, "written": written, "trainable": True}
    man_path.write_text(json.dumps(man, indent=1))
    return man


def _link_tocf(spec: DatasetSpec, work: Path, rows_file: Path) -> None:
    """``work/tocf/<name>`` -> ``spec.tocf_dir``, after checking the export covers exactly the slice's train rows
    (main.py:434 picks teacher rows by the train frame's index)."""
    src = Path(spec.tocf_dir).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"baseline data {spec.name!r}: tocf_dir {src} is not a folder")
    exported = src / "rows.txt"
    if not exported.is_file():
        raise FileNotFoundError(f"baseline data {spec.name!r}: {exported} missing (which train rows the "
                                "teacher export covers)")
    if not np.array_equal(np.loadtxt(exported, dtype=np.int64, ndmin=1),
                          np.loadtxt(rows_file, dtype=np.int64, ndmin=1)):
        raise ValueError(f"baseline data {spec.name!r}: {exported} lists other train rows than the slice "
                         f"{rows_file}; teacher rows would be misaligned (main.py:434)")
    link = work / "tocf" / spec.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(src, target_is_directory=True)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
