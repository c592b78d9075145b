"""Render the baseline report (Markdown via ``templates/baselines.md.j2``) and its PNG figures.

Renders from whatever has finished under the results cache: rows still running or not started are
marked pending, so the report can be produced at any time (``python -m reimpl.baselines report``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from reimpl.baselines import stats
from reimpl.baselines.config import Plan
from reimpl.baselines.runner import load_results
from reimpl.paths import ROOT

SIDE_LABEL = {"reference": "reference (main.py)", "faithful": "reimpl faithful", "fixed": "reimpl fixed"}
SEL_LABEL = {"test": "TEST NDCG@20 (reference rule)", "val": "VAL NDCG@20 (fixed rule)"}
COLORS = {"reference": "#444444", "faithful": "#1f77b4", "fixed": "#d62728"}


def fmt(row: stats.Row, split: str, metric: str) -> str:
    if not row.seeds:
        return "pending"
    m, s = row.mean(split, metric), row.std(split, metric)
    if math.isnan(m):
        return "n/a"
    return f"{m:.4f}" if math.isnan(s) else f"{m:.4f} ± {s:.4f}"


def chance_levels(n_items: int) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of ``n_items`` items (one target per row)."""
    out = {f"HR@{k}": k / n_items for k in stats.TOPK}
    out.update({f"NDCG@{k}": float(sum(1 / math.log2(r + 1) for r in range(1, k + 1)) / n_items)
                for k in stats.TOPK})
    out["MRR"] = float(sum(1.0 / r for r in range(1, n_items + 1)) / n_items)
    return out


def _curves(results: list[dict], ds: str, models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("loss", None, "loss of the epoch's last batch"), ("val", "ndcg", "VAL NDCG@20"),
              ("test", "ndcg", "TEST NDCG@20"), ("test", "mrr", "TEST MRR"))
    fig, axes = plt.subplots(len(panels), len(models), figsize=(4.2 * len(models), 2.6 * len(panels)),
                             squeeze=False, sharex=True)
    for j, model in enumerate(models):
        for i, (split, metric, title) in enumerate(panels):
            ax = axes[i][j]
            for side in ("reference", "faithful", "fixed"):
                runs = [r for r in results if r["dataset"] == ds and r["model"] == model and r["side"] == side
                        and r.get("status") == "finished"]
                if not runs:
                    continue
                n = min(len(r["history"]) for r in runs)

                def val(h, split=split, metric=metric):
                    if split == "loss":
                        return h["loss"]
                    return h[split][metric][-1] if metric == "ndcg" else h[split][metric]

                y = np.array([[val(h) for h in r["history"][:n]] for r in runs])
                x = np.arange(1, n + 1)
                ls = "--" if side == "faithful" else "-"
                ax.plot(x, y.mean(0), ls, color=COLORS[side], marker="o", ms=3, lw=2.2 if side == "reference" else 1.4,
                        label=f"{SIDE_LABEL[side]} (n={len(runs)})")
                if len(runs) > 1:
                    ax.fill_between(x, y.mean(0) - y.std(0, ddof=1), y.mean(0) + y.std(0, ddof=1),
                                    color=COLORS[side], alpha=0.10)
                ax.set_xticks(x)
            ax.set_title(f"{model}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(panels) - 1:
                ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{ds}: per-epoch curves, mean ± std over seeds (faithful dashed over the reference: "
                 "they coincide where identical)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _bars(rows: dict, ds: str, models: list[str], path: Path, chance: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [(side, sel) for sel in ("test", "val") for side in ("reference", "faithful", "fixed")]
    metrics = ("HR@20", "NDCG@20", "MRR")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4.2), squeeze=False)
    width = 0.8 / len(variants)
    for a, metric in enumerate(metrics):
        ax = axes[0][a]
        for v, (side, sel) in enumerate(variants):
            xs, ms, ss = [], [], []
            for j, model in enumerate(models):
                row = rows.get((ds, model, side, sel))
                if row is None or not row.seeds:
                    continue
                xs.append(j + (v - (len(variants) - 1) / 2) * width)
                ms.append(row.mean("test", metric))
                s = row.std("test", metric)
                ss.append(0.0 if math.isnan(s) else s)
            if xs:
                ax.bar(xs, ms, width, yerr=ss, color=COLORS[side], alpha=0.9 if sel == "test" else 0.45,
                       hatch="" if sel == "test" else "//", capsize=2,
                       label=f"{SIDE_LABEL[side]}, select on {sel.upper()}")
        if chance:
            ax.axhline(chance[metric], color="k", ls=":", lw=1, label="chance (random ranking)")
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"TEST {metric} at the selected epoch", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"{ds}: mean ± std over seeds (hatched: selected on VAL)", fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# issue 7: published LastFM HR@1 (papers' Llama-2-7B backbone, full training); not re-run here
PUBLISHED_HR1 = (("SASRec (published in LLaRA / iLoRA)", 0.2233), ("LLaRA, Llama-2-7B (published)", 0.4508))


def _teacher_fig(tr: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = np.asarray(tr["losses"], dtype=float)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(np.arange(1, len(loss) + 1), loss, ".-", lw=1, ms=4, label="micro-batch loss")
    if len(loss) >= 4:
        k = 4
        ax[0].plot(np.arange(k, len(loss) + 1), np.convolve(loss, np.ones(k) / k, "valid"), lw=2,
                   label=f"moving mean ({k})")
    ax[0].set_xlabel("micro-batch")
    ax[0].set_ylabel("LM loss (answer tokens)")
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    ax[1].plot(np.arange(1, len(tr["lrs"]) + 1), tr["lrs"], ".-", lw=1, ms=4)
    ax[1].set_xlabel("micro-batch")
    ax[1].set_ylabel("learning rate")
    ax[1].grid(alpha=0.3)
    fig.suptitle("iLoRA teacher (reimpl, SmolLM2-135M-Instruct) training on LastFM", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def teacher_context(plan: Plan, root: Path, fig_dir: Path | None, fig_rel: str) -> list[dict]:
    """Summaries of the plan's teachers (``<root>/teacher/<name>/teacher.json``), with a loss-curve figure."""
    from reimpl.baselines.runner import teacher_dir
    from reimpl.baselines.teacher import TEACHERS

    out = []
    for name in sorted({ds.teacher for ds in plan.datasets if ds.teacher}):
        d = teacher_dir(root, name)
        summ = json.loads((d / "teacher.json").read_text()) if (d / "teacher.json").is_file() else {}
        tr = json.loads((d / "train.json").read_text()) if (d / "train.json").is_file() else None
        evals = {}
        for split in TEACHERS[name].eval_splits:
            f = d / f"eval_{split}.json"
            if f.is_file():
                e = json.loads(f.read_text())
                e.pop("generations", None)
                evals[split] = e
        entry = {"name": name, "spec": TEACHERS[name], "done": bool(summ.get("done")), "summary": summ,
                 "train": tr, "eval": evals, "published": PUBLISHED_HR1, "dir": _rel(d), "figure": None}
        if tr and tr.get("losses"):
            l = tr["losses"]
            entry["loss_first"], entry["loss_last4"] = l[0], float(np.mean(l[-4:]))
            entry["loss_first4"] = float(np.mean(l[:4]))
            if fig_dir is not None:
                fig_dir.mkdir(parents=True, exist_ok=True)
                _teacher_fig(tr, fig_dir / f"teacher_{name}.png")
                entry["figure"] = f"{fig_rel}/teacher_{name}.png"
        out.append(entry)
    return out


KD_METRICS = ("NDCG@20", "HR@20", "MRR")


def kd_effect(plan: Plan, rows: dict) -> list[dict]:
    """Distilled minus undistilled, per student / side / selection, TEST metrics: mean difference and
    Holm-corrected Welch p over KD_METRICS (runs are independent; the same seeds on both arms)."""
    out = []
    for kd in plan.datasets:
        if not kd.teacher:
            continue
        plain_key = plan.undistilled_twin(kd).key
        for model in (kd.models or plan.models):
            for side in plan.sides:
                for sel in ("test", "val"):
                    a, b = rows.get((kd.key, model, side, sel)), rows.get((plain_key, model, side, sel))
                    if a is None or b is None or not a.seeds or not b.seeds:
                        continue
                    ps = [stats.welch(a.arr("test", m), b.arr("test", m)) for m in KD_METRICS]
                    adj = stats.holm(ps)
                    cells, sig = [], []
                    for m, q in zip(KD_METRICS, adj):
                        dlt = a.mean("test", m) - b.mean("test", m)
                        cells.append(f"{b.mean('test', m):.4f} → {a.mean('test', m):.4f} ({dlt:+.4f}; "
                                     + ("p n/a" if math.isnan(q) else f"p_adj {q:.2f}") + ")")
                        if not math.isnan(q) and q < stats.ALPHA:
                            sig.append(("better" if dlt > 0 else "worse") + f" on {m}")
                    if sig:
                        verdict = "distilled " + ", ".join(sig)
                    elif all(math.isnan(q) for q in adj):
                        verdict = "untestable (needs >= 2 seeds per arm and values that vary)"
                    else:
                        verdict = "no significant difference"
                    out.append({"data": kd.key, "plain": plain_key, "model": model, "side": side, "sel": sel,
                                "n": (len(b.seeds), len(a.seeds)), "cells": cells, "verdict": verdict})
    return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _comparison_table(plan: Plan, key: str, models: list[str], rows: dict, by: dict) -> list[dict]:
    """One line per (student, selection rule, side): formatted cells and agreement with the reference."""
    table = []
    for model in models:
        for sel in ("test", "val"):
            for side in plan.sides:
                row = rows.get((key, model, side, sel))
                if row is None:
                    continue
                agree = None
                if side != "reference":
                    ref = rows.get((key, model, "reference", sel))
                    if ref is not None:
                        ident = stats.history_identity(by[(key, model, "reference")], by[(key, model, side)])
                        agree = stats.agreement(ref, row, ident)
                table.append({"model": model, "side": side, "side_label": SIDE_LABEL[side], "sel": sel,
                              "row": row, "agree": agree,
                              "cells": {split: [fmt(row, split, m) for m in stats.METRICS]
                                        for split in ("val", "test")}})
    return table


def _selection_effect(plan: Plan, key: str, models: list[str], rows: dict) -> list[dict]:
    """TEST-selected minus VAL-selected TEST metrics, paired per seed, and how many seeds pick another epoch."""
    out = []
    for model in models:
        for side in plan.sides:
            rt, rv = rows.get((key, model, side, "test")), rows.get((key, model, side, "val"))
            if not rt or not rt.seeds:
                continue
            e = {"model": model, "side": side, "n": len(rt.seeds),
                 "differ": sum(str(a).rstrip("*") != str(b).rstrip("*") for a, b in zip(rt.epochs, rv.epochs))}
            for metric in ("NDCG@20", "HR@20", "MRR"):
                d = rt.arr("test", metric) - rv.arr("test", metric)  # paired per seed
                e[metric] = (f"{d.mean():+.4f}" + (f" ± {d.std(ddof=1):.4f}" if len(d) > 1 else ""))
            out.append(e)
    return out


def _cost(plan: Plan, key: str, models: list[str], by: dict) -> list[dict]:
    out = []
    for model in models:
        for side in plan.sides:
            rs = list(by[(key, model, side)].values())
            if rs:
                per_epoch = [h["train_s"] for r in rs for h in r["history"]]
                out.append({"model": model, "side": side, "n": len(rs),
                            "epoch_s": float(np.mean(per_epoch)), "epoch_s_sd": float(np.std(per_epoch)),
                            "wall_s": float(np.mean([r["wall_s"] for r in rs]))})
    return out


def _dataset_entry(plan: Plan, ds, man: dict, rows: dict, by: dict, results: list[dict], fig_dir: Path | None,
                   fig_rel: str) -> dict:
    """Everything the report shows for one data set (tables, selection effect, cost, figures)."""
    n_items = man.get("facts", {}).get("item_num")
    entry = {"key": ds.key, "label": ds.label, "spec": ds, "manifest": man, "trainable": man.get("trainable", True),
             "chance": chance_levels(n_items) if n_items else None}
    if ds.source == "dllm2rec-game":
        entry["trainable"] = False
        return entry
    models = list(ds.models or plan.models)
    entry.update(models=models, table=_comparison_table(plan, ds.key, models, rows, by),
                 cost=_cost(plan, ds.key, models, by), figures=[],
                 selection_effect=_selection_effect(plan, ds.key, models, rows))
    if fig_dir is not None and any(r["dataset"] == ds.key for r in results):
        fig_dir.mkdir(parents=True, exist_ok=True)
        tag = ds.key if plan.name in ("full", "quick") else f"{plan.name}_{ds.key}"   # plans share data keys
        _curves(results, ds.key, models, fig_dir / f"baselines_curves_{tag}.png")
        _bars(rows, ds.key, models, fig_dir / f"baselines_bars_{tag}.png", entry["chance"])
        entry["figures"] = [f"{fig_rel}/baselines_curves_{tag}.png", f"{fig_rel}/baselines_bars_{tag}.png"]
    return entry


def _summary(datasets: list[dict]) -> list[dict]:
    """Per data set: verdict counts and which (student, side) pairs are identical / metric-identical / drift."""
    summary = []
    for entry in datasets:
        if not entry.get("table"):
            continue
        ver = defaultdict(int)
        ident, ident_total, metrics_ident, drift = set(), set(), set(), set()
        for t in entry["table"]:
            if t["agree"]:
                ver[(t["side"], t["agree"]["verdict"])] += 1
                idn = t["agree"]["identity"]
                if idn and idn["seeds"]:
                    ident_total.add((t["model"], t["side"]))
                    if idn["identical"]:
                        ident.add((t["model"], t["side"]))
                    elif idn.get("metrics_identical"):
                        metrics_ident.add((t["model"], t["side"]))
                    elif idn.get("loss_max_rel", 1.0) < 1e-6 and math.isfinite(idn.get("metric_max_abs", math.inf)):
                        drift.add((t["model"], t["side"]))
        summary.append({"key": entry["key"], "verdicts": dict(ver), "identical": sorted(ident),
                        "metrics_identical": sorted(metrics_ident), "drift": sorted(drift),
                        "compared": sorted(ident_total)})
    return summary


def _run_rows(runs: list, results: list[dict], root: Path) -> list[dict]:
    """One line per planned run: its result (if any), mean epoch time and state finished / failed / pending."""
    done_ids = {r["run_id"] for r in results if r.get("status") == "finished"}
    res_by_id = {r["run_id"]: r for r in results}
    out = []
    for spec in runs:
        r = res_by_id.get(spec.run_id)
        out.append({"id": spec.run_id, "spec": spec, "r": r,
                    "epoch_s": (float(np.mean([h["train_s"] for h in r["history"]]))
                                if r and r.get("history") else None),
                    "state": "finished" if spec.run_id in done_ids else
                             ("failed" if (root / "runs" / spec.run_id / "failed.json").is_file() else "pending")})
    return out


def build_context(plan: Plan, root: Path, fig_dir: Path | None = None, fig_rel: str = "figures") -> dict:
    """What ``templates/baselines.md.j2`` renders for ``plan`` from the results cache ``root``."""
    root = Path(root)
    results = load_results(root)
    manifests = _read_json(root / "manifests.json")
    runs = plan.runs()
    expected = defaultdict(int)
    for r in runs:
        expected[(r.dataset.key, r.model, r.side)] += 1
    rows = stats.aggregate(results, dict(expected))
    by = defaultdict(dict)
    for r in results:
        if r.get("status") == "finished":
            by[(r["dataset"], r["model"], r["side"])][r["seed"]] = r
    datasets = [_dataset_entry(plan, ds, manifests.get(ds.key, {}), rows, by, results, fig_dir, fig_rel)
                for ds in plan.datasets]
    run_rows = _run_rows(runs, results, root)
    fin = [x["r"] for x in run_rows if x["state"] == "finished"]
    code_versions = defaultdict(int)
    for r in fin:
        c = r.get("code")
        code_versions[f"{c['git_head'][:10]} / code {c['code_sha256'][:12]}" if c else "not recorded"] += 1
    return {"plan": plan, "root": root, "datasets": datasets, "summary": _summary(datasets),
            "total_wall": float(sum(r["wall_s"] for r in fin)) if fin else math.nan,
            "teachers": teacher_context(plan, root, fig_dir, fig_rel), "kd_effect": kd_effect(plan, rows),
            "kd_metrics": KD_METRICS,
            "code_versions": dict(code_versions), "runs": run_rows, "n_done": len(fin),
            "n_total": len(runs), "versions": _read_json(root / "versions.json"),
            "status": _read_json(root / "status.json"), "metrics": stats.METRICS,
            "sel_label": SEL_LABEL, "side_label": SIDE_LABEL, "alpha": stats.ALPHA,
            "print_check": max([r.get("printed_vs_ranks_max_abs", 0.0) for r in results
                                if r.get("side") == "reference"] or [math.nan]),
            "rel_root": _rel(root)}


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def render(plan: Plan, root: Path, report_dir: Path, extra: tuple[tuple[Plan, Path], ...] = (),
           name: str = "baselines.md") -> Path:
    """Render ``plan`` (and then each ``(plan, root)`` of ``extra``, e.g. the distillation plan after the
    full one) into ``<report_dir>/<name>``."""
    report_dir = Path(report_dir)
    parts = [_render_one(plan, root, report_dir)]
    for p, r in extra:
        if Path(r).is_dir() and any((Path(r) / "results").glob("*.json")):   # skip plans never run here
            parts.append(_render_one(p, r, report_dir))
    out = report_dir / name
    report_dir.mkdir(parents=True, exist_ok=True)
    if len(parts) > 1:   # one file, several plans: say what is where
        titles = [p.splitlines()[0].lstrip("# ").strip() for p in parts]
        toc = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(titles))
        parts.insert(0, "<!-- generated by `python -m reimpl.baselines report --plan full` (`make baseline`); do not "
                        "edit by hand -->\n\nThis file holds, one after the other (separated by horizontal rules):\n\n"
                     + toc)
    out.write_text("\n\n---\n\n".join(parts))
    return out


def _render_one(plan: Plan, root: Path, report_dir: Path) -> str:
    import jinja2

    ctx = build_context(plan, root, report_dir / "figures")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["short"] = lambda s, n=12: (s or "")[:n]
    env.filters["f"] = lambda x, spec=".1f": ("n/a" if x is None or (isinstance(x, float) and math.isnan(x))
                                             else format(x, spec))
    return env.get_template("baselines.md.j2").render(**ctx)
