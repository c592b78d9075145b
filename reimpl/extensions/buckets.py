"""Item-popularity buckets and calibration from a record's per-row TEST ranks (issue 17, UAMD's long-tail claim).

Popularity is an item's count as a train target (every interaction of a leave-one-out split but each user's first
and last two). Items are sorted by it, most popular first (ties by id): the first ``shares[0]`` of the items are
the *head*, the next ``shares[1]`` the *torso*, the rest the *tail*. A test row belongs to its target's bucket.
"""

from __future__ import annotations

import numpy as np

BUCKETS = ("head", "torso", "tail")


def popularity_buckets(train_targets: np.ndarray, item_num: int, shares: tuple = (0.2, 0.3)) -> np.ndarray:
    """``[item_num]`` bucket index (0 head, 1 torso, 2 tail) of every item id."""
    t = np.asarray(train_targets, dtype=np.int64)
    if t.size and (t.min() < 0 or t.max() >= item_num):
        raise ValueError(f"popularity_buckets: train targets must lie in [0, {item_num}), got [{t.min()}, {t.max()}]")
    if not (len(shares) == 2 and all(0 < s < 1 for s in shares) and sum(shares) < 1):
        raise ValueError(f"popularity_buckets: shares must be two fractions with a sum < 1, got {shares}")
    count = np.bincount(t, minlength=item_num)
    order = np.lexsort((np.arange(item_num), -count))      # most popular first, ties by id
    cut = np.round(np.cumsum(shares) * item_num).astype(int)
    out = np.full(item_num, 2, dtype=np.int64)
    out[order[:cut[0]]] = 0
    out[order[cut[0]:cut[1]]] = 1
    return out


def bucket_metrics(ranks: np.ndarray, targets: np.ndarray, bucket_of: np.ndarray, k: int = 10) -> dict:
    """``{bucket: {"ndcg", "hr", "n"}}`` at cutoff ``k`` from 1-based ranks ``[N]`` and the rows' targets ``[N]``."""
    r = np.asarray(ranks, dtype=np.float64)
    tg = np.asarray(targets, dtype=np.int64)
    if r.shape != tg.shape:
        raise ValueError(f"bucket_metrics: ranks {r.shape} and targets {tg.shape} must both be [N]")
    b = bucket_of[tg]
    hit = r <= k
    gain = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
    out = {}
    for i, name in enumerate(BUCKETS):
        m = b == i
        n = int(m.sum())
        out[name] = {"ndcg": float(gain[m].mean()) if n else float("nan"),
                     "hr": float(hit[m].mean()) if n else float("nan"), "n": n}
    return out


def pooled_reliability(per_arm: dict, n_bins: int = 10) -> dict:
    """``{arm: equal_mass_bins(...)}`` over the TEST rows of every seed pooled, for the arms whose records all keep
    per-row confidences (``record["selected"]``); arms missing them in any seed are left out, not half-pooled."""
    from reimpl.metrics import equal_mass_bins

    out = {}
    for arm, seeds in per_arm.items():
        sel = [x.get("selected") for x in seeds.values()]
        if not sel or not all(x and "conf" in x for x in sel):   # records before conf/correct keep ranks only
            continue
        conf = np.concatenate([np.asarray(s["conf"], dtype=np.float64) for s in sel])
        ok = np.concatenate([np.asarray(s["correct"], dtype=np.float64) for s in sel])
        out[arm] = {**equal_mass_bins(conf, ok, n_bins), "seeds": len(sel), "rows": int(conf.size)}
    return out
