"""One entry point for a causal LM by name: ``tiny`` (random tiny Llama, tests), ``smollm2`` (offline GGUF) or a
local Hugging Face folder (``local_files_only``: never the hub)."""

from __future__ import annotations


def load_llm(name: str):
    """(model, tokenizer) of ``name``; the model in float32, eval mode as transformers returns it."""
    if name == "tiny":
        from transformers import LlamaForCausalLM

        from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llm_dir

        d = tiny_llm_dir(seed=0)
        return LlamaForCausalLM.from_pretrained(str(d)), load_tiny_tokenizer(d)
    if name == "smollm2":
        from reimpl.llm.real import load_smollm2

        return load_smollm2()
    from pathlib import Path

    if not Path(name).is_dir():
        raise FileNotFoundError(f"--llm: {name!r} is neither 'tiny', 'smollm2' nor a local model folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(name, local_files_only=True),
            AutoTokenizer.from_pretrained(name, local_files_only=True))
