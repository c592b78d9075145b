"""Benchmark registry: each entry pairs a reference-side and a reimpl-side setup on identical inputs.

A setup builds its inputs (not timed) and returns the zero-argument callable that is timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Benchmark:
    what: str
    reference: Callable[[], Callable[[], object]]
    reimpl: Callable[[], Callable[[], object]]
    goal: float | None = None      # required speed-up (reference time / reimpl time)
    repeat: int | None = None      # overrides --repeat (slow benchmarks)


BENCHMARKS: dict[str, Benchmark] = {}
