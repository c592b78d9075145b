"""The parity-case contract and registry.

A case feeds identical seeded inputs through the reference code (loaded at run time from
``ref_repositories/`` by ``parity.refs``) and through ``reimpl``, and compares the outputs.

Adding a case is one small file in ``parity/cases/<component>.py`` that calls :func:`register`::

    register(Case(
        name="dllm2rec.dro_loss",              # unique, "<system>.<what>"
        system="DLLM2Rec",                     # "iLoRA" | "DLLM2Rec"
        component="dro",                       # report section key (see parity/report.py SECTIONS)
        title="DRO loss with propensity scores",
        ref_lines=["main.py:419-431", "main.py:264-275"],   # file:line in the reference repo
        reimpl_symbol="reimpl/dllm2rec/losses.py:dro_loss",
        seed=2024, dtype="float64", rtol=1e-10, atol=0.0,
        make_inputs=make_inputs,                # (seed) -> dict[str, np.ndarray | json-able]
        run_reference=run_reference,            # (inputs) -> dict[str, output]
        run_reimpl=run_reimpl,                  # (inputs, mode) -> dict[str, output]
        deviations=["DLLM2REC-DRO-SQUEEZE"],    # ids in reimpl.deviations that this case measures
    ))

Outputs are ``{name: value}`` where a value is a numeric array (np.ndarray / torch.Tensor /
Python number: compared with ``rtol``/``atol``) or a JSON-able structure (str, list, dict:
compared exactly with deepdiff). Golden files only ever hold what ``run_reference`` returned.

``run_reimpl(inputs, "faithful")`` must reproduce the reference; ``run_reimpl(inputs, "fixed")``
is used to measure the effect of the declared deviations.

``needs`` lists optional requirements (e.g. ``"shared"`` for ../shared data): where one is
missing the case is reported as skipped, with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

Inputs = dict[str, Any]
Outputs = dict[str, Any]

SYSTEMS = ("iLoRA", "DLLM2Rec")
DEFAULT_TOL = {"float64": (1e-10, 0.0), "float32": (1e-6, 1e-7)}


@dataclass
class Case:
    name: str
    system: str
    component: str
    title: str
    ref_lines: list[str]
    reimpl_symbol: str
    seed: int
    make_inputs: Callable[[int], Inputs]
    run_reference: Callable[[Inputs], Outputs]
    run_reimpl: Callable[[Inputs, str], Outputs]
    dtype: str = "float64"
    rtol: float | None = None
    atol: float | None = None
    tolerance_note: str = ""          # required when rtol/atol loosen the defaults
    deviations: list[str] = field(default_factory=list)
    # optional {deviation id: regex over output names}: which outputs a deviation's effect is read
    # from (default: all outputs of the case)
    deviation_outputs: dict[str, str] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    description: str = ""             # one paragraph: what the reference does, how we match it
    # Golden file recorded on another platform (parity/kernels.py kernel_key): its outputs are compared
    # at this tolerance, derived from the reference's own drift between kernel sets (parity/drift.json,
    # `python -m parity.drift`) and stated in xplat_note. None: the strict tolerance holds everywhere.
    xplat_rtol: float | None = None
    xplat_atol: float | None = None
    xplat_note: str = ""
    # True where the measured drift makes any golden comparison off its platform meaningless (Adam in
    # float32): there only the live reference checks the case
    xplat_live_only: bool = False

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"case {self.name}: system must be one of {SYSTEMS}, got {self.system!r}")
        if self.dtype not in DEFAULT_TOL:
            raise ValueError(f"case {self.name}: dtype must be one of {sorted(DEFAULT_TOL)}")
        d_rtol, d_atol = DEFAULT_TOL[self.dtype]
        if self.rtol is None:
            self.rtol = d_rtol
        if self.atol is None:
            self.atol = d_atol
        if (self.rtol > d_rtol or self.atol > d_atol) and not self.tolerance_note:
            raise ValueError(
                f"case {self.name}: tolerance rtol={self.rtol}, atol={self.atol} is looser than the "
                f"{self.dtype} default ({d_rtol}, {d_atol}); say why in tolerance_note")
        unknown = set(self.deviation_outputs) - set(self.deviations)
        if unknown:
            raise ValueError(f"case {self.name}: deviation_outputs names undeclared deviations {sorted(unknown)}")
        if not self.ref_lines:
            raise ValueError(f"case {self.name}: ref_lines must name the reference file:line it exercises")
        if self.xplat_live_only and not self.xplat_note:
            raise ValueError(f"case {self.name}: xplat_live_only needs xplat_note (the measured drift)")
        if self.xplat_rtol is None and self.xplat_atol is None:
            self.xplat_rtol, self.xplat_atol = self.rtol, self.atol
        else:
            if not self.xplat_note:
                raise ValueError(f"case {self.name}: a cross-platform tolerance needs xplat_note (the drift "
                                 "measured between kernel sets that it is derived from)")
            self.xplat_rtol = self.rtol if self.xplat_rtol is None else self.xplat_rtol
            self.xplat_atol = self.atol if self.xplat_atol is None else self.xplat_atol

    @property
    def has_xplat(self) -> bool:
        return self.xplat_live_only or (self.xplat_rtol, self.xplat_atol) != (self.rtol, self.atol)


def missing_needs(case: Case) -> str:
    """Why a case cannot run here ('' when it can)."""
    from reimpl.paths import SHARED

    for need in case.needs:
        if need == "shared" and not (SHARED / "data").is_dir():
            return f"needs ../shared/data (looked in {SHARED}; RECPARITY_SHARED moves it)"
        if need.startswith("module:") and importlib.util.find_spec(need[7:]) is None:
            return f"needs Python package {need[7:]}"
    return ""


_REGISTRY: dict[str, Case] = {}


def register(case: Case) -> Case:
    if case.name in _REGISTRY:
        raise ValueError(f"parity case {case.name!r} registered twice")
    _REGISTRY[case.name] = case
    return case


def all_cases() -> dict[str, Case]:
    """Import every module in parity/cases and return the registry, in name order."""
    from parity import cases as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"parity.cases.{mod.name}")
    return dict(sorted(_REGISTRY.items()))
