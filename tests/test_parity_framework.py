"""The parity machinery itself: comparison, golden round trip, verdicts, deviation effects, report."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity import golden as G
from parity import run as R
from parity.case import Case
from parity.compare import compare_arrays, compare_outputs


def test_compare_exact_ints_and_first_mismatch():
    a = np.arange(12).reshape(3, 4)
    b = a.copy()
    assert compare_arrays("x", a, b, 0, 0).ok
    b[2, 1] += 1
    r = compare_arrays("x", a, b, 1e-3, 1e-3)
    assert not r.ok and r.first_mismatch.startswith("(2, 1)") and "integer" in r.note


def test_compare_tolerance_nan_and_shape():
    b = np.array([1.0, 2.0, np.nan])
    assert compare_arrays("x", b * (1 + 1e-12), b, 1e-10, 0).ok
    assert not compare_arrays("x", b * (1 + 1e-8), b, 1e-10, 0).ok
    assert not compare_arrays("x", np.array([1.0, 2.0, 3.0]), b, 1, 1).ok  # NaN only on one side
    r = compare_arrays("x", np.zeros(2), b, 1, 1)
    assert not r.ok and "shape" in r.note


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=5),
                  elements=st.floats(-1e6, 1e6, allow_nan=False)))
def test_compare_self_is_exact(a):
    r = compare_arrays("x", a, a.copy(), 0.0, 0.0)
    assert r.ok and r.max_abs == 0.0


def test_structural_deepdiff():
    c = compare_outputs("t", {"names": ["a", "b"]}, {"names": ["a", "c"]}, 0, 0)
    assert not c.ok and "values_changed" in c.structural["names"]


def _toy_case(name="toy.affine", reimpl_bias=0.0, deviations=()):
    def make_inputs(seed):
        rng = np.random.default_rng(seed)
        return {"x": rng.standard_normal((4, 3)), "scale": 2.0}

    def ref(inp):  # stands in for reference code in this unit test only
        return {"y": inp["x"] * inp["scale"], "keys": ["y"]}

    def ours(inp, mode):
        extra = 1.0 if (mode == "fixed" and deviations) else 0.0
        return {"y": inp["x"] * inp["scale"] + reimpl_bias + extra, "keys": ["y"]}

    return Case(name=name, system="DLLM2Rec", component="toy", title="toy", ref_lines=["main.py:1"],
                reimpl_symbol="reimpl/x.py:y", seed=3, make_inputs=make_inputs, run_reference=ref,
                run_reimpl=ours, deviations=list(deviations))


def test_golden_roundtrip_and_verdicts(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "GOLDEN_DIR", tmp_path)
    case = _toy_case()
    inputs = case.make_inputs(case.seed)
    G.write(case, inputs, case.run_reference(inputs), ref_commit="0" * 40)
    g = G.load(case.name)
    assert g.seed == 3 and g.inputs["scale"] == 2.0 and g.outputs["keys"] == ["y"]
    np.testing.assert_array_equal(g.inputs["x"], inputs["x"])

    assert R.run_case(case, live=False).verdict == R.VERDICT_OK
    live = R.run_case(case, live=True)
    assert live.verdict == R.VERDICT_OK and live.sources == ["golden", "live"] and live.drift.ok

    broken = _toy_case(reimpl_bias=1e-6)
    res = R.run_case(broken, live=False)
    assert res.verdict == R.VERDICT_FAIL and not res.ok

    dev = _toy_case(deviations=["TOY-SHIFT"])
    res = R.run_case(dev, live=False)
    assert res.verdict == R.VERDICT_DEV
    assert [(e.id, e.worst_output, e.max_abs, e.n_changed, e.n_outputs) for e in res.effects] == [
        ("TOY-SHIFT", "y", 1.0, 1, 2)]


def test_missing_golden_without_live_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "GOLDEN_DIR", tmp_path)
    res = R.run_case(_toy_case("toy.nogolden"), live=False)
    assert res.verdict == R.VERDICT_FAIL and "make golden" in res.error


def test_input_drift_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "GOLDEN_DIR", tmp_path)
    case = _toy_case()
    inputs = case.make_inputs(99)  # recorded with another seed than the case declares
    G.write(case, inputs, case.run_reference(inputs), ref_commit="0" * 40)
    res = R.run_case(case, live=False)
    assert res.verdict == R.VERDICT_FAIL and "differs" in res.input_drift


def test_case_rejects_loose_tolerance_without_reason():
    with pytest.raises(ValueError, match="tolerance_note"):
        Case(name="x", system="iLoRA", component="c", title="t", ref_lines=["a.py:1"], reimpl_symbol="r",
             seed=0, make_inputs=lambda s: {}, run_reference=lambda i: {}, run_reimpl=lambda i, m: {},
             rtol=1e-3)


def test_report_renders_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "GOLDEN_DIR", tmp_path)
    from parity.report import render

    case = _toy_case()
    inputs = case.make_inputs(case.seed)
    G.write(case, inputs, case.run_reference(inputs), ref_commit="0" * 40)
    text = render([R.run_case(case, live=False), R.run_case(_toy_case("toy.broken", 1.0), live=False)],
                  live_available={})
    assert "## Summary" in text and "`toy.affine`" in text and "Not reproduced" in text
    assert "## Declared deviations" in text and "Generated:" in text


def test_large_inputs_stored_as_digest_and_regenerated(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "GOLDEN_DIR", tmp_path)
    monkeypatch.setattr(G, "LARGE_INPUT_BYTES", 64)  # x (4x3 float64 = 96 bytes) becomes a digest
    case = _toy_case()
    inputs = case.make_inputs(case.seed)
    G.write(case, inputs, case.run_reference(inputs), ref_commit="0" * 40)
    g = G.load(case.name)
    assert "x" not in g.inputs and g.input_digests["x"]["shape"] == [4, 3]
    assert R.run_case(case, live=False).verdict == R.VERDICT_OK
    # a generator that no longer reproduces the recorded input is caught through the digest
    drifted = _toy_case()
    drifted.make_inputs = lambda seed: {"x": np.ones((4, 3)), "scale": 2.0}
    res = R.run_case(drifted, live=False)
    assert res.verdict == R.VERDICT_FAIL and "digest" in res.input_drift
