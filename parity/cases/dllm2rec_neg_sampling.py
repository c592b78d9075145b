"""Parity: negative sampling (main.py:382-392) vs reimpl.dllm2rec.losses.sample_negatives.

Both draw from the global torch RNG re-seeded to ``draw_seed``: same pool, same negatives."""

from __future__ import annotations

import numpy as np
import torch

from parity.case import Case, register
from parity.cases import dllm2rec_common as C


def make_inputs(seed: int) -> dict:
    rs = np.random.default_rng(seed)
    seq, _, target = C.sequences(rs, 33, C.DIMS["item_num"], 10)
    return {"seq": seq, "target": target, "item_num": C.DIMS["item_num"], "draw_seed": seed + 7}


def run_reference(inputs: dict) -> dict:
    r = C.ref()
    seq, target = torch.as_tensor(inputs["seq"]), torch.as_tensor(inputs["target"])
    args = r.default_args(batch_size=seq.size(0))
    torch.manual_seed(inputs["draw_seed"])
    o = r.neg_sampling(args=args, item_num=inputs["item_num"], device=torch.device("cpu"), seq=seq,
                       target=target)
    return {"pool": o["neg_tensor"].numpy(), "target_neg": o["target_neg"].numpy()}


def run_reimpl(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.losses import negative_pool, sample_negatives

    seq, target = torch.as_tensor(inputs["seq"]), torch.as_tensor(inputs["target"])
    pool = negative_pool(seq, target, inputs["item_num"], mode)
    torch.manual_seed(inputs["draw_seed"])
    neg = sample_negatives(seq, target, inputs["item_num"], 1, mode=mode)
    return {"pool": pool.numpy(), "target_neg": neg.numpy()}


register(Case(
    name="dllm2rec.neg_sampling", system="DLLM2Rec", component="bce",
    title="Negative sampling: pool excludes history and target; multinomial draw",
    ref_lines=["main.py:382-392"], reimpl_symbol="reimpl/dllm2rec/losses.py:sample_negatives",
    seed=2024, dtype="float32", make_inputs=make_inputs, run_reference=run_reference,
    run_reimpl=run_reimpl, deviations=["DLLM2REC-NEG-MASK-10"],
    description="0/1 pool [B, I] and one negative per row [B, 1] drawn by torch.multinomial from the "
                "same seeded global RNG (exact integer equality)."))
