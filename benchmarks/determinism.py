"""Which outputs are bit-identical across reruns and thread counts (docs/notes.md, "Determinism").

``python -m benchmarks.determinism WORKDIR``: runs each trainer CLI three times (``OMP_NUM_THREADS`` 1, 1, 2) and
compares the JSON outputs (timings, paths and the environment block removed) and the teacher's tocf files.
Configurations: the three students x faithful/fixed on the toy export of tests/test_dllm2rec_train.py (with
teacher ranking + embeddings), the same on LastFM converted for DLLM2Rec (no distillation, 2 x 20 batches),
and the tiny-Llama teacher (train 4 micro-batches, eval 3 rows, export 3 rows). About 15 min on 2 loaded cores.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

from reimpl.paths import DATA, ROOT

DROP = {"train_s", "wall_s", "timings", "seconds", "threads", "environment", "config", "export", "checkpoint",
        "scoring_seconds_per_row"}
LOSS = {"loss", "first_loss", "last_loss"}


def strip(o, drop=DROP):
    if isinstance(o, dict):
        return {k: strip(v, drop) for k, v in o.items() if k not in drop}
    if isinstance(o, list):
        return [strip(v, drop) for v in o]
    return o


def leaves(o, p=""):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from leaves(v, f"{p}.{k}")
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from leaves(v, f"{p}[{i}]")
    else:
        yield p, o


def max_rel(a, b) -> tuple[float, str]:
    diffs = [(abs(x - y) / max(abs(x), abs(y), 1e-300), p) for (p, x), (_, y) in zip(leaves(a), leaves(b))
             if isinstance(x, float) and isinstance(y, float) and x != y]
    return max(diffs) if diffs else (0.0, "")


def configurations(w: Path) -> dict[str, list[str]]:
    toy, lfm = w / "toy", w / "lfm"
    if not toy.exists():
        sys.path.insert(0, str(ROOT))
        from tests.test_dllm2rec_train import write_export
        write_export(toy)
    if not lfm.exists():
        subprocess.run([sys.executable, "-m", "reimpl.data.convert", "ilora-to-dllm2rec", "--src",
                        str(DATA / "ilora/lastfm"), "--out", str(lfm)], check=True, capture_output=True)
    runs = {}
    for model in ("SASRec", "GRU", "Caser"):
        for mode in ("faithful", "fixed"):
            runs[f"toy-kd-{model}-{mode}"] = [
                "-m", "reimpl.dllm2rec.train", "--data-dir", str(toy), "--data", "toy", "--batch_size", "16",
                "--epoch", "3", "--model_name", model, "--mode", mode, "--no-progress"]
            runs[f"lastfm-plain-{model}-{mode}"] = [
                "-m", "reimpl.dllm2rec.train", "--data-dir", str(lfm), "--data", "lastfm", "--lam", "0",
                "--ed_weight", "0", "--alpha", "0", "--epoch", "2", "--max_batches_per_epoch", "20",
                "--model_name", model, "--mode", mode, "--no-progress"]
    runs["teacher-tiny"] = ["-m", "reimpl.ilora.train", "--llm", "tiny", "--batch_size", "2",
                            "--accumulate_grad_batches", "2", "--max_epochs", "1", "--limit_rows", "8", "--eval_rows",
                            "3", "--max_new_tokens", "3", "--export_rows", "3", "--topk", "3", "--cans_num", "4",
                            "--export_batch", "2", "--no_progress"]
    return runs


def main(w: Path) -> None:
    w.mkdir(parents=True, exist_ok=True)
    for name, args in configurations(w).items():
        outs = []
        for i, t in enumerate(("1", "1", "2")):
            o = w / f"{name}.{i}.json"
            extra = ["--export_dir", str(w / f"exp_{name}_{i}")] if "teacher" in name else []
            subprocess.run([sys.executable, *args, "--out", str(o), *extra], check=True, capture_output=True,
                           cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t))
            outs.append(json.loads(o.read_text()))
        same = [json.dumps(strip(outs[0]), sort_keys=True) == json.dumps(strip(x), sort_keys=True) for x in outs[1:]]
        rel, where = max_rel(strip(outs[0]), strip(outs[2]))
        mrel, mwhere = max_rel(strip(outs[0], DROP | LOSS), strip(outs[2], DROP | LOSS))
        line = (f"{name}: rerun identical={same[0]}; 2 threads identical={same[1]} (max rel {rel:.2e} {where}; "
                f"without losses {mrel:.2e} {mwhere})")
        if "teacher" in name:
            a, b, c = (w / f"exp_{name}_{i}/tocf/lastfm" for i in range(3))
            fs = ("myrank_train.txt", "confidence_train.txt", "all_embeddings.pt")
            line += (f"; tocf rerun {[filecmp.cmp(a / f, b / f, shallow=False) for f in fs]}, "
                     f"2 threads {[filecmp.cmp(a / f, c / f, shallow=False) for f in fs]}")
        print(line, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "runs" / "determinism"))
