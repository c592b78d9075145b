"""`make parity`: run every case against golden vectors (always) and the live reference (when
``ref_repositories/`` is materialized), measure the declared deviations, write the report.

Exit status: 0 when every case that ran is reproduced (and no golden file drifted from the live
reference beyond its bound); 1 otherwise (the report is written and every failure names its class:
logic difference, platform drift, input drift); 2 when a reference checkout is absent or does not
verify (the file is named) and ``--golden-only`` was not given.

Usage: ``python -m parity.run [--golden-only] [--cases NAME ...] [--report reports/parity.md]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity import golden as G
from parity.case import Case, all_cases, missing_needs
from parity.compare import Comparison, compare_outputs
from parity.kernels import describe, fingerprint, kernel_key
from reimpl.paths import ROOT

VERDICT_OK = "Reproduced"
VERDICT_DEV = "Reproduced with declared deviation"
VERDICT_FAIL = "Not reproduced"
VERDICT_NA = "Not applicable"
VERDICT_SKIP = "Skipped"

# why a case is not reproduced (CaseResult.failure_class)
FAIL_LOGIC = "logic difference"
FAIL_PLATFORM = "platform drift"
FAIL_UNDECIDED = "logic difference or platform drift"
FAIL_INPUT = "input drift"
FAIL_CRASH = "crash"
FAIL_NO_GOLDEN = "no golden file"


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
    failure_class: str = ""                                  # FAIL_* when not reproduced
    failure_why: str = ""                                    # one sentence naming the evidence
    golden_platform: str = ""                                # describe() of where the golden was recorded
    same_platform: bool = True                               # golden recorded under this kernel key

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


def _classify(r: CaseResult, live_cmp: Comparison | None, gold_cmp: Comparison | None) -> None:
    """Verdict and failure class from the comparisons (see docs/notes.md, "Comparison policy").

    reimpl vs the live reference on this machine decides logic, at the strict tolerance. The golden file
    is compared at the strict tolerance when it was recorded under this kernel key, else at the case's
    cross-platform tolerance: beyond it, with reimpl and live agreeing strictly, the golden file is what
    moved (platform drift); with no live reference the two causes cannot be told apart.
    """
    where = f"golden recorded on {r.golden_platform or 'an unstamped platform'}"
    if r.input_drift:
        r.failure_class, r.failure_why = FAIL_INPUT, (
            f"the seeded generator no longer reproduces the golden inputs ({r.input_drift}); "
            "re-record with `make golden`")
    elif live_cmp is not None and not live_cmp.ok:
        r.failure_class, r.failure_why = FAIL_LOGIC, (
            "reimpl differs from the live reference on this machine beyond the strict tolerance")
    elif live_cmp is not None and r.drift is not None and not r.drift.ok:
        r.failure_class, r.failure_why = FAIL_PLATFORM, (
            f"{where}; live reference and reimpl agree here within the strict tolerance, but the golden "
            "outputs differ from this machine's by more than the case's measured cross-platform bound "
            "(re-measure with `python -m parity.drift`)")
    elif gold_cmp is not None and not gold_cmp.ok:
        if r.same_platform:
            r.failure_class, r.failure_why = FAIL_LOGIC, (
                "reimpl differs from the golden file recorded under this kernel set (no live reference)")
        else:
            r.failure_class, r.failure_why = FAIL_UNDECIDED, (
                f"{where}; reimpl differs from it beyond the cross-platform bound and no live reference "
                "is here to tell logic from platform (`make refs`)")
    if r.failure_class:
        r.verdict = VERDICT_FAIL
    else:
        r.verdict = VERDICT_DEV if r.case.deviations else VERDICT_OK


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
            r.golden_platform = describe(gold.platform) if gold.platform else ""
            r.same_platform = bool(gold.platform) and kernel_key(gold.platform) == kernel_key(fingerprint())
            # large inputs are kept as digests: take them from the (verified) generator
            inputs = {**gold.inputs, **{k: fresh_inputs[k] for k in gold.input_digests if k in fresh_inputs}}
        else:
            inputs = fresh_inputs
        g_rtol, g_atol = (case.rtol, case.atol) if r.same_platform else (case.xplat_rtol, case.xplat_atol)
        if gold is not None and not r.same_platform and case.xplat_live_only:
            if not live:
                r.skip_reason = (f"golden recorded on {r.golden_platform or 'another platform'} cannot check "
                                 f"this case here ({case.xplat_note.split('.')[0]}); needs the live reference")
                r.seconds = time.perf_counter() - t0
                return r
            gold = None  # checked against the live reference only
        ours = case.run_reimpl(dict(inputs), "faithful")
        gold_cmp = live_cmp = None
        if gold is not None:
            r.sources.append("golden")
            gold_cmp = compare_outputs("reimpl vs golden", ours, gold.outputs, g_rtol, g_atol)
            r.comparisons.append(gold_cmp)
        if live:
            ref_out = case.run_reference(dict(inputs))
            r.sources.append("live")
            live_cmp = compare_outputs("reimpl vs live reference", ours, ref_out, case.rtol, case.atol)
            r.comparisons.append(live_cmp)
            if gold is not None:
                r.drift = compare_outputs("golden vs live reference", gold.outputs, ref_out, g_rtol, g_atol)
        if not r.comparisons:
            r.verdict, r.failure_class = VERDICT_FAIL, FAIL_NO_GOLDEN
            r.error = f"no golden file ({gpath.name}) and no live reference: run `make golden`"
        else:
            _classify(r, live_cmp, gold_cmp)
            if not gpath.is_file():
                r.verdict, r.failure_class = VERDICT_FAIL, FAIL_NO_GOLDEN
                r.error = f"no golden file ({gpath.name}): run `make golden`"
        if case.deviations:
            r.effects = _effects(case, inputs, ours)
    except Exception as e:  # a crash is a finding, reported, never hidden
        r.verdict, r.failure_class = VERDICT_FAIL, FAIL_CRASH
        r.error = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=-4))
    r.seconds = time.perf_counter() - t0
    return r


def ref_status() -> dict[str, str]:
    """``{system: ''}`` for a reference checkout that verifies, else the reason naming the file
    (missing checkout, wrong commit, an edited, missing or extra file)."""
    from parity.materialize import load_lock
    from reimpl.refs_lock import RefError, verify

    out = {}
    for name, spec in load_lock().items():
        try:
            verify(spec)
            out[name] = ""
        except RefError as e:
            out[name] = str(e)
    return out


def live_systems() -> dict[str, bool]:
    return {name: not why for name, why in ref_status().items()}


def run_all(names: list[str] | None = None, live: bool = True, log=print) -> list[CaseResult]:
    sys.dont_write_bytecode = True
    cases = all_cases()
    if names:
        cases = {n: c for n, c in cases.items()
                 if n in names or any(p.endswith("*") and c.name.startswith(p[:-1]) for p in names)}
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
        if res.failure_class:
            log(f"    {res.failure_class}: {res.failure_why}")
        if res.error:
            log("    " + res.error.strip().replace("\n", "\n    "))
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden-only", "--no-live", dest="golden_only", action="store_true",
                    help="compare with the golden vectors only; without it a reference checkout that is "
                         "absent or does not verify is an error")
    ap.add_argument("--cases", nargs="*", help="case names or prefixes ending in *")
    ap.add_argument("--report", default=str(ROOT / "reports" / "parity.md"))
    a = ap.parse_args(argv)
    import torch

    # One intra-op thread: small kernels oversubscribed on 2 shared cores ran ~100x slower, and a fixed
    # thread count keeps the float reductions (hence the report's error figures) identical run to run.
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if not a.golden_only:
        bad = {n: why for n, why in ref_status().items() if why}
        if bad:
            for n, why in bad.items():
                print(f"parity: reference {n} unusable: {why}", file=sys.stderr)
            print("parity: refusing to fall back to golden vectors silently; fix the checkout (`make refs`, "
                  "FORCE=1 to re-extract) or ask for golden-only comparison (--golden-only, "
                  "`make parity GOLDEN_ONLY=1`)", file=sys.stderr)
            return 2
    results = run_all(a.cases, live=not a.golden_only)
    from parity.report import render

    path = Path(a.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, live_available=live_systems() if not a.golden_only else {}))
    n_fail = sum(not r.ok for r in results)
    print(f"\n{len(results)} cases, {n_fail} not reproduced; report: {path} ({time.perf_counter() - t0:.1f}s)")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
