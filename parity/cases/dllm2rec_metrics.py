"""Parity: evaluation metrics. ``dllm2rec.metrics``: ``calculate_hit`` (utility.py:75-82) on the
reference's argsort vs reimpl ranks -> HR/NDCG@{1,5,10,20}; ``dllm2rec.evaluate``: the whole
``myevaluate`` (main.py:198-262: CSV reading, teacher-embedding lookup, one forward, metrics) vs
``reimpl.dllm2rec.evaluate.evaluate`` on a tiny SASRec with injected embeddings."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from parity.case import Case, register
from parity.cases import dllm2rec_common as C

TOPK = [1, 5, 10, 20]


def make_inputs_metrics(seed: int) -> dict:
    rs = np.random.default_rng(seed)
    N, I = 64, C.DIMS["item_num"]
    pred = np.round(rs.standard_normal((N, I)), 1)  # many ties
    pred[:4] = 0.0  # all-tied rows
    targets = rs.integers(0, I, size=N).astype(np.float64)
    targets[-1] = I + 3.0  # a target that is not an item: never hit
    return {"prediction": pred.astype(np.float32), "targets": targets}


def run_reference_metrics(inputs: dict) -> dict:
    r = C.ref()
    sorted_list = torch.argsort(torch.as_tensor(inputs["prediction"])).cpu().numpy()
    hit, ndcg = [0, 0, 0, 0], [0, 0, 0, 0]
    r.calculate_hit(sorted_list=sorted_list, topk=TOPK, true_items=list(inputs["targets"]),
                    hit_purchase=hit, ndcg_purchase=ndcg)
    n = len(inputs["targets"])
    return {"hr": np.array([h / n for h in hit]),
            "ndcg": np.array([float(np.asarray(x).reshape(-1)[0]) / n for x in ndcg])}


def run_reimpl_metrics(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.evaluate import metrics_from_ranks, target_ranks

    ranks = target_ranks(torch.as_tensor(inputs["prediction"]), inputs["targets"], mode)
    m = metrics_from_ranks(ranks, TOPK)
    return {"hr": np.array(m["hr"]), "ndcg": np.array(m["ndcg"])}


def make_inputs_eval(seed: int) -> dict:
    rs = np.random.default_rng(seed)
    seq, lens, target = C.sequences(rs, 37, C.DIMS["item_num"], C.DIMS["state_size"])
    inp = {"seq": seq, "len_seq": lens, "next": target.astype(np.float64),
           "llm_table": rs.standard_normal((C.DIMS["item_num"], C.DIMS["d_llm"])).astype(np.float32),
           "dropout_seed": seed + 3}
    inp.update(C.random_params(rs, "SASRec"))
    return inp


def _write_csv(inputs: dict, path: Path) -> None:
    lines = ["seq,len_seq,next"]
    for s, l, t in zip(inputs["seq"], inputs["len_seq"], inputs["next"]):
        lines.append(f"\"[{', '.join(str(int(x)) for x in s)}]\",{int(l)},{float(t)}")
    path.write_text("\n".join(lines) + "\n")


def run_reference_eval(inputs: dict) -> dict:
    r = C.ref()
    model = C.build_ref(r, "SASRec")
    model.load_state_dict(C.state_dict_from(inputs, "SASRec", torch.float32))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "test_data.csv"
        _write_csv(inputs, p)
        torch.manual_seed(inputs["dropout_seed"])
        with r.globals(args=r.default_args(), topk=TOPK), contextlib.redirect_stdout(io.StringIO()):
            _, hr, ndcg = r.myevaluate(model, str(p), torch.device("cpu"),
                                       torch.as_tensor(inputs["llm_table"]))
    return {"hr": np.array(hr, dtype=np.float64), "ndcg": np.array(ndcg, dtype=np.float64)}


def run_reimpl_eval(inputs: dict, mode: str) -> dict:
    from reimpl.dllm2rec.evaluate import evaluate, read_split

    model = C.build_reimpl("SASRec", mode=mode)
    model.load_state_dict(C.state_dict_from(inputs, "SASRec", torch.float32))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "test_data.csv"
        _write_csv(inputs, p)
        split = read_split(p, C.DIMS["state_size"], C.DIMS["item_num"])
    torch.manual_seed(inputs["dropout_seed"])
    m = evaluate(model, split, torch.as_tensor(inputs["llm_table"]), batch_size=len(split.targets),
                 topk=TOPK, mode=mode)
    return {"hr": np.array(m["hr"]), "ndcg": np.array(m["ndcg"])}


register(Case(
    name="dllm2rec.metrics", system="DLLM2Rec", component="evaluation",
    title="HR/NDCG@{1,5,10,20} from ascending argsort (ties included)",
    ref_lines=["utility.py:75-82", "main.py:231-250"],
    reimpl_symbol="reimpl/dllm2rec/evaluate.py:target_ranks,metrics_from_ranks", seed=2024,
    dtype="float64", make_inputs=make_inputs_metrics, run_reference=run_reference_metrics,
    run_reimpl=run_reimpl_metrics, deviations=["DLLM2REC-EVAL-TIES"],
    description="Scores rounded to 0.1 (and all-tied rows) so that tie order matters; one target id "
                "outside the items."))

register(Case(
    name="dllm2rec.evaluate", system="DLLM2Rec", component="evaluation",
    title="myevaluate end to end (CSV, embedding lookup, train-mode forward, metrics)",
    ref_lines=["main.py:198-262", "utility.py:75-82"],
    reimpl_symbol="reimpl/dllm2rec/evaluate.py:evaluate", seed=2024, dtype="float64",
    make_inputs=make_inputs_eval, run_reference=run_reference_eval, run_reimpl=run_reimpl_eval,
    deviations=["DLLM2REC-EVAL-DROPOUT", "DLLM2REC-EVAL-TIES"],
    description="SASRec (float32, teacher embeddings injected) scored on a 37-row split in one forward "
                "with the same seeded dropout draws; metrics are float64 means."))
