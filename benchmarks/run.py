"""`make bench`: time reimpl against the reference in the same run, write reports/bench.md.

Each benchmark is a pair of zero-argument *setup* functions (reference side, reimpl side) that
build their inputs and return the callable to time. Every side runs in its own subprocess so that
peak resident memory (``ru_maxrss``) is measured per side, not accumulated; wall time is the median
of ``repeat`` calls after one warm-up call. Threads are pinned (``torch.set_num_threads``) so the
two sides see the same machine.

Usage: ``python -m benchmarks.run [--only NAME ...] [--repeat N] [--threads T] [--out reports/bench.md]
[--json PATH] [--note TEXT]``; ``python -m benchmarks.run --profile NAME SIDE`` prints a torch.profiler
table (top operators by self CPU time) of one timed call of that side, to see where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from reimpl.paths import ROOT

LOADED_NOTE = " (other jobs shared the machine: absolute times are noisy, the two sides of a row ran back to back)"


def _measure(name: str, side: str, repeat: int, threads: int) -> dict:
    import torch

    from benchmarks.suites import BENCHMARKS

    torch.set_num_threads(threads)
    sys.dont_write_bytecode = True
    bench = BENCHMARKS[name]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn = (bench.reference if side == "reference" else bench.reimpl)()
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(getattr(bench, "warmup", 1)):
        fn()  # warm-up
    times = []
    for _ in range(bench.repeat or repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times),
            "peak_rss_mib": rss1 / 1024, "setup_rss_mib": rss_setup / 1024, "base_rss_mib": rss0 / 1024,
            "run_rss_growth_mib": (rss1 - rss_setup) / 1024}


def _profile(name: str, side: str, threads: int, rows: int = 15) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.suites import BENCHMARKS

    torch.set_num_threads(threads)
    sys.dont_write_bytecode = True
    bench = BENCHMARKS[name]
    fn = (bench.reference if side == "reference" else bench.reimpl)()
    if getattr(bench, "warmup", 1):
        fn()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t0
    print(f"# {name} ({side}), one call, {threads} thread(s): {wall * 1e3:.1f} ms wall (profiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=ROOT).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"
    except OSError:
        return "unknown"


def _fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1e3:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench.md"))
    ap.add_argument("--json", default=None, help="also write the raw measurements as JSON here")
    ap.add_argument("--note", default="", help="free text added to the report header (e.g. machine load)")
    ap.add_argument("--profile", nargs=2, metavar=("NAME", "SIDE"),
                    help="print a torch.profiler table of one call of NAME's SIDE (reference|reimpl)")
    ap.add_argument("--one", nargs=2, metavar=("NAME", "SIDE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.profile:
        _profile(a.profile[0], a.profile[1], a.threads)
        return 0
    if a.one:
        print(json.dumps(_measure(a.one[0], a.one[1], a.repeat, a.threads)))
        return 0

    from benchmarks.suites import BENCHMARKS

    names = a.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    rows = []
    load0, t_start = os.getloadavg(), time.time()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for name in names:
        res = {}
        for side in ("reference", "reimpl"):
            p = subprocess.run([sys.executable, "-m", "benchmarks.run", "--one", name, side, "--repeat",
                                str(a.repeat), "--threads", str(a.threads)], capture_output=True, text=True,
                               cwd=ROOT, env=env)
            if p.returncode != 0:
                print(p.stderr, file=sys.stderr)
                raise SystemExit(f"benchmark {name} ({side}) failed")
            res[side] = json.loads(p.stdout.strip().splitlines()[-1])
            res[side]["loadavg_1m_after"] = os.getloadavg()[0]
        speedup = res["reference"]["median_s"] / res["reimpl"]["median_s"]
        rows.append((name, BENCHMARKS[name], res, speedup))
        ref, ours = res["reference"], res["reimpl"]
        print(f"{name:<40} ref {ref['median_s']*1e3:10.2f} ms  reimpl {ours['median_s']*1e3:10.2f} ms"
              f"  x{speedup:6.1f}  peak RSS ref {ref['peak_rss_mib']:.0f} MiB / reimpl {ours['peak_rss_mib']:.0f} MiB")

    load1 = os.getloadavg()
    cmd = "python -m benchmarks.run" + "".join(
        f" {k} {v}" for k, v in (("--repeat", a.repeat), ("--threads", a.threads)))
    if a.only:
        cmd += " --only " + " ".join(a.only)
    lines = ["# Benchmarks: reimpl vs reference", "",
             f"Generated by `make bench` (`{cmd}`) at commit {_git_state()}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}, {time.time() - t_start:.0f} s in all, "
             f"on {platform.machine()} with {os.cpu_count()} cores, {a.threads} torch thread(s); "
             f"Python {platform.python_version()}. Load average (1/5/15 min) {load0[0]:.1f}/{load0[1]:.1f}/"
             f"{load0[2]:.1f} at the start, {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at the end"
             f"{LOADED_NOTE if max(load0[0], load1[0]) > a.threads + 0.5 else ''}.",
             "",
             "Median of the timed calls after the warm-up call(s); each side in its own process (peak RSS = "
             "`ru_maxrss` of that process, imports and setup included). Speed-up = reference median / reimpl "
             "median. Identical inputs on both sides (see benchmarks/bench_*.py)." + (f" {a.note}" if a.note else ""),
             "",
             "| Benchmark | What | Reference (median) | reimpl (median) | Speed-up | Goal "
             "| Peak RSS ref / reimpl (MiB) | n |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, b, res, sp in rows:
        if not b.goal:
            goal = "–"
        else:
            goal = ("no slower" if b.goal == 1 else f"≥{b.goal:g}×") + (" ✅" if sp >= b.goal else " ❌")
            if getattr(b, "issue", ""):
                goal += f" ({b.issue})"
        ref, ours = res["reference"], res["reimpl"]
        lines.append(f"| `{name}` | {b.what} | {_fmt_s(ref['median_s'])} | {_fmt_s(ours['median_s'])} "
                     f"| {sp:.1f}× | {goal} | {ref['peak_rss_mib']:.0f} / {ours['peak_rss_mib']:.0f} "
                     f"| {ref['n']} / {ours['n']} |")
    extra = [(n, b, r) for n, b, r, _ in rows if getattr(b, "per_call_scale", None)]
    if extra:
        lines += ["", "Extrapolated (not measured): median call time x scale.", "",
                  "| Benchmark | Quantity | Reference | reimpl |", "| --- | --- | --- | --- |"]
        for n, b, r in extra:
            f = b.per_call_scale
            lines.append(f"| `{n}` | {b.scale_label} | {_fmt_s(r['reference']['median_s'] * f)} | "
                         f"{_fmt_s(r['reimpl']['median_s'] * f)} |")
    notes = [(n, b) for n, b, _, _ in rows if getattr(b, "note", "")]
    if notes:
        lines += ["", "Notes:", ""] + [f"* `{n}`: {b.note}" for n, b in notes]
    analysis = Path(__file__).with_name("ANALYSIS.md")  # hand-written profile notes, appended as is
    if analysis.is_file() and not a.only:
        lines += ["", analysis.read_text().rstrip()]
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({n: {"speedup": sp, **r} for n, _, r, sp in rows}, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
