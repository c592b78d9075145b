"""Tiny, seeded, download-free LLM pieces for unit tests and parity cases.

* ``tiny_llama_config`` / ``tiny_llama``: a random-weight ``LlamaForCausalLM`` (hidden 64, 2 layers,
  4 heads, intermediate 128 by default), weights a pure function of ``seed``.
* ``tiny_tokenizer_dir``: a sentencepiece BPE model trained locally on a text corpus (LastFM item titles +
  prompt texts by default), saved as a folder that ``transformers.LlamaTokenizer.from_pretrained`` loads
  (as the iLoRA reference does, model_interface.py:313). Llama-2 conventions: ``<unk>``=0, ``<s>``=1,
  ``</s>``=2, BOS added, no EOS, byte fallback, no pad token in the file (the reference sets it).
  Cached in ``cache/`` at the repo root (``RECPARITY_CACHE`` overrides), keyed by a hash of the
  training text and options; building twice gives byte-identical files.
* ``add_ilora_tokens``: the pad + additional special tokens iLoRA adds at load time
  (model_interface.py:314-317): pad ``[PAD]``, ``[PH]``, ``[HistoryEmb]``, ``[CansEmb]``, ``[ItemEmb]``.
* ``tiny_llm_dir``: one folder holding both the tiny model and the tiny tokenizer, which is what the
  reference's ``--llm_path`` expects (model_interface.py:313, 318).

Nothing here touches the network (``HF_HUB_OFFLINE=1`` is set before any transformers call).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from reimpl.paths import SHARED
from reimpl.paths import cache_dir as _cache_root

ILORA_SPECIAL_TOKENS = ("[PH]", "[HistoryEmb]", "[CansEmb]", "[ItemEmb]")  # model_interface.py:317
ILORA_PAD_TOKEN = "[PAD]"  # model_interface.py:315

# Used when no title file is available: short synthetic "artist names" plus a prompt-like sentence.
_SYNTHETIC_TITLES = tuple(
    f"{a} {b}" for a in ("The", "Blue", "Red", "Night", "Silver", "Café", "Björk", "Sigur")
    for b in ("Band", "Rose", "Moon", "Del Mar", "Echo", "Garden", "Rós", "Lights"))
_SYNTHETIC_PROMPT = ("This user has listened to [HistoryHere] in the previous. Please predict the next music "
                     "artist this user will listen to. The artist name candidates are [CansHere]. "
                     "Choose only one artist from the candidates. The answer is")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cache_dir() -> Path:
    """``cache/`` at the repo root (git-ignored); ``RECPARITY_CACHE`` overrides."""
    d = _cache_root()
    d.mkdir(parents=True, exist_ok=True)
    return d


def _publish(tmp: Path, dest: Path) -> Path:
    """Atomically move a finished build folder into the cache (another process may race us)."""
    try:
        os.replace(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # someone else published the same key first
        if not dest.is_dir():
            raise
    return dest


# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class TinyLlamaConfig:
    """Size of the tiny random Llama; defaults are the project's unit-test size."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 128
    vocab_size: int = 1000
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False


def tiny_llama_config(vocab_size: int = 1000, **overrides):
    """``transformers.LlamaConfig`` for the tiny model; ``overrides`` go to TinyLlamaConfig / LlamaConfig.

    Token ids follow Llama-2: bos 1, eos 2, no pad (the iLoRA reference adds ``[PAD]`` itself).
    """
    from transformers import LlamaConfig

    fields = set(TinyLlamaConfig.__dataclass_fields__)
    base = asdict(TinyLlamaConfig(vocab_size=vocab_size, **{k: v for k, v in overrides.items() if k in fields}))
    extra = {k: v for k, v in overrides.items() if k not in fields}
    if base["hidden_size"] % base["num_attention_heads"]:
        raise ValueError(f"tiny_llama_config: hidden_size {base['hidden_size']} not divisible by "
                         f"num_attention_heads {base['num_attention_heads']}")
    return LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=None, **base, **extra)


def tiny_llama(seed: int = 0, vocab_size: int = 1000, dtype=None, **overrides):
    """Random-weight ``LlamaForCausalLM``; weights depend only on ``seed`` (global RNG state is restored)."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(vocab_size=vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


# -------------------------------------------------------------------------------------------- tokenizer
def default_corpus(shared_dir: str | Path | None = None, prompt_files: Sequence[str | Path] = ()) -> list[str]:
    """Training text: LastFM titles (``<shared>/data/ilora/lastfm/id2name.txt`` when present, else a
    synthetic list) + the lines of ``prompt_files`` (e.g. the reference's prompt/artist.txt) + one
    built-in prompt-like sentence so the prompt vocabulary is covered even without prompt files."""
    lines: list[str] = []
    shared = Path(shared_dir) if shared_dir is not None else SHARED
    titles = shared / "data" / "ilora" / "lastfm" / "id2name.txt"
    if titles.is_file():
        from reimpl.data.id2name import read_id2name  # here: reimpl.data pulls in pandas

        lines.extend(read_id2name(titles, mode="fixed").values())
    else:
        lines.extend(_SYNTHETIC_TITLES)
    for pf in prompt_files:
        lines.extend(p.strip() for p in Path(pf).read_text(encoding="utf-8").splitlines() if p.strip())
    lines.append(_SYNTHETIC_PROMPT)
    return lines


def _train_spm(lines: Sequence[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


def tiny_tokenizer_dir(texts: Iterable[str] | None = None, vocab_size: int = 2000) -> Path:
    """Folder with a locally trained Llama-style tokenizer (``tokenizer.model`` + HF files); cached.

    ``texts``: training lines (default ``default_corpus()``). ``vocab_size``: sentencepiece vocab
    (incl. 3 specials + 256 byte-fallback pieces; must exceed ~ those + distinct characters).
    """
    _offline()
    lines = [t for t in (default_corpus() if texts is None else texts)]
    if not lines or not any(s.strip() for s in lines):
        raise ValueError("tiny_tokenizer_dir: empty training text")
    if any("\n" in s for s in lines):
        raise ValueError("tiny_tokenizer_dir: training lines must not contain newlines")
    opts = {"vocab_size": vocab_size, "v": 1}
    key = hashlib.sha256(("\n".join(lines) + "\0" + json.dumps(opts, sort_keys=True)).encode()).hexdigest()[:16]
    dest = cache_dir() / f"tiny-tokenizer-{key}"
    if (dest / "tokenizer_config.json").is_file():
        return dest
    from transformers import LlamaTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=cache_dir()))
    (tmp / "tokenizer.model").write_bytes(_train_spm(lines, vocab_size))
    # Llama-2 tokenizer_config: BOS added, EOS not, legacy sentencepiece behaviour, no pad token.
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "pad_token": None, "legacy": True, "model_max_length": 4096,
           "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False}
    (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    tok = LlamaTokenizer.from_pretrained(str(tmp))
    _check_tokenizer(tok, tmp)
    tok.save_pretrained(str(tmp))  # adds tokenizer.json so later loads skip the conversion
    _check_tokenizer(LlamaTokenizer.from_pretrained(str(tmp)), tmp)
    return _publish(tmp, dest)


def _check_tokenizer(tok, where: Path) -> None:
    ids = tok("hello world").input_ids
    if tok.bos_token_id != 1 or tok.eos_token_id != 2 or tok.unk_token_id != 0:
        raise RuntimeError(f"{where}: tiny tokenizer special ids bos/eos/unk = "
                           f"{tok.bos_token_id}/{tok.eos_token_id}/{tok.unk_token_id}, expected 1/2/0")
    if not ids or ids[0] != 1 or ids[-1] == 2:
        raise RuntimeError(f"{where}: tiny tokenizer must add BOS and no EOS (Llama-2); got {ids}")


def load_tiny_tokenizer(path: str | Path | None = None):
    """``LlamaTokenizer`` from ``tiny_tokenizer_dir()`` (or ``path``), exactly as stored (no iLoRA tokens)."""
    _offline()
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(path or tiny_tokenizer_dir()))


def add_ilora_tokens(tokenizer):
    """Apply the reference's load-time tokenizer edits (model_interface.py:314-317) in place; returns it.

    pad ``[PAD]`` (a new token, not eos), right padding, ``[PH]``, ``[HistoryEmb]``, ``[CansEmb]``,
    ``[ItemEmb]`` as additional special tokens, in that order (ids = len(base vocab) + 0..4).
    """
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_special_tokens({"pad_token": ILORA_PAD_TOKEN})
    tokenizer.padding_side = "right"
    tokenizer.add_special_tokens({"additional_special_tokens": list(ILORA_SPECIAL_TOKENS)})
    return tokenizer


# ------------------------------------------------------------------------------------- model + tokenizer
def tiny_llm_dir(seed: int = 0, texts: Iterable[str] | None = None, tokenizer_vocab_size: int = 2000,
                 dtype: str = "float32", **overrides) -> Path:
    """Folder with a tiny random Llama (``seed``) + the tiny tokenizer, loadable by the reference's
    ``LlamaTokenizer.from_pretrained`` / ``LlamaForCausalLM.from_pretrained`` (``--llm_path``).

    The model's vocab equals the base tokenizer's; iLoRA's extra tokens are added at load time by
    the reference (``resize_token_embeddings``). Cached by (tokenizer folder, seed, dtype, overrides).
    """
    import torch

    tok_dir = tiny_tokenizer_dir(texts, vocab_size=tokenizer_vocab_size)
    opts = {"tok": tok_dir.name, "seed": seed, "dtype": dtype, "overrides": overrides, "v": 1}
    key = hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    dest = cache_dir() / f"tiny-llm-{key}"
    if (dest / "config.json").is_file():
        return dest
    tok = load_tiny_tokenizer(tok_dir)
    model = tiny_llama(seed=seed, vocab_size=len(tok), dtype=getattr(torch, dtype), **overrides)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=cache_dir()))
    model.save_pretrained(str(tmp))
    for f in tok_dir.iterdir():
        shutil.copy2(f, tmp / f.name)
    return _publish(tmp, dest)
