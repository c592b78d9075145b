"""The case registry and the deviation list are consistent: every case names a seed, a tolerance, a
reference file:line that exists at the pinned commit and a reimpl module that exists; every deviation
a case measures is declared; every golden file belongs to a case and was recorded at the pinned commit."""

from __future__ import annotations

import re

import pytest

from parity import golden as G
from parity.case import DEFAULT_TOL, all_cases
from parity.materialize import load_lock
from parity.report import _resolve
from reimpl.deviations import all_deviations
from reimpl.paths import ROOT

CASES = all_cases()
DEVS = all_deviations()


def _ref_parts(ref: str):
    for part in re.split(r";\s*", ref.strip()):
        part = re.sub(r"\s*\([^()]*\)\s*$", "", part)  # a trailing "(comment)" is allowed
        m = re.match(r"^([\w./-]+?)(?::([\d,\s-]+))?$", part)
        assert m, f"unparseable reference location {part!r}"
        nums = [int(n) for n in re.findall(r"\d+", m.group(2) or "")]
        yield m.group(1), nums


def test_registry_not_empty_and_both_systems_covered():
    assert {c.system for c in CASES.values()} == {"iLoRA", "DLLM2Rec"}
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_declares_what_it_exercises(name):
    case = CASES[name]
    lock = load_lock()[case.system]
    assert isinstance(case.seed, int)
    d_rtol, d_atol = DEFAULT_TOL[case.dtype]
    if case.rtol > d_rtol or case.atol > d_atol:
        assert len(case.tolerance_note) > 40, f"{name}: looser tolerance needs a real explanation"
    for ref in case.ref_lines:
        for path, _ in _ref_parts(ref):
            _resolve(lock, path)
    path = case.reimpl_symbol.split(":")[0]
    if "{" not in path:
        assert (ROOT / path).is_file(), f"{name}: reimpl_symbol path {path} does not exist"
    for dev in case.deviations:
        assert dev in DEVS, f"{name}: deviation {dev} is not declared in reimpl/**/deviations*.py"
        assert DEVS[dev].system == case.system


@pytest.mark.parametrize("dev_id", sorted(DEVS))
def test_deviation_is_complete(dev_id):
    d = DEVS[dev_id]
    assert d.what and d.why and d.fixed, dev_id
    for path, _ in _ref_parts(d.ref):
        _resolve(load_lock()[d.system], path)
    if d.case:
        assert d.case in CASES, f"{dev_id}: names unknown case {d.case}"
    else:
        # measured by some case listing it, or the note says where its effect is measured
        assert d.effect_note or any(dev_id in c.deviations for c in CASES.values()), dev_id


def test_reference_line_numbers_exist(refs):
    for case in CASES.values():
        spec = load_lock()[case.system]
        for ref in case.ref_lines:
            for path, nums in _ref_parts(ref):
                n_lines = len((refs[case.system] / _resolve(spec, path)).read_text(errors="replace").splitlines())
                assert all(1 <= n <= n_lines + 1 for n in nums), f"{case.name}: {ref} beyond {n_lines} lines"


def test_golden_files_match_cases_and_lock():
    lock = load_lock()
    files = sorted(G.GOLDEN_DIR.glob("*.safetensors"))
    assert files, "no golden vectors committed: run `make golden`"
    for f in files:
        g = G.Golden(f)
        name = g.meta["case"]
        assert name in CASES, f"{f.name}: golden file for unknown case {name}"
        assert g.meta["ref_commit"] == lock[CASES[name].system].commit, f"{f.name}: recorded at another commit"
        assert g.seed == CASES[name].seed
    missing = set(CASES) - {f.stem for f in files}
    assert not missing, f"cases without golden vectors: {sorted(missing)} (run `make golden`)"
