"""Parity: base BCE loss (main.py:406-417) vs reimpl.dllm2rec.losses.bce_loss."""

from __future__ import annotations

import torch

from parity.case import Case, register
from parity.cases import dllm2rec_common as C


def make_inputs(seed: int) -> dict:
    inp = C.loss_batch(seed)
    inp["model_output"][2, :] *= 40  # saturated logits: BCEWithLogits stays finite on both sides
    return inp


def run_reference(inputs: dict) -> dict:
    r = C.ref()
    o = torch.as_tensor(inputs["model_output"])
    res = r.bce(args=r.default_args(batch_size=o.size(0)), device=torch.device("cpu"), model_output=o,
                target=torch.as_tensor(inputs["target"]), target_neg=torch.as_tensor(inputs["target_neg"]),
                bce_loss=torch.nn.BCEWithLogitsLoss())
    return {"loss": res["loss"].numpy()}


def run_reimpl(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.losses import bce_loss

    return {"loss": bce_loss(torch.as_tensor(inputs["model_output"]), torch.as_tensor(inputs["target"]),
                             torch.as_tensor(inputs["target_neg"])).numpy()}


register(Case(
    name="dllm2rec.bce_loss", system="DLLM2Rec", component="bce", title="Base BCE loss",
    ref_lines=["main.py:406-417"], reimpl_symbol="reimpl/dllm2rec/losses.py:bce_loss", seed=2024,
    dtype="float64", make_inputs=make_inputs, run_reference=run_reference, run_reimpl=run_reimpl,
    description="Mean BCE-with-logits over [2B, 1] (positives then negatives). The reference's float32 "
                "labels make BCEWithLogitsLoss return float32 for float64 scores; reimpl does the same, "
                "so the float64 tolerance holds on the identical float32 result."))
