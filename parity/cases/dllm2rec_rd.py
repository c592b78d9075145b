"""Parity: importance-aware ranking distillation (main.py:433-486): weights, per-candidate loss, and the
loss composition ``bce + alpha * mean(dro) + lam * rd`` for several (alpha, lam)."""

from __future__ import annotations

import pandas as pd
import torch

from parity.case import Case, register
from parity.cases import dllm2rec_common as C

SETTINGS = [(1.0, 0.8), (0.0, 0.8), (0.5, 0.7), (1.0, 0.0), (0.0, 0.0)]  # (alpha, lam)


def make_inputs(seed: int) -> dict:
    return C.loss_batch(seed)


def _ref_rd(r, inputs, alpha, lam, loss_all):
    o = torch.as_tensor(inputs["model_output"])
    args = r.default_args(batch_size=o.size(0), alpha=alpha, lam=lam, candidate_topk=inputs["K"])
    return r.ranking_distill(
        args=args, device=torch.device("cpu"), model_output=o,
        target_neg=torch.as_tensor(inputs["target_neg"]), ps=C.ref_ps(r, inputs),
        sample=pd.Index(inputs["sample"]), all_candidate=torch.LongTensor(inputs["all_candidate"]),
        llm_confidence=torch.tensor(inputs["llm_confidence"], dtype=torch.float), loss_all=loss_all)


def _reimpl_parts(inputs):
    from reimpl.dllm2rec.weights import rd_weights

    o = torch.as_tensor(inputs["model_output"])
    idx = torch.as_tensor(inputs["sample"])
    K = inputs["K"]
    cand = torch.as_tensor(inputs["all_candidate"])[idx][:, :K]
    conf = torch.as_tensor(inputs["llm_confidence"])[idx][:, :K]
    return o, cand, rd_weights(o, cand, conf)


# ---- weights -------------------------------------------------------------------------------------

def run_reference_weights(inputs: dict) -> dict:
    res = _ref_rd(C.ref(), inputs, 1.0, 0.8, torch.tensor(0.0))
    return {k: res[k].numpy() for k in ("weight_rank", "weight_com", "weight_confidence", "weight")}


def run_reimpl_weights(inputs: dict, mode: str) -> dict:
    _, _, w = _reimpl_parts(inputs)
    return {"weight_rank": w.rank.numpy(), "weight_com": w.consistency.numpy(),
            "weight_confidence": w.confidence.numpy(), "weight": w.weight.numpy()}


# ---- per-candidate loss --------------------------------------------------------------------------

def run_reference_loss(inputs: dict) -> dict:
    r = C.ref()
    return {f"loss_all_rd.alpha{a}": _ref_rd(r, inputs, a, 0.8, torch.tensor(0.0))["loss_all_rd"].numpy()
            for a in (1.0, 0.0)}


def run_reimpl_loss(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.losses import rd_loss

    o, cand, w = _reimpl_parts(inputs)
    ps = C.ps_tensor(inputs)
    neg = torch.as_tensor(inputs["target_neg"])
    return {f"loss_all_rd.alpha{a}": rd_loss(o, cand, neg, w.weight, ps, a, 1.0, mode).numpy()
            for a in (1.0, 0.0)}


# ---- composition ---------------------------------------------------------------------------------

def run_reference_compose(inputs: dict) -> dict:
    r = C.ref()
    o = torch.as_tensor(inputs["model_output"])
    out = {}
    for alpha, lam in SETTINGS:
        args = r.default_args(batch_size=o.size(0), alpha=alpha, lam=lam)
        b = r.bce(args=args, device="cpu", model_output=o, target=torch.as_tensor(inputs["target"]),
                  target_neg=torch.as_tensor(inputs["target_neg"]), bce_loss=torch.nn.BCEWithLogitsLoss())
        d = r.dro(args=args, model_output=o, target=b["target"], ps=C.ref_ps(r, inputs), loss=b["loss"])
        loss_all = d["loss_all"]
        if lam != 0:
            loss_all = _ref_rd(r, inputs, alpha, lam, loss_all)["loss_all"]
        out[f"loss_all.alpha{alpha}.lam{lam}"] = loss_all.numpy()
    return out


def run_reimpl_compose(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.losses import bce_loss, compose_loss, dro_loss, rd_loss

    o, cand, w = _reimpl_parts(inputs)
    ps = C.ps_tensor(inputs)
    t, neg = torch.as_tensor(inputs["target"]), torch.as_tensor(inputs["target_neg"])
    out = {}
    for alpha, lam in SETTINGS:
        l_rd = rd_loss(o, cand, neg, w.weight, ps, alpha, 1.0, mode) if lam != 0 else None
        l_dro = dro_loss(o, t, ps, 1.0, mode) if alpha != 0 else None
        out[f"loss_all.alpha{alpha}.lam{lam}"] = compose_loss(bce_loss(o, t, neg), l_dro, l_rd, alpha,
                                                              lam).numpy()
    return out


COMMON = dict(system="DLLM2Rec", seed=2024, make_inputs=make_inputs)

register(Case(
    name="dllm2rec.rd_weights", component="ranking_distillation",
    title="Ranking-distillation weights (position, confidence, consistency)",
    ref_lines=["main.py:434-459"], reimpl_symbol="reimpl/dllm2rec/weights.py:rd_weights", dtype="float32",
    run_reference=run_reference_weights, run_reimpl=run_reimpl_weights,
    description="Weights [B, K]; the reference builds them in float32 (arange float32, int + 1e-8, "
                "confidence read as float). Scores include ties inside and at the border of the "
                "student's top-K (consistency uses a full argsort of -scores).", **COMMON))

register(Case(
    name="dllm2rec.rd_loss", component="ranking_distillation",
    title="Ranking-distillation loss over K candidates (BCE + DRO)",
    ref_lines=["main.py:461-485"], reimpl_symbol="reimpl/dllm2rec/losses.py:rd_loss", dtype="float64",
    run_reference=run_reference_loss, run_reimpl=run_reimpl_loss,
    deviations=["DLLM2REC-RD-NEG-TERM", "DLLM2REC-RD-DRO-BROADCAST"],
    description="The reference loops over the K candidates; reimpl computes [B, K] at once. float64 "
                "scores; the DRO part is float64 by promotion with ps.", **COMMON))

register(Case(
    name="dllm2rec.loss_composition", component="loss_composition", title="Loss composition bce + alpha*DRO + lam*RD",
    ref_lines=["main.py:407-431", "main.py:486"], reimpl_symbol="reimpl/dllm2rec/losses.py:compose_loss",
    dtype="float64", run_reference=run_reference_compose, run_reimpl=run_reimpl_compose,
    deviations=["DLLM2REC-RD-NEG-TERM", "DLLM2REC-RD-DRO-BROADCAST", "DLLM2REC-DRO-OVERFLOW"],
    description="Total loss for (alpha, lam) in " + str(SETTINGS) + ".", **COMMON))


# ---- float32 scores, with the gradient ------------------------------------------------------------

def _f32_outputs(loss_fn, inputs: dict) -> dict:
    """Loss and d loss / d scores for float32 scores (the students' dtype); the scores are cast from the
    float64 inputs, so they are the same bits on every machine."""
    out = {}
    for a in (1.0, 0.0):
        o = torch.as_tensor(inputs["model_output"]).float().requires_grad_(True)
        loss = loss_fn(o, a)
        loss.backward()
        out[f"loss_all_rd.alpha{a}"] = loss.detach().numpy()
        out[f"grad.alpha{a}"] = o.grad.numpy()
    return out


def run_reference_loss_f32(inputs: dict) -> dict:
    r = C.ref()
    return _f32_outputs(lambda o, a: r.ranking_distill(
        args=r.default_args(batch_size=o.size(0), alpha=a, lam=0.8, candidate_topk=inputs["K"]),
        device=torch.device("cpu"), model_output=o, target_neg=torch.as_tensor(inputs["target_neg"]),
        ps=C.ref_ps(r, inputs), sample=pd.Index(inputs["sample"]),
        all_candidate=torch.LongTensor(inputs["all_candidate"]),
        llm_confidence=torch.tensor(inputs["llm_confidence"], dtype=torch.float),
        loss_all=torch.tensor(0.0))["loss_all_rd"], inputs)


def run_reimpl_loss_f32(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.losses import rd_loss
    from reimpl.dllm2rec.weights import rd_weights

    idx, K = torch.as_tensor(inputs["sample"]), inputs["K"]
    cand = torch.as_tensor(inputs["all_candidate"])[idx][:, :K]
    conf = torch.as_tensor(inputs["llm_confidence"]).float()[idx][:, :K]
    neg, ps = torch.as_tensor(inputs["target_neg"]), C.ps_tensor(inputs)
    return _f32_outputs(lambda o, a: rd_loss(o, cand, neg, rd_weights(o, cand, conf).weight, ps, a, 1.0, mode),
                        inputs)


register(Case(
    name="dllm2rec.rd_loss_f32", component="ranking_distillation",
    title="Ranking-distillation loss and its gradient on float32 scores",
    ref_lines=["main.py:461-485"], reimpl_symbol="reimpl/dllm2rec/losses.py:rd_loss", dtype="float32",
    run_reference=run_reference_loss_f32, run_reimpl=run_reimpl_loss_f32,
    deviations=["DLLM2REC-RD-NEG-TERM", "DLLM2REC-RD-DRO-BROADCAST", "DLLM2REC-FIXED-OP-ORDER"],
    description="The students' dtype. faithful builds the reference's graph candidate by candidate ([B, 1] "
                "means, o*o*ps rebuilt per DRO term), which a [B, K] column mean does not reproduce in "
                "float32; the gradient with respect to the scores is compared too.", **COMMON))
