"""Whole-epoch identity: one distilled epoch on real LastFM, reimpl faithful vs the unmodified ``main.py``.

``python -m parity.epoch`` (``make epoch-identity``, ~3 min per kernel set and model on 2 cores) builds
the full LastFM train split in DLLM2Rec's layout (``reimpl.data.convert.ilora_to_dllm2rec``), seeded
well-formed teacher files (ranking, confidences, 4096-d embeddings: no teacher is trained here), then,
under each kernel set of ``parity/kernels.py``, each side in its own process with one thread, trains one epoch with the
default distillation (lam 0.8, alpha 1, ed_weight 0.2, batch 256) on both sides: ``main.py`` through
``parity.shims.dllm2rec_main`` (``--final-state``), reimpl through ``reimpl.dllm2rec.train.train``.
Compared: the last batch's loss, every final parameter, and the epoch's val/test HR/NDCG@{1,5,10,20}
and MRR (the reference's from the ranks its ``calculate_hit`` saw). The result,
``parity/epoch_identity.json``, is rendered into ``reports/parity.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from parity.kernels import KERNEL_SETS, describe, env_for, fingerprint
from reimpl.paths import ROOT, SHARED, cache_dir

RESULT_FILE = Path(__file__).resolve().parent / "epoch_identity.json"
SEED = 2024
TEACHER_SEED = 7
K_TEACHER = 20
D_LLM = 4096
MODELS = ("SASRec",)


def build_workdir(workdir: Path) -> Path:
    """data/lastfm (the full published train split) + tocf/lastfm (seeded synthetic teacher files)."""
    import torch

    from reimpl.data.convert import ilora_to_dllm2rec

    if (workdir / "tocf" / "lastfm" / "all_embeddings.pt").is_file():
        return workdir
    ds = ilora_to_dllm2rec(SHARED / "data" / "ilora" / "lastfm", workdir / "data" / "lastfm", name="lastfm")
    n, item_num = ds["train"].n, ds.item_num
    rng = np.random.default_rng(TEACHER_SEED)
    tdir = workdir / "tocf" / "lastfm"
    tdir.mkdir(parents=True, exist_ok=True)
    ranks = np.argsort(rng.random((n, item_num)), axis=1, kind="stable")[:, :K_TEACHER]  # distinct ids
    np.savetxt(tdir / "myrank_train.txt", ranks, fmt="%d")
    np.savetxt(tdir / "confidence_train.txt", np.sort(rng.random((n, K_TEACHER)) * 5, axis=1), fmt="%.6f")
    torch.save(torch.from_numpy((rng.standard_normal((item_num, D_LLM)) * 0.05).astype(np.float32)),
               tdir / "all_embeddings.pt")
    return workdir


def _metrics(ranks: np.ndarray) -> dict:
    from reimpl.dllm2rec.config import DLLM2RecConfig
    from reimpl.dllm2rec.evaluate import metrics_from_ranks

    return metrics_from_ranks(np.asarray(ranks), DLLM2RecConfig().topk)  # main.py:301 (1, 5, 10, 20)


def run_reference(workdir: Path, model: str, out: Path) -> dict:
    cap, state = out / f"ref_{model}.capture.json", out / f"ref_{model}.safetensors"
    p = subprocess.run([sys.executable, "-m", "parity.shims.dllm2rec_main", "--seed", str(SEED), "--workdir",
                        str(workdir), "--capture", str(cap), "--final-state", str(state), "--",
                        "--model_name", model, "--data", "lastfm", "--epoch", "1"],
                       cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"main.py failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    evals = json.loads(cap.read_text())["evals"]
    return {"loss": json.loads(Path(str(state) + ".json").read_text())["loss_all"], "state": str(state),
            **{e["split"].lower(): _metrics(e["ranks"]) for e in evals}}


def run_reimpl(workdir: Path, model: str, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    from reimpl.dllm2rec.config import DLLM2RecConfig
    from reimpl.dllm2rec.train import TrainHooks, load_data, train

    torch.set_num_threads(1)
    cfg = DLLM2RecConfig(model_name=model, data="lastfm", epoch=1, seed=SEED, mode="faithful")
    data = load_data(workdir, "lastfm", need_rank=True, need_emb=True, candidate_topk=cfg.candidate_topk)
    state = out / f"reimpl_{model}.safetensors"
    hooks = TrainHooks(on_end=lambda m: save_file(
        {k: v.detach().contiguous().clone() for k, v in m.state_dict().items()}, str(state)))
    res = train(cfg, data, log=lambda *a: None, progress=False, hooks=hooks)
    h = res["history"][-1]
    return {"loss": h["loss"], "state": str(state), "val": h["val"], "test": h["test"]}


def _child(args) -> int:
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    fn = run_reference if args.child == "reference" else run_reimpl
    t0 = time.time()
    res = fn(Path(args.workdir), args.model, out)
    res["wall_s"] = time.time() - t0
    res["platform"] = describe(fingerprint())
    (out / f"{args.child}_{args.model}.json").write_text(json.dumps(res))
    return 0


def compare(ref: dict, ours: dict) -> dict:
    from safetensors.numpy import load_file

    a, b = load_file(ours["state"]), load_file(ref["state"])
    if set(a) != set(b):
        raise ValueError(f"parameter names differ: {sorted(set(a) ^ set(b))}")
    diffs = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0 for k in b}
    worst = max(diffs, key=diffs.get)
    metrics = {}
    for split in ("val", "test"):
        for key in ("hr", "ndcg"):
            metrics[f"{split}.{key}"] = [float(x) for x in ours[split][key]] == [float(x) for x in ref[split][key]]
        metrics[f"{split}.mrr"] = float(ours[split]["mrr"]) == float(ref[split]["mrr"])
    return {
        "loss_ref": ref["loss"], "loss_reimpl": ours["loss"],
        "loss_rel_diff": abs(ours["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30),
        "params_identical": all(v == 0.0 for v in diffs.values()), "params_max_abs": diffs[worst],
        "params_worst": worst, "metrics_identical": metrics,
        "test_ndcg20": {"ref": float(ref["test"]["ndcg"][-1]), "reimpl": float(ours["test"]["ndcg"][-1])},
        "test_mrr": {"ref": float(ref["test"]["mrr"]), "reimpl": float(ours["test"]["mrr"])},
        "val_mrr": {"ref": float(ref["val"]["mrr"]), "reimpl": float(ours["val"]["mrr"])},
        "wall_s": {"ref": ref["wall_s"], "reimpl": ours["wall_s"]},
    }


def measure(sets: list[str], models: tuple[str, ...], log=print) -> dict:
    if not (SHARED / "data" / "ilora" / "lastfm").is_dir():
        raise FileNotFoundError(f"{SHARED}/data/ilora/lastfm: needs ../shared (RECPARITY_SHARED)")
    workdir = build_workdir(cache_dir() / "epoch_identity")
    result = {"command": "python -m parity.epoch", "seed": SEED, "teacher": "synthetic, seeded",
              "settings": "lam 0.8, alpha 1, ed_weight 0.2, batch 256, lr 0.001, 1 epoch (198 batches)",
              "sets": {}}
    for s in sets:
        result["sets"][s] = {}
        for model in models:
            with tempfile.TemporaryDirectory() as tmp:
                sides = {}
                for side in ("reference", "reimpl"):
                    p = subprocess.run([sys.executable, "-m", "parity.epoch", "--child", side, "--model", model,
                                        "--workdir", str(workdir), "--out", tmp], cwd=ROOT,
                                       env=dict(env_for(s), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
                                       capture_output=True, text=True)
                    if p.returncode:
                        raise RuntimeError(f"{side} {model} under {s}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
                    sides[side] = json.loads((Path(tmp) / f"{side}_{model}.json").read_text())
                row = compare(sides["reference"], sides["reimpl"])
                row["platform"] = sides["reimpl"]["platform"]
            result["sets"][s][model] = row
            log(f"{s:8s} {model}: loss ref {row['loss_ref']!r} reimpl {row['loss_reimpl']!r}, params identical "
                f"{row['params_identical']} (max abs {row['params_max_abs']:.3g}), metrics "
                f"{all(row['metrics_identical'].values())}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="*", default=list(KERNEL_SETS))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--child", choices=("reference", "reimpl"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULT_FILE))
    a = ap.parse_args(argv)
    if a.child:
        return _child(a)
    res = measure(a.sets, tuple(a.models))
    Path(a.out).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
