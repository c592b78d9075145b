"""LlamaRec two-stage teacher: SASRec retrieves candidates, the LLM reranks them in one forward pass.

seed 003, section 4 (Yue et al., LlamaRec, 2023): stage 1, the frozen SASRec checkpoint ranks all items and keeps
its top ``n`` (20); stage 2, the LLM reads the history titles and the ``n`` candidate titles, each behind an index
letter ``A``, ``B``, ..., and its next-token logits over those letters (the *verbalizer*) score all candidates at
once: one forward pass per row, no generation. Trained (optionally) with cross-entropy over the letters, LoRA on the
LLM (:mod:`reimpl.ilora.moe_lora`, ``num_moe = 1``); rows whose target is not among the candidates are skipped in
training (LlamaRec does the same).

Over all items, the two-stage ranking is: the ``n`` candidates in the LLM's order, then every other item in
SASRec's order. :func:`rerank` also takes any given candidate set, so the teacher is measured on the same 20
candidates as every other teacher.

Shapes: B rows, n candidates, V vocabulary.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence

import torch

LETTERS = string.ascii_uppercase


@dataclass
class LlamaRecConfig:
    n_cands: int = 20
    mode: str = "fixed"

    def __post_init__(self) -> None:
        if not 2 <= self.n_cands <= len(LETTERS):
            raise ValueError(f"--n_cands: expected 2..{len(LETTERS)} (one index letter each), got {self.n_cands}")


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


def rerank(model, tokenizer, titles: dict[int, str], hists: Sequence[Sequence[int]], cands: torch.Tensor,
           batch: int = 8) -> torch.Tensor:
    """Verbalizer scores ``[B, n]`` (log-softmax over the n letters) for candidates ``cands [B, n]``."""
    n = cands.shape[1]
    lid = letter_ids(tokenizer, n)
    out = []
    pad_side, tokenizer.padding_side = tokenizer.padding_side, "left"   # the read position is the last column
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    try:
        for s in range(0, len(hists), batch):
            texts = [prompt(titles, h, c.tolist()) for h, c in zip(hists[s:s + batch], cands[s:s + batch])]
            tok = tokenizer(texts, return_tensors="pt", padding=True)
            logits = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], use_cache=False,
                           logits_to_keep=1).logits[:, -1]                                   # [b, V]
            out.append(torch.log_softmax(logits[:, lid].float(), dim=-1))
    finally:
        tokenizer.padding_side = pad_side
    return torch.cat(out)


def two_stage_scores(retrieval: torch.Tensor, rerank_scores: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """``[B, I]`` scores whose order is: the candidates by ``rerank_scores`` first, then the rest by ``retrieval``.

    retrieval ``[B, I]`` stage-1 scores, rerank_scores ``[B, n]``, cands ``[B, n]`` item ids."""
    r = retrieval.double()
    # squash stage-1 scores into (0, 1) and lift the candidates above every other item
    base = torch.sigmoid((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-12))
    out = base.clone()
    out.scatter_(1, cands, 2.0 + torch.sigmoid(rerank_scores.double()))
    return out
