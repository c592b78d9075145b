"""Seeded synthetic next-item data in the shape both references read (right-padded, padding id = item_num).

For parity cases and smoke tests: ``synthetic_split(n, item_num, seq_len, seed)`` -> SeqSplit,
``synthetic_dataset(...)`` -> SeqDataset with train/val/test. History lengths are drawn in
[min_len, seq_len]; ``min_len=0`` gives padding-only rows (``len_seq`` 1, as in the LastFM train frame).
"""

from __future__ import annotations

import numpy as np

from .types import PADDING_RATING, SeqDataset, SeqSplit, lens_from_seqs


def synthetic_split(n: int, item_num: int, seq_len: int = 10, seed: int = 0, *, name: str = "train",
                    min_len: int = 0, rated: bool = False, distinct: bool = False) -> SeqSplit:
    """N rows: seqs int64 [n, seq_len] right-padded with item_num, lens [n], next [n] in [0, item_num).

    distinct: no item repeats within a row's history + next (needs item_num > seq_len).
    rated: also ratings in 1..5 (0 at padding), like the MovieLens frames.
    """
    if n < 0 or item_num < 1 or seq_len < 1 or not 0 <= min_len <= seq_len:
        raise ValueError(f"need n >= 0, item_num >= 1, seq_len >= 1, 0 <= min_len <= seq_len; got "
                         f"n={n}, item_num={item_num}, seq_len={seq_len}, min_len={min_len}")
    if distinct and item_num <= seq_len:
        raise ValueError(f"distinct=True needs item_num > seq_len, got {item_num} <= {seq_len}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, seq_len + 1, size=n)
    if distinct:
        draw = np.argsort(rng.random((n, item_num)), axis=1)[:, : seq_len + 1]
    else:
        draw = rng.integers(0, item_num, size=(n, seq_len + 1))
    seqs = draw[:, :seq_len].astype(np.int64)
    seqs[np.arange(seq_len)[None, :] >= lengths[:, None]] = item_num
    nxt = draw[:, seq_len].astype(np.int64)
    sr = nr = None
    if rated:
        sr = rng.integers(1, 6, size=(n, seq_len)).astype(np.int64)
        sr[seqs == item_num] = PADDING_RATING
        nr = rng.integers(1, 6, size=n).astype(np.int64)
    return SeqSplit(name=name, seqs=seqs, lens=lens_from_seqs(seqs, item_num), next=nxt, padding_id=item_num,
                    item_num=item_num, source=f"synthetic(seed={seed})", seq_ratings=sr, next_ratings=nr)


def synthetic_dataset(n_train: int = 64, n_val: int = 16, n_test: int = 16, item_num: int = 50,
                      seq_len: int = 10, seed: int = 0, *, name: str = "synthetic", rated: bool = False,
                      titles: bool = True) -> SeqDataset:
    """train/val/test from seeds seed, seed+1, seed+2; titles ``item <i>`` when asked."""
    splits = {k: synthetic_split(m, item_num, seq_len, seed + j, name=k, rated=rated)
              for j, (k, m) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))}
    return SeqDataset(name=name, item_num=item_num, padding_id=item_num, seq_len=seq_len, splits=splits,
                      titles={i: f"item {i}" for i in range(item_num)} if titles else None)
