"""iLoRA teacher step: MInterface.forward (loss) + backward (gradients of every trainable tensor).

Both sides get identical weights through the inputs: the tiny random Llama is
``reimpl.llm.tiny.tiny_llm_dir(seed=llm_seed)`` (a pure function of the seed and the LastFM titles),
the SASRec is ``rec_model/lastfm.pt``, and every tensor MInterface initialises at random (LoRA A/B,
dead gating layers, router incl. BatchNorm buffers, projector, the 5 embedding / lm_head rows of the
added tokens) is drawn in ``make_inputs`` and written into both models. The batch is made by the
reference's own LastFM dataset + collater (parity.shims.ilora.build_lastfm_batch).

The helpers here are shared with parity/cases/ilora_trainable.py.
"""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache

import numpy as np

from parity.case import Case, register

LLM_SEED = 0
BATCH = 3


@lru_cache(maxsize=2)
def tiny_dir(seed: int = LLM_SEED):
    from reimpl.llm.tiny import tiny_llm_dir

    return tiny_llm_dir(seed=seed)


def rec_checkpoint():
    from reimpl.paths import SHARED

    p = SHARED / "data" / "ilora" / "rec_model" / "lastfm.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: LastFM SASRec checkpoint (../shared) not found")
    return p


def build_reimpl_teacher(mode: str, dtype=None):
    """The reimpl teacher around the tiny Llama (weights = tiny_dir, before random tensors are set)."""
    import warnings

    import torch
    from transformers import LlamaForCausalLM

    from reimpl.ilora.sasrec import load_checkpoint
    from reimpl.ilora.teacher import TeacherConfig, build_teacher
    from reimpl.llm.tiny import load_tiny_tokenizer

    d = tiny_dir()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        llm = LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        t = build_teacher(llm, load_tiny_tokenizer(d), load_checkpoint(rec_checkpoint(), mode=mode),
                          TeacherConfig(mode=mode))
    if dtype is not None:
        t.to(dtype)
    return t


def build_reference(dtype=None):
    """The reference MInterface (train_lastfm.sh hparams) around the same tiny Llama."""
    import warnings

    from parity.refs import ilora

    ref = ilora()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return ref, ref.build_minterface(tiny_dir(), dtype=dtype)


def random_tensors(seed: int) -> dict[str, np.ndarray]:
    """Reference-named values for every randomly initialised MInterface tensor (float64)."""
    from reimpl.ilora.teacher import reference_key

    t = build_reimpl_teacher("faithful")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for k, v in t.state_dict().items():
        rk = reference_key(k)
        shape = tuple(v.shape)
        if "lora_B" in rk or "lora_A" in rk or ".gating." in rk:
            out[rk] = rng.standard_normal(shape) * 0.1
        elif rk.startswith("projector."):
            out[rk] = rng.standard_normal(shape) * (0.5 / np.sqrt(shape[-1]))
        elif rk.startswith("router."):
            if rk.endswith("num_batches_tracked"):
                continue
            if rk.endswith("running_var"):
                out[rk] = 0.5 + rng.random(shape)
            elif "bn" in rk and rk.endswith("weight"):
                out[rk] = 1.0 + 0.1 * rng.standard_normal(shape)
            else:
                out[rk] = rng.standard_normal(shape) * 0.2
        elif rk.endswith("embed_tokens.weight") or rk.endswith("lm_head.weight"):
            # only the rows of the 5 added tokens are random (resize_token_embeddings)
            out[rk + "#new_rows"] = rng.standard_normal((5, shape[1])) * 0.02
    return out


def apply_tensors(module, tensors: dict[str, np.ndarray], key) -> None:
    """Write ``tensors`` (reference names) into ``module``'s state (``key`` maps own -> reference name)."""
    import torch

    sd = module.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            rk = key(k)
            if rk in tensors:
                v.copy_(torch.as_tensor(tensors[rk], dtype=v.dtype))
            elif rk + "#new_rows" in tensors:
                rows = tensors[rk + "#new_rows"]
                v[-rows.shape[0]:].copy_(torch.as_tensor(rows, dtype=v.dtype))


def make_batch(seed: int, batch_size: int = BATCH, stage: str = "train") -> dict:
    """A LastFM batch from the reference's dataset + collater, as numpy arrays (reference layout)."""
    import warnings

    from parity.refs import ilora
    from reimpl.llm.tiny import add_ilora_tokens, load_tiny_tokenizer

    ref = ilora()
    tok = add_ilora_tokens(load_tiny_tokenizer(tiny_dir()))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        b = ref.build_lastfm_batch(tok, stage=stage, batch_size=batch_size, seed=seed, mode="emb",
                                   indices=[seed % 97 + 13 * i for i in range(batch_size)])
    tk = b["tokens"]
    return {"input_ids": tk["input_ids"].numpy(), "attention_mask": tk["attention_mask"].numpy(),
            "token_type_ids_ref": tk["token_type_ids"].numpy(), "seq": b["seq"].numpy(),
            "cans": b["cans"].numpy(), "len_seq": b["len_seq"].numpy(), "len_cans": b["len_cans"].numpy(),
            "item_id": b["item_id"].numpy()}


def reference_batch(inputs: dict):
    """Rebuild the reference's batch dict (tokens as a BatchEncoding) from the inputs."""
    import torch
    from transformers import BatchEncoding

    tokens = BatchEncoding({"input_ids": torch.as_tensor(inputs["input_ids"]),
                            "attention_mask": torch.as_tensor(inputs["attention_mask"]),
                            "token_type_ids": torch.as_tensor(inputs["token_type_ids_ref"])})
    b = {k: torch.as_tensor(inputs[k]) for k in ("seq", "cans", "len_seq", "len_cans", "item_id")}
    b["tokens"] = tokens
    b["flag"] = False
    return b


def reimpl_batch(inputs: dict) -> dict:
    """The teacher's batch: token types aligned (the reference layout's leading column dropped)."""
    import torch

    tt = np.asarray(inputs["token_type_ids_ref"])
    ids = np.asarray(inputs["input_ids"])
    if tt.shape[1] != ids.shape[1] + 1:
        raise ValueError(f"token_type_ids_ref must be [B, L+1] (reference layout), got {tt.shape} vs ids {ids.shape}")
    b = {k: torch.as_tensor(inputs[k]) for k in ("input_ids", "attention_mask", "seq", "cans", "len_seq",
                                                  "len_cans", "item_id")}
    b["token_type_ids"] = torch.as_tensor(tt[:, 1:])
    return b


def _dtype(inputs):
    import torch

    return getattr(torch, inputs.get("dtype", "float64"))


def make_inputs(seed: int) -> dict:
    inputs = make_batch(seed)
    inputs.update({f"w:{k}": v for k, v in random_tensors(seed).items()})
    inputs["dtype"] = "float64"
    inputs["forward_seed"] = seed + 1
    return inputs


def _weights(inputs):
    return {k[2:]: v for k, v in inputs.items() if k.startswith("w:")}


def _grads(named, key) -> dict:
    return {f"grad:{key(n)}": p.grad.detach().cpu().numpy() for n, p in named if p.grad is not None}


def run_reference(inputs: dict) -> dict:
    import torch

    _, m = build_reference(dtype=_dtype(inputs))
    apply_tensors(m, _weights(inputs), key=lambda k: k)
    m.train()  # Lightning 1.x fit: the whole module in train mode (rec_model included)
    torch.manual_seed(int(inputs["forward_seed"]))
    out = m(reference_batch(inputs))
    loss = m.configure_loss(out)
    loss.backward()
    res = {"loss": loss.detach().numpy()}
    res.update(_grads(m.named_parameters(), key=lambda k: k))
    return res


def run_reimpl(inputs: dict, mode: str) -> dict:
    import torch

    from reimpl.ilora.teacher import reference_key

    t = build_reimpl_teacher(mode, dtype=_dtype(inputs))
    apply_tensors(t, _weights(inputs), key=reference_key)
    t.train()
    torch.manual_seed(int(inputs["forward_seed"]))
    out = t(reimpl_batch(inputs))
    out.loss.backward()
    res = {"loss": out.loss.detach().numpy()}
    res.update(_grads(t.named_parameters(), key=reference_key))
    return res


register(Case(
    name="ilora.teacher_step",
    system="iLoRA",
    component="teacher",
    title="Teacher training step: LM loss and gradients of all trainable tensors",
    ref_lines=["model/model_interface.py:37-58", "model/model_interface.py:436-466",
               "model/model_interface.py:289-294", "model/peft/tuners/moelora.py:756-799"],
    reimpl_symbol="reimpl/ilora/teacher.py:ILoRATeacher.forward",
    seed=2024, dtype="float64",
    xplat_atol=1e-6,
    xplat_note="Measured drift of the reference between kernel sets (parity/drift.json): max abs 6.4e-8 "
               "(router gradients through float32 RMSNorm/loss and BatchNorm); atol = 10x that, rounded up.",
    make_inputs=make_inputs, run_reference=run_reference, run_reimpl=run_reimpl,
    deviations=["ILORA-ANSWER-BOS-LABEL", "ILORA-REC-TRAIN-MODE"],
    needs=["shared"],
    description="Tiny random Llama (hidden 64, 2 layers) + train_lastfm.sh hparams (MoE-LoRA r 8 / 4 experts / "
                "alpha 32 / dropout 0.1, shared router, MLP projector, LastFM SASRec). Whole module in train mode "
                "(as under the Lightning 1.x fit the reference targets), torch seeded before the forward so the "
                "LoRA and SASRec dropout masks are drawn identically. Outputs: the loss and the gradient of "
                "every tensor that receives one (the 14 dead gating layers receive none on either side).",
))
