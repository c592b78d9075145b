"""reimpl/extensions/rdr.py: rationale cache/resume, vector store, L_RDR; real SmolLM2 + MiniLM (integration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.extensions.rdr import (
    CACHE_FILE,
    GenParams,
    RDRHead,
    build_prompt,
    build_vector_store,
    generate_rationales,
    load_vector_store,
    rdr_loss,
    read_cache,
)


class FakeEncoder:
    def __init__(self):
        self.calls = 0

    def encode(self, texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False):
        self.calls += 1
        v = np.array([[len(t), t.count("e") + 1.0, 1.0] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_rdr_loss_fixed_case_and_mask():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert rdr_loss(h, v).item() == pytest.approx((0 + 1 + 1) / 3)
    assert rdr_loss(h, v, torch.tensor([True, False, False])).item() == pytest.approx(0.0)
    z = rdr_loss(h.requires_grad_(), v, torch.zeros(3, dtype=torch.bool))
    assert z.item() == 0.0 and z.requires_grad
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        rdr_loss(h, v[:, :1])


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 7), d=st.integers(1, 9), scale=st.sampled_from([1e-3, 1.0, 1e4]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_rdr_loss_range(b, d, scale, dtype):
    g = torch.Generator().manual_seed(b * 10 + d)
    h = (torch.randn(b, d, generator=g) * scale).to(dtype)
    v = torch.randn(b, d, generator=g)
    val = rdr_loss(h, v)
    assert torch.isfinite(val) and -1e-6 <= val.item() <= 2 + 1e-6
    torch.testing.assert_close(rdr_loss(v.to(dtype), v), torch.zeros((), dtype=dtype), atol=1e-5, rtol=0)


def test_cache_resume_and_vector_store(tmp_path, monkeypatch):
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama, tiny_tokenizer_dir

    tok = load_tiny_tokenizer(tiny_tokenizer_dir())
    model = tiny_llama(seed=0, vocab_size=len(tok))
    prompts = [build_prompt(["A", "B"], "C"), build_prompt([], "D"), build_prompt(["E"], "F")]
    gp = GenParams(max_new_tokens=3, batch_size=2)
    r1 = generate_rationales([5, 7], prompts[:2], tmp_path, model=model, tokenizer=tok, model_id="tiny", gen=gp,
                             progress=False)
    assert set(r1) == {5, 7} and all(r["model_id"] == "tiny" and len(r["key"]) == 64 for r in r1.values())
    lines = (tmp_path / CACHE_FILE).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["prompt"] == prompts[0]
    # resume: cached rows are not regenerated (a model that fails if called proves it)
    class Boom:
        def generate(self, *a, **k):
            raise AssertionError("regenerated a cached row")

        def eval(self):
            return self
    assert generate_rationales([5, 7], prompts[:2], tmp_path, model=Boom(), tokenizer=tok, model_id="tiny",
                               gen=gp, progress=False) == r1
    # a new row is generated; a changed prompt invalidates its row
    r2 = generate_rationales([5, 9], [prompts[0] + "!", prompts[2]], tmp_path, model=model, tokenizer=tok,
                             model_id="tiny", gen=gp, progress=False)
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == 4 and r2[5]["prompt"].endswith("!")
    # a truncated last line (interrupted write) is tolerated
    with open(tmp_path / CACHE_FILE, "a") as f:
        f.write('{"row": 11, "key"')
    assert set(read_cache(tmp_path / CACHE_FILE)) == {5, 7, 9}
    # resuming after it cuts the unfinished line instead of gluing the next record to it
    r3 = generate_rationales([11], [prompts[1] + "?"], tmp_path, model=model, tokenizer=tok, model_id="tiny",
                             gen=gp, progress=False)
    assert set(read_cache(tmp_path / CACHE_FILE)) == {5, 7, 9, 11} and r3[11]["prompt"].endswith("?")
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == 5
    enc = FakeEncoder()
    vec, index = build_vector_store(r2, tmp_path / "store", encoder=enc)
    assert vec.shape == (2, 3) and index["rows"] == [5, 9]
    build_vector_store(r2, tmp_path / "store", encoder=enc)
    assert enc.calls == 1                                   # up to date: not re-encoded
    dense, has = load_vector_store(tmp_path / "store", 12)
    assert dense.shape == (12, 3) and has.nonzero().flatten().tolist() == [5, 9]
    with pytest.raises(ValueError, match="outside"):
        load_vector_store(tmp_path / "store", 6)
    head = RDRHead(4, dense, has, lam=0.5, seed=0)
    h = torch.randn(3, 4, requires_grad=True)
    loss = head(np.array([5, 0, 9]), h)
    want = 0.5 * (2 - F.cosine_similarity(head.proj(h[[0, 2]]), dense[[5, 9]], dim=1).sum()) / 2
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert head.proj.weight.grad is not None
    # construction does not consume the global RNG
    torch.manual_seed(0)
    a = torch.rand(1)
    torch.manual_seed(0)
    RDRHead(4, dense, has, lam=1.0)
    assert torch.equal(torch.rand(1), a)


@pytest.mark.integration
def test_real_smollm2_and_minilm(tmp_path):
    from reimpl.llm.real import ModelNotInstalled, load_minilm, load_smollm2

    try:
        model, tok = load_smollm2()
        enc = load_minilm()
    except ModelNotInstalled as e:
        pytest.skip(f"real models not installed: {e}")
    prompts = [build_prompt(["Radiohead", "Muse"], "Placebo"), build_prompt(["Madonna"], "Kylie Minogue")]
    recs = generate_rationales([0, 1], prompts, tmp_path, model=model, tokenizer=tok,
                               gen=GenParams(max_new_tokens=8, batch_size=2), progress=False)
    assert all(r["rationale"].strip() for r in recs.values())
    assert "SmolLM2" in recs[0]["model_id"]
    vec, index = build_vector_store(recs, tmp_path, encoder=enc)
    assert vec.shape == (2, 384) and np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)


def test_the_generation_dtype_is_part_of_the_key_and_must_match_the_model(tmp_path):
    from reimpl.extensions.rdr import cache_key
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama, tiny_tokenizer_dir

    tok = load_tiny_tokenizer(tiny_tokenizer_dir())
    model = tiny_llama(seed=0, vocab_size=len(tok))
    p = [build_prompt(["A"], "B")]
    f32 = generate_rationales([0], p, tmp_path / "a", model=model, tokenizer=tok, model_id="tiny",
                              gen=GenParams(max_new_tokens=3, batch_size=1), progress=False)[0]
    # float32 keys are the ones written before the field existed (committed caches stay valid)
    assert f32["key"] == cache_key("tiny", p[0], {"max_new_tokens": 3, "greedy": True})
    with pytest.raises(ValueError, match="GenParams.dtype says bfloat16"):
        generate_rationales([0], p, tmp_path / "b", model=model, tokenizer=tok, model_id="tiny",
                            gen=GenParams(max_new_tokens=3, batch_size=1, dtype="bfloat16"), progress=False)
    bf = generate_rationales([0], p, tmp_path / "b", model=model.to(torch.bfloat16), tokenizer=tok,
                             model_id="tiny", gen=GenParams(max_new_tokens=3, batch_size=1, dtype="bfloat16"),
                             progress=False)[0]
    assert bf["gen"]["dtype"] == "bfloat16" and bf["key"] != f32["key"]


def test_the_committed_lastfm_rationales_keep_their_keys():
    from reimpl.extensions import engine_trial as et
    from reimpl.extensions.rdr import cache_key

    cache = et.rationale_dir("lastfm-loo") / CACHE_FILE
    if not cache.is_file():
        pytest.skip(f"{cache} is not here")
    rec = next(iter(read_cache(cache).values()))
    gdict = {"max_new_tokens": et.RATIONALE_GEN["max_new_tokens"], "greedy": True}
    assert "lastfm-loo" not in et.RATIONALE_DTYPE and rec["key"] == cache_key(rec["model_id"], rec["prompt"], gdict)


def test_an_unknown_generation_dtype_is_refused():
    with pytest.raises(ValueError, match="GenParams.dtype must be one of"):
        GenParams(dtype="float16")
