"""`reimpl.llm.tokens.encode`: the same tensors as ``return_tensors="pt"``, without transformers' conversion."""

from __future__ import annotations

import pytest
import torch


def test_encode_equals_return_tensors_pt():
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_tokenizer_dir
    from reimpl.llm.tokens import encode

    tok = load_tiny_tokenizer(tiny_tokenizer_dir())
    tok.pad_token = tok.pad_token or tok.eos_token or tok.unk_token
    texts = ["a b c", "a much longer text with more tokens in it", ""]
    pairs = [[t, "answer"] for t in texts]
    for x, kw in ((texts, {"padding": "longest"}), (pairs, {"padding": "longest", "return_token_type_ids": True})):
        want = tok(x, return_tensors="pt", **kw)
        got = encode(tok, x, **kw)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == torch.long and torch.equal(got[k], want[k]), k
    with pytest.raises(ValueError, match="field 'input_ids' has rows of lengths"):
        encode(tok, texts)
    with pytest.raises(ValueError, match="drop return_tensors"):
        encode(tok, texts, return_tensors="pt")
