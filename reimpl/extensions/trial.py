"""``make extensions``: small-scale trial of UAMD, RDR, CDR and sample selection -> reports/extensions.md.

Usage::

    python -m reimpl.extensions.trial [--out reports/extensions.md] [--work cache/extensions]
        [--rows 3000] [--epochs 6] [--seeds 0,1,2] [--teacher-rows 12000] [--rationales 128]

Data: LastFM (``../shared/data/ilora/lastfm`` converted to the DLLM2Rec layout); students train on a
fixed random subset of ``--rows`` train rows (same subset, same seeds for every arm) and are evaluated
on the full val/test splits (122 rows each). Teacher: the STAND-IN of :mod:`reimpl.extensions.standin`
(SASRec experts, trained on ``--teacher-rows`` train rows) -- not iLoRA; results against the real
iLoRA teacher are pending its export. All arms use ``mode="fixed"`` (best epoch on validation),
``alpha = 0`` (DRO off, to fit the CPU budget), the same lr/batch/epochs. Rationales (SmolLM2) and the
teacher are cached under ``--work``; a rerun reuses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.train import DLLM2RecData, load_data, train
from reimpl.extensions.cdr import CDRConfig, run_cdr, selected
from reimpl.extensions.hooks import ExtConfig, build_hooks
from reimpl.extensions.standin import StandInConfig, StandInTeacher

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
TEMPLATE = Path(__file__).with_name("templates") / "extensions.md.j2"
METRICS = ("ndcg@10", "hr@10", "mrr", "ece")

# arm -> (student config overrides, extension config); "plain" = no teacher at all
ARMS: dict[str, tuple[dict, dict]] = {
    "plain": ({"lam": 0.0, "ed_weight": 0.0}, {}),
    "dllm2rec": ({}, {}),
    "uamd-exp": ({}, {"uamd": {"enabled": True, "fn": "exp"}}),
    "sel-kl-high": ({}, {"selection": {"policy": "kl", "output": "mask", "ratio": 0.5, "prefer": "high"}}),
    "sel-gt-error": ({}, {"selection": {"policy": "gt_error", "output": "weight"}}),
    "rdr": ({}, {"rdr": {"enabled": True, "lam": 0.5}}),
    "rdr-only": ({"lam": 0.0, "ed_weight": 0.0}, {"rdr": {"enabled": True, "lam": 0.5}}),
}


def _clear_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _peak_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def subset(data: DLLM2RecData, rows: np.ndarray) -> DLLM2RecData:
    return dataclasses.replace(data, train_seq=data.train_seq[rows], train_len=data.train_len[rows],
                               train_next=data.train_next[rows], candidates=None, confidence=None, llm_table=None)


def teacher_path(work: Path, teacher_rows: int, tcfg: StandInConfig) -> Path:
    return work / (f"standin_teacher_{teacher_rows}_e{tcfg.num_experts}_ep{tcfg.epochs}_lr{tcfg.lr:g}"
                   f"_s{tcfg.seed}.pt")


def prepare(work: Path, n_rows: int, teacher_rows: int, log) -> tuple[DLLM2RecData, dict, np.ndarray, dict]:
    from reimpl.data.convert import ilora_to_dllm2rec
    from reimpl.ilora.export import write_tocf
    from reimpl.extensions.uamd import write_uncertainty

    src = SHARED / "data/ilora/lastfm"
    if not (src / "train_data.df").is_file():
        raise FileNotFoundError(f"{src}: LastFM (iLoRA layout) is needed for the trial")
    droot = work / "dllm2rec"
    if not (droot / "data/lastfm/train_data.df").is_file():
        ilora_to_dllm2rec(src, droot / "data/lastfm", name="lastfm")
    full = load_data(droot, "lastfm", need_rank=False, need_emb=False)
    rs = np.random.RandomState(0)
    perm = rs.permutation(len(full.train_next))
    rows = np.sort(perm[:n_rows])
    t_rows = np.sort(perm[:max(teacher_rows, n_rows)])  # the teacher sees the student's rows and more
    data = subset(full, rows)
    tcfg = StandInConfig()
    tpath = teacher_path(work, teacher_rows, tcfg)
    teacher = StandInTeacher(tcfg, full.item_num, full.seq_size)
    t0 = time.time()
    if tpath.is_file():
        for m, sd in zip(teacher.experts, torch.load(tpath, weights_only=True)):
            m.load_state_dict(sd)
        fit_s = json.loads(tpath.with_suffix(".json").read_text())["fit_s"]
    else:
        teacher.fit(full.train_seq[t_rows], full.train_len[t_rows], full.train_next[t_rows], log=log)
        fit_s = time.time() - t0
        torch.save([m.state_dict() for m in teacher.experts], tpath)
        tpath.with_suffix(".json").write_text(json.dumps({"fit_s": fit_s}))
    t0 = time.time()
    exp = teacher.export(data.train_seq, data.train_len)
    export_s = time.time() - t0
    folder = write_tocf(work / "dllm2rec", "lastfm", exp["rank"], exp["confidence"], exp["embeddings"],
                        full.item_num)
    write_uncertainty(folder, exp["uncertainty"])
    data.candidates = torch.as_tensor(exp["rank"], dtype=torch.long)
    data.confidence = torch.as_tensor(exp["confidence"], dtype=torch.float32)
    data.llm_table = exp["embeddings"].to(torch.float32)
    from reimpl.extensions.cdr import teacher_metrics
    info = {"teacher": "stand-in (3 SASRec experts, uniform gate)", "teacher_cfg": dataclasses.asdict(tcfg),
            "teacher_rows": int(len(t_rows)), "teacher_fit_s": fit_s, "teacher_export_s": export_s,
            "teacher_test": teacher_metrics(teacher, data.test), "teacher_val": teacher_metrics(teacher, data.val),
            "tocf": str(folder.relative_to(work)), "item_num": full.item_num, "n_train_full": len(full.train_next)}
    return data, info, rows, {"teacher": teacher, "uncertainty": exp["uncertainty"], "full": full}


def rationales(work: Path, data: DLLM2RecData, n: int, log) -> dict:
    from reimpl.extensions.rdr import GenParams, build_prompt, build_vector_store, generate_rationales

    names = {}
    for line in (SHARED / "data/ilora/lastfm/id2name.txt").read_text(encoding="utf-8").splitlines():
        if "::" in line:
            k, v = line.split("::", 1)
            names[int(k)] = v.strip()
    rs = np.random.RandomState(1)
    rows = np.sort(rs.choice(len(data.train_next), n, replace=False)).tolist()
    prompts = []
    for r in rows:
        hist = [names.get(int(i), str(int(i))) for i in data.train_seq[r] if int(i) != data.item_num]
        prompts.append(build_prompt(hist, names.get(int(data.train_next[r]), str(int(data.train_next[r])))))
    store = work / "rdr"
    t0 = time.time()
    recs = generate_rationales(rows, prompts, store, gen=GenParams(max_new_tokens=32, batch_size=16))
    gen_s = time.time() - t0
    t0 = time.time()
    vec, index = build_vector_store(recs, store)
    return {"store": str(store), "n": len(rows), "coverage": len(rows) / len(data.train_next),
            "gen_or_cache_s": gen_s, "encode_s": time.time() - t0,
            "examples": [{"prompt": recs[r]["prompt"], "rationale": recs[r]["rationale"]} for r in rows[:3]],
            "model_id": recs[rows[0]]["model_id"], "dim": int(vec.shape[1])}


def run_arm(name: str, base: DLLM2RecConfig, data: DLLM2RecData, seed: int, rdr_store: str, log) -> dict:
    over, ext_d = ARMS[name]
    cfg = dataclasses.replace(base, seed=seed, **over)
    ext_d = json.loads(json.dumps(ext_d))
    if "rdr" in ext_d:
        ext_d["rdr"]["store"] = rdr_store
        ext_d["rdr"]["proj_seed"] = seed
    ext = ExtConfig.from_dict(ext_d)
    d = dataclasses.replace(data)
    hooks = build_hooks(ext, d, candidate_topk=cfg.candidate_topk, hidden=cfg.hidden_factor,
                        tocf_dir=None, uncertainty=None if not ext.uamd.enabled else UNCERTAINTY["u"])
    _clear_peak()
    t0 = time.time()
    res = train(cfg, d, log=log, progress=False, hooks=hooks)
    sel = selected(res)
    return {"arm": name, "seed": seed, "wall_s": time.time() - t0, "peak_rss_mib": _peak_mib(),
            "best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"], "val": sel["ext"]["val"],
            "test": sel["ext"]["test"], "history": [{"epoch": h["epoch"], "loss": h["loss"],
                                                             "val": {k: h["ext"]["val"][k] for k in METRICS},
                                                             "test": {k: h["ext"]["test"][k] for k in METRICS}}
                                                            for h in res["history"]]}


UNCERTAINTY: dict = {}


def stats(results: list[dict], arms: list[str], seeds: list[int]) -> dict:
    from scipy import stats as st

    by = {(r["arm"], r["seed"]): r for r in results}
    table = {}
    for a in arms:
        rs = [by[(a, s)] for s in seeds if (a, s) in by]
        row = {}
        for split in ("test", "val"):
            for m in METRICS:
                v = np.array([r[split][m] for r in rs])
                row[f"{split}/{m}"] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        row["wall_s"] = float(np.mean([r["wall_s"] for r in rs]))
        row["peak_rss_mib"] = float(np.max([r["peak_rss_mib"] or 0 for r in rs]))
        for ref in ("dllm2rec", "plain"):
            if ref == a or not all((ref, s) in by for s in seeds):
                continue
            x = np.array([by[(a, s)]["test"]["ndcg@10"] for s in seeds])
            y = np.array([by[(ref, s)]["test"]["ndcg@10"] for s in seeds])
            d = x - y
            p_t = float(st.ttest_rel(x, y).pvalue) if len(seeds) > 1 and np.any(d != d[0]) else float("nan")
            # per (seed, test row) paired reciprocal ranks: more pairs than seeds
            rx = np.concatenate([1.0 / np.asarray(by[(a, s)]["test"]["ranks"], float) for s in seeds])
            ry = np.concatenate([1.0 / np.asarray(by[(ref, s)]["test"]["ranks"], float) for s in seeds])
            nz = rx != ry
            p_w = float(st.wilcoxon(rx[nz], ry[nz]).pvalue) if nz.sum() >= 10 else float("nan")
            row[f"vs_{ref}"] = {"delta_ndcg10": float(d.mean()), "p_ttest_rel_seeds": p_t,
                                "p_wilcoxon_rows_rr": p_w, "n_pairs": int(nz.sum())}
        table[a] = row
    return table


def plots(results, table, arms, cdr_runs, u, figdir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reimpl.extensions.metrics import reliability_bins

    figdir.mkdir(parents=True, exist_ok=True)
    out = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, m in zip(axes, ("ndcg@10", "mrr", "ece")):
        mu = [table[a][f"test/{m}"][0] for a in arms]
        sd = [table[a][f"test/{m}"][1] for a in arms]
        ax.bar(range(len(arms)), mu, yerr=sd, capsize=3, color="#4C72B0")
        ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"test {m} (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    p = figdir / "ext_metrics.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p.name)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for a in [x for x in ("plain", "dllm2rec", "uamd-exp") if x in arms]:
        conf = np.concatenate([r["test"]["conf"] for r in results if r["arm"] == a])
        ok = np.concatenate([r["test"]["correct"] for r in results if r["arm"] == a])
        b = reliability_bins(conf, ok, 15)
        keep = b["count"] > 0
        ax.plot(b["conf"][keep], b["acc"][keep], "o-", label=a, ms=3)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("top-1 accuracy")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=8)
    ax.set_title("reliability (test, seeds pooled, 15 bins)", fontsize=9)
    fig.tight_layout()
    p = figdir / "ext_reliability.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p.name)
    if cdr_runs:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for s, runs in cdr_runs.items():
            ax.plot([r["round"] for r in runs], [r["selected"]["ext"]["test"]["ndcg@10"] for r in runs],
                    "o-", label=f"student seed {s}")
            ax.plot([r["round"] for r in runs], [r["teacher"]["test"]["ndcg@10"] for r in runs], "x--",
                    label=f"teacher seed {s}")
        ax.set_xlabel("CDR round")
        ax.set_ylabel("test NDCG@10")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = figdir / "ext_cdr_rounds.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p.name)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(u, bins=40, color="#55A868")
    ax.set_xlabel("teacher expert variance u")
    ax.set_ylabel("train rows")
    fig.tight_layout()
    p = figdir / "ext_uncertainty_hist.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p.name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.extensions.trial", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports/extensions.md"))
    ap.add_argument("--work", default=str(ROOT / "cache/extensions"))
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--teacher-rows", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rationales", type=int, default=128)
    ap.add_argument("--cdr-rounds", type=int, default=1)
    ap.add_argument("--arms", default=",".join(list(ARMS) + ["cdr"]))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_all = time.time()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    seeds = [int(s) for s in a.seeds.split(",")]
    arms = [x for x in a.arms.split(",") if x]
    unknown = set(arms) - set(ARMS) - {"cdr"}
    if unknown:
        raise SystemExit(f"--arms: unknown {sorted(unknown)}; known {list(ARMS) + ['cdr']}")
    data, info, _, extra = prepare(work, a.rows, a.teacher_rows, log)
    UNCERTAINTY["u"] = extra["uncertainty"]
    rinfo = None
    if any(x.startswith("rdr") for x in arms):
        rinfo = rationales(work, data, a.rationales, log)
    base = DLLM2RecConfig(data="lastfm", model_name="SASRec", mode="fixed", epoch=a.epochs, batch_size=128,
                          lr=0.01, alpha=0.0, d_llm=data.llm_table.shape[1], eval_batch_size=512, patience=a.epochs)
    results = []
    for s in seeds:
        for arm in [x for x in arms if x != "cdr"]:
            log(f"== arm {arm} seed {s}")
            results.append(run_arm(arm, base, data, s, rinfo["store"] if rinfo else "", log))
    cdr_runs, cdr_cfg = {}, CDRConfig(rounds=a.cdr_rounds, student_init="scratch", start="plain")
    if "cdr" in arms:
        for s in seeds:
            log(f"== CDR seed {s}")
            teacher = StandInTeacher(StandInConfig(), data.item_num, data.seq_size)
            for m, sd in zip(teacher.experts, torch.load(teacher_path(work, a.teacher_rows, StandInConfig()),
                                                           weights_only=True)):
                m.load_state_dict(sd)
            _clear_peak()
            t0 = time.time()
            runs = run_cdr(cdr_cfg, dataclasses.replace(base, seed=s), ExtConfig(), data, teacher,
                           uncertainty=extra["uncertainty"], log=log)
            cdr_runs[s] = runs
            last = runs[-1]["student"]
            results.append({"arm": "cdr", "seed": s, "wall_s": time.time() - t0, "peak_rss_mib": _peak_mib(),
                            "best_epoch": last["best_epoch"], "epochs_run": last["epochs_run"],
                            "val": runs[-1]["selected"]["ext"]["val"], "test": runs[-1]["selected"]["ext"]["test"]})
    table = stats(results, arms, seeds)
    figs = plots(results, table, arms, cdr_runs, extra["uncertainty"], Path(a.out).parent / "figures")
    runs_dir = ROOT / "runs/extensions"
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "results.json").write_text(json.dumps({"results": results, "table": table, "info": info,
                                                       "rdr": rinfo, "cdr": {str(k): v for k, v in cdr_runs.items()}},
                                                      default=float))
    from jinja2 import Template
    u = extra["uncertainty"]
    text = Template(TEMPLATE.read_text(encoding="utf-8")).render(
        a=a, arms=arms, seeds=seeds, table=table, info=info, rinfo=rinfo, figs=figs, base=dataclasses.asdict(base),
        cdr_runs=cdr_runs, cdr_cfg=dataclasses.asdict(cdr_cfg), metrics=METRICS, n_rows=len(data.train_next),
        arm_defs={k: v for k, v in ARMS.items()}, total_min=(time.time() - t_all) / 60,
        u_stats={"mean": float(u.mean()), "median": float(np.median(u)), "max": float(u.max())},
        host=f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        cmd="make extensions  (= .venv/bin/python -m reimpl.extensions.trial " + " ".join(argv or sys.argv[1:]) + ")")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text, encoding="utf-8")
    log(f"wrote {a.out} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
