"""Numeric and structural comparison of case outputs.

Numeric: shape check, max abs / max rel error, ``|a - b| <= atol + rtol * |b|`` per element
(``b`` = the reference side), where the first mismatch is (flat index -> multi-index), NaN
agreement. Integer and boolean arrays must agree exactly. Structural: ``deepdiff.DeepDiff``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.golden import split_values


@dataclass
class TensorResult:
    name: str
    ok: bool
    shape: tuple
    max_abs: float = 0.0
    max_rel: float = 0.0
    first_mismatch: str = ""
    note: str = ""
    # max over elements of |a - b| / (atol + rtol * |b|): <= 1 passes; the relative error alone is
    # meaningless where the reference value is ~0 and atol decides
    tol_ratio: float = 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "shape": list(self.shape), "max_abs": self.max_abs,
                "max_rel": self.max_rel, "tol_ratio": self.tol_ratio, "first_mismatch": self.first_mismatch,
                "note": self.note}


@dataclass
class Comparison:
    """Result of comparing one side (ours / golden) against a reference-side output dict."""
    label: str                      # e.g. "reimpl vs golden"
    tensors: list[TensorResult] = field(default_factory=list)
    structural: dict[str, str] = field(default_factory=dict)   # name -> deepdiff text ("" if equal)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors) and not any(self.structural.values())

    @property
    def max_abs(self) -> float:
        return max((t.max_abs for t in self.tensors), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((t.max_rel for t in self.tensors), default=0.0)

    @property
    def tol_ratio(self) -> float:
        return max((t.tol_ratio for t in self.tensors), default=0.0)

    def failures(self) -> list[str]:
        out = [f"{t.name}: {t.note or 'mismatch'} (max abs {t.max_abs:.3g}, max rel {t.max_rel:.3g}"
               f"{', first at ' + t.first_mismatch if t.first_mismatch else ''})" for t in self.tensors if not t.ok]
        out += [f"{k}: {v}" for k, v in self.structural.items() if v]
        return out


def compare_arrays(name: str, ours: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> TensorResult:
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    if ours.shape != ref.shape:
        return TensorResult(name, False, ref.shape, float("inf"), float("inf"),
                            note=f"shape {ours.shape} vs reference {ref.shape}")
    if ref.size == 0:
        return TensorResult(name, True, ref.shape)
    exact = ref.dtype.kind in "biu" and ours.dtype.kind in "biu"
    a = ours.astype(np.float64)
    b = ref.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    nan_ok = np.array_equal(nan_a, nan_b)
    both = ~(nan_a | nan_b)
    inf_same = np.isinf(a) & np.isinf(b) & (a == b)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both & ~inf_same, np.abs(a - b), 0.0)
        diff = np.where(both, diff, 0.0)
        denom = np.maximum(np.abs(b), np.finfo(np.float64).tiny)
        rel = np.where(both & ~inf_same, diff / denom, 0.0)
    max_abs = float(np.max(diff)) if diff.size else 0.0
    max_rel = float(np.max(rel)) if rel.size else 0.0
    tol_ratio = 0.0
    if exact:
        bad = (a != b) & both
        tol_ratio = float("inf") if bad.any() else 0.0
    else:
        with np.errstate(invalid="ignore"):  # rtol 0 * inf (equal infinities have diff 0 anyway)
            bound = atol + rtol * np.abs(np.where(both & ~inf_same, b, 0.0))
        bad = (diff > bound) & both
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(diff > 0, diff / bound, 0.0)
        tol_ratio = float(np.max(ratio)) if ratio.size else 0.0
    bad |= nan_a != nan_b
    ok = nan_ok and not bad.any()
    first = ""
    if not ok:
        idx = int(np.flatnonzero(bad.ravel())[0])
        mi = np.unravel_index(idx, ref.shape) if ref.shape else ()
        first = f"{tuple(int(i) for i in mi)}: ours {a.ravel()[idx]!r} vs ref {b.ravel()[idx]!r}"
    note = "" if nan_ok else "NaN positions differ"
    if exact and not ok and not note:
        note = "integer values differ"
    return TensorResult(name, ok, ref.shape, max_abs, max_rel, first, note, tol_ratio)


def _deepdiff_text(ours: Any, ref: Any) -> str:
    from deepdiff import DeepDiff

    d = DeepDiff(ref, ours, ignore_order=False, verbose_level=2)
    return "" if not d else d.to_json(sort_keys=True)


def compare_outputs(label: str, ours: dict[str, Any], ref: dict[str, Any], rtol: float, atol: float) -> Comparison:
    ours_a, ours_s = split_values(ours)
    ref_a, ref_s = split_values(ref)
    c = Comparison(label)
    for k in sorted(set(ref_a) | set(ours_a)):
        if k not in ours_a:
            c.tensors.append(TensorResult(k, False, ref_a[k].shape, float("inf"), float("inf"),
                                          note="missing in ours"))
        elif k not in ref_a:
            c.tensors.append(TensorResult(k, False, ours_a[k].shape, float("inf"), float("inf"),
                                          note="not produced by the reference side"))
        else:
            c.tensors.append(compare_arrays(k, ours_a[k], ref_a[k], rtol, atol))
    for k in sorted(set(ref_s) | set(ours_s)):
        if k not in ours_s or k not in ref_s:
            c.structural[k] = "missing in " + ("ours" if k not in ours_s else "reference")
        else:
            # round-trip through JSON so tuples/lists and numpy scalars compare as stored in golden files
            c.structural[k] = _deepdiff_text(json.loads(json.dumps(ours_s[k])), json.loads(json.dumps(ref_s[k])))
    return c

