"""Parity: the frozen SASRec the iLoRA teacher reads item/user embeddings from.

Reference: recommender/A_SASRec_final_bce_llm.py:147-222 (SASRec: forward, cacul_h, cacu_x) and
SASRecModules_ori.py:7-94, loaded through ``parity.refs.ilora()``; reimpl: reimpl/ilora/sasrec.py.

* ``ilora.sasrec_lastfm``: the shipped ``rec_model/lastfm.pt`` (read by the reference's own unpickling
  and by reimpl's restricted unpickler), cast to float64; eval and train mode (dropout, same seed).
* ``ilora.sasrec_random``: a randomly initialised reference SASRec with 2 heads and a short state
  size (weights travel in the inputs), eval and train mode.
* ``ilora.sasrec_user_state_train``: the router's input as MInterface computes it while Lightning 1.x
  holds the module in train mode (ILORA-REC-TRAIN-MODE).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.case import Case, register
from reimpl.paths import SHARED

SEED = 2024


def _ckpt() -> Path:
    shared = SHARED
    return shared / "data" / "ilora" / "rec_model" / "lastfm.pt"


def _states(rng: np.random.Generator, b: int, t: int, item_num: int, lens: list[int]) -> np.ndarray:
    states = rng.integers(0, item_num, size=(b, t))
    for i, n in enumerate(lens):
        states[i, n:] = item_num  # right padding with the padding id, as the LastFM frames
    return states.astype(np.int64)


def _run(model, inputs: dict, train: bool, call) -> dict:
    import torch

    model.train(train)
    states = torch.as_tensor(inputs["states"])
    lens = torch.as_tensor(inputs["len_states"])
    out = {}
    with torch.no_grad():
        torch.manual_seed(inputs["torch_seed"])
        out["user_state"] = call(model, "cacul_h", states, lens)
        torch.manual_seed(inputs["torch_seed"])
        out["scores"] = call(model, "forward", states, lens)
        out["item_emb"] = call(model, "cacu_x", states)
    return out


def _ref_call(model, name, *args):
    return getattr(model, name)(*args)


# ------------------------------------------------------------------------------------------ lastfm.pt
def make_inputs_lastfm(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lens = [1, 3, 10, 7, 2, 10]
    return {"states": _states(rng, len(lens), 10, 4606, lens), "len_states": np.array(lens, dtype=np.int64),
            "torch_seed": seed}


def _ref_lastfm():
    import parity.refs

    return parity.refs.ilora().load_rec_model(_ckpt()).double()


def run_reference_lastfm(inputs: dict) -> dict:
    m = _ref_lastfm()
    out = {f"eval.{k}": v for k, v in _run(m, inputs, False, _ref_call).items()}
    out.update({f"train.{k}": v for k, v in _run(m, inputs, True, _ref_call).items()})
    return out


def run_reimpl_lastfm(inputs: dict, mode: str) -> dict:
    from reimpl.ilora.sasrec import load_checkpoint

    m = load_checkpoint(_ckpt(), mode=mode).double()
    out = {f"eval.{k}": v for k, v in _run(m, inputs, False, _ref_call).items()}
    out.update({f"train.{k}": v for k, v in _run(m, inputs, True, _ref_call).items()})
    return out


register(Case(
    name="ilora.sasrec_lastfm", system="iLoRA", component="sasrec",
    title="SASRec teacher encoder on rec_model/lastfm.pt: cacul_h, forward scores, cacu_x (eval + train)",
    ref_lines=["recommender/A_SASRec_final_bce_llm.py:147-222", "SASRecModules_ori.py:7-94",
               "model/model_interface.py:406-429"],
    reimpl_symbol="reimpl/ilora/sasrec.py:SASRec",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_lastfm, run_reference=run_reference_lastfm, run_reimpl=run_reimpl_lastfm,
    needs=["shared"],
    description="The reference checkpoint is unpickled by the reference classes (loader) and, separately, "
                "by reimpl's restricted unpickler into reimpl.ilora.sasrec.SASRec; both cast to float64. "
                "Rows have lengths 1..10 with right padding (id 4606). Train-mode outputs use the same "
                "torch seed before each call: reimpl draws its dropout masks in the reference's order and "
                "memory layout, so they match exactly.",
))


# ---------------------------------------------------------------------------------- random, 2 heads
_RAND = {"hidden_size": 16, "item_num": 40, "state_size": 7, "dropout": 0.3, "num_heads": 2}


def make_inputs_random(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lens = [1, 4, 7, 5, 1]
    inp = {"states": _states(rng, len(lens), _RAND["state_size"], _RAND["item_num"], lens),
           "len_states": np.array(lens, dtype=np.int64), "torch_seed": seed, **_RAND}
    h, i, t = _RAND["hidden_size"], _RAND["item_num"], _RAND["state_size"]
    shapes = {"item_embeddings.weight": (i + 1, h), "positional_embeddings.weight": (t, h),
              "s_fc.weight": (i, h), "s_fc.bias": (i,),
              "feed_forward.w_1.weight": (h, h, 1), "feed_forward.w_1.bias": (h,),
              "feed_forward.w_2.weight": (h, h, 1), "feed_forward.w_2.bias": (h,)}
    for ln in ("ln_1", "ln_2", "ln_3", "feed_forward.layer_norm"):
        shapes[f"{ln}.weight"], shapes[f"{ln}.bias"] = (h,), (h,)
    for p in ("q", "k", "v"):
        shapes[f"mh_attn.linear_{p}.weight"], shapes[f"mh_attn.linear_{p}.bias"] = (h, h), (h,)
    for k, s in shapes.items():
        w = rng.normal(0.0, 0.4, size=s)
        if k.endswith("weight") and k.startswith(("ln_", "feed_forward.layer_norm")):
            w = 1.0 + 0.1 * w
        inp[f"w.{k}"] = w
    return inp


def _state_dict(inputs: dict) -> dict:
    import torch

    return {k[2:]: torch.as_tensor(v) for k, v in inputs.items() if k.startswith("w.")}


def run_reference_random(inputs: dict) -> dict:
    import parity.refs

    ns = parity.refs.ilora()
    m = ns.SASRec(inputs["hidden_size"], inputs["item_num"], inputs["state_size"], inputs["dropout"],
                  "cpu", num_heads=inputs["num_heads"]).double()
    m.load_state_dict(_state_dict(inputs))
    out = {f"eval.{k}": v for k, v in _run(m, inputs, False, _ref_call).items()}
    out.update({f"train.{k}": v for k, v in _run(m, inputs, True, _ref_call).items()})
    return out


def run_reimpl_random(inputs: dict, mode: str) -> dict:
    from reimpl.ilora.sasrec import SASRec, SASRecConfig

    cfg = SASRecConfig(**{k: inputs[k] for k in _RAND}, mode=mode)
    m = SASRec(cfg).double()
    m.load_state_dict(_state_dict(inputs))
    out = {f"eval.{k}": v for k, v in _run(m, inputs, False, _ref_call).items()}
    out.update({f"train.{k}": v for k, v in _run(m, inputs, True, _ref_call).items()})
    return out


register(Case(
    name="ilora.sasrec_random", system="iLoRA", component="sasrec",
    title="SASRec with 2 heads and random weights: cacul_h, forward, cacu_x (eval + train, dropout 0.3)",
    ref_lines=["recommender/A_SASRec_final_bce_llm.py:147-222", "SASRecModules_ori.py:26-94"],
    reimpl_symbol="reimpl/ilora/sasrec.py:SASRec",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_random, run_reference=run_reference_random, run_reimpl=run_reimpl_random,
    description="Exercises the multi-head split/merge (heads stacked on the batch axis), the key/query "
                "masks and the sqrt(hidden) scaling with num_heads=2, which no shipped checkpoint uses; "
                "weights are seeded normal draws carried in the inputs.",
))


# ------------------------------------------------------------------------- user state in train mode
def make_inputs_user(seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    lens = [3, 10, 6, 4]
    return {"seq": _states(rng, len(lens), 10, 4606, lens), "len_seq": np.array(lens, dtype=np.int64),
            "torch_seed": seed}


def run_reference_user(inputs: dict) -> dict:
    import torch

    import parity.refs

    ns = parity.refs.ilora()
    m = _ref_lastfm()
    m.train()  # what Lightning 1.x's trainer.fit does to the whole MInterface (main.py:57)
    # MInterface.encode_users (model_interface.py:422-429) through the reference class, projector-free:
    # the projected value is discarded there, the un-projected cacul_h state is returned.
    holder = type("H", (), {})()
    holder.hparams = type("P", (), {"rec_embed": "SASRec"})()
    holder.rec_model = m
    holder.projector = torch.nn.Identity()
    with torch.no_grad():
        torch.manual_seed(inputs["torch_seed"])
        user = ns.MInterface.encode_users(holder, torch.as_tensor(inputs["seq"]), torch.as_tensor(inputs["len_seq"]))
    return {"user_embeds": user}


def run_reimpl_user(inputs: dict, mode: str) -> dict:
    import torch

    from reimpl.ilora.projector import encode_users
    from reimpl.ilora.sasrec import load_checkpoint

    m = load_checkpoint(_ckpt(), mode=mode).double()
    m.train()
    with torch.no_grad():
        torch.manual_seed(inputs["torch_seed"])
        user = encode_users(m, torch.as_tensor(inputs["seq"]), torch.as_tensor(inputs["len_seq"]), mode)
    return {"user_embeds": user}


register(Case(
    name="ilora.sasrec_user_state_train", system="iLoRA", component="sasrec",
    title="encode_users while the LightningModule is in train mode (SASRec dropout on the router input)",
    ref_lines=["model/model_interface.py:422-429", "model/model_interface.py:409",
               "recommender/A_SASRec_final_bce_llm.py:202-217"],
    reimpl_symbol="reimpl/ilora/projector.py:encode_users",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_user, run_reference=run_reference_user, run_reimpl=run_reimpl_user,
    deviations=["ILORA-REC-TRAIN-MODE"], needs=["shared"],
    description="The reference's MInterface.encode_users is called unbound on a holder with the reference "
                "SASRec (train mode, as under Lightning 1.x) and an identity projector (its output is "
                "discarded by the reference). faithful reproduces the dropout draws; fixed evaluates "
                "the frozen encoder without dropout.",
))
