"""Parity: DLLM2Rec students (GRU, Caser, SASRec) forward, state-dict structure and initialization.

Each side builds its model under ``torch.manual_seed(seed)`` (initial weights compared), then loads the
same seeded random state dict and scores the same batch in eval and train mode (dropout draws from a
re-seeded global RNG on both sides). ``students_forward`` runs without teacher embeddings in float64;
``students_forward_ed`` injects teacher embeddings, which the reference forces to float32 (its lookup
buffer is ``torch.zeros`` float32 and ``fc_4096_64`` must match that dtype).
"""

from __future__ import annotations

import numpy as np
import torch

from parity.case import Case, register
from parity.cases import dllm2rec_common as C

B = 6


def make_inputs(seed: int) -> dict:
    rs = np.random.default_rng(seed)
    seq, lens, _ = C.sequences(rs, B, C.DIMS["item_num"], C.DIMS["state_size"])
    inp = {"seq": seq, "len_seq": lens, "init_seed": seed, "dropout_seed": seed + 1,
           "llm_table": (rs.standard_normal((C.DIMS["item_num"], C.DIMS["d_llm"]))).astype(np.float32)}
    for name in C.MODELS:
        inp.update(C.random_params(rs, name))
    return inp


def _run(inputs: dict, build, forward, dtype: torch.dtype, with_llm: bool) -> dict:
    out = {}
    seq = torch.as_tensor(inputs["seq"])
    for name in C.MODELS:
        torch.manual_seed(inputs["init_seed"])
        model = build(name)
        # initialization must be bit-identical (same RNG order): compared as per-parameter sha256 digests
        out[f"{name}.init_digests"] = C.param_digests(model)
        out[f"{name}.state_dict"] = C.structure(model)
        model.load_state_dict(C.state_dict_from(inputs, name, dtype))
        model.to(dtype)
        llm = torch.as_tensor(inputs["llm_table"]) if with_llm else None
        for train in (False, True):
            model.train(train)
            torch.manual_seed(inputs["dropout_seed"])
            with torch.no_grad():
                y = forward(model, name, seq, inputs["len_seq"], llm)
            out[f"{name}.{'train' if train else 'eval'}"] = y.numpy()
    return out


def _ref_forward(r, args):
    def f(model, name, seq, lens, table):
        llm = None if table is None else r.llm_emb_lookup(device="cpu", seq=seq, llm_all_emb=table)["llm_emb"]
        with r.globals(args=args):
            return model.forward(seq, C.len_arg(name, lens), llm)
    return f


def _reimpl_forward(model, name, seq, lens, table):
    from reimpl.dllm2rec.injection import lookup_llm_emb

    llm = None if table is None else lookup_llm_emb(seq, table)
    return model(seq, torch.as_tensor(lens), llm)


def run_reference(inputs: dict, with_llm: bool = False, dtype=torch.float64) -> dict:
    r = C.ref()
    return _run(inputs, lambda n: C.build_ref(r, n), _ref_forward(r, r.default_args()), dtype, with_llm)


def run_reimpl(inputs: dict, mode: str, with_llm: bool = False, dtype=torch.float64) -> dict:
    return _run(inputs, lambda n: C.build_reimpl(n, mode=mode), _reimpl_forward, dtype, with_llm)


COMMON = dict(system="DLLM2Rec", make_inputs=make_inputs,
              ref_lines=["main.py:43-195", "main.py:395-401", "SASRecModules_ori.py:7-94",
                         "utility.py:10-15"],
              deviations=["DLLM2REC-CASER-SQUEEZE", "DLLM2REC-SASREC-SQUEEZE", "DLLM2REC-GRU-LAYERS",
                          "DLLM2REC-FC-4096-64"])

register(Case(
    name="dllm2rec.students_forward", component="students",
    title="Students forward (GRU, Caser, SASRec), no teacher embeddings",
    reimpl_symbol="reimpl/models/{gru,caser,sasrec}.py:GRU,Caser,SASRec", seed=2024, dtype="float64",
    run_reference=run_reference, run_reimpl=run_reimpl,
    description="Initial weights under one seed, state-dict names+shapes (deepdiff), and scores [B, I] "
                "in eval and train mode after loading the same state dict, float64.",
    **COMMON))

register(Case(
    name="dllm2rec.students_forward_ed", component="injection",
    title="Students forward with collaborative embedding injection",
    reimpl_symbol="reimpl/dllm2rec/injection.py:inject,lookup_llm_emb", seed=2025, dtype="float32",
    run_reference=lambda i: run_reference(i, True, torch.float32),
    run_reimpl=lambda i, m: run_reimpl(i, m, True, torch.float32),
    xplat_atol=5e-5,
    xplat_note="Measured drift of the reference between kernel sets (default/avx2/no-vector, "
               "parity/drift.json): max abs 2.9e-6 (Caser's float32 oneDNN convolutions); atol = 10x that, "
               "rounded up.",
    description="As students_forward with teacher embeddings [I, 4096] looked up and projected by "
                "fc_4096_64 (float32: the reference's lookup buffer is float32).",
    **COMMON))
