"""Parity: DRO loss (main.py:419-431) vs reimpl.dllm2rec.losses.dro_loss + compose_loss."""

from __future__ import annotations

import numpy as np
import torch

from parity.case import Case, register
from parity.cases import dllm2rec_common as C


def make_inputs(seed: int) -> dict:
    inp = C.loss_batch(seed)
    big = np.array(inp["model_output"][:3], copy=True)
    big[:, :5] = 45.0  # o^2 * ps / beta > 709: exp overflows in float64
    inp["model_output_extreme"] = big
    inp["target_extreme"] = inp["target"][:3]
    inp["loss_base"] = 0.7
    inp["beta"] = 1.0
    inp["alpha"] = 0.5
    return inp


def _ref(r, inputs, o, t):
    o = torch.as_tensor(o)
    args = r.default_args(batch_size=o.size(0), alpha=inputs["alpha"], beta=inputs["beta"])
    res = r.dro(args=args, model_output=o, target=torch.as_tensor(t).view(-1, 1), ps=C.ref_ps(r, inputs),
                loss=torch.tensor(inputs["loss_base"], dtype=torch.float32))
    return res


def run_reference(inputs: dict) -> dict:
    r = C.ref()
    a = _ref(r, inputs, inputs["model_output"], inputs["target"])
    b = _ref(r, inputs, inputs["model_output_extreme"], inputs["target_extreme"])
    return {"loss_dro": a["loss_dro"].numpy(), "loss_all": a["loss_all"].numpy(),
            "loss_dro_extreme": b["loss_dro"].numpy()}


def run_reimpl(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.losses import compose_loss, dro_loss

    ps = C.ps_tensor(inputs)
    o, t = torch.as_tensor(inputs["model_output"]), torch.as_tensor(inputs["target"])
    d = dro_loss(o, t, ps, inputs["beta"], mode)
    tot = compose_loss(torch.tensor(inputs["loss_base"], dtype=torch.float32), d, None,
                       inputs["alpha"], 0.0)
    dx = dro_loss(torch.as_tensor(inputs["model_output_extreme"]),
                  torch.as_tensor(inputs["target_extreme"]), ps, inputs["beta"], mode)
    return {"loss_dro": d.numpy(), "loss_all": tot.numpy(), "loss_dro_extreme": dx.numpy()}


register(Case(
    name="dllm2rec.dro_loss", system="DLLM2Rec", component="dro", title="DRO loss with propensity scores",
    ref_lines=["main.py:419-431", "main.py:264-275"], reimpl_symbol="reimpl/dllm2rec/losses.py:dro_loss",
    seed=2024, dtype="float64", make_inputs=make_inputs, run_reference=run_reference,
    run_reimpl=run_reimpl, deviations=["DLLM2REC-DRO-OVERFLOW"],
    description="Per-row DRO [B] (float64 by promotion with ps), base loss + alpha*mean; a second batch "
                "with scores of 45 shows the reference's exp overflow (inf), which fixed avoids."))
