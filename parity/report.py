"""Render ``reports/parity.md`` (Jinja2, GitHub Markdown) from parity results.

Layout follows the researcher's comparison document (shared/seeds/002_*): per component the
reference logic, this project's implementation, the difference and a reproducibility verdict,
made measurable by the cases' numbers; then the table of declared deviations with their measured
effect. The only run-dependent lines are the ones starting with ``Generated:`` (ignored by the
up-to-date test).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from pathlib import Path

import jinja2

from parity.materialize import load_lock
from parity.sections import SECTIONS, Section

TEMPLATES = Path(__file__).resolve().parent / "templates"
VERDICT_ORDER = ["Not reproduced", "Not verified (no case)", "Reproduced with declared deviation", "Reproduced",
                 "Skipped", "Not applicable"]


def fmt_err(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def _resolve(spec, path: str) -> str:
    """A path as written in a case/deviation -> its path in the pinned snapshot (unique basename match)."""
    files = spec.manifest_entries()
    if path in files:
        return path
    hits = [f for f in files if f.endswith("/" + path)]
    if len(hits) != 1:
        raise ValueError(f"reference path {path!r} is not in {spec.name} @ {spec.commit[:8]} "
                         f"({'ambiguous: ' + ', '.join(hits) if hits else 'no such file'})")
    return hits[0]


def ref_link(system: str, ref_line: str) -> str:
    """'main.py:419-431' (or 'a.py:1-2,5; b.py:7') -> Markdown links to the file at the pinned commit."""
    spec = load_lock()[system]
    parts = []
    for part in re.split(r";\s*", ref_line.strip()):
        comment = re.search(r"\s*\([^()]*\)\s*$", part)
        if comment:
            part = part[:comment.start()]
        m = re.match(r"^([\w./-]+?)(?::(\d+)(?:-(\d+))?([\d,\s-]*))?$", part)
        if not m:
            parts.append(part)
            continue
        path, a, b, _rest = m.groups()
        path = _resolve(spec, path)
        anchor = f"#L{a}" + (f"-L{b}" if b else "") if a else ""
        link = f"[`{part}`]({spec.url}/blob/{spec.commit}/{path}{anchor})"
        parts.append(link + (comment.group(0) if comment else ""))
    return "; ".join(parts)


def our_link(symbol: str) -> str:
    """'reimpl/dllm2rec/losses.py:dro_loss' -> link relative to reports/."""
    path, _, name = symbol.partition(":")
    target = path.rsplit("/", 1)[0] + "/" if "{" in path else path  # "a/{x,y}.py": link the folder
    return f"[`{path}{':' + name if name else ''}`](../{target})"


def _section_verdict(results) -> str:
    if not results:
        return "Not verified (no case)"
    ran = [r for r in results if r.verdict != "Skipped"]
    if not ran:
        return "Skipped"
    return min((r.verdict for r in ran), key=VERDICT_ORDER.index)


def render(results, live_available: dict[str, bool]) -> str:
    from reimpl.deviations import all_deviations

    DEVIATIONS = all_deviations()

    by_component: dict[tuple[str, str], list] = {}
    for r in results:
        comp = r.case.component.removeprefix(r.case.system.lower() + "_")  # "ilora_gating" -> "gating"
        by_component.setdefault((r.case.system, comp), []).append(r)
    known = {(s.system, s.key) for s in SECTIONS}
    sections: list[tuple[Section, list, str]] = []
    for s in SECTIONS:
        rs = by_component.get((s.system, s.key), [])
        sections.append((s, rs, s.verdict_override or _section_verdict(rs)))
    for (system, comp), rs in sorted(by_component.items()):
        if (system, comp) not in known:  # a case whose component has no written section yet
            s = Section(system, comp, comp, "(no summary written yet)", "(no summary written yet)")
            sections.append((s, rs, _section_verdict(rs)))

    effects: dict[str, list] = {}
    for r in results:
        for e in r.effects:
            effects.setdefault(e.id, []).append((r.case.name, e))

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["err"] = fmt_err
    env.filters["cell"] = lambda t: str(t).replace("|", "\\|").replace("\n", " ")  # a Markdown table cell
    env.globals.update(ref_link=ref_link, our_link=our_link)
    lock = load_lock()
    from parity.golden import library_versions
    from parity.kernels import describe, fingerprint

    golden_platforms = sorted({r.golden_platform or "unstamped" for r in results if "golden" in r.sources})
    epoch_file = Path(__file__).resolve().parent / "epoch_identity.json"
    text = env.get_template("parity.md.j2").render(
        epoch=json.loads(epoch_file.read_text()) if epoch_file.is_file() else None,
        platform=describe(fingerprint()),
        golden_platforms=golden_platforms or ["–"],
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        refs=list(lock.values()),
        live=live_available,
        versions=library_versions(),
        results=results,
        sections=sections,
        deviations=sorted(DEVIATIONS.values(), key=lambda d: (d.system, d.id)),
        effects=effects,
        n_fail=sum(not r.ok for r in results),
    )
    return re.sub(r"\n{3,}", "\n\n", text)
