"""Layout conversions and the ml-100k builder, as functions and a CLI: ``python -m reimpl.data.convert --help``.

* ``ilora-to-dllm2rec``: an iLoRA data directory (e.g. the published LastFM train/val/test) re-laid out as
  DLLM2Rec's ``data/<name>/`` (needed to run DLLM2Rec baselines on iLoRA's split).
* ``build-movielens``: raw ml-100k -> train/val/test in the iLoRA and/or DLLM2Rec layout.
* ``check-movielens``: how many shipped iLoRA MovieLens val/test rows the builder reproduces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .dllm2rec import write_dllm2rec
from .ilora import load_ilora, write_ilora
from .movielens import build_movielens, read_u_data, row_match, users_of_split
from .types import DataError, SeqDataset


def ilora_to_dllm2rec(src_dir: str | Path, out_data_dir: str | Path, name: str | None = None) -> SeqDataset:
    """Read an iLoRA data directory, write it as DLLM2Rec ``data/<name>`` into ``out_data_dir``; returns the
    data set read. Ids, padding (= item_num), ``len_seq`` and row order are kept as they are."""
    ds = load_ilora(src_dir, name=name)
    write_dllm2rec(ds, out_data_dir)
    return ds


def build_movielens_layouts(u_data: str | Path, out_root: str | Path, *, u_item: str | Path | None = None,
                            seed: int = 0, tie_break: str = "introsort", layout: str = "both",
                            users_from: str | Path | None = None) -> SeqDataset:
    """Build MovieLens splits and write ``<out>/ilora/movielens/`` and/or ``<out>/dllm2rec/data/movielens/``.
    ``users_from``: an iLoRA MovieLens dir whose val/test frames fix the val/test users (exact published split
    for those rows); otherwise a seeded draw."""
    r = read_u_data(u_data)
    vu = tu = None
    if users_from is not None:
        shipped = load_ilora(users_from, name="movielens", splits=("val", "test"))
        vu, tu = users_of_split(shipped["val"], r), users_of_split(shipped["test"], r)
    ds = build_movielens(r, seed=seed, tie_break=tie_break, val_users=vu, test_users=tu)
    out_root = Path(out_root)
    if layout in ("ilora", "both"):
        if u_item is None:
            raise DataError("build-movielens: the iLoRA layout needs --u-item (the reference parses titles from it)")
        write_ilora(ds, out_root / "ilora" / "movielens", u_item=u_item)
    if layout in ("dllm2rec", "both"):
        write_dllm2rec(ds, out_root / "dllm2rec" / "data" / "movielens")
    return ds


def check_movielens(u_data: str | Path, ilora_movielens_dir: str | Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{tie_break: {split: (rows reproduced exactly, rows shipped)}} with val/test users taken from the frames."""
    r = read_u_data(u_data)
    shipped = load_ilora(ilora_movielens_dir, name="movielens", splits=("val", "test"))
    vu, tu = users_of_split(shipped["val"], r), users_of_split(shipped["test"], r)
    out = {}
    for tb in ("introsort", "stable"):
        ds = build_movielens(r, tie_break=tb, val_users=vu, test_users=tu)
        out[tb] = {k: (row_match(ds[k], shipped[k]), shipped[k].n) for k in ("val", "test")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reimpl.data.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ilora-to-dllm2rec", help="iLoRA data dir -> DLLM2Rec data/<name>/")
    a.add_argument("--src", required=True, help="iLoRA data dir, e.g. ../shared/data/ilora/lastfm")
    a.add_argument("--out", required=True, help="root; files go to <out>/data/<name>/")
    a.add_argument("--name", default=None, help="data set name (default: the src folder name)")
    b = sub.add_parser("build-movielens", help="ml-100k -> train/val/test in the iLoRA and/or DLLM2Rec layout")
    b.add_argument("--u-data", required=True)
    b.add_argument("--u-item", default=None, help="raw u.item (needed for the iLoRA layout)")
    b.add_argument("--out", required=True, help="root; writes <out>/ilora/movielens and <out>/dllm2rec/data/movielens")
    b.add_argument("--seed", type=int, default=0, help="seed of the val/test user draw")
    b.add_argument("--tie-break", choices=("introsort", "stable"), default="introsort")
    b.add_argument("--layout", choices=("ilora", "dllm2rec", "both"), default="both")
    b.add_argument("--users-from", default=None, help="iLoRA MovieLens dir whose val/test frames fix the users")
    c = sub.add_parser("check-movielens", help="rows of the shipped iLoRA MovieLens val/test the builder reproduces")
    c.add_argument("--u-data", required=True)
    c.add_argument("--ilora-dir", required=True, help="e.g. ../shared/data/ilora/movielens")
    args = p.parse_args(argv)
    try:
        if args.cmd == "ilora-to-dllm2rec":
            src = Path(args.src)
            name = args.name or src.name
            ds = ilora_to_dllm2rec(src, Path(args.out) / "data" / name, name)
            print(f"wrote {Path(args.out) / 'data' / name}: " + ", ".join(f"{k} {s.n}" for k, s in ds.splits.items())
                  + f"; item_num {ds.item_num}, seq_size {ds.seq_len}")
        elif args.cmd == "build-movielens":
            ds = build_movielens_layouts(args.u_data, args.out, u_item=args.u_item, seed=args.seed,
                                         tie_break=args.tie_break, layout=args.layout, users_from=args.users_from)
            print(f"wrote {args.out} ({args.layout}): " + ", ".join(f"{k} {s.n}" for k, s in ds.splits.items()))
        else:
            for tb, res in check_movielens(args.u_data, args.ilora_dir).items():
                print(f"tie_break={tb}: " + ", ".join(f"{k} {m}/{n}" for k, (m, n) in res.items()))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
