"""A clearly labelled STAND-IN teacher for extension trials while no trained iLoRA export exists.

NOT the iLoRA teacher. ``E`` SASRec "experts" (:class:`reimpl.models.SASRec`, ``mode="fixed"``, no
LLM injection), each trained from its own seed with full-softmax cross-entropy on the train split,
mixed with a uniform gate ``g = 1/E`` (there is no user-conditioned router). It exports what an
iLoRA teacher exports, in the same layout and conventions:

* ``myrank_train.txt`` ``[N, K]``: top-K items of the mixture ``p = sum_k g_k softmax(s_k)`` over all
  items (history items included, as the LLM teacher may rank them);
* ``confidence_train.txt`` ``[N, K]``: ``-log p(item)`` (a distance, DLLM2Rec's convention);
* ``all_embeddings.pt`` ``[item_num, H]``: mean of the experts' input item embeddings;
* ``uncertainty_train.txt`` ``[N]``: :func:`reimpl.extensions.uamd.expert_disagreement` of the experts'
  log-probabilities over the mixture's top-``C`` items (``C = uncertainty_candidates``) -- the same
  definition the iLoRA export uses over its ``C`` prompt candidates.

For CDR it also implements teacher *refinement* (:meth:`StandInTeacher.refine`): the experts' item
embeddings (input table and output layer) are re-initialized from the student's, everything else is
frozen (the stand-in's analogue of the frozen LLM), and the embeddings are fine-tuned with
cross-entropy plus ``mu * KL(student || teacher)`` (reverse distillation towards the student).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reimpl.extensions.uamd import expert_disagreement
from reimpl.models import SASRec


@dataclass
class StandInConfig:
    num_experts: int = 3
    hidden: int = 64
    epochs: int = 4
    batch_size: int = 256
    lr: float = 5e-3
    dropout: float = 0.1
    topk: int = 10
    uncertainty_candidates: int = 20
    seed: int = 7
    # refinement (CDR step 2)
    refine_epochs: int = 1
    refine_mu: float = 0.5
    refine_tau: float = 1.0


def _expert(cfg: StandInConfig, item_num: int, seq_size: int) -> SASRec:
    return SASRec(cfg.hidden, item_num, seq_size, cfg.dropout, 1, d_llm=cfg.hidden, d_proj=cfg.hidden,
                  ed_weight=0.0, mode="fixed")


class StandInTeacher:
    def __init__(self, cfg: StandInConfig, item_num: int, seq_size: int):
        if cfg.num_experts < 1:
            raise ValueError(f"StandInConfig.num_experts must be >= 1, got {cfg.num_experts}")
        self.cfg, self.item_num, self.seq_size = cfg, item_num, seq_size
        self.experts: list[SASRec] = []
        for k in range(cfg.num_experts):
            torch.manual_seed(cfg.seed + 1000 * k)
            self.experts.append(_expert(cfg, item_num, seq_size))

    @property
    def gate(self) -> torch.Tensor:
        e = len(self.experts)
        return torch.full((e,), 1.0 / e, dtype=torch.float64)

    # ------------------------------------------------------------------------------ training
    def _epochs(self, seq, lens, nxt, epochs: int, params_of, extra=None, seed_offset: int = 0, log=None):
        n = len(nxt)
        if n < 1:
            raise ValueError("StandInTeacher: no train rows")
        for k, m in enumerate(self.experts):
            g = torch.Generator().manual_seed(self.cfg.seed + 1000 * k + seed_offset)
            torch.manual_seed(self.cfg.seed + 1000 * k + seed_offset)
            opt = torch.optim.Adam(params_of(m), lr=self.cfg.lr)
            m.train()
            for ep in range(epochs):
                perm = torch.randperm(n, generator=g).numpy()
                tot = 0.0
                for lo in range(0, n, self.cfg.batch_size):
                    r = perm[lo:lo + self.cfg.batch_size]
                    out = m(torch.as_tensor(seq[r]), torch.as_tensor(lens[r]))
                    loss = F.cross_entropy(out, torch.as_tensor(nxt[r]))
                    if extra is not None:
                        loss = loss + extra(r, out)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * len(r)
                if log:
                    log(f"stand-in expert {k} epoch {ep + 1}: loss {tot / n:.4f}")
            m.eval()

    def fit(self, seq: np.ndarray, lens: np.ndarray, nxt: np.ndarray, log=None) -> "StandInTeacher":
        """Train every expert with cross-entropy (seq ``[N, L]``, lens ``[N]``, nxt ``[N]``)."""
        self._epochs(seq, lens, nxt, self.cfg.epochs, lambda m: m.parameters(), log=log)
        return self

    def refine(self, student: nn.Module, seq, lens, nxt, student_logits=None, log=None, round_: int = 1) -> None:
        """CDR step 2: item embeddings <- the student's, the rest frozen, fine-tune with
        ``CE + mu * KL(softmax(student/tau) || softmax(teacher/tau))`` (``student_logits(rows) -> [b, I]``)."""
        for m in self.experts:
            with torch.no_grad():
                m.item_embeddings.weight.copy_(student.item_embeddings.weight)
                m.s_fc.weight.copy_(student.s_fc.weight)
                m.s_fc.bias.copy_(student.s_fc.bias)
        trainable = lambda m: [m.item_embeddings.weight, m.s_fc.weight, m.s_fc.bias]  # noqa: E731
        for m in self.experts:
            for p in m.parameters():
                p.requires_grad_(False)
            for p in trainable(m):
                p.requires_grad_(True)
        extra = None
        if student_logits is not None and self.cfg.refine_mu > 0:
            tau = self.cfg.refine_tau

            def extra(rows, out):
                with torch.no_grad():
                    ps = torch.softmax(student_logits(rows) / tau, 1)
                return self.cfg.refine_mu * F.kl_div(torch.log_softmax(out / tau, 1), ps, reduction="batchmean")
        self._epochs(seq, lens, nxt, self.cfg.refine_epochs, trainable, extra, seed_offset=17 * round_, log=log)
        for m in self.experts:
            for p in m.parameters():
                p.requires_grad_(True)

    # ------------------------------------------------------------------------------ export
    @torch.no_grad()
    def expert_logprobs(self, seq: np.ndarray, lens: np.ndarray) -> torch.Tensor:
        """``[N, E, I]`` float64 log-softmax of every expert."""
        out = []
        for m in self.experts:
            m.eval()
            out.append(torch.log_softmax(m(torch.as_tensor(seq), torch.as_tensor(lens)).double(), 1))
        return torch.stack(out, 1)

    @torch.no_grad()
    def export(self, seq: np.ndarray, lens: np.ndarray, kind: str = "variance", batch_size: int = 2048
               ) -> dict[str, np.ndarray | torch.Tensor]:
        """``{"rank" [N, K], "confidence" [N, K], "uncertainty" [N], "embeddings" [item_num, H]}``."""
        K, C = self.cfg.topk, max(self.cfg.uncertainty_candidates, self.cfg.topk)
        g = self.gate
        ranks, confs, us = [], [], []
        for lo in range(0, len(seq), batch_size):
            lp = self.expert_logprobs(seq[lo:lo + batch_size], lens[lo:lo + batch_size])  # [b, E, I]
            mix = torch.logsumexp(lp + torch.log(g)[None, :, None], 1)                   # log p [b, I]
            top = torch.sort(mix, dim=1, descending=True, stable=True).indices[:, :C]
            ranks.append(top[:, :K].numpy().astype(np.int64))
            confs.append((-mix.gather(1, top[:, :K])).numpy())
            exp_scores = lp.gather(2, top.unsqueeze(1).expand(-1, lp.shape[1], -1))      # [b, E, C]
            us.append(expert_disagreement(exp_scores, g.expand(len(top), -1), kind).numpy())
        emb = torch.stack([m.item_embeddings.weight[:self.item_num] for m in self.experts]).mean(0)
        return {"rank": np.concatenate(ranks), "confidence": np.concatenate(confs),
                "uncertainty": np.concatenate(us), "embeddings": emb.detach().clone()}

    @torch.no_grad()
    def scores(self, states: np.ndarray, lens: np.ndarray) -> torch.Tensor:
        """``[N, I]`` log-probabilities of the mixture (for evaluating the teacher itself)."""
        lp = self.expert_logprobs(states, lens)
        return torch.logsumexp(lp + torch.log(self.gate)[None, :, None], 1)
