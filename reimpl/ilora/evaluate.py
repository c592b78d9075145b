"""Generation evaluation of the iLoRA teacher: HR@1 and ValidRatio over generated answers.

Mirrors ``model/model_interface.py`` of iLoRA @ 28e47371:

* ``validation_step`` / ``test_step`` (l.158-167 / l.193-202): keep the first line of the stripped
  generation -> :func:`first_line`.
* ``calculate_hr1`` (l.468-492) -> :func:`hr1_valid_ratio`:
  a generation is *valid* when exactly one candidate title (lower-cased, stripped) occurs in it
  as a **substring**; HR@1 = (#valid whose single match equals the target) / #valid (0 when no
  valid row); ValidRatio = #valid / #rows. ``on_validation_epoch_end`` (l.175-184) logs
  ``metric = hr * valid_ratio`` (= correct / rows).

``mode="fixed"`` (deviation ``ILORA-HR1-SUBSTRING``) replaces raw substring matching, which (a) lets a
short title match inside a longer word or title ("Muse" in "Museum", "Queen" in "Queens of the Stone
Age") and so turns a correct answer naming the longer title into an *invalid* one, and (b) counts a
candidate that is only a piece of another matched candidate. ``fixed`` matches at word boundaries
and drops a match whose every occurrence lies inside the occurrence of a longer matched candidate.
Everything else (first line, lower-casing, HR over valid rows) is unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from reimpl.deviations import check_mode
from reimpl.ilora import deviations_teacher  # noqa: F401  (declares this module's deviations)


def first_line(generated: str) -> str:
    """The answer the reference scores: strip, then keep the text before the first newline."""
    return generated.strip().split("\n")[0]


def _norm(s: str) -> str:
    return s.strip().lower().strip()


def _matches_faithful(gen: str, cans: Sequence[str]) -> list[str]:
    # reference: every candidate that is a substring of the generation, in candidate order
    return [c for c in cans if c in gen]


def _spans(gen: str, cand: str) -> list[tuple[int, int]]:
    if not cand:
        return []
    pat = re.compile(r"(?<!\w)" + re.escape(cand) + r"(?!\w)")
    return [(m.start(), m.end()) for m in pat.finditer(gen)]


def _matches_fixed(gen: str, cans: Sequence[str]) -> list[str]:
    spans = {c: _spans(gen, c) for c in dict.fromkeys(cans)}
    found = {c: s for c, s in spans.items() if s}
    out = []
    for c, sc in found.items():
        # keep c unless each of its occurrences is covered by a strictly longer matched candidate
        covered = all(
            any(len(o) > len(c) and any(a <= s0 and e0 <= b for a, b in so) for o, so in found.items())
            for s0, e0 in sc)
        if not covered:
            out.append(c)
    return out


@dataclass(frozen=True)
class HR1Result:
    valid_ratio: float   # #valid / #rows
    hr1: float           # #correct / #valid (0 if no valid row) -- the reference's "val_hr"
    metric: float        # hr1 * valid_ratio -- the reference's monitored "metric"
    n_rows: int
    n_valid: int
    n_correct: int
    valid: list[bool]    # per row
    correct: list[bool]  # per row


def hr1_valid_ratio(generate: Sequence[str], real: Sequence[str], cans: Sequence[Sequence[str]],
                    mode: str = "faithful") -> HR1Result:
    """HR@1 and ValidRatio of generated answers (``calculate_hr1``, model_interface.py:468-492).

    generate: ``[N]`` generated strings (already cut to the first line by the caller, as the
    reference's validation_step does); real: ``[N]`` target titles; cans: ``[N][C_i]`` candidate
    titles per row (C_i may differ per row).
    """
    check_mode(mode)
    n = len(generate)
    if len(real) != n or len(cans) != n:
        raise ValueError(f"hr1_valid_ratio: generate has {n} rows, real {len(real)}, cans {len(cans)}; "
                         "expected the same number of rows")
    if n == 0:
        raise ValueError("hr1_valid_ratio: no rows to score (the reference divides by the row count)")
    match = _matches_faithful if mode == "faithful" else _matches_fixed
    valid, correct = [], []
    for g, r, c in zip(generate, real, cans):
        if isinstance(c, str):
            raise ValueError("hr1_valid_ratio: cans must hold a list of titles per row, got a string")
        hits = match(_norm(g), [_norm(x) for x in c])
        ok = len(hits) == 1
        valid.append(ok)
        correct.append(ok and _norm(r) == hits[0])
    n_valid, n_correct = sum(valid), sum(correct)
    vr = n_valid / n
    hr = n_correct / n_valid if n_valid > 0 else 0
    return HR1Result(vr, hr, hr * vr, n, n_valid, n_correct, valid, correct)
