"""Golden vectors: the reference side of every parity case, recorded to small safetensors files.

``make golden`` (= ``python -m parity.golden``) runs ``case.run_reference`` on the case's seeded
inputs (reference code loaded from the verified ``ref_repositories/`` checkout) and writes
``parity/golden/<case>.safetensors``:

- tensors ``in/<name>`` (array inputs) and ``out/<name>`` (numeric reference outputs);
- metadata (strings): case, system, component, seed, dtype, ref_repo, ref_commit, the library
  versions, ``platform`` (CPU vendor/model, torch CPU capability, numpy SIMD targets in use, BLAS, MKL
  and oneDNN builds, threads, kernel caps: ``parity/kernels.py``), ``params`` (JSON of the non-array
  inputs) and ``structural`` (JSON of the non-numeric
  reference outputs).

Golden files are never written from reimpl: this module imports nothing from ``reimpl`` and
refuses to run without a verified reference checkout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from parity.kernels import fingerprint

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
FORMAT_VERSION = "3"
# Array inputs larger than this are not stored: the file keeps their sha256 (+ shape, dtype) and the
# runner regenerates them with the case's seeded generator and checks the digest bit for bit. Outputs
# (what the reference computed) are always stored in full.
LARGE_INPUT_BYTES = 256 * 1024


def array_digest(a: np.ndarray) -> dict:
    import hashlib

    a = np.ascontiguousarray(a) if a.ndim else a
    return {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), "shape": list(a.shape), "dtype": str(a.dtype)}


def _to_numpy(v: Any) -> np.ndarray | None:
    """Numeric value -> ndarray (copy, CPU, detached); None for structural values."""
    try:
        import torch

        if isinstance(v, torch.Tensor):
            return v.detach().cpu().numpy().copy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, np.ndarray):
        return np.array(v, order="C", copy=True)  # (ascontiguousarray would turn 0-d into 1-d)
    if isinstance(v, (bool, int, float, np.number, np.bool_)):
        return np.asarray(v)
    return None


def split_values(values: dict[str, Any], scalars_as_params: bool = False
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split a dict into numeric arrays and JSON-able structural values.

    Outputs: Python/numpy numbers are numeric (compared with tolerance). Inputs
    (``scalars_as_params=True``): numbers are parameters and come back as the same Python type.
    """
    arrays, other = {}, {}
    for k, v in values.items():
        if scalars_as_params and isinstance(v, (bool, int, float, np.number, np.bool_)):
            other[k] = v.item() if isinstance(v, (np.number, np.bool_)) else v
            continue
        a = _to_numpy(v)
        if a is None:
            json.dumps(v)  # raises TypeError naming the type if not JSON-able
            other[k] = v
        else:
            arrays[k] = a
    return arrays, other


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "pandas", "transformers", "peft", "pytorch-lightning"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def golden_path(case_name: str) -> Path:
    return GOLDEN_DIR / f"{case_name}.safetensors"


def write(case, inputs: dict[str, Any], outputs: dict[str, Any], ref_commit: str) -> Path:
    from safetensors.numpy import save_file

    in_arr, in_params = split_values(inputs, scalars_as_params=True)
    out_arr, out_struct = split_values(outputs)
    digests = {k: array_digest(v) for k, v in in_arr.items() if v.nbytes > LARGE_INPUT_BYTES}
    tensors = {f"in/{k}": v for k, v in in_arr.items() if k not in digests}
    tensors.update({f"out/{k}": v for k, v in out_arr.items()})
    meta = {
        "format": FORMAT_VERSION,
        "case": case.name,
        "system": case.system,
        "component": case.component,
        "seed": str(case.seed),
        "dtype": case.dtype,
        "ref_repo": case.system,
        "ref_commit": ref_commit,
        "ref_lines": json.dumps(case.ref_lines),
        "versions": json.dumps(library_versions(), sort_keys=True),
        "platform": json.dumps(fingerprint(), sort_keys=True),
        "params": json.dumps(in_params, sort_keys=True),
        "input_digests": json.dumps(digests, sort_keys=True),
        "structural": json.dumps(out_struct, sort_keys=True),
    }
    path = golden_path(case.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and _same_content(path, tensors, meta):
        return path  # safetensors orders the metadata map arbitrarily: keep the file byte-stable
    save_file(tensors, str(path), metadata=meta)
    return path


def _same_content(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bool:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="numpy") as f:
        if dict(f.metadata() or {}) != meta:
            return False
    old = load_file(str(path))
    return set(old) == set(tensors) and all(
        old[k].dtype == v.dtype and old[k].shape == v.shape and np.array_equal(old[k], v, equal_nan=True)
        for k, v in tensors.items())


class Golden:
    """A loaded golden file: ``inputs`` (arrays + params; large arrays only as ``input_digests``),
    ``outputs`` (arrays + structural), ``meta``."""

    def __init__(self, path: Path):
        from safetensors import safe_open
        from safetensors.numpy import load_file

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no golden vectors for this case; run `make golden`")
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
        # load_file keeps 0-d tensors 0-d (safe_open.get_tensor returns them as shape (1,))
        tensors = load_file(str(path))
        for field in ("case", "seed", "ref_commit", "params", "structural"):
            if field not in meta:
                raise ValueError(f"{path}: golden metadata lacks field {field!r}; re-record with `make golden`")
        self.path = path
        self.meta = meta
        self.inputs: dict[str, Any] = {k[3:]: v for k, v in tensors.items() if k.startswith("in/")}
        self.inputs.update(json.loads(meta["params"]))
        self.input_digests: dict[str, dict] = json.loads(meta.get("input_digests", "{}"))
        self.outputs: dict[str, Any] = {k[4:]: v for k, v in tensors.items() if k.startswith("out/")}
        self.outputs.update(json.loads(meta["structural"]))

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def platform(self) -> dict:
        """Where the reference outputs were recorded (parity/kernels.py fingerprint); {} if unstamped."""
        return json.loads(self.meta.get("platform", "{}"))


def load(case_name: str) -> Golden:
    return Golden(golden_path(case_name))


def record(names: list[str] | None = None, log=print) -> int:
    """Run the reference side of the selected cases and write their golden files."""
    from parity.case import all_cases, missing_needs
    from parity.materialize import load_lock, verify

    sys.dont_write_bytecode = True
    lock = load_lock()
    cases = all_cases()
    if names:
        unknown = set(names) - set(cases)
        if unknown:
            raise SystemExit(f"make golden: unknown case(s) {sorted(unknown)}; known: {sorted(cases)}")
        cases = {n: cases[n] for n in names}
    verified: set[str] = set()
    n_written = 0
    for name, case in cases.items():
        spec = lock[case.system]
        if case.system not in verified:
            verify(spec)  # golden vectors only ever come from the pinned, unmodified reference
            verified.add(case.system)
        why = missing_needs(case)
        if why:
            log(f"skip  {name}: {why}")
            continue
        inputs = case.make_inputs(case.seed)
        outputs = case.run_reference(dict(inputs))
        path = write(case, inputs, outputs, spec.commit)
        n_written += 1
        log(f"wrote {path.relative_to(GOLDEN_DIR.parents[1])} ({path.stat().st_size / 1024:.1f} KiB)")
    return n_written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Record golden vectors from the reference code.")
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    a = ap.parse_args(argv)
    import torch

    # The same single intra-op thread as `make parity` and the tests: float32 reductions over the
    # reference's 4096-wide projection differ in the last bits (up to ~1e-5 relative) between thread
    # counts, so golden vectors are recorded under the exact conditions they are checked under.
    torch.set_num_threads(1)
    record(a.cases or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
