"""iLoRA generation evaluation: HR@1 and ValidRatio (MInterface.calculate_hr1)."""

from __future__ import annotations

import random

from parity.case import Case, register

# Artist-like titles, several of which are substrings of others (the matching quirk's trigger).
_TITLES = ["Queen", "Queens of the Stone Age", "Muse", "Museum of Love", "Blur", "Radiohead", "Air",
           "Air Supply", "Björk", "Sigur Rós", "Daft Punk", "U2", "The Cure", "Cure for Pain", "Beck"]


def make_inputs(seed: int) -> dict:
    rnd = random.Random(seed)
    generate, real, cans = [], [], []
    for _ in range(64):
        c = rnd.sample(_TITLES, rnd.randint(1, 6))
        r = rnd.choice(c) if rnd.random() < 0.8 else rnd.choice(_TITLES)
        kind = rnd.random()
        if kind < 0.45:
            g = rnd.choice(c)                                   # a plain candidate title
        elif kind < 0.6:
            g = f"I would pick {rnd.choice(c).upper()} next"    # case + surrounding words
        elif kind < 0.75:
            g = ", ".join(rnd.sample(c, min(2, len(c))))        # two candidates named
        elif kind < 0.9:
            g = rnd.choice(_TITLES)                             # possibly not a candidate
        else:
            g = "no idea"
        generate.append("  " + g + " ")
        real.append(r)
        cans.append(c)
    return {"generate": generate, "real": real, "cans": cans}


def run_reference(inputs: dict) -> dict:
    from parity.refs import ilora

    ref = ilora()
    content = {"generate": list(inputs["generate"]), "real": list(inputs["real"]),
               "cans": [list(c) for c in inputs["cans"]]}
    # calculate_hr1 reads only its argument, never self (model_interface.py:468-492)
    vr, hr = ref.MInterface.calculate_hr1(None, content)
    return {"valid_ratio": float(vr), "hr1": float(hr), "metric": float(hr * vr)}


def run_reimpl(inputs: dict, mode: str) -> dict:
    from reimpl.ilora.evaluate import hr1_valid_ratio

    r = hr1_valid_ratio(inputs["generate"], inputs["real"], inputs["cans"], mode=mode)
    return {"valid_ratio": float(r.valid_ratio), "hr1": float(r.hr1), "metric": float(r.metric)}


register(Case(
    name="ilora.eval_hr1",
    system="iLoRA",
    component="eval",
    title="HR@1 and ValidRatio of generated answers",
    ref_lines=["model/model_interface.py:468-492", "model/model_interface.py:175-184"],
    reimpl_symbol="reimpl/ilora/evaluate.py:hr1_valid_ratio",
    seed=2024, dtype="float64", rtol=0.0, atol=0.0,
    make_inputs=make_inputs, run_reference=run_reference, run_reimpl=run_reimpl,
    deviations=["ILORA-HR1-SUBSTRING"],
    description="The reference lower-cases and strips the generation, target and candidate titles, and counts "
                "a row as valid when exactly one candidate is a substring of the generation; HR@1 is correct/"
                "valid. 64 seeded rows over artist titles where several are substrings of others. Exact "
                "equality (the outputs are ratios of small integers).",
))
