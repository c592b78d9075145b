"""Frozen-LLM text encoder: texts -> pooled last-layer hidden states, length-bucketed, chunk-cached on disk.

Used by the dense-retrieval teacher (:mod:`reimpl.teachers.dense`) for item titles and user histories. Pooling
(seed 003, section 2): ``last`` = hidden state of the last real token (what a causal LM summarises into, as iLoRA
reads it), ``mean`` = mean over the real tokens (LLM2Vec's pooling, without its bidirectional re-training). Both
come out of one forward pass, so the cache holds both.

Cost on CPU: texts are sorted by token length and batched in that order (length bucketing), so a batch pads to
within a few tokens of its longest text; padding tokens never reach a pooled vector (masked out of ``mean``;
``last`` reads the last real position). One forward per text; no gradient.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


@dataclass
class EncodeStats:
    texts: int = 0
    tokens: int = 0           # real tokens (no padding)
    padded_tokens: int = 0    # tokens the model actually ran (with padding)
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"texts": self.texts, "tokens": self.tokens, "padded_tokens": self.padded_tokens,
                "seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens_per_s, 1)}


def _backbone(model):
    """The decoder stack of a HF causal LM (``LlamaForCausalLM.model``): no LM head, no [T, V] logits."""
    return getattr(model, "model", model)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_tokens: int = 4096, max_batch: int = 64,
                 dtype: torch.dtype | None = None, stats: EncodeStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """texts ``[N]`` -> (last ``[N, d]``, mean ``[N, d]``) float32 pooled last-layer hidden states.

    Length bucketing: texts sorted by token count; each batch holds at most ``batch_tokens`` padded tokens
    (and ``max_batch`` texts). ``dtype``: autocast dtype (``torch.bfloat16``) or None for the model's own.
    Right padding with the attention mask; an empty text is refused (it has no token to pool).
    """
    if not len(texts):
        raise ValueError("encode_texts: no texts")
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    lens = np.array([len(x) for x in ids])
    if (lens == 0).any():
        raise ValueError(f"encode_texts: text {int(np.argmin(lens))} tokenizes to nothing")
    order = np.argsort(lens, kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    d = model.config.hidden_size
    last, mean = np.zeros((len(texts), d), np.float32), np.zeros((len(texts), d), np.float32)
    body = _backbone(model)
    t0 = time.perf_counter()
    s = 0
    while s < len(order):
        # grow the batch while its padded size stays within budget (sorted: the last text is the longest)
        e = s + 1
        while e < len(order) and e - s < max_batch and (e - s + 1) * lens[order[e]] <= batch_tokens:
            e += 1
        idx = order[s:e]
        t = int(lens[idx].max())
        x = torch.full((len(idx), t), pad, dtype=torch.long)
        m = torch.zeros((len(idx), t), dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, :lens[i]] = torch.tensor(ids[i])
            m[r, :lens[i]] = 1
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            h = body(input_ids=x, attention_mask=m, use_cache=False).last_hidden_state      # [b, T, d]
        h = h.float()
        n = torch.as_tensor(lens[idx]) - 1
        last[idx] = h[torch.arange(len(idx)), n].numpy()
        mf = m.unsqueeze(-1).float()
        mean[idx] = ((h * mf).sum(1) / mf.sum(1)).numpy()
        if stats is not None:
            stats.texts += len(idx)
            stats.tokens += int(lens[idx].sum())
            stats.padded_tokens += len(idx) * t
        s = e
    if stats is not None:
        stats.seconds += time.perf_counter() - t0
    if not (np.isfinite(last).all() and np.isfinite(mean).all()):
        raise FloatingPointError("encode_texts: non-finite hidden states")
    return last, mean


def text_digest(texts: Sequence[str], model_id: str) -> str:
    h = hashlib.sha256(model_id.encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def encode_cached(folder: str | Path, model, tokenizer, texts: Sequence[str], model_id: str, chunk: int = 2048,
                  dtype: torch.dtype | None = None, progress=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`encode_texts` in chunks of ``chunk`` texts, each saved as ``<folder>/chunk_<i>.npz`` (float16) the
    moment it is done, so a killed run resumes at the first missing chunk. ``<folder>/meta.json`` pins the texts
    and model (a folder written for other texts is refused). Returns (last, mean, stats dict)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = text_digest(texts, model_id)
    meta_p = folder / "meta.json"
    if meta_p.is_file():
        meta = json.loads(meta_p.read_text())
        if meta.get("digest") != digest or meta.get("chunk") != chunk:
            raise ValueError(f"{meta_p}: cache built for other texts/model/chunk ({meta.get('digest')}, "
                             f"chunk {meta.get('chunk')}); expected {digest}, chunk {chunk}: use another folder")
    else:
        meta = {"digest": digest, "chunk": chunk, "n": len(texts), "model": model_id, "stats": []}
        meta_p.write_text(json.dumps(meta))
    lasts, means = [], []
    for ci, s in enumerate(range(0, len(texts), chunk)):
        p = folder / f"chunk_{ci:05d}.npz"
        if not p.is_file():
            st = EncodeStats()
            a, b = encode_texts(model, tokenizer, texts[s:s + chunk], dtype=dtype, stats=st)
            tmp = p.with_name(p.name + ".tmp.npz")
            np.savez(tmp, last=a.astype(np.float16), mean=b.astype(np.float16))
            tmp.replace(p)
            meta["stats"].append({"chunk": ci, **st.as_dict()})
            meta_p.write_text(json.dumps(meta))
            if progress:
                progress(ci, st)
        z = np.load(p)
        lasts.append(z["last"])
        means.append(z["mean"])
    tot = EncodeStats()
    for st in meta["stats"]:
        tot.texts += st["texts"]
        tot.tokens += st["tokens"]
        tot.padded_tokens += st["padded_tokens"]
        tot.seconds += st["seconds"]
    return np.concatenate(lasts).astype(np.float32), np.concatenate(means).astype(np.float32), tot.as_dict()
