"""Declared deviations between the reference code and ``mode="fixed"``.

Every behaviour in which ``fixed`` differs from ``faithful`` (= the reference) is one entry here.
The parity report lists them all, each with its measured effect (the parity case named in
``case`` is run through reimpl in both modes on the case's golden inputs and the difference of
the outputs is shown). A deviation without a case carries ``effect_note`` instead, saying where
its effect is measured (e.g. a baseline report).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deviation:
    id: str              # "<SYSTEM>-<SHORT-NAME>", upper case
    system: str          # "iLoRA" | "DLLM2Rec"
    ref: str             # reference file:line
    what: str            # what the reference does
    why: str             # why it matters / why fixed differs
    fixed: str           # what mode="fixed" does instead
    case: str | None = None        # parity case measuring it (faithful vs fixed outputs)
    effect_note: str = ""          # where the effect is measured when no case does


DEVIATIONS: dict[str, Deviation] = {}


def declare(d: Deviation) -> Deviation:
    if d.id in DEVIATIONS and DEVIATIONS[d.id] != d:
        raise ValueError(f"deviation {d.id} declared twice with different content")
    DEVIATIONS[d.id] = d
    return d


def check_mode(mode: str) -> str:
    if mode not in ("faithful", "fixed"):
        raise ValueError(f"mode must be 'faithful' or 'fixed', got {mode!r}")
    return mode


def all_deviations() -> dict[str, Deviation]:
    """Import every ``reimpl/**/deviations*.py`` module (where declarations live) and return the registry."""
    import importlib
    import pkgutil

    import reimpl

    for mod in pkgutil.walk_packages(reimpl.__path__, "reimpl."):
        if mod.name.rsplit(".", 1)[-1].startswith("deviations") and mod.name != __name__:
            importlib.import_module(mod.name)
    return dict(sorted(DEVIATIONS.items()))
