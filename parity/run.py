"""`make parity`: run every case against golden vectors (always) and the live reference (when
``ref_repositories/`` is materialized), measure the declared deviations, write the report.

Exit status: 0 when every case that ran is reproduced (and no golden file drifted from the live
reference); 1 otherwise; the report is written in either case.

Usage: ``python -m parity.run [--no-live] [--cases NAME ...] [--report reports/parity.md]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity import golden as G
from parity.case import Case, all_cases
from parity.compare import Comparison, compare_outputs

from reimpl.paths import ROOT, SHARED

VERDICT_OK = "Reproduced"
VERDICT_DEV = "Reproduced with declared deviation"
VERDICT_FAIL = "Not reproduced"
VERDICT_NA = "Not applicable"
VERDICT_SKIP = "Skipped"


def missing_needs(case: Case) -> str:
    """Why a case cannot run here ('' when it can)."""
    for need in case.needs:
        if need == "shared" and not (SHARED / "data").is_dir():
            return f"needs ../shared/data (looked in {SHARED})"
        if need.startswith("module:") and importlib.util.find_spec(need[7:]) is None:
            return f"needs Python package {need[7:]}"
    return ""


@dataclass
class DeviationEffect:
    """Effect of one declared deviation on one case: fixed vs faithful outputs."""
    id: str
    max_abs: float          # largest |fixed - faithful| over the attributed outputs (nan: structural change)
    max_rel: float
    worst_output: str       # the output where max_abs occurs
    n_changed: int          # attributed outputs that differ at all
    n_outputs: int          # attributed outputs


@dataclass
class CaseResult:
    case: Case
    verdict: str = VERDICT_SKIP
    sources: list[str] = field(default_factory=list)        # "golden", "live"
    comparisons: list[Comparison] = field(default_factory=list)
    drift: Comparison | None = None                          # golden vs live reference
    input_drift: str = ""                                    # generator no longer reproduces golden inputs
    effects: list[DeviationEffect] = field(default_factory=list)
    error: str = ""
    skip_reason: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict in (VERDICT_OK, VERDICT_DEV, VERDICT_SKIP, VERDICT_NA)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.comparisons), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.comparisons), default=float("nan"))

    @property
    def tol_ratio(self) -> float:
        return max((c.tol_ratio for c in self.comparisons), default=float("nan"))


def _same_inputs(fresh: dict[str, Any], gold: G.Golden) -> str:
    """'' when the seeded generator reproduces the golden inputs bit for bit, else what differs."""
    arr_a, par_a = G.split_values(fresh, scalars_as_params=True)
    arr_b, par_b = G.split_values(gold.inputs, scalars_as_params=True)
    if set(arr_a) != set(arr_b) | set(gold.input_digests) or par_a != par_b:
        return (f"input keys/params differ: {sorted(arr_a)} {par_a} vs "
                f"{sorted(set(arr_b) | set(gold.input_digests))} {par_b}")
    for k, dig in gold.input_digests.items():
        if G.array_digest(arr_a[k]) != dig:
            return f"input {k} (stored as a digest) differs from the golden file"
    for k in arr_b:
        if arr_a[k].shape != arr_b[k].shape or arr_a[k].dtype != arr_b[k].dtype or not np.array_equal(
                arr_a[k], arr_b[k], equal_nan=True):
            return f"input {k} differs from the golden file"
    return ""


def _effects(case: Case, inputs: dict[str, Any], faithful: dict[str, Any]) -> list[DeviationEffect]:
    import re

    fixed = case.run_reimpl(dict(inputs), "fixed")
    comp = compare_outputs("fixed vs faithful", fixed, faithful, 0.0, 0.0)
    rows = [(t.name, t.max_abs, t.max_rel, not t.ok) for t in comp.tensors]
    rows += [(k, float("nan") if v else 0.0, float("nan") if v else 0.0, bool(v)) for k, v in comp.structural.items()]
    out = []
    for dev in case.deviations:
        pat = case.deviation_outputs.get(dev)
        sel = [r for r in rows if pat is None or re.search(pat, r[0])]
        if not sel:
            raise ValueError(f"case {case.name}: deviation_outputs[{dev!r}] = {pat!r} matches no output")
        worst = max(sel, key=lambda r: (r[3], np.nan_to_num(r[1], nan=np.inf)))
        out.append(DeviationEffect(dev, worst[1], worst[2], worst[0], sum(r[3] for r in sel), len(sel)))
    return out


def run_case(case: Case, live: bool) -> CaseResult:
    r = CaseResult(case)
    t0 = time.perf_counter()
    why = missing_needs(case)
    if why:
        r.skip_reason = why
        return r
    try:
        gpath = G.golden_path(case.name)
        gold = G.Golden(gpath) if gpath.is_file() else None
        fresh_inputs = case.make_inputs(case.seed)
        if gold is not None:
            r.input_drift = _same_inputs(fresh_inputs, gold)
            # large inputs are kept as digests: take them from the (verified) generator
            inputs = {**gold.inputs, **{k: fresh_inputs[k] for k in gold.input_digests if k in fresh_inputs}}
        else:
            inputs = fresh_inputs
        ours = case.run_reimpl(dict(inputs), "faithful")
        if gold is not None:
            r.sources.append("golden")
            r.comparisons.append(compare_outputs("reimpl vs golden", ours, gold.outputs, case.rtol, case.atol))
        if live:
            ref_out = case.run_reference(dict(inputs))
            r.sources.append("live")
            r.comparisons.append(compare_outputs("reimpl vs live reference", ours, ref_out, case.rtol, case.atol))
            if gold is not None:
                r.drift = compare_outputs("golden vs live reference", gold.outputs, ref_out, case.rtol, case.atol)
        if not r.comparisons:
            r.verdict = VERDICT_FAIL
            r.error = f"no golden file ({gpath.name}) and no live reference: run `make golden`"
        elif all(c.ok for c in r.comparisons) and (r.drift is None or r.drift.ok) and not r.input_drift:
            r.verdict = VERDICT_DEV if case.deviations else VERDICT_OK
        else:
            r.verdict = VERDICT_FAIL
            if gold is None:
                r.error = f"no golden file ({gpath.name}): run `make golden`"
        if case.deviations:
            r.effects = _effects(case, inputs, ours)
    except Exception as e:  # a crash is a finding, reported, never hidden
        r.verdict = VERDICT_FAIL
        r.error = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=-4))
    r.seconds = time.perf_counter() - t0
    return r


def live_systems() -> dict[str, bool]:
    from parity.materialize import available, load_lock

    return {name: available(name) for name in load_lock()}


def run_all(names: list[str] | None = None, live: bool = True, log=print) -> list[CaseResult]:
    sys.dont_write_bytecode = True
    cases = all_cases()
    if names:
        cases = {n: c for n, c in cases.items() if n in names or any(n.endswith("*") and c.name.startswith(n[:-1]) for n in names)}
    systems = live_systems() if live else {}
    results = []
    for name, case in cases.items():
        res = run_case(case, live=systems.get(case.system, False))
        srcs = "+".join(res.sources) or "-"
        log(f"{res.verdict:<36} {name:<44} [{srcs}] {res.seconds:6.2f}s"
            + (f"  ({res.skip_reason})" if res.skip_reason else ""))
        for c in res.comparisons + ([res.drift] if res.drift else []):
            for f in c.failures():
                log(f"    {c.label}: {f}")
        if res.input_drift:
            log(f"    input drift: {res.input_drift} (re-record with `make golden`)")
        if res.error:
            log("    " + res.error.strip().replace("\n", "\n    "))
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-live", action="store_true", help="golden vectors only, even where refs exist")
    ap.add_argument("--cases", nargs="*", help="case names or prefixes ending in *")
    ap.add_argument("--report", default=str(ROOT / "reports" / "parity.md"))
    a = ap.parse_args(argv)
    import torch

    # One intra-op thread: small kernels oversubscribed on 2 shared cores ran ~100x slower, and a fixed
    # thread count keeps the float reductions (hence the report's error figures) identical run to run.
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = run_all(a.cases, live=not a.no_live)
    from parity.report import render

    path = Path(a.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, live_available=live_systems() if not a.no_live else {}))
    n_fail = sum(not r.ok for r in results)
    print(f"\n{len(results)} cases, {n_fail} not reproduced; report: {path} ({time.perf_counter() - t0:.1f}s)")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
