"""Shared helpers of the DLLM2Rec parity cases (registers no case).

Inputs are built here from seeded numpy draws only; the reference side runs through
``parity.refs.dllm2rec()`` (the loader of ``parity/shims/dllm2rec.py``), the reimpl side through
``reimpl.models`` / ``reimpl.dllm2rec``.
"""

from __future__ import annotations

import numpy as np
import torch

MODELS = ("GRU", "Caser", "SASRec")
DIMS = dict(item_num=50, state_size=10, hidden=64, d_llm=4096)  # 64/4096: hard-coded by the reference


def ref():
    from parity.refs import dllm2rec

    return dllm2rec()


def sequences(rs: np.random.Generator, n: int, item_num: int, L: int, zero_len: bool = False):
    """Right-padded histories ``[n, L]`` (padding id ``item_num``), lengths ``[n]``, targets ``[n]``."""
    lens = rs.integers(1, L + 1, size=n)
    lens[0] = L
    if n > 1:
        lens[1] = 1
    if zero_len and n > 2:
        lens[2] = 0
    seq = rs.integers(0, item_num, size=(n, L))
    seq[np.arange(L)[None, :] >= lens[:, None]] = item_num
    return seq.astype(np.int64), lens.astype(np.int64), rs.integers(0, item_num, size=n).astype(np.int64)


def param_spec(name: str, dims=DIMS) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a student's state dict (read off a reimpl model: structure only, no values)."""
    m = build_reimpl(name, dims, "faithful")
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def random_params(rs: np.random.Generator, name: str, dims=DIMS) -> dict[str, np.ndarray]:
    """Seeded random values for every tensor of the student (LayerNorm weights around 1)."""
    out = {}
    for k, shape in param_spec(name, dims):
        scale = 0.05 if "fc_4096_64.weight" in k else 0.2
        v = rs.standard_normal(shape) * scale
        if ("ln_" in k or "layer_norm" in k) and k.endswith("weight"):
            v = v + 1.0
        out[f"p.{name}.{k}"] = v.astype(np.float64)
    return out


def state_dict_from(inputs: dict, name: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    pre = f"p.{name}."
    return {k[len(pre):]: torch.tensor(np.asarray(v), dtype=dtype) for k, v in inputs.items()
            if k.startswith(pre)}


def build_ref(r, name: str, dims=DIMS, dropout: float = 0.1):
    if name == "GRU":
        return r.GRU(dims["hidden"], dims["item_num"], dims["state_size"])
    if name == "Caser":
        return r.Caser(dims["hidden"], dims["item_num"], dims["state_size"], 16, "[2,3,4]", dropout)
    return r.SASRec(dims["hidden"], dims["item_num"], dims["state_size"], dropout, torch.device("cpu"))


def build_reimpl(name: str, dims=DIMS, mode: str = "faithful", dropout: float = 0.1, ed_weight=0.2):
    from reimpl.models import GRU, Caser, SASRec

    kw = dict(d_llm=dims["d_llm"], d_proj=64 if mode == "faithful" else dims["hidden"],
              ed_weight=ed_weight, mode=mode)
    if name == "GRU":
        return GRU(dims["hidden"], dims["item_num"], dims["state_size"], **kw)
    if name == "Caser":
        return Caser(dims["hidden"], dims["item_num"], dims["state_size"], 16, (2, 3, 4), dropout, **kw)
    return SASRec(dims["hidden"], dims["item_num"], dims["state_size"], dropout, **kw)


def len_arg(name: str, lens: np.ndarray):
    """What the reference's training loop passes as len_states: a LongTensor for SASRec, else a list."""
    return torch.as_tensor(lens) if name == "SASRec" else [int(x) for x in lens]


def flat_params(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1).double() for n, p in model.named_parameters()
                      if not n.startswith(skip)]).numpy()


def param_digests(model: torch.nn.Module, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """{name: sha256 of the parameter's bytes (native dtype)}: an exact, compact check for tensors that
    must be bit-identical (initialization), kept small in the golden files."""
    import hashlib

    return {n: hashlib.sha256(p.detach().contiguous().numpy().tobytes()).hexdigest()
            for n, p in model.named_parameters() if names is None or n.startswith(names)}


def structure(model: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def loss_batch(seed: int, B: int = 9, K: int = 10, n_train: int = 40, scale: float = 3.0,
               ties: bool = True) -> dict:
    """A scored batch: histories, targets, scores ``[B, I]`` float64, teacher rows for ``n_train`` train
    rows (candidates ``[n_train, K+2]``, confidences), the batch's row ids ``sample`` ``[B]``, propensity
    scores from seeded train targets, and one fixed negative per row."""
    rs = np.random.default_rng(seed)
    I, L = DIMS["item_num"], DIMS["state_size"]
    seq, lens, target = sequences(rs, B, I, L)
    scores = rs.standard_normal((B, I)) * scale
    if ties:  # equal scores inside and at the border of the student's top-K
        scores[0, :12] = scores[0, 0]
        scores[1] = np.round(scores[1])
    cand = np.stack([rs.permutation(I)[:K + 2] for _ in range(n_train)]).astype(np.int64)
    conf = (rs.random((n_train, K + 2)) * 5).astype(np.float32)
    return {"seq": seq, "len_seq": lens, "target": target, "model_output": scores,
            "all_candidate": cand, "llm_confidence": conf,
            "sample": rs.choice(n_train, B, replace=False).astype(np.int64),
            "train_next": rs.integers(0, I, size=200).astype(np.int64),
            "target_neg": rs.integers(0, I, size=(B, 1)).astype(np.int64),
            "item_num": I, "K": K}


def ps_tensor(inputs: dict) -> torch.Tensor:
    from reimpl.dllm2rec.losses import propensity_scores

    return torch.tensor(propensity_scores(inputs["train_next"], inputs["item_num"]))


def ref_ps(r, inputs: dict) -> torch.Tensor:
    import pandas as pd

    with r.globals(item_num=inputs["item_num"]):
        return torch.tensor(r.calcu_propensity_score(pd.DataFrame({"next": inputs["train_next"]})))
