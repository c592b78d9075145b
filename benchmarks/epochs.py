"""Whole training epochs on real LastFM: the unmodified DLLM2Rec ``main.py`` vs the engine (issue 15).

Data: iLoRA's published LastFM train/val/test re-laid out for ``main.py`` (``reimpl.data.convert``; 50,800 train
rows -> ``int(50800 / 256) = 198`` batches per epoch, 4,606 items). Teacher files for distillation: ``kd``,
synthetic but well-formed (seeded): ``myrank_train.txt`` 20 distinct candidates per row, ``confidence_train.txt``
in [0, 5), ``all_embeddings.pt`` ``[4606, 4096]`` float32, dense (the worst case: a Llama-width teacher);
``kd-e4srec``, the committed export of the teacher the distillation plan uses (``results/teachers/``: top-10
ranks, confidences, 64-d item table zero-padded to 4,096). The reference's cost does not depend on the values;
the engine's does (it drops all-zero teacher columns exactly, ``reimpl.engine.forward.trim_table``).

Measured per (student, distillation): the reference runs ``--epoch 1`` through ``parity/shims/dllm2rec_main.py``;
its epoch is timed (wall and process CPU) from its first batch draw (``DataFrame.sample``, main.py:360, stamped by
a wrapper that passes the call through) to its first evaluation call (the shim's ``calculate_hit`` hook; the
122-row VAL forward before it is negligible). The engine trains ``ENGINE_EPOCHS`` epochs in its own process; the
median over them is reported (wall and process CPU time, evaluation excluded). Both sides: one thread
(``OMP_NUM_THREADS=1``), each in its own process. "default distillation" = main.py's defaults (lam 0.8,
ed_weight 0.2, alpha 1); "no distillation" = ``--lam 0 --ed_weight 0 --alpha 0``.

Achieved FLOP/s: matmul/conv FLOPs of one engine step counted by ``torch.utils.flop_counter.FlopCounterMode``
(forward + backward), times the steps per epoch, over the epoch time; against this core's fp32 peak as measured
(best of 5 one-thread 2048^3 SGEMMs in a child process; Zen 4 executes AVX-512 as 2 x 256-bit FMA, 32 flop per
cycle, so the measured rate also tells the clock it runs at).

Paired rounds (``--rounds``, default ``ROUNDS``): each row times main.py's epoch, then the engine's, and repeats;
the speed-up quoted is the median of the per-round CPU-time ratios, with their range. This host's speed drifts by
up to 2x over minutes (a shared virtual machine), so two sides timed tens of minutes apart can disagree by more
than any engine change; timing them back to back in each round cancels most of it.

Results: ``results/bench/epochs.json`` (committed), one section per machine (``machine()``: CPU model, family and
model number, torch's kernel set), each row stamped with when it was measured; rows are written as they finish
(atomically), and a run replaces only its own machine's rows. ``--reuse-reference`` times only the engine against
main.py's epoch stored in the same machine's section (unpaired, flagged in the report); another machine's are never
reused. The report renders every section.

Usage: ``python -m benchmarks.epochs [--models SASRec,GRU,Caser] [--variants kd,kd-e4srec,plain] [--rounds R]
[--reuse-reference] [--note TEXT]``; ``--render-only`` rebuilds ``reports/bench_epochs.md`` from the store
without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reimpl.paths import DATA, REPORTS, ROOT, RUNS

WORK = RUNS / "bench_epochs"
STORE = ROOT / "results" / "bench" / "epochs.json"   # committed: the report rebuilds from it (--render-only)
STORE_SCHEMA = 1
MODELS = ("SASRec", "GRU", "Caser")
ENGINE_EPOCHS = 2
ROUNDS = 3   # paired rounds per row: this host's speed drifts by up to 2x between minutes (Zen 3, session 14)
VARIANTS = {"kd": [], "kd-e4srec": [], "plain": ["--lam", "0", "--ed_weight", "0", "--alpha", "0"]}
E4SREC = "e4srec-smollm2-l6-8000"   # the committed teacher export the distillation plan reads (results/teachers/)
LABELS = {"kd": "default (lam 0.8, ed_weight 0.2, alpha 1), synthetic dense 4,096-d teacher table",
          "plain": "none",
          "kd-e4srec": f"default, the real teacher export `{E4SREC}` (top-10, 64-d table zero-padded to 4,096)"}


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def prepare(work: Path = WORK, seed: int = 0) -> Path:
    """The main.py working directory (``data/lastfm``, ``tocf/lastfm``), written once."""
    import torch

    from reimpl.data.convert import ilora_to_dllm2rec

    done = work / "ready"
    if done.is_file():
        return work
    ds = ilora_to_dllm2rec(DATA / "ilora" / "lastfm", work / "data" / "lastfm", "lastfm")
    n, I = ds["train"].n, ds.item_num
    rs = np.random.RandomState(seed)
    cand = (rs.randint(0, I, size=(n, 1)) + np.cumsum(rs.randint(1, 50, size=(n, 20)), axis=1)) % I
    t = work / "tocf" / "lastfm"
    t.mkdir(parents=True, exist_ok=True)
    np.savetxt(t / "myrank_train.txt", cand, fmt="%d")
    np.savetxt(t / "confidence_train.txt", rs.random_sample((n, 20)) * 5, fmt="%.6f")
    g = torch.Generator().manual_seed(seed)
    torch.save(torch.randn(I, 4096, generator=g) * 0.02, t / "all_embeddings.pt")
    done.write_text("ok\n")
    return work


def prepare_e4srec(work: Path = WORK) -> Path:
    """A second main.py working directory: the same ``data/lastfm`` and the committed E4SRec export as ``tocf``."""
    from reimpl.teachers.export import compact_to_tocf

    base = prepare(work)
    out = work / "e4srec"
    if (out / "ready").is_file():
        return out
    (out / "data").mkdir(parents=True, exist_ok=True)
    link = out / "data" / "lastfm"
    if not link.exists():
        link.symlink_to((base / "data" / "lastfm").resolve(), target_is_directory=True)
    compact_to_tocf(ROOT / "results" / "teachers" / f"{E4SREC}.safetensors", out / "tocf" / "lastfm", 4606, 50800)
    (out / "ready").write_text("ok\n")
    return out


def load() -> str:
    """The 1/5/15-minute load average, e.g. ``"8.6/10.2/9.2"``."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _measure_child(flag: str, label: str, model: str, variant: str, work: Path, *more: str) -> dict:
    """Run this module's ``flag`` child in a fresh process; its last stdout line (JSON) + the load around it."""
    cmd = [sys.executable, "-m", "benchmarks.epochs", flag, model, variant, str(work), *more]
    l0 = load()
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{label} {model} {variant} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(load_before=l0, load_after=load())
    return out


def reference_epoch(model: str, variant: str, work: Path) -> dict:
    return _measure_child("--ref-child", "reference", model, variant, work)


def _ref_child(model: str, variant: str, work: str) -> None:
    """main.py --epoch 2 through the shim; wall and CPU stamps at each evaluation (the shim's capture hook)."""
    import contextlib
    import io

    import pandas as pd

    from parity.shims import dllm2rec_main as shim

    stamps = []
    wrap = shim._wrap_calculate_hit
    sample = pd.DataFrame.sample

    def first_sample(self, *a, **k):  # main.py:360: the first batch draw starts epoch 1's training
        if not stamps:
            stamps.append((time.time(), time.process_time()))
        return sample(self, *a, **k)

    def wrap_with_stamps(utility, evals):
        wrap(utility, evals)
        inner = utility.calculate_hit

        def stamped(*a, **k):
            stamps.append((time.time(), time.process_time()))
            return inner(*a, **k)

        utility.calculate_hit = stamped

    shim._wrap_calculate_hit = wrap_with_stamps
    pd.DataFrame.sample = first_sample
    cap = Path(work) / f"ref_{model}_{variant}.json"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            code = shim.run(1, work, ["--model_name", model, "--data", "lastfm", "--epoch", "1", *VARIANTS[variant]],
                            cap)
    finally:
        pd.DataFrame.sample = sample
    ev = json.loads(cap.read_text())["evals"]
    # epoch 1's training lies between the first batch draw and the first (VAL) evaluation call (main.py:360-499)
    if code != 0 or [e["split"] for e in ev[:1]] != ["val"] or len(stamps) < 2:
        raise RuntimeError(f"{cap}: exit {code}, expected a VAL evaluation, got {[e['split'] for e in ev]}")
    print(json.dumps({"epoch_s": stamps[1][0] - stamps[0][0], "epoch_cpu_s": stamps[1][1] - stamps[0][1]}))


def engine_epochs(model: str, variant: str, work: Path, lite: bool = False) -> dict:
    """The engine's epochs in a child; ``lite``: without the FLOP count and the products' replay (later rounds)."""
    return _measure_child("--engine-child", "engine", model, variant, work, *(["lite"] if lite else []))


def _engine_child(model: str, variant: str, work: str, lite: str = "") -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from reimpl.dllm2rec.config import DLLM2RecConfig
    from reimpl.dllm2rec.train import load_data
    from reimpl.engine import train as etrain

    torch.set_num_threads(1)
    kd = variant.startswith("kd")
    args = {} if kd else {"lam": 0.0, "ed_weight": 0.0, "alpha": 0.0}
    s = DLLM2RecConfig(model_name=model, data="lastfm", mode="fixed", epoch=ENGINE_EPOCHS, seed=1, **args)
    data = load_data(work, "lastfm", need_rank=kd, need_emb=kd)
    cfg = etrain.EngineConfig(s)
    extra = {}
    if not lite:
        sess = etrain.Session(cfg, data)  # FLOPs of one step (forward + backward + the matmuls of the update)
        rows = torch.as_tensor(sess.batches.epoch()[0])
        sess.step(rows)
        with FlopCounterMode(display=False) as fc:
            sess.step(rows)
        with _Products() as pr:
            sess.step(rows)
        extra = {"flops_per_step": fc.get_total_flops(), "products_ms": pr.replay_ms(), "products_calls": len(pr.calls)}
    res = etrain.train(cfg, data, log=lambda m: None)
    # each epoch's training loop only, as the reference's stamps bracket main.py's (process set-up excluded)
    wall, cpu = [h["train_s"] for h in res["history"]], [h["train_cpu_s"] for h in res["history"]]
    nb = int(len(data.train_next) / s.batch_size)
    print(json.dumps({"epoch_s": statistics.median(wall), "epoch_cpu_s": statistics.median(cpu),
                      "epochs_wall_s": wall, "steps": nb, **extra}))


PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "addbmm")


def _products_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def spec(x):
        if isinstance(x, torch.Tensor):
            return ("T", tuple(x.shape), tuple(x.stride()), x.dtype)
        if isinstance(x, (list, tuple)):
            return type(x)(spec(v) for v in x)
        return x

    def build(x):
        if isinstance(x, tuple) and x and x[0] == "T":
            n = 1 + sum((d - 1) * st for d, st in zip(x[1], x[2]) if d > 0)  # storage the strides reach
            return torch.randn(n, dtype=x[3]).as_strided(x[1], x[2])  # stride 0 (expanded grads) included
        if isinstance(x, (list, tuple)):
            return type(x)(build(v) for v in x)
        return x

    class Products(TorchDispatchMode):
        """Records every matrix product / convolution of what runs inside it (forward and backward) with its
        operands' shapes, strides and dtype; :meth:`replay_ms` times each one alone on fresh operands."""

        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in PRODUCTS:
                self.calls.append((func, spec(args), spec(kwargs)))
            return func(*args, **kwargs)

        def replay_ms(self, reps: int = 20) -> float:
            """Sum over the recorded calls of the median CPU time of one call (operands in cache: a lower bound
            of what the products cost inside the step)."""
            total = 0.0
            for func, a, k in self.calls:
                a, k = build(a), build(k)
                for _ in range(3):
                    func(*a, **k)
                ts = []
                for _ in range(reps):
                    t = time.process_time()
                    func(*a, **k)
                    ts.append(time.process_time() - t)
                total += statistics.median(ts)
            return 1e3 * total

    return Products()


class _Products:
    """Context manager over :func:`_products_mode` (the mode class needs torch, imported in the child only)."""

    def __enter__(self):
        self.mode = _products_mode()
        self.mode.__enter__()
        return self.mode

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def _peak_child() -> None:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    print(json.dumps({"sgemm_gflops": 2 * 2048 ** 3 / best / 1e9}))


def _timed(f) -> float:
    t = time.process_time()
    f()
    return time.process_time() - t


def measure_peak() -> float:
    """One thread's fp32 SGEMM rate in GFLOP/s (2048^3, best of 5, CPU time), in a child process."""
    p = subprocess.run([sys.executable, "-m", "benchmarks.epochs", "--peak-child"], cwd=ROOT, env=env(),
                       capture_output=True, text=True, check=True)
    return float(json.loads(p.stdout.strip().splitlines()[-1])["sgemm_gflops"])


def machine() -> dict:
    """What the timings depend on: the CPU (model name, family and model number), the kernel set torch dispatches
    to, torch and MKL builds (``reimpl.results.store.platform_info``). ``tag`` keys the store."""
    import re

    from parity.kernels import fingerprint
    from reimpl.results.store import platform_info

    p, fp = platform_info(), fingerprint()
    m = {"cpu_vendor": fp["cpu_vendor"], "cpu_model": p["cpu"], "cpu_family": p["cpu_family"],
         "cpu_model_number": p["cpu_model_number"], "torch_cpu_capability": p["torch_cpu_capability"],
         "torch": p["torch"], "mkl": fp["mkl"]}
    fam = f"-f{m['cpu_family']}-m{m['cpu_model_number']}" if m["cpu_family"] else ""
    m["tag"] = re.sub(r"[^a-z0-9]+", "-", f"{m['cpu_model']}{fam}-{m['torch_cpu_capability']}".lower()).strip("-")
    return m


def combine_rounds(model: str, variant: str, rounds: list[dict], paired: bool = True) -> dict:
    """A store row from ``rounds`` ``[{"ref": ..., "eng": ...}]``: ``ref`` / ``eng`` hold the medians of the
    epoch times (the first round's FLOPs and products, the first / last load), ``rounds`` every measurement and
    ``ratios`` the per-round CPU speed-ups, whose median the report quotes (``paired``: each round timed both)."""
    def side(k):
        ss = [r[k] for r in rounds]
        med = {f: statistics.median(s[f] for s in ss) for f in ("epoch_s", "epoch_cpu_s")}
        return {**ss[0], **med, "load_after": ss[-1]["load_after"]}

    return {"model": model, "variant": variant, "ref": side("ref"), "eng": side("eng"), "paired": paired,
            "rounds": [{k: {f: r[k][f] for f in ROUND_FIELDS} for k in ("ref", "eng")} for r in rounds],
            "ratios": [r["ref"]["epoch_cpu_s"] / r["eng"]["epoch_cpu_s"] for r in rounds]}


def _utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


ROUND_FIELDS = ("epoch_s", "epoch_cpu_s", "load_before", "load_after")   # what each round keeps of either side
ROW_FIELDS = {"ref": ROUND_FIELDS, "eng": ("epoch_s", "epoch_cpu_s", "flops_per_step", "steps", "load_before",
                                          "load_after")}


def load_store(path: Path) -> dict:
    """The committed bench store ``{"schema": 1, "machines": {tag: {"machine", "peak", "rows", "note"}}}``,
    checked field by field (a clear error naming the file and the field)."""
    try:
        st = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(st, dict) or st.get("schema") != STORE_SCHEMA or not isinstance(st.get("machines"), dict):
        raise ValueError(f"{path}: expected {{'schema': {STORE_SCHEMA}, 'machines': {{...}}}}")
    for tag, sec in st["machines"].items():
        where = f"{path}: machines[{tag!r}]"
        for k in ("machine", "peak", "rows"):
            if not isinstance(sec.get(k), dict):
                raise ValueError(f"{where}: missing object {k!r}")
        if sec["machine"].get("tag") != tag:
            raise ValueError(f"{where}.machine.tag is {sec['machine'].get('tag')!r}, expected {tag!r}")
        if not isinstance(sec["peak"].get("sgemm_gflops"), (int, float)):
            raise ValueError(f"{where}.peak: missing number 'sgemm_gflops'")
        for key, row in sec["rows"].items():
            if row.get("model") not in MODELS or row.get("variant") not in VARIANTS \
                    or key != f"{row['model']}/{row['variant']}":
                raise ValueError(f"{where}.rows[{key!r}]: expected model in {MODELS}, variant in "
                                 f"{tuple(VARIANTS)} and key 'model/variant'")
            for side, fields in ROW_FIELDS.items():
                miss = [f for f in fields if f not in row.get(side, {})]
                if miss:
                    raise ValueError(f"{where}.rows[{key!r}].{side}: missing {miss}")
            rounds = row.get("rounds", [])
            for i, rd in enumerate(rounds):
                for side in ("ref", "eng"):
                    miss = [f for f in ROUND_FIELDS if f not in rd.get(side, {})]
                    if miss:
                        raise ValueError(f"{where}.rows[{key!r}].rounds[{i}].{side}: missing {miss}")
            if len(row.get("ratios", [])) != len(rounds):
                raise ValueError(f"{where}.rows[{key!r}]: {len(row.get('ratios', []))} ratios for {len(rounds)} rounds")
    return st


def save_store(path: Path, st: dict) -> None:
    """Atomic: a killed write leaves the previous store, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _row_view(r: dict, peak: float) -> dict:
    ratios = r.get("ratios", [])
    gf = r["eng"]["flops_per_step"] * r["eng"]["steps"] / r["eng"]["epoch_cpu_s"] / 1e9
    goal = 20 if r["variant"].startswith("kd") else 10
    steps = r["eng"]["steps"]
    return {**r, "goal": goal, "variant_label": LABELS[r["variant"]],
            "budget_ms": 1e3 * r["ref"]["epoch_cpu_s"] / steps / goal,
            "floor_ms": 1e3 * r["eng"]["flops_per_step"] / (peak * 1e9),
            "step_ms": 1e3 * r["eng"]["epoch_cpu_s"] / steps,
            "products_ms": r["eng"].get("products_ms"),  # absent in results cached before it was timed
            "speedup_wall": statistics.median(d["ref"]["epoch_s"] / d["eng"]["epoch_s"] for d in r["rounds"])
            if ratios else r["ref"]["epoch_s"] / r["eng"]["epoch_s"],
            # paired rounds: the median of the per-round ratios (one round, or an older row: the one ratio)
            "speedup_cpu": statistics.median(ratios) if ratios else r["ref"]["epoch_cpu_s"] / r["eng"]["epoch_cpu_s"],
            "ratios": ratios, "paired": r.get("paired", True),
            # each side's fastest epoch: noise on a shared host only adds time, so the minima are its least
            # disturbed readings (timeit's rule); shown beside the paired median, which decides the verdict
            "best_ratio": (min(d["ref"]["epoch_cpu_s"] for d in r["rounds"])
                           / min(d["eng"]["epoch_cpu_s"] for d in r["rounds"])) if len(ratios) > 1 else None,
            "gflops": gf, "peak_pct": 100 * gf / peak}


def _section_view(sec: dict) -> dict:
    m, peak = sec["machine"], float(sec["peak"]["sgemm_gflops"])
    order = {(mo, v): i for i, (mo, v) in enumerate((mo, v) for mo in MODELS for v in VARIANTS)}
    rows = sorted(sec["rows"].values(), key=lambda r: order[(r["model"], r["variant"])])
    when = sorted(r.get("measured", "") for r in rows)
    ids = f", family {m['cpu_family']} model {m['cpu_model_number']}" if m.get("cpu_family") else ""
    return {"title": f"{m['cpu_model']} ({m['cpu_vendor']}{ids}), torch {m['torch_cpu_capability']} kernels",
            "tag": m["tag"], "measured": " to ".join(dict.fromkeys([when[0], when[-1]])) if when else "",
            "transcribed": sec.get("transcribed", ""), "peak": f"{peak:.0f} GFLOP/s", "note": sec.get("note", ""),
            "rows": [_row_view(r, peak) for r in rows], "last": when[-1] if when else ""}


def render(store: dict, out: Path) -> None:
    """The report from the store: one section per machine, the most recently measured first."""
    import jinja2

    sections = sorted((_section_view(s) for s in store["machines"].values()), key=lambda s: s["last"], reverse=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    out.write_text(env.get_template("epochs.md.j2").render(sections=sections, engine_epochs=ENGINE_EPOCHS))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--peak-child":
        _peak_child()
        return 0
    if argv and argv[0] in ("--engine-child", "--ref-child"):
        (_engine_child if argv[0] == "--engine-child" else _ref_child)(*argv[1:])
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.epochs")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(REPORTS / "bench_epochs.md"))
    ap.add_argument("--store", default=str(STORE), help="the committed results (one section per machine)")
    ap.add_argument("--note", default=None, help="replace this machine's note in the report")
    ap.add_argument("--rounds", type=int, default=ROUNDS,
                    help="paired rounds per row (main.py's epoch, then the engine's); the speed-up is their median")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="time only the engine, against main.py's epoch stored for this machine (unpaired)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the report from --store, measure nothing")
    a = ap.parse_args(argv)
    if a.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    store = load_store(Path(a.store)) if Path(a.store).is_file() else {"schema": STORE_SCHEMA, "machines": {}}
    if a.render_only:
        if a.note is not None:  # this machine's note, e.g. written after looking at its rows
            tag = machine()["tag"]
            if tag not in store["machines"]:
                raise SystemExit(f"--note: {a.store} holds no section for this machine ({tag})")
            store["machines"][tag]["note"] = a.note
            save_store(Path(a.store), store)
        render(store, Path(a.out))
        return 0
    for m in a.models.split(","):
        if m not in MODELS:
            raise SystemExit(f"--models: {m!r} is not one of {MODELS}")
    for v in a.variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"--variants: {v!r} is not one of {tuple(VARIANTS)}")
    work = prepare()
    works = {"kd": work, "plain": work, "kd-e4srec": prepare_e4srec(work)}
    me = machine()
    # reference epochs are reused (--reuse-reference) only from this machine's own section: another CPU times
    # them differently
    sec = store["machines"].setdefault(me["tag"], {"machine": me, "rows": {}, "note": ""})
    sec["machine"] = me
    sec["peak"] = {"sgemm_gflops": measure_peak(), "load": load(), "measured": _utc()}
    if a.note is not None:
        sec["note"] = a.note
    for m in a.models.split(","):
        for v in a.variants.split(","):
            key = f"{m}/{v}"
            old = sec["rows"].get(key, {})
            reuse = a.reuse_reference and "ref" in old
            rounds = []
            for i in range(a.rounds):  # paired: each round times main.py, then the engine, minutes apart at most
                ref = old["ref"] if reuse else reference_epoch(m, v, works[v])
                eng = engine_epochs(m, v, works[v], lite=i > 0)
                rounds.append({"ref": ref, "eng": eng})
                print(f"{key} round {i + 1}: reference {ref['epoch_cpu_s']:.1f} s, engine {eng['epoch_cpu_s']:.2f} s "
                      f"(CPU)", flush=True)
            row = combine_rounds(m, v, rounds, paired=not reuse)
            row.update(measured=_utc(), ref_measured=old.get("ref_measured", old.get("measured", "")) if reuse
                       else _utc())
            sec["rows"][key] = row
            save_store(Path(a.store), store)
    render(store, Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
