"""Measure how far the reference's own outputs move between kernel sets (``python -m parity.drift``).

For every kernel set in ``parity/kernels.py`` (the CI sets and the drift-only ones) a fresh process runs
each case's ``run_reference`` on the case's golden inputs; the outputs are compared with the golden
file's (recorded under the default kernels). The result, ``parity/drift.json``, is the evidence a
case's cross-platform tolerance (``Case.xplat_rtol`` / ``xplat_atol``) is derived from:
``tests/test_parity_drift.py`` checks that every measured drift fits the case's tolerance, so a
tolerance can never be looser than needed without a measurement that says so, nor tighter than the
drift this machine can show.

Usage: ``python -m parity.drift [--sets default avx2 no-vector] [--cases NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from parity.kernels import DRIFT_ONLY_SETS, KERNEL_SETS, describe, env_for, fingerprint
from reimpl.paths import ROOT

DRIFT_FILE = Path(__file__).resolve().parent / "drift.json"


def _record(out_dir: Path, names: list[str] | None) -> None:
    """Child process: reference outputs of every case on its golden inputs -> out_dir/<case>.npz."""
    import torch

    from parity import golden as G
    from parity.case import all_cases, missing_needs

    torch.set_num_threads(1)
    sys.dont_write_bytecode = True
    for name, case in all_cases().items():
        if (names and name not in names) or missing_needs(case) or not G.golden_path(name).is_file():
            continue
        gold = G.load(name)
        fresh = case.make_inputs(case.seed)
        inputs = {**gold.inputs, **{k: fresh[k] for k in gold.input_digests if k in fresh}}
        arrays, structural = G.split_values(case.run_reference(dict(inputs)))
        np.savez(out_dir / f"{name}.npz", **arrays)
        (out_dir / f"{name}.json").write_text(json.dumps(structural, sort_keys=True))
    (out_dir / "platform.json").write_text(json.dumps(fingerprint(), sort_keys=True))


def _compare(name: str, out_dir: Path) -> dict:
    from parity import golden as G
    from parity.case import all_cases
    from parity.compare import compare_arrays

    case = all_cases()[name]
    gold = G.load(name)
    got = dict(np.load(out_dir / f"{name}.npz"))
    structural = json.loads((out_dir / f"{name}.json").read_text())
    _, gold_struct = G.split_values(gold.outputs)
    res = {"max_abs": 0.0, "max_rel": 0.0, "strict_ratio": 0.0, "worst": "", "structural_equal": True}
    for k, v in got.items():
        t = compare_arrays(k, v, gold.outputs[k], case.rtol, case.atol)
        if t.max_abs > res["max_abs"]:
            res["worst"] = k
        res["max_abs"] = max(res["max_abs"], t.max_abs)
        res["max_rel"] = max(res["max_rel"], t.max_rel)
        res["strict_ratio"] = max(res["strict_ratio"], t.tol_ratio)
    res["structural_equal"] = json.loads(json.dumps(gold_struct)) == structural
    return res


def measure(sets: list[str], names: list[str] | None = None, log=print) -> dict:
    from parity.case import all_cases

    result = {"recorded_on": describe(fingerprint()), "command": "python -m parity.drift", "sets": {},
              "cases": {}}
    for s in sets:
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, "-m", "parity.drift", "--child", tmp] + (
                ["--cases", *names] if names else []), cwd=ROOT, env=env_for(s), capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(f"parity.drift: kernel set {s} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
            result["sets"][s] = describe(json.loads((Path(tmp) / "platform.json").read_text()))
            for f in sorted(Path(tmp).glob("*.npz")):
                name = f.stem
                result["cases"].setdefault(name, {})[s] = _compare(name, Path(tmp))
        log(f"measured kernel set {s}: {result['sets'][s]}")
    for name, per in sorted(result["cases"].items()):
        worst = max(per.values(), key=lambda r: r["max_abs"])
        case = all_cases()[name]
        log(f"{name:<40} max abs {worst['max_abs']:.3g}  max rel {worst['max_rel']:.3g}  strict ratio "
            f"{max(r['strict_ratio'] for r in per.values()):.3g}  (case xplat atol {case.xplat_atol}, rtol "
            f"{case.xplat_rtol})")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="*", default=[*KERNEL_SETS, *DRIFT_ONLY_SETS])
    ap.add_argument("--cases", nargs="*")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(DRIFT_FILE))
    a = ap.parse_args(argv)
    if a.child:
        _record(Path(a.child), a.cases)
        return 0
    res = measure(a.sets, a.cases)
    Path(a.out).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
