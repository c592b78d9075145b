"""iLoRA LM loss: label masking (pad + prompt segment) and the causal-LM loss of MInterface.forward."""

from __future__ import annotations

import types

import numpy as np

from parity.case import Case, register

PAD, BOS, VOCAB = 7, 1, 11


def make_inputs(seed: int) -> dict:
    """Rows '<s> prompt <s> answer [PAD]...' with reference-layout token types ([B, L+1], the 4.28 slow
    LlamaTokenizer's pair layout) and random float64 logits [B, L, V]; row lengths vary, one row has a
    one-token answer, one a long prompt."""
    rng = np.random.default_rng(seed)
    b, length = 6, 14
    ids = np.full((b, length), PAD, dtype=np.int64)
    tt = np.zeros((b, length + 1), dtype=np.int64)
    att = np.zeros((b, length), dtype=np.int64)
    for i in range(b):
        n_prompt = int(rng.integers(2, 8)) if i != 5 else 9
        n_ans = 1 if i == 4 else int(rng.integers(1, length - n_prompt - 2))
        body = [BOS] + list(rng.integers(3, VOCAB, n_prompt)) + [BOS] + list(rng.integers(3, VOCAB, n_ans))
        body = body[:length]
        ids[i, :len(body)] = body
        att[i, :len(body)] = 1
        # 4.28 layout: [0] * (len(A) + 2) + [1] * (len(B) + 1), then padded with 0
        tt[i, n_prompt + 2:len(body) + 1] = 1
    return {"input_ids": ids, "token_type_ids_ref": tt, "attention_mask": att,
            "logits": rng.standard_normal((b, length, VOCAB)) * 3.0, "pad_token_id": PAD, "bos_token_id": BOS}


def run_reference(inputs: dict) -> dict:
    """MInterface.forward + configure_loss on a stand-in ``self``: wrap_emb / router / LLM are stubs that
    return the given logits and the library loss of the labels forward() built (model_interface.py:38-58)."""
    import torch
    from transformers import BatchEncoding
    from transformers.loss.loss_utils import ForCausalLMLoss

    from parity.refs import ilora

    ref = ilora()
    logits = torch.as_tensor(inputs["logits"])
    seen = {}

    def llama_model(**kw):
        seen["labels"] = kw["labels"]
        return types.SimpleNamespace(logits=logits, loss=ForCausalLMLoss(logits, kw["labels"], logits.shape[-1]))

    stub = types.SimpleNamespace(
        llama_tokenizer=types.SimpleNamespace(pad_token_id=int(inputs["pad_token_id"])),
        hparams=types.SimpleNamespace(router="share", loss="lm"),
        wrap_emb=lambda batch: (None, None), router=lambda u: None, llama_model=llama_model)
    tokens = BatchEncoding({"input_ids": torch.as_tensor(inputs["input_ids"]),
                            "token_type_ids": torch.as_tensor(inputs["token_type_ids_ref"]),
                            "attention_mask": torch.as_tensor(inputs["attention_mask"])})
    out = ref.MInterface.forward(stub, {"tokens": tokens})
    loss = ref.MInterface.configure_loss(stub, out)
    return {"labels": seen["labels"].numpy(), "loss": loss.numpy()}


def run_reimpl(inputs: dict, mode: str) -> dict:
    import torch

    from reimpl.ilora.loss import causal_lm_loss, lm_targets

    ids = torch.as_tensor(inputs["input_ids"])
    tt = torch.as_tensor(inputs["token_type_ids_ref"])[:, 1:]  # aligned layout (what today's tokenizers give)
    labels = lm_targets(ids, tt, int(inputs["pad_token_id"]), mode=mode,
                        special_ids=torch.tensor([int(inputs["bos_token_id"])]))
    loss = causal_lm_loss(torch.as_tensor(inputs["logits"]), labels)
    return {"labels": labels.numpy(), "loss": loss.numpy()}


register(Case(
    name="ilora.lm_loss",
    system="iLoRA",
    component="loss",
    title="Answer-token label masking and causal-LM loss",
    ref_lines=["model/model_interface.py:38-42", "model/model_interface.py:289-294"],
    reimpl_symbol="reimpl/ilora/loss.py:lm_targets, causal_lm_loss",
    seed=2024, dtype="float64",
    make_inputs=make_inputs, run_reference=run_reference, run_reimpl=run_reimpl,
    deviations=["ILORA-ANSWER-BOS-LABEL"],
    description="The reference masks pad positions and every position whose token type (read at the next "
                "index, token_type_ids[:, 1:], because the tokenizer it was written for returned pair token "
                "types one longer) is 0, then returns the Llama's loss. Synthetic '<s> prompt <s> answer' rows "
                "in that layout with random logits; the LLM is a stub returning those logits and the library "
                "loss of the labels forward() built. Both sides compute the loss in float32 (the library "
                "casts logits), bit-identical; labels compared exactly.",
))
