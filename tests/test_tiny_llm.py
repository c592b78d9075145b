"""reimpl/llm/tiny.py: seeded tiny Llama + locally trained, cached, deterministic Llama-style tokenizer."""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.llm import tiny

CORPUS = [f"{a} {b}" for a in ("The", "Blue", "Red", "Night", "Café", "Sigur") for b in ("Band", "Rós", "Moon", "Echo")]
CORPUS += ["This user has listened to [HistoryHere] in the previous. The answer is"]


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RECPARITY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield tiny.tiny_tokenizer_dir(CORPUS, vocab_size=400)
    mp.undo()


def test_tiny_llama_seeded():
    a, b, c = tiny.tiny_llama(seed=3), tiny.tiny_llama(seed=3), tiny.tiny_llama(seed=4)
    cfg = a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (64, 2, 4, 128)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_tiny_llama_restores_rng():
    torch.manual_seed(0)
    ref = torch.rand(3)
    torch.manual_seed(0)
    tiny.tiny_llama(seed=9)
    assert torch.equal(torch.rand(3), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_llama_forward(dtype, batch):
    m = tiny.tiny_llama(seed=0, vocab_size=50, dtype=dtype)
    ids = torch.randint(0, 50, (batch, 7))
    out = m(input_ids=ids)
    assert out.logits.shape == (batch, 7, 50) and out.logits.dtype == dtype
    assert torch.isfinite(out.logits).all()


def test_tiny_llama_config_errors():
    with pytest.raises(ValueError, match="not divisible"):
        tiny.tiny_llama_config(hidden_size=30, num_attention_heads=4)


def test_tokenizer_llama2_conventions(tok_dir):
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(tok_dir))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None
    ids = tok("The Band").input_ids
    assert ids[0] == 1 and ids[-1] != 2
    assert tok.decode(ids, skip_special_tokens=True) == "The Band"
    # pair template is '<s> A <s> B', type ids 0 for '<s> A' and 1 from the second '<s>'
    enc = tok([["Blue Moon", "Echo"]], return_token_type_ids=True)
    n_a = len(tok("Blue Moon", add_special_tokens=False).input_ids)
    n_b = len(tok("Echo", add_special_tokens=False).input_ids)
    assert enc.input_ids[0][0] == 1 and enc.input_ids[0][n_a + 1] == 1
    assert enc.token_type_ids[0] == [0] * (n_a + 1) + [1] * (n_b + 1)


def test_tokenizer_deterministic_and_keyed(tmp_path, monkeypatch, tok_dir):
    monkeypatch.setenv("RECPARITY_CACHE", str(tmp_path))
    again = tiny.tiny_tokenizer_dir(CORPUS, vocab_size=400)
    assert again != tok_dir  # fresh cache folder, rebuilt from scratch
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert _sha(again / name) == _sha(tok_dir / name), name
    assert tiny.tiny_tokenizer_dir(CORPUS, vocab_size=400) == again  # cache hit
    assert tiny.tiny_tokenizer_dir(CORPUS + ["Extra"], vocab_size=400).name != again.name


def test_tokenizer_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("RECPARITY_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        tiny.tiny_tokenizer_dir(["", "  "])
    with pytest.raises(ValueError, match="newlines"):
        tiny.tiny_tokenizer_dir(["a\nb"])


def test_add_ilora_tokens(tok_dir):
    tok = tiny.add_ilora_tokens(tiny.load_tiny_tokenizer(tok_dir))
    base = len(tiny.load_tiny_tokenizer(tok_dir))
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == base and tok.padding_side == "right"
    assert tok.convert_tokens_to_ids(list(tiny.ILORA_SPECIAL_TOKENS)) == [base + 1, base + 2, base + 3, base + 4]
    ids = tok("Blue [HistoryEmb], Red [CansEmb]", add_special_tokens=False).input_ids
    assert ids.count(base + 2) == 1 and ids.count(base + 3) == 1


def test_tiny_llm_dir_loads(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM, LlamaTokenizer

    monkeypatch.setenv("RECPARITY_CACHE", str(tmp_path))
    d = tiny.tiny_llm_dir(seed=1, texts=CORPUS, tokenizer_vocab_size=400)
    assert tiny.tiny_llm_dir(seed=1, texts=CORPUS, tokenizer_vocab_size=400) == d
    tok = LlamaTokenizer.from_pretrained(str(d), use_fast=False)  # the reference's call
    model = LlamaForCausalLM.from_pretrained(str(d))
    assert model.config.vocab_size == len(tok)
    ref = tiny.tiny_llama(seed=1, vocab_size=len(tok))
    assert torch.equal(model.model.embed_tokens.weight, ref.model.embed_tokens.weight)


_words = st.lists(st.sampled_from(["The", "Band", "Rós", "Moon", "Echo", "Café", "zq", "42"]), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None)
@given(words=_words)
def test_tokenizer_roundtrip(tok_dir, words):
    tok = tiny.load_tiny_tokenizer(tok_dir)
    text = " ".join(words)
    ids = tok(text).input_ids
    assert ids[0] == 1 and 0 not in ids  # byte fallback: never <unk>
    assert tok.decode(ids, skip_special_tokens=True) == text
