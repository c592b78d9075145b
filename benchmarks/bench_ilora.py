"""iLoRA benchmarks: embedding injection, MoE-LoRA linear forward, teacher forward (reference vs reimpl).

Reference side through ``parity.refs.ilora()`` (MInterface built by ``build_minterface`` around the tiny
random Llama of ``reimpl.llm.tiny``, train_lastfm.sh hparams, router 'share'; moelora ``Linear``);
reimpl side through ``reimpl.ilora.*``. Both sides get identical weights and batches, made with the
helpers of the parity cases (parity/cases/ilora_teacher_step.py): a LastFM batch of 8 rows made by the
reference's own dataset + collater, and every randomly initialised MInterface tensor drawn from a seed.
Those inputs are built once and cached under ``cache/bench/`` so that the reimpl process does not load
the reference (its peak RSS is then its own).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from reimpl.paths import ROOT

CACHE = ROOT / "cache" / "bench"
SEED = 2024
BATCH = 8                 # train_lastfm.sh --batch_size 8
# MoE-LoRA layer: SmolLM2-135M's up_proj shape (576 -> 1536), r 8, 4 experts, alpha 32, dropout 0.1
LIN = dict(b=BATCH, l=128, d_in=576, d_out=1536, r=8, e=4, alpha=32, dropout=0.1)


def teacher_inputs(batch: int = BATCH) -> dict:
    """Batch (reference layout) + random MInterface tensors, float32 (cached: identical on both sides)."""
    path = CACHE / f"ilora_teacher_b{batch}_s{SEED}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from parity.cases import ilora_teacher_step as T

    inputs = T.make_batch(SEED, batch_size=batch)
    inputs.update({f"w:{k}": v for k, v in T.random_tensors(SEED).items()})
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **inputs)
    tmp.replace(path)
    return inputs


def _weights(inputs: dict) -> dict:
    return {k[2:]: v for k, v in inputs.items() if k.startswith("w:")}


def _reference(train: bool, batch: int = BATCH):
    from parity.cases import ilora_teacher_step as T

    inputs = teacher_inputs(batch)
    _, m = T.build_reference(dtype=torch.float32)
    T.apply_tensors(m, _weights(inputs), key=lambda k: k)
    m.train(train)
    return m, T.reference_batch(inputs)


def _reimpl(train: bool, mode: str = "faithful", batch: int = BATCH):
    from parity.cases import ilora_teacher_step as T
    from reimpl.ilora.teacher import reference_key

    inputs = teacher_inputs(batch)
    t = T.build_reimpl_teacher(mode, dtype=torch.float32)
    T.apply_tensors(t, _weights(inputs), key=reference_key)
    t.train(train)
    return t, T.reimpl_batch(inputs)


# -------------------------------------------------------------------------------- wrap_emb (whole)
def ref_wrap_emb():
    """MInterface.wrap_emb (model_interface.py:436-466): token embeddings, 3 SASRec/projector item
    encodings, the user state, and the per-row placeholder loop. Eval mode, no grad."""
    m, batch = _reference(False)

    def run():
        with torch.no_grad():
            return m.wrap_emb(batch)
    return run


def reimpl_wrap_emb():
    t, batch = _reimpl(False)

    def run():
        with torch.no_grad():
            return t.wrap_emb(batch)
    return run


# ------------------------------------------------------------------------- injection only (no encoders)
def ref_inject(batch: int = BATCH):
    """The reference's wrap_emb with its encoders answered from precomputed tensors (patched on the
    instance, values computed by the reference's own encode_items/encode_users at setup): what is timed
    is the token-embedding lookup, the 3 placeholder tokenizations and the per-row injection loop."""
    m, batch = _reference(False, batch)
    with torch.no_grad():
        enc = {id(batch[k]): m.encode_items(batch[k]) for k in ("seq", "cans", "item_id")}
        user = m.encode_users(batch["seq"], batch["len_seq"])
    m.encode_items = lambda seq: enc[id(seq)]
    m.encode_users = lambda seq, len_seq: user

    def run():
        with torch.no_grad():
            return m.wrap_emb(batch)
    return run


def reimpl_inject(batch: int = BATCH):
    """reimpl: token-embedding lookup + ``reimpl.ilora.prompt.inject_item_embeds`` on the same
    precomputed item encodings."""
    from reimpl.ilora.projector import encode_items
    from reimpl.ilora.prompt import inject_item_embeds

    t, batch = _reimpl(False, batch=batch)
    emb = t.llama_model.get_input_embeddings()
    with torch.no_grad():
        his, cans, item = (encode_items(t.rec_model, t.projector, batch[k]) for k in ("seq", "cans", "item_id"))
    ids = batch["input_ids"]

    def run():
        with torch.no_grad():
            return inject_item_embeds(emb(ids), ids, t.ph_ids, his, cans, item, batch["len_seq"],
                                      batch["len_cans"], mode="faithful")
    return run


def ref_inject_b64():
    return ref_inject(64)


def reimpl_inject_b64():
    return reimpl_inject(64)


# ------------------------------------------------------------------------------ teacher forward
def ref_teacher_forward():
    """MInterface.forward (model_interface.py:37-58) + configure_loss, train mode, autograd on
    (no backward): labels, wrap_emb, router, the MoE-LoRA Llama, LM loss."""
    m, batch = _reference(True)
    torch.manual_seed(SEED)

    def run():
        return m.configure_loss(m(batch))
    return run


def reimpl_teacher_forward():
    t, batch = _reimpl(True)
    torch.manual_seed(SEED)

    def run():
        return t(batch).loss
    return run


# ------------------------------------------------------------------------------ MoE-LoRA linear
def _lin_value(name: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(*shape, generator=g) * 0.05


def _lin_x() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(LIN["b"], LIN["l"], LIN["d_in"], generator=g)
    gate = torch.softmax(torch.randn(LIN["b"], LIN["e"], generator=g), dim=-1)
    return x, gate


def _fill(layer, key) -> None:
    with torch.no_grad():
        for k, v in layer.state_dict().items():
            v.copy_(_lin_value(key(k), v.shape))


def ref_moe_lora():
    """moelora.py ``Linear`` forward (train mode: LoRA dropout on, autograd on), gate [B, 1, E] read
    from the list MoeLoraModel fills per call."""
    from parity.refs import ilora

    ns = ilora()
    gl: list = []
    layer = ns.MoeLoraLinear("default", LIN["d_in"], LIN["d_out"], r=LIN["r"], num_moe=LIN["e"], gating="Dense",
                             global_user_embeds=[], gate_weights=gl, lora_alpha=LIN["alpha"],
                             lora_dropout=LIN["dropout"], bias=False)
    _fill(layer, lambda k: k)
    layer.train()
    x, gate = _lin_x()
    gl.append(gate.unsqueeze(1))
    torch.manual_seed(SEED)

    def run():
        return layer(x)
    return run


def reimpl_moe_lora():
    from reimpl.ilora.moe_lora import MoeLoraConfig, MoeLoraLinear, to_reference_key

    cfg = MoeLoraConfig(r=LIN["r"], num_moe=LIN["e"], lora_alpha=LIN["alpha"], lora_dropout=LIN["dropout"],
                        mode="faithful")
    layer = MoeLoraLinear(torch.nn.Linear(LIN["d_in"], LIN["d_out"], bias=False), cfg)
    _fill(layer, to_reference_key)
    layer.train()
    x, gate = _lin_x()
    torch.manual_seed(SEED)

    def run():
        return layer(x, gate)
    return run
