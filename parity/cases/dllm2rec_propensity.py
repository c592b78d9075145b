"""Parity: propensity scores (main.py:264-275) vs reimpl.dllm2rec.losses.propensity_scores."""

from __future__ import annotations

import numpy as np

from parity.case import Case, register
from parity.cases import dllm2rec_common as C


def make_inputs(seed: int) -> dict:
    rs = np.random.default_rng(seed)
    I = C.DIMS["item_num"]
    u = rs.random(500)
    nxt = (u * u * u * I).astype(np.int64)  # skewed popularity, some items never seen (no pow/log: portable)
    return {"train_next": nxt.astype(np.int64), "item_num": I}


def run_reference(inputs: dict) -> dict:
    return {"ps": C.ref_ps(C.ref(), inputs).numpy()}


def run_reimpl(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.losses import propensity_scores

    return {"ps": propensity_scores(inputs["train_next"], inputs["item_num"])}


register(Case(
    name="dllm2rec.propensity", system="DLLM2Rec", component="dro",
    title="Propensity scores from train-target popularity",
    ref_lines=["main.py:264-275", "main.py:323-325"],
    reimpl_symbol="reimpl/dllm2rec/losses.py:propensity_scores", seed=2024, dtype="float64",
    make_inputs=make_inputs, run_reference=run_reference, run_reimpl=run_reimpl,
    description="((count+1)/sum(count+1))**0.05 over the `next` column only, float64 [I]."))
