"""Model selection, seed aggregation and reference-vs-reimpl agreement for baseline runs.

* :func:`select_epoch` replays DLLM2Rec's selection loop (``main.py:507-519``): the best epoch is the
  first with the highest NDCG@20 (strictly greater than the best so far, starting from 0), training
  stops after ``patience`` (10) epochs without improvement. ``on="test"`` is the reference's rule
  (DLLM2REC-SELECT-ON-TEST); ``on="val"`` is the fixed rule. Both are replayed on the same per-epoch
  history, so every run (reference included) is reported under both selections.
* :func:`aggregate`: mean ± sample std (ddof 1) over seeds per (data set, student, side, selection).
* :func:`agreement`: a reimpl row against the reference row with the same selection: per-seed
  identity of the whole per-epoch history, and Welch t-tests (``scipy.stats.ttest_ind(equal_var=False)``)
  on the 18 numbers (9 metrics x VAL/TEST at the selected epoch) with Holm's correction at 0.05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from reimpl.metrics import TOPK

METRICS = tuple([f"HR@{k}" for k in TOPK] + [f"NDCG@{k}" for k in TOPK] + ["MRR"])
SELECTIONS = ("test", "val")
ALPHA = 0.05


def flat(m: dict) -> dict[str, float]:
    """``{"hr": [4], "ndcg": [4], "mrr"}`` -> ``{"HR@1": .., ..., "MRR": ..}``."""
    out = {f"HR@{k}": float(v) for k, v in zip(TOPK, m["hr"])}
    out.update({f"NDCG@{k}": float(v) for k, v in zip(TOPK, m["ndcg"])})
    out["MRR"] = float(m["mrr"])
    return out


def select_epoch(history: list[dict], on: str, patience: int = 10, cap: int | None = None) -> dict:
    """Replay main.py:507-519 on ``history`` with NDCG@20 of split ``on``.

    Returns ``{"epoch": best epoch (1-based), "none_positive": no epoch had NDCG@20 > 0, "stopped_at":
    epoch where this rule stops (None: not within the history), "complete": whether the history covers
    the rule (it stopped, or the history reaches the epoch cap)}``. When no epoch beats 0 the reference
    reports no best epoch (``best_step`` 0, empty result lists); here the first epoch (the first arg-max
    of an all-zero score) is used and ``none_positive`` flags it. An empty history gives epoch None.
    """
    if on not in SELECTIONS:
        raise ValueError(f"select_epoch: on must be one of {SELECTIONS}, got {on!r}")
    best, best_epoch, patient, stopped = 0.0, None, 0, None
    for rec in history:
        score = rec[on]["ndcg"][-1]
        if score > best:
            best, best_epoch, patient = score, rec["epoch"], 0
        else:
            patient += 1
        if patient >= patience:
            stopped = rec["epoch"]
            break
    complete = stopped is not None or (cap is not None and len(history) >= cap)
    none_positive = best_epoch is None
    if none_positive and history:
        best_epoch = history[0]["epoch"]
    return {"epoch": best_epoch, "none_positive": none_positive, "stopped_at": stopped, "complete": complete}


def selected_metrics(result: dict, on: str, patience: int = 10) -> dict:
    """``{"epoch", "complete", "val": {metric: v}, "test": {metric: v}}`` (NaN where no epoch beat 0)."""
    sel = select_epoch(result["history"], on, patience, result.get("epochs_cap"))
    out = {"epoch": sel["epoch"], "complete": sel["complete"], "none_positive": sel["none_positive"]}
    if sel["epoch"] is None:
        out.update(val={m: math.nan for m in METRICS}, test={m: math.nan for m in METRICS})
    else:
        rec = result["history"][sel["epoch"] - 1]
        out.update(val=flat(rec["val"]), test=flat(rec["test"]))
    return out


@dataclass
class Row:
    """One table row: a (data set, student, side, selection) group over seeds."""

    dataset: str
    model: str
    side: str
    selection: str
    seeds: list[int] = field(default_factory=list)
    epochs: list = field(default_factory=list)          # selected epoch per seed
    values: dict = field(default_factory=dict)          # split -> metric -> [per seed]
    incomplete: int = 0                                 # seeds whose history does not cover the rule
    none_positive: int = 0                              # seeds where no epoch had NDCG@20 > 0
    expected_seeds: int = 0

    def arr(self, split: str, metric: str) -> np.ndarray:
        return np.asarray(self.values[split][metric], dtype=np.float64)

    def mean(self, split: str, metric: str) -> float:
        a = self.arr(split, metric)
        return float(np.mean(a)) if len(a) else math.nan

    def std(self, split: str, metric: str) -> float:
        a = self.arr(split, metric)
        return float(np.std(a, ddof=1)) if len(a) > 1 else math.nan

    @property
    def pending(self) -> int:
        return self.expected_seeds - len(self.seeds)


def aggregate(results: list[dict], expected: dict | None = None, patience: int = 10) -> dict[tuple, Row]:
    """Rows keyed ``(dataset, model, side, selection)``; ``expected`` maps ``(dataset, model, side)`` to
    the number of seeds the plan runs (rows with none finished yet appear with zero seeds)."""
    rows: dict[tuple, Row] = {}
    for (ds, model, side), n in (expected or {}).items():
        for sel in SELECTIONS:
            rows[(ds, model, side, sel)] = Row(ds, model, side, sel, expected_seeds=n,
                                               values={"val": {m: [] for m in METRICS},
                                                       "test": {m: [] for m in METRICS}})
    for r in sorted(results, key=lambda r: r["seed"]):
        if r.get("status") != "finished":
            continue
        for sel in SELECTIONS:
            key = (r["dataset"], r["model"], r["side"], sel)
            row = rows.setdefault(key, Row(*key, values={"val": {m: [] for m in METRICS},
                                                         "test": {m: [] for m in METRICS}}))
            s = selected_metrics(r, sel, patience)
            row.seeds.append(r["seed"])
            row.epochs.append(f"{s['epoch']}*" if s["none_positive"] else s["epoch"])
            row.none_positive += s["none_positive"]
            row.incomplete += not s["complete"]
            for split in ("val", "test"):
                for m in METRICS:
                    row.values[split][m].append(s[split][m])
            row.expected_seeds = max(row.expected_seeds, len(row.seeds))
    return rows


def welch(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch p-value; zero-variance groups: 1.0 if the means are equal, else NaN (undefined)."""
    import warnings

    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2 or np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    if len(a) == len(b) and np.allclose(np.sort(a), np.sort(b), rtol=0, atol=1e-12):
        return 1.0  # the same samples (e.g. identical runs): no test needed, and scipy loses precision
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        # both constant across seeds (common with ~100 evaluation rows: one hit = 1/N): the t statistic
        # is undefined; reported as untestable instead of p = 0
        return 1.0 if a[0] == b[0] else math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant groups: p is still well defined
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN kept)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    adj = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        adj[i] = running
    return adj


def history_identity(ref_results: dict[int, dict], other: dict[int, dict]) -> dict:
    """Per-seed comparison of the whole per-epoch histories (loss, VAL/TEST HR/NDCG/MRR).

    Returns ``{"seeds": [...], "max_abs": float, "identical": bool}`` over seeds present on both sides.
    """
    worst, seeds = 0.0, sorted(set(ref_results) & set(other))
    loss_abs, loss_rel, metric_abs = 0.0, 0.0, 0.0
    first_diverge = {}   # seed -> first epoch whose VAL/TEST metrics differ (None: never)
    for s in seeds:
        ha, hb = ref_results[s]["history"], other[s]["history"]
        first_diverge[s] = None
        if len(ha) != len(hb):
            worst = metric_abs = math.inf
        for ea, eb in zip(ha, hb):
            d = abs(ea["loss"] - eb["loss"])
            loss_abs = max(loss_abs, d)
            loss_rel = max(loss_rel, d / max(abs(ea["loss"]), 1e-300))
            for split in ("val", "test"):
                fa, fb = flat(ea[split]), flat(eb[split])
                dm = max(abs(fa[m] - fb[m]) for m in METRICS)
                metric_abs = max(metric_abs, dm)
                if dm > 1e-12 and first_diverge[s] is None:
                    first_diverge[s] = ea.get("epoch")
    worst = max(worst, loss_abs, metric_abs)
    # "identical": bit-for-bit up to 1e-12. "metrics_identical": every evaluated metric equal (1e-12) with the
    # loss differing only by float rounding drift (distillation runs: see the dllm2rec.train_step tolerance note)
    return {"seeds": seeds, "max_abs": worst, "identical": bool(seeds) and worst <= 1e-12,
            "metrics_identical": bool(seeds) and metric_abs <= 1e-12, "loss_max_abs": loss_abs,
            "loss_max_rel": loss_rel, "metric_max_abs": metric_abs, "first_diverge": first_diverge}


def agreement(ref: Row, row: Row, identity: dict | None = None) -> dict:
    """Verdict for ``row`` (a reimpl side) against ``ref`` (the reference, same selection)."""
    if len(ref.seeds) < 2 or len(row.seeds) < 2:
        verdict = "pending" if (ref.pending or row.pending) else "n/a"
        return {"verdict": verdict, "text": f"{verdict}: needs >= 2 finished seeds per side "
                                            f"(reference {len(ref.seeds)}, reimpl {len(row.seeds)})",
                "min_p": math.nan, "min_metric": None, "identity": identity}
    names, ps = [], []
    for split in ("val", "test"):
        for m in METRICS:
            names.append(f"{split.upper()} {m}")
            ps.append(welch(ref.arr(split, m), row.arr(split, m)))
    adj = holm(ps)
    finite = [(p, n) for p, n in zip(adj, names) if not math.isnan(p)]
    min_p, min_name = min(finite) if finite else (math.nan, None)
    n_undef = sum(math.isnan(p) for p in adj)
    undef = [n for p, n in zip(adj, names) if math.isnan(p)]
    if math.isnan(min_p):
        verdict, text = "n/a", "n/a: no number is testable (missing values or constant on both sides)"
    elif min_p >= ALPHA:
        verdict = "agree"
        text = (f"agree within seed noise (Welch, Holm over {18 - n_undef} numbers: "
                + ("all adjusted p = 1.00)" if min_p >= 1.0 else f"smallest adjusted p = {min_p:.2f}, {min_name})"))
    else:
        verdict = "differ"
        bad = [n for p, n in zip(adj, names) if not math.isnan(p) and p < ALPHA]
        text = f"differ: {', '.join(bad)} (smallest adjusted p = {min_p:.2g})"
    if n_undef and verdict != "n/a":
        text += (f"; {n_undef} of 18 untestable (constant across seeds on both sides, different values: "
                 f"{', '.join(undef)})")
    if identity and identity["identical"]:
        text = (f"identical per seed (whole history, seeds {identity['seeds']}, max abs. difference "
                f"{identity['max_abs']:.1g}); " + text)
    elif identity and identity.get("metrics_identical"):
        text = (f"every evaluated metric identical per seed (seeds {identity['seeds']}); the printed loss differs by "
                f"<= {identity['loss_max_rel']:.1g} relative (float rounding drift that has not flipped any rank); "
                + text)
    elif (identity and identity["seeds"] and identity.get("loss_max_rel", 1.0) < 1e-6
          and math.isfinite(identity.get("metric_max_abs", math.inf))):
        fd = ", ".join(f"s{s}: {'never' if e is None else f'epoch {e}'}" for s, e in identity["first_diverge"].items())
        text = (f"per-seed histories drift apart by float rounding (loss <= {identity['loss_max_rel']:.1g} relative "
                f"from the first batch on; evaluated metrics first differ at {fd}; max metric difference "
                f"{identity['metric_max_abs']:.2g}); " + text)
    elif identity and identity["seeds"]:
        text = (f"per-seed histories differ (max abs. difference {identity['max_abs']:.2g}); " + text)
    return {"verdict": verdict, "text": text, "min_p": min_p, "min_metric": min_name, "identity": identity,
            "p": dict(zip(names, ps)), "p_holm": dict(zip(names, adj))}
