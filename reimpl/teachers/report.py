"""``reports/teachers.md`` from the committed result files ``results/teachers/*.json`` (no training).

    python -m reimpl.teachers.report            # writes reports/teachers.md
    python -m reimpl.teachers.report --check    # exit 1 if the committed report differs from a fresh render

The prose lives in ``reimpl/teachers/templates/teachers.md.j2``; this module only computes numbers (pooled
val + test binomial tests) and passes them on.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from reimpl.paths import REPORTS, ROOT

RESULTS = ROOT / "results" / "teachers"
TEMPLATE = Path(__file__).parent / "templates" / "teachers.md.j2"
SETS = ("val", "test", "heldout")


def _pooled(ev: dict) -> dict | None:
    """Target-in-top-10 over val + test together (exact binomial test against the same chance rate)."""
    from scipy.stats import binomtest

    parts = [ev[s]["top10_of_candidates"] for s in ("val", "test") if s in ev]
    if len(parts) != 2:
        return None
    hits, n, p0 = sum(p["hits"] for p in parts), sum(p["rows"] for p in parts), parts[0]["chance"]
    return {"hits": hits, "rows": n, "rate": hits / n, "chance": p0,
            "p_value": float(binomtest(hits, n, p0, alternative="greater").pvalue)}


def load_results(folder: Path = RESULTS, root: Path = ROOT) -> list[dict]:
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        r = json.loads(p.read_text())
        r["_file"] = str(p.relative_to(root))
        for key in ("command", "train_command"):   # runs started as a script path record argv[0] as that path
            if key in r:
                r[key] = re.sub(r"^\S*reimpl/teachers/run\.py", "python -m reimpl.teachers.run", r[key])
        if "eval" in r:
            r["pooled"] = _pooled(r["eval"])
            if "sasrec_bar" in r:
                r["bar_pooled"] = _pooled(r["sasrec_bar"])
        out.append(r)
    order = {"sasrec": 0, "sasrec-retrained": 0, "dense": 1, "e4srec": 2, "llamarec": 3, "ilora": 4}
    return sorted(out, key=lambda r: (order.get(r["method"], 9), r["teacher"]))


def fmt_p(p: float) -> str:
    return "< 1e-300" if p == 0 else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def load_loo(folder: Path = RESULTS, root: Path = ROOT) -> dict[str, list[dict]]:
    """Teachers of the leave-one-out splits (``results/teachers/<dataset>/*.json``), by data set."""
    return {d.name: load_results(d, root) for d in sorted(Path(folder).glob("*-loo")) if d.is_dir()}


def render(results: list[dict], loo: dict[str, list[dict]] | None = None) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["p"] = fmt_p
    env.filters["f3"] = lambda x: f"{x:.3f}"
    env.filters["log"] = math.log
    trained = [r for r in results if r["method"] in ("dense", "e4srec", "llamarec")]
    bars = [r for r in results if r["method"] in ("sasrec", "sasrec-retrained")]
    for b in bars:
        b["label"] = ("SASRec checkpoint (the bar)" if b["method"] == "sasrec"
                      else f"SASRec retrained here, held-out rows unseen ({b['teacher']})")
    pooled = [r for r in trained if r.get("pooled")]
    best = max(pooled, key=lambda r: r["pooled"]["rate"]) if pooled else None
    return env.get_template(TEMPLATE.name).render(best=best, loo=loo or {},
        results=results, trained=trained, sets=SETS, bars=bars,
        sasrec=next((r for r in results if r["method"] == "sasrec"), None),
        ilora=next((r for r in results if r["method"] == "ilora" and "chunks" not in r.get("train", {})), None),
        ilora_runs=[r for r in results if r["method"] == "ilora" and "chunks" in r.get("train", {})])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.teachers.report")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--out", default=str(REPORTS / "teachers.md"))
    a = ap.parse_args(argv)
    text = render(load_results(), load_loo())
    out = Path(a.out)
    if a.check:
        same = out.is_file() and out.read_text() == text
        print(f"{out}: {'up to date' if same else 'differs from a fresh render'}")
        return 0 if same else 1
    out.write_text(text)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
