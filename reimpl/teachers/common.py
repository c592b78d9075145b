"""What every inner-product teacher shares: LastFM rows, the held-out rows, candidate draws, metrics, the SASRec bar.

Rows are rows of iLoRA's LastFM ``train_data.df`` / ``Val_data.df`` / ``Test_data.df`` read through
:func:`reimpl.data.load_ilora` (every rule of docs/data.md checked there); train row ``i`` is DLLM2Rec's train row
``i`` (``reimpl.data.convert`` keeps the order), so an export for the whole split lists rows ``0 .. N-1``.

Held-out rows (``heldout``): the last ``heldout_rows`` train rows (default 2,000) are kept out of every teacher's
training and evaluated beside val/test (122 rows each), so metrics rest on ~2,244 rows instead of 244. The SASRec
checkpoint (``rec_model/lastfm.pt``) was trained by the iLoRA authors on the whole train split, held-out rows
included: on those rows its numbers are optimistic; on val/test they are clean.

Candidates (``candidates``): the target + ``n - 1`` items drawn uniformly from the items outside the row's history
and != target, shuffled, by ``numpy.random.default_rng([seed, split, row])``: the same for every teacher, and a row's
draw does not depend on which other rows are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reimpl.data import DataError, load_ilora
from reimpl.device import module_device

LASTFM_ITEMS = 4606          # lastfm_data.py:19 padding_item_id
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
# data sets a teacher trains on: iLoRA's LastFM as published, and the leave-one-out splits of
# reimpl.data.protocols (the converged baselines' protocol; reimpl.baselines.converged.DATASETS)
DATASETS = ("lastfm", "ml100k-loo", "lastfm-loo")
# the prompt texts per domain: (history prefix, empty-history text, suffix)
DOMAIN_TEXT = {
    "lastfm": ("This user has listened to ", "This user has not listened to any artist yet",
               ". The next artist this user will listen to is"),
    "ml-100k": ("This user has watched ", "This user has not watched any movie yet",
                ". The next movie this user will watch is")}


@dataclass
class Rows:
    """One split's rows: ``seqs [N, L]`` (right-padded with ``item_num``), ``next [N]``, ``index [N]`` (row in the
    split's frame), ``split`` name."""

    split: str
    seqs: np.ndarray
    next: np.ndarray
    index: np.ndarray
    item_num: int

    def __len__(self) -> int:
        return len(self.next)

    def take(self, sel) -> "Rows":
        return Rows(self.split, self.seqs[sel], self.next[sel], self.index[sel], self.item_num)

    def history(self, i: int) -> list[int]:
        s = self.seqs[i]
        return [int(x) for x in s[s != self.item_num]]


@dataclass
class LastFM:
    """A teacher's data set (LastFM as published, or a leave-one-out split: see :func:`load_dataset`)."""

    train: Rows
    val: Rows
    test: Rows
    titles: dict[int, str]
    item_num: int
    data_dir: str
    name: str = "lastfm"
    domain: str = "lastfm"
    digest: str = ""

    @property
    def loo(self) -> bool:
        return self.name.endswith("-loo")


def _check_titles(titles: dict, item_num: int, path) -> None:
    missing = sorted(set(range(item_num)) - set(titles))
    if missing:
        raise DataError(f"{path}: no title for item ids {missing[:20]}{' ...' if len(missing) > 20 else ''} "
                        f"({len(missing)} of {item_num} missing); every item needs a text")


def load_dataset(name: str, lastfm_dir: str | Path, shared: str | Path | None = None) -> LastFM:
    """``lastfm`` (:func:`load_lastfm` of ``lastfm_dir``) or a leave-one-out split (``ml100k-loo``: titles from
    ``u.item``; ``lastfm-loo``: from the iLoRA frames' ``id2name.txt``). LOO rows are the protocol's splits in
    order (train row ``i`` = the student's train row ``i``); there are no held-out train rows: val and test are
    each user's last two interactions, which no train row has as its target."""
    if name == "lastfm":
        return load_lastfm(lastfm_dir)
    if name not in DATASETS:
        raise ValueError(f"--dataset: expected one of {DATASETS}, got {name!r}")
    from reimpl.data import read_u_item
    from reimpl.data.protocols import LOOConfig, build
    from reimpl.paths import DATA

    source = "ml-100k" if name == "ml100k-loo" else "lastfm"
    d = build(LOOConfig(source), shared)
    ds = d.dataset
    data = Path(shared) / "data" if shared is not None else DATA
    if source == "ml-100k":
        tpath = data / "ml-100k" / "u.item"
        titles = read_u_item(tpath, mode="fixed")
    else:
        tpath = Path(lastfm_dir)
        titles = load_ilora(tpath, item_num=ds.item_num, mode="fixed").titles or {}
    _check_titles(titles, ds.item_num, tpath)
    out = {k: Rows(k, np.array(ds[k].seqs), np.array(ds[k].next), np.arange(ds[k].n), ds.item_num)
           for k in ("train", "val", "test")}
    return LastFM(out["train"], out["val"], out["test"], titles, ds.item_num, str(tpath), name=name, domain=source,
                  digest=d.digest)


def load_lastfm(data_dir: str | Path, item_num: int = LASTFM_ITEMS) -> LastFM:
    """The three splits + titles; refuses a title file that lacks item ids (names them)."""
    ds = load_ilora(Path(data_dir), item_num=item_num, mode="fixed")
    titles = ds.titles or {}
    _check_titles(titles, item_num, Path(data_dir) / "id2name.txt")
    out = {}
    for name in ("train", "val", "test"):
        s = ds[name]
        out[name] = Rows(name, np.array(s.seqs), np.array(s.next), np.arange(s.n), item_num)   # writable copies
    return LastFM(out["train"], out["val"], out["test"], titles, item_num, str(data_dir))


def split_train(train: Rows, heldout_rows: int) -> tuple[Rows, Rows]:
    """(teacher-training rows, held-out rows = the last ``heldout_rows`` train rows)."""
    if not 0 < heldout_rows < len(train):
        raise ValueError(f"--heldout_rows: expected 0 < n < {len(train)}, got {heldout_rows}")
    n = len(train) - heldout_rows
    return train.take(slice(0, n)), train.take(slice(n, None))


def candidates(rows: Rows, n: int, seed: int) -> np.ndarray:
    """``[N, n]`` item ids: target + ``n - 1`` unseen negatives, shuffled (see module docstring)."""
    out = np.empty((len(rows), n), np.int64)
    code = SPLIT_CODE[rows.split]
    for r in range(len(rows)):
        rng = np.random.default_rng([seed, code, int(rows.index[r])])
        banned = set(rows.history(r)) | {int(rows.next[r])}
        neg: list[int] = []
        while len(neg) < n - 1:   # rejection: the banned set is <= 11 of 4,606 items
            c = int(rng.integers(rows.item_num))
            if c not in banned:
                banned.add(c)
                neg.append(c)
        row = np.array(neg + [int(rows.next[r])])
        rng.shuffle(row)
        out[r] = row
    return out


def history_text(titles: dict[int, str], hist: Sequence[int], domain: str = "lastfm") -> str:
    """The user text the LLM reads (an instruction ending where the next item would follow)."""
    prefix, empty, suffix = DOMAIN_TEXT[domain]
    if not hist:
        return empty + suffix
    return prefix + ", ".join(titles[i] for i in hist) + suffix


# ------------------------------------------------------------------------------------------------- metrics
def ranks_of_target(scores: torch.Tensor | np.ndarray, target_col: np.ndarray) -> np.ndarray:
    """0-based rank of the target column in each row of ``scores [N, C]`` (higher = better); ties count against
    the target (a constant scorer gets the worst rank, never a lucky one)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    t = s[torch.arange(s.shape[0]), torch.as_tensor(target_col)]
    if not torch.isfinite(s).all():
        raise FloatingPointError("ranks_of_target: non-finite scores")
    return ((s > t[:, None]).sum(1) + (s == t[:, None]).sum(1) - 1).numpy()


def rank_metrics(rank: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """HR@k and NDCG@k from 0-based target ranks ``[N]``."""
    rank = np.asarray(rank)
    out = {"rows": int(len(rank))}
    for k in ks:
        hit = rank < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())
    return out


def top10_test(rank_cands: np.ndarray, n_cands: int, k: int = 10) -> dict:
    """Target in the top ``k`` (10) of ``n_cands`` candidates vs chance ``k/n`` (exact binomial test, one-sided
    greater; ``k`` capped at ``n_cands``)."""
    from scipy.stats import binomtest

    k = min(k, n_cands)
    hits = int((np.asarray(rank_cands) < k).sum())
    n = int(len(rank_cands))
    p0 = k / n_cands
    res = binomtest(hits, n, p0, alternative="greater")
    ci = res.proportion_ci(0.95)
    return {"hits": hits, "rows": n, "rate": hits / n if n else 0.0, "chance": p0, "p_value": float(res.pvalue),
            "ci95": [float(ci.low), float(ci.high)]}


def evaluate_scores(full_scores: torch.Tensor | None, cand_scores: torch.Tensor, cands: np.ndarray,
                    targets: np.ndarray, histories: Sequence[Sequence[int]] | None = None) -> dict:
    """Metrics over the candidates (``cand_scores [N, C]`` for ``cands [N, C]``) and, when ``full_scores [N, I]``
    is given, over all items (history items masked out, the usual sequential-recommendation protocol)."""
    tcol = np.argmax(cands == targets[:, None], axis=1)
    if not (cands[np.arange(len(cands)), tcol] == targets).all():
        raise ValueError("evaluate_scores: a candidate row lacks its target")
    rc = ranks_of_target(cand_scores, tcol)
    out = {"candidates": {**rank_metrics(rc), "n_candidates": int(cands.shape[1])},
           "top10_of_candidates": top10_test(rc, cands.shape[1])}
    if full_scores is not None:
        s = torch.as_tensor(full_scores, dtype=torch.float64).clone()
        if histories is not None:
            for r, h in enumerate(histories):
                h = [i for i in h if i != int(targets[r])]
                if h:
                    s[r, h] = -torch.inf
        t = s[torch.arange(s.shape[0]), torch.as_tensor(targets)]
        rf = ((s > t[:, None]).sum(1) + (s == t[:, None]).sum(1) - 1).numpy()
        out["all_items"] = {**rank_metrics(rf, (1, 5, 10, 20)), "n_items": int(s.shape[1])}
    return out


# --------------------------------------------------------------------------------------------- SASRec bar
def sasrec_scores(sasrec, rows: Rows, batch: int = 1024) -> torch.Tensor:
    """``[N, item_num]`` scores of the frozen SASRec checkpoint (``forward``: ``s_fc`` of the last valid state)."""
    outs = []
    lens = np.maximum(1, (rows.seqs != rows.item_num).sum(1))
    dev = module_device(sasrec)   # an iLoRA teacher on CUDA holds this SASRec: the scores come back to the CPU
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            st = torch.as_tensor(rows.seqs[s:s + batch], dtype=torch.long, device=dev)
            ln = torch.as_tensor(lens[s:s + batch], dtype=torch.long, device=dev)
            outs.append(sasrec.s_fc(sasrec.user_state(st, ln)).cpu())
    return torch.cat(outs)
