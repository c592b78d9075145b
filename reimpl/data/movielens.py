"""Raw MovieLens-100k -> next-item splits in the LLaRA/iLoRA convention (both layouts). See docs/data.md.

The convention, inferred from the shipped iLoRA frames (data/ref/movielens/{Val,Test}_data.df) and
verified row by row (tests/test_data_real.py; 189/189 rows reproduced exactly):

* keep ratings >= 3; item id = movie id - 1 (0-based), padding (1682, 0);
* users in order of their first rating (>= 3) in ``u.data``; each user's ratings sorted by timestamp
  with numpy's classic introsort argsort (``kind="quicksort"``) on that user's ratings in file order:
  this fixes the order of ratings sharing a (user, timestamp), and is NOT a stable sort;
* users split 80/10/10 (val = int(0.1 n) = 94, test = the rest = 95); a val/test user gives one row:
  the last <= 10 ratings before the final one, right-padded, and the final one as ``next``;
* a train user gives one row per rating t = 0..n-1: the last <= 10 ratings before t, and t as ``next``
  (t = 0 gives an all-padding history with ``len_seq`` 1, as in the shipped LastFM train frame).

Which users went to val/test in the published split is not recoverable (a random draw; no seed found);
``build_movielens`` draws them with a seeded generator, or takes them from ``val_users``/``test_users``
(``users_of_split`` recovers them from the shipped frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..deviations import Deviation, declare
from .types import PADDING_RATING, DataError, SeqDataset, SeqSplit, fail, lens_from_seqs

ITEM_NUM = 1682
SEQ_LEN = 10

declare(Deviation(
    id="ILORA-ML-TIEBREAK",
    system="iLoRA",
    ref="data/ref/movielens/Val_data.df; data/ref/movielens/Test_data.df (preprocessing script not published)",
    what="ratings sharing a (user, timestamp) are ordered by numpy's unstable introsort argsort of that user's "
         "timestamps (pandas sort_values default kind='quicksort' on numpy without the SIMD sorts); the order "
         "depends on the sort algorithm, not on the data",
    why="half of u.data's ratings share a (user, timestamp) with another (50,561 rows); with numpy >= 2 on "
        "AVX2/AVX-512 machines the same call gives a different order, so a re-run of the original script "
        "would not reproduce the frames",
    fixed="tie_break='stable': ties keep u.data file order (a documented, machine-independent rule)",
    effect_note="data only: tests/test_data_real.py measures faithful = 189/189 shipped rows, "
                "stable = fewer (printed by `python -m reimpl.data.convert check-movielens`)",
))


@dataclass(frozen=True, eq=False)
class Ratings:
    """u.data as int64 columns [R], in file order; ``item`` is the raw 1-based movie id."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    ts: np.ndarray
    source: str | None = None

    def __len__(self) -> int:
        return int(self.user.shape[0])


def read_u_data(path: str | Path) -> Ratings:
    """Tab-separated ``user item rating timestamp`` lines -> Ratings; any malformed line raises (row = line - 1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ratings file missing")
    lines = path.read_text(encoding="latin-1").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    cols = np.empty((4, len(lines)), dtype=np.int64)
    names = ("user", "item", "rating", "timestamp")
    for i, line in enumerate(lines):
        parts = line.split("\t")
        if len(parts) != 4:
            raise fail(path, "line", "4 tab-separated fields 'user item rating timestamp'", line, row=i)
        for j, p in enumerate(parts):
            try:
                cols[j, i] = int(p)
            except ValueError:
                raise fail(path, names[j], "an integer", p, row=i) from None
    r = Ratings(*cols, source=str(path))
    for f, lo in (("user", 1), ("item", 1), ("rating", 1)):
        a = getattr(r, f)
        bad = np.nonzero(a < lo)[0]
        if bad.size:
            raise fail(path, f, f"an integer >= {lo}", int(a[bad[0]]), row=int(bad[0]))
    return r


# --- numpy's classic introsort argsort, in Python so the order does not depend on the machine's SIMD sort ---
# Mirrors numpy/_core/src/npysort/quicksort.cpp ``aquicksort_`` / heapsort.cpp ``aheapsort_`` (the baseline
# path: numpy < 1.25, or NPY_DISABLE_CPU_FEATURES=X86_V3 today). Checked against numpy in the tests.
_SMALL_QUICKSORT = 15


def _aheapsort(v, t, lo: int, n: int) -> None:
    def get(k):
        return t[lo + k - 1]

    def put(k, x):
        t[lo + k - 1] = x

    def sift_down(tmp, i: int, m: int) -> None:  # place tmp at 1-based slot i of a heap of size m
        j = i << 1
        while j <= m:
            if j < m and v[get(j)] < v[get(j + 1)]:
                j += 1
            if v[tmp] < v[get(j)]:
                put(i, get(j))
                i, j = j, j + j
            else:
                break
        put(i, tmp)

    for l in range(n >> 1, 0, -1):  # noqa: E741
        sift_down(get(l), l, n)
    while n > 1:
        tmp = get(n)
        put(n, get(1))
        n -= 1
        sift_down(tmp, 1, n)


def introsort_argsort(keys) -> np.ndarray:
    """Indices sorting ``keys`` [n] exactly as numpy's classic ``argsort(kind='quicksort')`` does,
    ties included (median-of-3 quicksort, insertion sort below 16, heapsort past depth 2*log2(n))."""
    v = [int(x) for x in keys]
    num = len(v)
    t = list(range(num))
    if num < 2:
        return np.array(t, dtype=np.int64)
    pl, pr = 0, num - 1
    stack: list[tuple[int, int, int]] = []
    cdepth = 2 * (num.bit_length() - 1)
    while True:
        if cdepth < 0:
            _aheapsort(v, t, pl, pr - pl + 1)
        else:
            while pr - pl > _SMALL_QUICKSORT:
                pm = pl + ((pr - pl) >> 1)
                if v[t[pm]] < v[t[pl]]:
                    t[pm], t[pl] = t[pl], t[pm]
                if v[t[pr]] < v[t[pm]]:
                    t[pr], t[pm] = t[pm], t[pr]
                if v[t[pm]] < v[t[pl]]:
                    t[pm], t[pl] = t[pl], t[pm]
                vp = v[t[pm]]
                pi, pj = pl, pr - 1
                t[pm], t[pj] = t[pj], t[pm]
                while True:
                    pi += 1
                    while v[t[pi]] < vp:
                        pi += 1
                    pj -= 1
                    while vp < v[t[pj]]:
                        pj -= 1
                    if pi >= pj:
                        break
                    t[pi], t[pj] = t[pj], t[pi]
                t[pi], t[pr - 1] = t[pr - 1], t[pi]
                cdepth -= 1
                if pi - pl < pr - pi:  # push the larger part, loop on the smaller
                    stack.append((pi + 1, pr, cdepth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, cdepth))
                    pl = pi + 1
            for pi in range(pl + 1, pr + 1):  # insertion sort (stable) on the small run
                vi = t[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and vp < v[t[pj - 1]]:
                    t[pj] = t[pj - 1]
                    pj -= 1
                t[pj] = vi
        if not stack:
            break
        pl, pr, cdepth = stack.pop()
    return np.array(t, dtype=np.int64)


def user_histories(r: Ratings, min_rating: int = 3, tie_break: str = "introsort"
                   ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{user: (item ids 0-based [n], ratings [n])} in time order, users in order of first kept rating."""
    if tie_break not in ("introsort", "stable"):
        raise ValueError(f"tie_break must be 'introsort' or 'stable', got {tie_break!r}")
    keep = r.rating >= min_rating
    user, item, rating, ts = r.user[keep], r.item[keep] - 1, r.rating[keep], r.ts[keep]
    _, first = np.unique(user, return_index=True)
    order = user[np.sort(first)]
    by_user = np.argsort(user, kind="stable")  # file order inside each user
    bounds = np.searchsorted(user[by_user], order)
    ends = np.searchsorted(user[by_user], order, side="right")
    out = {}
    for u, a, b in zip(order.tolist(), bounds, ends):
        rows = by_user[a:b]
        o = introsort_argsort(ts[rows]) if tie_break == "introsort" else np.argsort(ts[rows], kind="stable")
        rows = rows[o]
        out[u] = (item[rows], rating[rows])
    return out


def _window(items: np.ndarray, ratings: np.ndarray, t: int, seq_len: int) -> tuple[list, list]:
    lo = max(0, t - seq_len)
    ids, rs = items[lo:t].tolist(), ratings[lo:t].tolist()
    pad = seq_len - len(ids)
    return ids + [ITEM_NUM] * pad, rs + [PADDING_RATING] * pad


def _split(name: str, rows: list, seq_len: int, source: str | None) -> SeqSplit:
    seqs = np.array([r[0] for r in rows], dtype=np.int64).reshape(len(rows), seq_len)
    sr = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), seq_len)
    return SeqSplit(name=name, seqs=seqs, lens=lens_from_seqs(seqs, ITEM_NUM),
                    next=np.array([r[2] for r in rows], dtype=np.int64).reshape(-1), padding_id=ITEM_NUM,
                    item_num=ITEM_NUM, source=source, seq_ratings=sr,
                    next_ratings=np.array([r[3] for r in rows], dtype=np.int64).reshape(-1))


def build_movielens(ratings: Ratings | str | Path, seed: int = 0, *, seq_len: int = SEQ_LEN,
                    min_rating: int = 3, tie_break: str = "introsort",
                    val_users: list[int] | None = None, test_users: list[int] | None = None,
                    titles: dict[int, str] | None = None) -> SeqDataset:
    """ml-100k ratings -> SeqDataset ``movielens`` with rated train/val/test splits (deterministic).

    Users not in val/test are train users. Without ``val_users``/``test_users`` a permutation from
    ``np.random.default_rng(seed)`` picks int(0.1 n) val users and n - int(0.8 n) - int(0.1 n) test users.
    Rows of every split follow user first-appearance order (as the shipped frames do).
    """
    r = ratings if isinstance(ratings, Ratings) else read_u_data(ratings)
    hist = user_histories(r, min_rating, tie_break)
    users = list(hist)
    if r.item.max(initial=0) > ITEM_NUM:
        raise fail(r.source, "item", f"movie ids in [1, {ITEM_NUM}]", int(r.item.max()))
    if (val_users is None) != (test_users is None):
        raise ValueError("give both val_users and test_users, or neither")
    if val_users is None:
        n = len(users)
        n_train, n_val = int(0.8 * n), int(0.1 * n)
        perm = np.random.default_rng(seed).permutation(n)
        val_set = {users[i] for i in perm[n_train:n_train + n_val]}
        test_set = {users[i] for i in perm[n_train + n_val:]}
    else:
        val_set, test_set = set(val_users), set(test_users)
        unknown = sorted((val_set | test_set) - set(users))
        if unknown or val_set & test_set:
            raise ValueError(f"val/test users must be distinct known users (unknown {unknown[:5]}, "
                             f"shared {sorted(val_set & test_set)[:5]})")
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    for u in users:
        items, rs = hist[u]
        if u in val_set or u in test_set:
            t = len(items) - 1
            ids, wr = _window(items, rs, t, seq_len)
            rows["val" if u in val_set else "test"].append((ids, wr, int(items[t]), int(rs[t])))
        else:
            for t in range(len(items)):
                ids, wr = _window(items, rs, t, seq_len)
                rows["train"].append((ids, wr, int(items[t]), int(rs[t])))
    splits = {k: _split(k, v, seq_len, r.source) for k, v in rows.items()}
    return SeqDataset(name="movielens", item_num=ITEM_NUM, padding_id=ITEM_NUM, seq_len=seq_len,
                      splits=splits, titles=titles)


def users_of_split(split: SeqSplit, ratings: Ratings, min_rating: int = 3) -> list[int]:
    """For each row of a rated split, the one user whose kept ratings contain all its (item, rating) pairs.
    Raises DataError naming the row when none or several users match."""
    keep = ratings.rating >= min_rating
    owners: dict[tuple[int, int], set[int]] = {}
    for u, i, rt in zip(ratings.user[keep].tolist(), (ratings.item[keep] - 1).tolist(),
                        ratings.rating[keep].tolist()):
        owners.setdefault((i, rt), set()).add(u)
    if split.seq_ratings is None:
        raise fail(split.source, "seq rating", "a rated split (MovieLens (item, rating) tuples)")
    out = []
    for k in range(split.n):
        pairs = [(int(i), int(rt)) for i, rt in zip(split.seqs[k], split.seq_ratings[k]) if i != split.padding_id]
        pairs.append((int(split.next[k]), int(split.next_ratings[k])))
        cand = set.intersection(*(owners.get(p, set()) for p in pairs))
        if len(cand) != 1:
            raise fail(split.source, "seq", "rows owned by exactly one user", f"{len(cand)} users", row=k)
        out.append(cand.pop())
    return out


def row_match(a: SeqSplit, b: SeqSplit) -> int:
    """Rows equal in ids, ratings and len_seq (same position)."""
    if a.n != b.n or a.seq_len != b.seq_len:
        return 0
    eq = (a.seqs == b.seqs).all(1) & (a.lens == b.lens) & (a.next == b.next)
    if a.seq_ratings is not None and b.seq_ratings is not None:
        eq &= (a.seq_ratings == b.seq_ratings).all(1) & (a.next_ratings == b.next_ratings)
    return int(eq.sum())
