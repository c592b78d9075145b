"""LlamaRec two-stage teacher: SASRec retrieves candidates, the LLM reranks them in one forward pass.

seed 003, section 4 (Yue et al., LlamaRec, 2023): stage 1, the frozen SASRec checkpoint ranks all items and keeps
its top ``n`` (20); stage 2, the LLM reads the history titles and the ``n`` candidate titles, each behind an index
letter ``A``, ``B``, ..., and its next-token logits over those letters (the *verbalizer*) score all candidates at
once: one forward pass per row, no generation. Trained (optionally) with cross-entropy over the letters, LoRA on the
LLM (:mod:`reimpl.ilora.moe_lora`, ``num_moe = 1``): :class:`LlamaRec` and :func:`train_llamarec`.

Training candidates (declared): LlamaRec trains on its retriever's top ``n`` and skips rows whose target is not
among them. On LastFM as published the only retriever here is the SASRec checkpoint, which was trained on every
train row: on train rows its top 20 holds the target almost always, mostly at rank 1, so the reranker would learn
to copy it. ``train_cands="random"`` (default) therefore trains on the evaluation's candidate construction instead
(target + ``n - 1`` unseen items, shuffled; :func:`reimpl.teachers.common.candidates` with a seed per epoch that no
evaluation uses); ``"retrieved"`` is LlamaRec's rule (SASRec's top ``n``, shuffled, rows without the target
skipped).

Over all items, the two-stage ranking is: the ``n`` candidates in the LLM's order, then every other item in
SASRec's order. :func:`rerank` also takes any given candidate set, so the teacher is measured on the same 20
candidates as every other teacher.

Shapes: B rows, n candidates, V vocabulary.
"""

from __future__ import annotations

import math
import string
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reimpl.cliconf import require
from reimpl.llm.tokens import encode

LETTERS = string.ascii_uppercase
TRAIN_CAND_SEED = 1000   # + epoch: training negatives never coincide with an evaluation's (cand_seed 0)


@dataclass
class LlamaRecConfig:
    n_cands: int = 20
    epochs: int = 0                      # 0: zero-shot (the untuned LLM reads the verbalizer)
    train_cands: str = field(default="random", metadata={"choices": ["random", "retrieved"]})
    lora_r: int = 8
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_layers: int | None = None       # LoRA on the last n decoder layers (None: all)
    llm_layers: int | None = None        # keep only the first n decoder layers (None: the whole LLM)
    lr: float = 5e-4
    batch_size: int = 8
    bf16: bool = True
    seed: int = 0
    mode: str = "fixed"

    def __post_init__(self) -> None:
        if not 2 <= self.n_cands <= len(LETTERS):
            raise ValueError(f"--n_cands: expected 2..{len(LETTERS)} (one index letter each), got {self.n_cands}")
        require(self.mode == "fixed", "--mode", "'fixed' (LlamaRec has no reference here to be faithful to)",
                self.mode)
        require(self.epochs >= 0, "--epochs", ">= 0 (0: zero-shot)", self.epochs)
        require(self.batch_size >= 1, "--batch_size", ">= 1", self.batch_size)
        self.targets = tuple(self.targets)


def prompt(titles: dict[int, str], hist: Sequence[int], cands: Sequence[int]) -> str:
    """The reranking prompt; ends right before the answer letter."""
    h = ", ".join(titles[i] for i in hist) if hist else "nothing yet"
    c = " ".join(f"({LETTERS[j]}) {titles[i]}" for j, i in enumerate(cands))
    return (f"This user has listened to {h}. Candidates: {c}. "
            "The letter of the artist this user will listen to next is (")


def letter_ids(tokenizer, n: int) -> torch.Tensor:
    """``[n]`` token ids of the letters as they follow ``(`` (each must be one token)."""
    out = []
    for ch in LETTERS[:n]:
        base = tokenizer("(", add_special_tokens=False)["input_ids"]
        ids = tokenizer("(" + ch, add_special_tokens=False)["input_ids"]
        if ids[:len(base)] != base or len(ids) != len(base) + 1:
            raise ValueError(f"llamarec: letter {ch!r} after '(' is not one token for this tokenizer ({ids})")
        out.append(ids[-1])
    return torch.tensor(out)


class LlamaRec(nn.Module):
    """The reranker: a causal LM with LoRA (one expert of :mod:`reimpl.ilora.moe_lora`, peft-style: the wrapped
    linears keep the frozen base weights). Called like the HF model (``input_ids``, ``attention_mask``, ...), so
    :func:`rerank` reads it and the untuned LLM alike."""

    def __init__(self, cfg: LlamaRecConfig, llm, tokenizer):
        super().__init__()
        from reimpl.ilora.moe_lora import MoeLoraConfig, wrap_moe_lora
        from reimpl.teachers.e4srec import keep_first_layers

        self.cfg, self.tokenizer = cfg, tokenizer
        if cfg.llm_layers is not None:
            keep_first_layers(llm, cfg.llm_layers)
        n = len(llm.model.layers)
        first = 0 if cfg.lora_layers is None else max(0, n - cfg.lora_layers)
        mlp = ("gate_proj", "up_proj", "down_proj")
        targets = tuple(f"layers.{i}.{'mlp' if t in mlp else 'self_attn'}.{t}" for i in range(first, n)
                        for t in cfg.targets)
        self.lm = wrap_moe_lora(llm, MoeLoraConfig(r=cfg.lora_r, num_moe=1, lora_alpha=cfg.lora_alpha,
                                                   lora_dropout=cfg.lora_dropout, target_modules=targets,
                                                   replay_reference_init=False, mode="fixed"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 1,
                **kwargs) -> SimpleNamespace:
        """``.logits [B, logits_to_keep, V]`` in float32. The decoder runs under bf16 autocast, the LM head does
        not: bf16 logits keep ~3 significant digits, so the 20 letters' logits collapse onto 5-7 distinct values
        and ties (which count against the target) push every teacher below chance."""
        causal = self.lm.model
        with self.lm.gate_ctx.bind(torch.ones(input_ids.shape[0], 1)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
                hs = causal.model(input_ids=input_ids, attention_mask=attention_mask,
                                  **kwargs).last_hidden_state[:, -logits_to_keep:]              # [B, k, d]
            return SimpleNamespace(logits=F.linear(hs.float(), causal.lm_head.weight.float()))

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]


def _tokenize_left(tokenizer, texts: list[str]) -> dict:
    """Left-padded batch (the read position is the last column for every row)."""
    pad_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    try:
        return encode(tokenizer, texts, padding=True)
    finally:
        tokenizer.padding_side = pad_side


def letter_logprobs(model, tokenizer, texts: list[str], lid: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(``[b, n]`` log-softmax over the letters ``lid``, real tokens, padded tokens) for one batch of prompts."""
    tok = _tokenize_left(tokenizer, texts)
    logits = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], use_cache=False,
                   logits_to_keep=1).logits[:, -1]                                              # [b, V]
    return (torch.log_softmax(logits[:, lid].float(), dim=-1), int(tok["attention_mask"].sum()),
            int(tok["input_ids"].numel()))


def training_candidates(rows, cfg: LlamaRecConfig, epoch: int, retrieval: torch.Tensor | None = None):
    """(rows kept ``[M]``, candidates ``[M, n]``, target column ``[M]``) for one training epoch.

    ``random``: :func:`reimpl.teachers.common.candidates` with seed ``TRAIN_CAND_SEED + epoch``. ``retrieved``:
    the top ``n`` of ``retrieval [N, I]`` (history masked by the caller), shuffled per row, rows whose target is not
    among them dropped (LlamaRec's rule)."""
    from reimpl.teachers import common

    if cfg.train_cands == "random":
        c = common.candidates(rows, cfg.n_cands, TRAIN_CAND_SEED + epoch)
        keep = np.arange(len(rows))
    else:
        require(retrieval is not None, "train_cands", "'random' unless stage-1 scores are given", cfg.train_cands)
        top = retrieval.topk(cfg.n_cands, dim=1).indices.numpy()
        g = np.random.default_rng([TRAIN_CAND_SEED + epoch, cfg.seed])
        top = np.stack([g.permutation(r) for r in top])
        keep = np.flatnonzero((top == rows.next[:, None]).any(1))
        c = top[keep]
    col = (c == rows.next[keep][:, None]).argmax(1)
    return keep, c, col


def train_llamarec(model: LlamaRec, titles: dict[int, str], rows, log=None, checkpoint=None, start_step: int = 0,
                   curve: list | None = None, retrieval: torch.Tensor | None = None) -> dict:
    """AdamW on the LoRA weights, cross-entropy over the ``n`` letters, ``epochs`` passes in a seeded order;
    ``checkpoint(step, curve)`` every 25 steps (resumable with ``start_step`` and ``curve``)."""
    cfg, tok = model.cfg, model.tokenizer
    lid = letter_ids(tok, cfg.n_cands)
    g = np.random.default_rng(cfg.seed)
    plan = []                                   # (row, candidates, target column) in training order
    for ep in range(cfg.epochs):
        keep, c, col = training_candidates(rows, cfg, ep, retrieval)
        for j in g.permutation(len(keep)):
            plan.append((int(keep[j]), c[j], int(col[j])))
    steps = len(plan) // cfg.batch_size
    opt = torch.optim.AdamW([p for _, p in model.trainable()], lr=cfg.lr, weight_decay=0.0)
    if getattr(model, "_opt_state", None) is not None:
        opt.load_state_dict(model._opt_state)
    curve = list(curve or [])
    model.train()
    t0, real, padded = time.perf_counter(), 0, 0
    for step in range(start_step, steps):
        part = plan[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        texts = [prompt(titles, rows.history(r), c.tolist()) for r, c, _ in part]
        lp, n_real, n_pad = letter_logprobs(model, tok, texts, lid)
        loss = F.nll_loss(lp, torch.tensor([k for _, _, k in part]))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"train_llamarec: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        real, padded = real + n_real, padded + n_pad
        curve.append(round(loss.item(), 5))
        if log and step % 5 == 0:
            log(f"step {step}/{steps}: loss {loss.item():.4f} ({real / (time.perf_counter() - t0):.1f} tok/s)")
        if checkpoint and (step + 1) % 25 == 0:
            model._opt_state = opt.state_dict()
            checkpoint(step + 1, curve)
    model.eval()
    secs = time.perf_counter() - t0
    return {"steps": steps, "rows_trained": len(plan), "loss_curve": curve, "train_s": round(secs, 2),
            "train_tokens_per_s": round(real / max(secs, 1e-9), 1), "padded_tokens": padded, "tokens": real,
            "rows_per_s": round((steps - start_step) * cfg.batch_size / max(secs, 1e-9), 3)}


def rerank(model, tokenizer, titles: dict[int, str], hists: Sequence[Sequence[int]], cands: torch.Tensor,
           batch: int = 8) -> torch.Tensor:
    """Verbalizer scores ``[B, n]`` (log-softmax over the n letters) for candidates ``cands [B, n]``."""
    lid = letter_ids(tokenizer, cands.shape[1])
    out = []
    for s in range(0, len(hists), batch):
        texts = [prompt(titles, h, c.tolist()) for h, c in zip(hists[s:s + batch], cands[s:s + batch])]
        out.append(letter_logprobs(model, tokenizer, texts, lid)[0])
    return torch.cat(out)


ADAPTER_KIND = "llamarec-adapter"


def save_adapter(path, model: LlamaRec, meta: dict):
    """The LoRA tensors only (the compact form the results store keeps)."""
    from reimpl import checkpoint as ck

    return ck.save(path, {"meta": meta, "trainable": {n: p.detach().clone() for n, p in model.trainable()}},
                   kind=ADAPTER_KIND)


def load_adapter(path, model: LlamaRec) -> dict:
    """:func:`save_adapter`'s tensors into ``model`` (names must match exactly); returns its metadata."""
    from reimpl import checkpoint as ck

    state = ck.load(path, kind=ADAPTER_KIND)
    names = {n for n, _ in model.trainable()}
    if set(state["trainable"]) != names:
        raise ValueError(f"{path}: adapter tensors {sorted(set(state['trainable']) ^ names)[:5]} do not match "
                         "this LlamaRec configuration")
    model.load_state_dict(state["trainable"], strict=False)
    return state["meta"]


def two_stage_scores(retrieval: torch.Tensor, rerank_scores: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """``[B, I]`` scores whose order is: the candidates by ``rerank_scores`` first, then the rest by ``retrieval``.

    retrieval ``[B, I]`` stage-1 scores, rerank_scores ``[B, n]``, cands ``[B, n]`` item ids."""
    r = retrieval.double()
    # squash stage-1 scores into (0, 1) and lift the candidates above every other item
    base = torch.sigmoid((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-12))
    out = base.clone()
    out.scatter_(1, cands, 2.0 + torch.sigmoid(rerank_scores.double()))
    return out
