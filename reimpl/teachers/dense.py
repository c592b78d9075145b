"""Dense retrieval teacher (Contriever-style dual encoder over LLM text vectors), trained with InfoNCE.

seed 003, sections 1-2: items and users mapped into one space by the same LLM encoder, trained contrastively,
ranked by inner product. Here the LLM is frozen and its pooled last-layer states are computed once
(:mod:`reimpl.teachers.encode`: ``last`` token or ``mean`` pooling, LLM2Vec's option), so the trainable part is
small and the whole LastFM train split fits this 2-core CPU:

* item tower:  ``v_i = normalize(W_item x_i [+ e_i])`` with ``x_i`` the LLM vector of item i's title ``[I, d_llm]``
  and ``e_i`` an optional per-item id embedding (zero-initialised; ``id_embeddings``: text + collaborative
  residual, off by default = text only);
* user tower (``user_encoder``):
  - ``items``: the history's item text vectors (the same cached ``x``) + learned positions, one causal
    self-attention block, the state at the last history position -> ``W_user`` (history read through the LLM's
    item space; no per-row LLM pass);
  - ``llm``: the LLM vector of the history *text* (``reimpl.teachers.common.history_text``), cached per row ->
    ``W_user`` (costs one LLM pass per row, so only for the rows it is given);
* score ``s(u, i) = <u, v_i> / tau``; loss InfoNCE with in-batch negatives (each row's positive is its next item,
  negatives the other rows' next items; a negative equal to the row's own target is masked), or ``negatives="all"``:
  softmax over every item.

Shapes: B rows, L history positions, I items, d_llm LLM width, D shared width.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reimpl.cliconf import require


@dataclass
class DenseConfig:
    pooling: str = field(default="mean", metadata={"choices": ["mean", "last"],
                                                   "help": "LLM pooling of each text (LLM2Vec: mean)"})
    user_encoder: str = field(default="items", metadata={"choices": ["items", "llm"]})
    dim: int = 128                 # D, the shared space
    heads: int = 2
    dropout: float = 0.1
    tau: float = 0.05              # Contriever's temperature
    negatives: str = field(default="inbatch", metadata={"choices": ["inbatch", "all"]})
    id_embeddings: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 4
    seed: int = 0
    mode: str = "fixed"            # no reference implementation: only the fixed (documented) form exists

    def __post_init__(self) -> None:
        require(self.mode == "fixed", "--mode", "'fixed' (the dense teacher has no reference to be faithful to)",
                self.mode)
        require(self.dim % self.heads == 0, "--dim", f"a multiple of --heads={self.heads}", self.dim)
        require(self.tau > 0, "--tau", "> 0", self.tau)
        require(self.batch_size >= 2, "--batch_size", ">= 2 (in-batch negatives)", self.batch_size)


class DenseRetriever(nn.Module):
    """Two towers over frozen LLM vectors. ``item_vecs [I, d_llm]`` is a buffer (not trained)."""

    def __init__(self, cfg: DenseConfig, item_vecs: torch.Tensor, seq_len: int = 10):
        super().__init__()
        self.cfg = cfg
        i, d_llm = item_vecs.shape
        # standardise the frozen vectors once: LLM states have a few huge dimensions that swamp a linear map
        mu, sd = item_vecs.mean(0), item_vecs.std(0).clamp_min(1e-6)
        self.register_buffer("item_x", (item_vecs - mu) / sd)                                  # [I, d_llm]
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)
        self.item_proj = nn.Linear(d_llm, cfg.dim)
        self.item_id = nn.Embedding(i, cfg.dim) if cfg.id_embeddings else None
        if self.item_id is not None:
            nn.init.zeros_(self.item_id.weight)
        self.user_proj = nn.Linear(d_llm if cfg.user_encoder == "llm" else cfg.dim, cfg.dim)
        if cfg.user_encoder == "items":
            self.hist_proj = nn.Linear(d_llm, cfg.dim)
            self.pad = nn.Parameter(torch.zeros(cfg.dim))                       # the empty-history token
            self.pos = nn.Parameter(torch.randn(seq_len + 1, cfg.dim) * 0.02)
            self.block = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                                    norm_first=True)

    def items(self) -> torch.Tensor:
        """``[I, D]`` unit-norm item vectors."""
        v = self.item_proj(self.item_x)
        if self.item_id is not None:
            v = v + self.item_id.weight
        return F.normalize(v, dim=-1)

    def users(self, hist: torch.Tensor | None = None, user_x: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, D]`` unit-norm user vectors from ``hist [B, L]`` item ids (``-1`` = padding, right-padded) or
        ``user_x [B, d_llm]`` cached LLM vectors of the history texts."""
        if self.cfg.user_encoder == "llm":
            return F.normalize(self.user_proj((user_x - self.mu) / self.sd), dim=-1)
        b, L = hist.shape
        valid = hist >= 0
        h = self.hist_proj(self.item_x[hist.clamp_min(0)])                                       # [B, L, D]
        h = torch.where(valid.unsqueeze(-1), h, torch.zeros_like(h))
        h = torch.cat([self.pad.expand(b, 1, -1), h], 1) + self.pos[: L + 1]                     # [B, L+1, D]
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool), valid], 1)
        causal = torch.triu(torch.ones(L + 1, L + 1, dtype=torch.bool), 1)
        out = self.block(h, src_mask=causal, src_key_padding_mask=~keep)                         # [B, L+1, D]
        last = valid.sum(1)                                   # position of the last real item (0 = empty token)
        return F.normalize(self.user_proj(out[torch.arange(b), last]), dim=-1)

    def scores(self, u: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, I]`` inner products / tau."""
        return u @ (self.items() if items is None else items).T / self.cfg.tau


def info_nce(u: torch.Tensor, v_all: torch.Tensor, target: torch.Tensor, tau: float, negatives: str) -> torch.Tensor:
    """InfoNCE. u ``[B, D]``, v_all ``[I, D]``, target ``[B]``. ``inbatch``: logits ``[B, B]`` against the batch's
    targets, a column whose item equals the row's target (other than the diagonal) masked; ``all``: ``[B, I]``."""
    if negatives == "all":
        return F.cross_entropy(u @ v_all.T / tau, target)
    logits = u @ v_all[target].T / tau                                                            # [B, B]
    same = (target[:, None] == target[None, :]) & ~torch.eye(len(target), dtype=torch.bool)
    return F.cross_entropy(logits.masked_fill(same, -torch.inf), torch.arange(len(target)))


def hist_tensor(seqs: np.ndarray, item_num: int) -> torch.Tensor:
    """Right-padded ``[N, L]`` item ids with ``item_num`` padding -> ``-1`` padding."""
    s = torch.as_tensor(seqs, dtype=torch.long)
    return torch.where(s == item_num, -1, s)


def train_dense(model: DenseRetriever, hist: torch.Tensor | None, user_x: torch.Tensor | None, target: torch.Tensor,
                log=None) -> dict:
    """Adam over ``epochs`` shuffled passes; returns the loss curve (mean per 50 steps) and cost."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(target)
    steps_per_epoch = n // cfg.batch_size
    curve, acc, t0 = [], [], time.perf_counter()
    model.train()
    for ep in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            u = model.users(hist[idx] if hist is not None else None, user_x[idx] if user_x is not None else None)
            loss = info_nce(u, model.items(), target[idx], cfg.tau, cfg.negatives)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"train_dense: non-finite loss at epoch {ep} step {s}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc.append(loss.item())
            if len(acc) == 50:
                curve.append(float(np.mean(acc)))
                acc = []
                if log:
                    log(f"epoch {ep} step {s}: loss {curve[-1]:.4f}")
    if acc:
        curve.append(float(np.mean(acc)))
    model.eval()
    secs = time.perf_counter() - t0
    return {"loss_curve_per50": curve, "steps": cfg.epochs * steps_per_epoch, "train_s": round(secs, 2),
            "rows_per_s": round(cfg.epochs * steps_per_epoch * cfg.batch_size / max(secs, 1e-9), 1)}


@torch.no_grad()
def score_all(model: DenseRetriever, hist: torch.Tensor | None, user_x: torch.Tensor | None,
              batch: int = 2048) -> torch.Tensor:
    """``[N, I]`` scores of every row against every item (eval mode)."""
    model.eval()
    v = model.items()
    n = len(hist) if hist is not None else len(user_x)
    out = []
    for s in range(0, n, batch):
        u = model.users(hist[s:s + batch] if hist is not None else None,
                        user_x[s:s + batch] if user_x is not None else None)
        out.append(model.scores(u, v))
    return torch.cat(out)
