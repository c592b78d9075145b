"""Parity: prompt/embedding injection of the iLoRA teacher (MInterface.wrap_emb + encoders + projector).

Reference (through ``parity.refs.ilora()``): ``MInterface.wrap_emb`` (model/model_interface.py:436-466),
``encode_items`` / ``encode_users`` (:414-429), ``MlpProjector`` (model/mlp_projector.py:3-14), the
router call (:47-48), on LastFM batches made by the reference's own dataset and collater
(data/lastfm_data.py, data/data_interface.py:30-113, prompt/artist.txt) around a tiny random Llama and
tokenizer (reimpl/llm/tiny.py) and the shipped rec_model/lastfm.pt. Reimpl: reimpl/ilora/prompt.py
(:func:`wrap_emb`, :func:`inject_item_embeds`), reimpl/ilora/projector.py, reimpl/ilora/router.py.

* ``ilora.injection``: an embedding-prompt train batch (with a duplicated row), a ``[PH]`` text-only
  batch and a validation batch; outputs inputs_embeds, user_embeds and the shared router's gate.
* ``ilora.injection_mismatch``: rows whose placeholder count differs from len_seq / len_cans
  (the reference's silent zip truncation, ILORA-INJECT-COUNT-MISMATCH; faithful only).

The token-embedding table, projector and router weights are read from the built reference MInterface
in ``make_inputs`` and travel in the inputs, so ``run_reference`` overwrites them after building.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.case import Case, register
from reimpl.paths import SHARED

SEED = 2024
BATCH_KEYS = ("input_ids", "seq", "cans", "item_id", "len_seq", "len_cans")


def _ckpt() -> Path:
    shared = SHARED
    return shared / "data" / "ilora" / "rec_model" / "lastfm.pt"


def _minterface():
    import torch

    import parity.refs
    from reimpl.llm.tiny import tiny_llm_dir

    ns = parity.refs.ilora()
    return ns, ns.build_minterface(tiny_llm_dir(seed=0), dtype=torch.float64, router="share")


def _batch_arrays(batch, prefix: str) -> dict:
    out = {f"{prefix}.input_ids": batch["tokens"].input_ids.numpy().astype(np.int64)}
    for k in BATCH_KEYS[1:]:
        out[f"{prefix}.{k}"] = batch[k].numpy().astype(np.int64)
    return out


def _dup_row0(batch) -> None:
    """Append a copy of row 0 (same token ids, same item ids) to every tensor of a collated batch."""
    import torch

    batch["tokens"]["input_ids"] = torch.cat([batch["tokens"].input_ids, batch["tokens"].input_ids[:1]])
    for k in BATCH_KEYS[1:]:
        batch[k] = torch.cat([batch[k], batch[k][:1]])


def _weights(mi) -> dict:
    out = {"w.embed": mi.llama_model.get_input_embeddings().weight.detach().numpy().copy()}
    out.update({f"w.projector.{k}": v.detach().numpy().copy() for k, v in mi.projector.state_dict().items()})
    out.update({f"w.router.{k}": v.detach().numpy().copy() for k, v in mi.router.state_dict().items()})
    return out


def _placeholders(mi) -> dict:
    # model_interface.py:441-443, with the reference's tokenizer
    tok = mi.llama_tokenizer
    return {name: int(tok(t, return_tensors="pt", add_special_tokens=False).input_ids.item())
            for name, t in (("his_id", "[HistoryEmb]"), ("cans_id", "[CansEmb]"), ("item_id_tok", "[ItemEmb]"))}


def make_inputs(seed: int) -> dict:
    ns, mi = _minterface()
    tok = mi.llama_tokenizer
    emb = ns.build_lastfm_batch(tok, stage="train", batch_size=4, seed=seed, indices=[0, 5, 17, 40], mode="emb")
    _dup_row0(emb)
    ph = ns.build_lastfm_batch(tok, stage="train", seed=seed, indices=[3, 9], mode="ph")
    val = ns.build_lastfm_batch(tok, stage="val", seed=seed, indices=[0, 2, 4])
    return {**_batch_arrays(emb, "emb"), **_batch_arrays(ph, "ph"), **_batch_arrays(val, "val"),
            **_weights(mi), **_placeholders(mi), "prefixes": ["emb", "ph", "val"]}


def _load_weights_into(mi, inputs: dict) -> None:
    import torch

    with torch.no_grad():
        mi.llama_model.get_input_embeddings().weight.copy_(torch.as_tensor(inputs["w.embed"]))
    mi.projector.load_state_dict(_sub_state(inputs, "w.projector."))
    mi.router.load_state_dict(_sub_state(inputs, "w.router."))


def _sub_state(inputs: dict, prefix: str) -> dict:
    import torch

    return {k[len(prefix):]: torch.as_tensor(v) for k, v in inputs.items() if k.startswith(prefix)}


def _ref_batch(inputs: dict, prefix: str) -> dict:
    import types

    import torch

    b = {k: torch.as_tensor(inputs[f"{prefix}.{k}"]) for k in BATCH_KEYS[1:]}
    b["tokens"] = types.SimpleNamespace(input_ids=torch.as_tensor(inputs[f"{prefix}.input_ids"]))
    return b


def _run_reference(inputs: dict) -> dict:
    import torch

    _, mi = _minterface()
    _load_weights_into(mi, inputs)
    # as built: MInterface in train mode, its rec_model in eval mode (model_interface.py:409)
    assert mi.training and mi.router.training and not mi.rec_model.training
    ph = _placeholders(mi)
    if ph != {k: inputs[k] for k in ph}:
        raise RuntimeError(f"tokenizer placeholder ids {ph} differ from the inputs' (tokenizer changed?)")
    out = {}
    with torch.no_grad():
        for p in inputs["prefixes"]:
            embeds, user = mi.wrap_emb(_ref_batch(inputs, p))
            out[f"{p}.inputs_embeds"] = embeds
            out[f"{p}.user_embeds"] = user
            out[f"{p}.gate"] = mi.router(user)[:, 0]        # [B, 1, E] -> [B, E]
    return out


def _run_reimpl(inputs: dict, mode: str) -> dict:
    import torch

    from reimpl.ilora.projector import MlpProjector
    from reimpl.ilora.prompt import PlaceholderIds, wrap_emb
    from reimpl.ilora.router import NLPRouter, RouterConfig
    from reimpl.ilora.sasrec import load_checkpoint

    rec = load_checkpoint(_ckpt(), mode=mode).double()      # eval, frozen
    embed = torch.nn.Embedding.from_pretrained(torch.as_tensor(inputs["w.embed"]), freeze=True)
    proj_state = _sub_state(inputs, "w.projector.")
    w0 = proj_state["mlp_proj.0.weight"]
    projector = MlpProjector(w0.shape[1], w0.shape[0]).double()
    projector.load_state_dict(proj_state)
    router = NLPRouter(RouterConfig(mode=mode)).double()
    router.load_state_dict(_sub_state(inputs, "w.router."))
    router.train()
    ids = PlaceholderIds(his=inputs["his_id"], cans=inputs["cans_id"], item=inputs["item_id_tok"])
    out = {}
    with torch.no_grad():
        for p in inputs["prefixes"]:
            t = {k: torch.as_tensor(inputs[f"{p}.{k}"]) for k in BATCH_KEYS}
            embeds, user = wrap_emb(embed, rec, projector, ids, t["input_ids"], t["seq"], t["cans"], t["item_id"],
                                    t["len_seq"], t["len_cans"], mode=mode)
            out[f"{p}.inputs_embeds"] = embeds
            out[f"{p}.user_embeds"] = user
            out[f"{p}.gate"] = router(user)
    return out


register(Case(
    name="ilora.injection", system="iLoRA", component="injection",
    title="wrap_emb on LastFM batches (embedding prompt, [PH] prompt, validation): inputs_embeds, "
          "user_embeds, router gate",
    ref_lines=["model/model_interface.py:436-466", "model/model_interface.py:414-429",
               "model/mlp_projector.py:3-14", "model/model_interface.py:47-48",
               "data/data_interface.py:30-113", "prompt/artist.txt:1-3"],
    reimpl_symbol="reimpl/ilora/prompt.py:wrap_emb",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs, run_reference=_run_reference, run_reimpl=_run_reimpl,
    needs=["shared"],
    description="Reference: MInterface built by the loader around a tiny random Llama/tokenizer in float64, "
                "batches from the reference's LastfmData + TrainCollater (python-random seeded), then "
                "wrap_emb and the shared router. The train batch repeats row 0 as its last row. Reimpl: "
                "the vectorized wrap_emb with the same embedding table, projector, router and "
                "rec_model/lastfm.pt.",
))


# ------------------------------------------------------------------------------- count mismatches
def make_inputs_mismatch(seed: int) -> dict:
    ns, mi = _minterface()
    emb = ns.build_lastfm_batch(mi.llama_tokenizer, stage="train", seed=seed + 1, indices=[1, 2, 6, 8], mode="emb")
    arrays = _batch_arrays(emb, "mm")
    ls, lc = arrays["mm.len_seq"], arrays["mm.len_cans"]
    ls[0] = min(ls[0] + 2, 10)   # more items than [HistoryEmb] placeholders: extra items dropped
    ls[1] = ls[1] - 2            # fewer items: the last two [HistoryEmb] keep their token embedding
    lc[2] = 0                    # no candidate item: the [CansEmb] keeps its token embedding
    return {**arrays, **_weights(mi), **_placeholders(mi), "prefixes": ["mm"]}


register(Case(
    name="ilora.injection_mismatch", system="iLoRA", component="injection",
    title="wrap_emb with placeholder/item count mismatches (silent zip truncation, faithful)",
    ref_lines=["model/model_interface.py:453-461"],
    reimpl_symbol="reimpl/ilora/prompt.py:inject_item_embeds",
    seed=SEED, dtype="float64", rtol=1e-10, atol=0.0,
    make_inputs=make_inputs_mismatch, run_reference=_run_reference, run_reimpl=_run_reimpl,
    needs=["shared"],
    description="Faithful only: mode='fixed' raises ValueError on these rows (ILORA-INJECT-COUNT-MISMATCH, "
                "declared with an effect_note). Row 0 has len_seq raised by 2 (capped at 10), row 1 lowered "
                "by 2, row 2 has len_cans 0.",
))
