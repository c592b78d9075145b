"""E4SRec teacher: item-id embeddings injected into the LLM prompt; last hidden state . item table = scores.

seed 003, section 3 (Li et al., E4SRec, 2023): each history item enters the prompt as one input vector,
``in_proj(E[id])`` with ``E`` the item-id table initialised from the SASRec checkpoint (``rec_model/lastfm.pt``
``item_embeddings``, trainable); the LLM's last hidden state at the prompt's last token goes through ``out_proj`` to
the item space and scores every item by inner product with ``E``; loss: cross-entropy over all items. The LLM is
frozen except LoRA (:mod:`reimpl.ilora.moe_lora`): ``num_moe = 1`` is plain LoRA; ``num_moe > 1`` is MoE-LoRA with
either a uniform gate or, ``gate="ilora"``, iLoRA's gate (:class:`reimpl.ilora.router.NLPRouter` over the frozen
SASRec user state).

Prompt (one row): ``<prefix tokens> [E_1] ... [E_k] <suffix tokens>``, right-padded, attention-masked; the read
position is the last suffix token. Costs on this CPU: LoRA only on the last ``lora_layers`` decoder layers keeps
the adapter small, but the trainable ``in_proj`` sits below every layer, so backward runs the whole stack;
``llm_layers`` (off by default) keeps only the first n decoder layers of the LLM (a shallower SmolLM2, stated
wherever used).

Shapes: B rows, L history slots, T prompt positions, d LLM width, H SASRec width (64), I items.
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
from reimpl.ilora.moe_lora import MoeLoraConfig, wrap_moe_lora
from reimpl.ilora.router import NLPRouter, RouterConfig

PREFIX = "This user has listened to"
SUFFIX = ". The next artist this user will listen to is"


@dataclass
class E4SRecConfig:
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    num_moe: int = 1
    gate: str = field(default="uniform", metadata={"choices": ["uniform", "ilora"]})
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_layers: int | None = 4          # LoRA on the last n decoder layers (None: all)
    llm_layers: int | None = None        # keep only the first n decoder layers (None: the whole LLM)
    lr: float = 1e-3
    item_lr: float = 1e-4                # the SASRec-initialised table moves slowly
    batch_size: int = 16
    epochs: int = 1
    bf16: bool = True                    # bf16 autocast (AVX-512 BF16 on this CPU)
    seed: int = 0
    mode: str = "fixed"

    def __post_init__(self) -> None:
        require(self.mode == "fixed", "--mode", "'fixed' (E4SRec has no reference here to be faithful to)", self.mode)
        require(self.num_moe >= 1 and self.lora_r % self.num_moe == 0, "--num_moe",
                f"a divisor of --lora_r={self.lora_r}", self.num_moe)
        require(self.gate == "uniform" or self.num_moe > 1, "--gate", "'uniform' when --num_moe 1", self.gate)
        self.targets = tuple(self.targets)


def keep_first_layers(body, n: int) -> None:
    """Cut a Llama body (``LlamaModel``, or the causal LM around it) to its first ``n`` decoder layers, in place."""
    body = getattr(body, "model", body)
    require(0 < n <= len(body.layers), "--llm_layers", f"1..{len(body.layers)}", n)
    body.layers = body.layers[:n]
    body.config.num_hidden_layers = n


class E4SRec(nn.Module):
    def __init__(self, cfg: E4SRecConfig, llm, tokenizer, sasrec, prefix: str = PREFIX, suffix: str = SUFFIX):
        super().__init__()
        self.cfg = cfg
        body = getattr(llm, "model", llm)                   # LlamaModel: no LM head is ever run
        if cfg.llm_layers is not None:
            keep_first_layers(body, cfg.llm_layers)
        n = len(body.layers)
        first = 0 if cfg.lora_layers is None else max(0, n - cfg.lora_layers)
        mlp = ("gate_proj", "up_proj", "down_proj")
        targets = tuple(f"layers.{i}.{'mlp' if t in mlp else 'self_attn'}.{t}" for i in range(first, n)
                        for t in cfg.targets)
        self.lm = wrap_moe_lora(body, MoeLoraConfig(r=cfg.lora_r, num_moe=cfg.num_moe, lora_alpha=cfg.lora_alpha,
                                                    lora_dropout=cfg.lora_dropout, target_modules=targets,
                                                    replay_reference_init=False, mode="fixed"))
        d = body.config.hidden_size
        self.sasrec = sasrec                                 # frozen (load_checkpoint), read for the gate only
        w = sasrec.item_embeddings.weight.detach().clone()   # [I + 1, H]; row I = padding
        self.item_num, h = w.shape[0] - 1, w.shape[1]
        self.items = nn.Parameter(w[: self.item_num].clone())                                  # [I, H]
        self.in_proj = nn.Linear(h, d)
        self.out_proj = nn.Linear(d, h)
        self.router = NLPRouter(RouterConfig(num_moe=cfg.num_moe, mode="fixed")) if cfg.gate == "ilora" else None
        ids = lambda s: torch.tensor(tokenizer(s, add_special_tokens=False)["input_ids"], dtype=torch.long)  # noqa: E731
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.register_buffer("prefix_ids", torch.cat([torch.tensor(bos, dtype=torch.long), ids(prefix)]))
        self.register_buffer("suffix_ids", ids(suffix))

    def gate(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """``[B, E]``: iLoRA's router over the SASRec user state, or uniform ``1/E``."""
        if self.router is None:
            return torch.full((seqs.shape[0], self.cfg.num_moe), 1.0 / self.cfg.num_moe)
        with torch.no_grad():
            u = self.sasrec.user_state(seqs, lens)
        return self.router(u)

    def prompt(self, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hist ``[B, L]`` ids (``-1`` pad, right-padded) -> (inputs_embeds ``[B, T, d]``, mask ``[B, T]``, read
        position ``[B]``): prefix, one injected vector per history item, suffix, then padding."""
        b, L = hist.shape
        k = (hist >= 0).sum(1)                                                                  # [B]
        emb = self.lm.get_input_embeddings()
        pre, suf = emb(self.prefix_ids), emb(self.suffix_ids)                      # [P, d], [S, d]
        p, s = len(pre), len(suf)
        t = p + L + s
        x = self.in_proj(self.items[hist.clamp_min(0)])                                         # [B, L, d]
        pos = torch.arange(t)
        out = torch.zeros(b, t, pre.shape[1], dtype=x.dtype)
        out[:, :p] = pre
        slot = (pos[None, :] >= p) & (pos[None, :] < p + k[:, None])                           # [B, T]
        out = torch.where(slot.unsqueeze(-1), F.pad(x, (0, 0, p, s)), out)
        sidx = pos[None, :] - p - k[:, None]                                                    # suffix index
        in_suf = (sidx >= 0) & (sidx < s)
        out = torch.where(in_suf.unsqueeze(-1), suf[sidx.clamp(0, s - 1)], out)
        mask = (pos[None, :] < (p + k + s)[:, None]).long()
        return out, mask, p + k + s - 1

    def forward(self, seqs: torch.Tensor, item_num_pad: int) -> torch.Tensor:
        """seqs ``[B, L]`` right-padded with ``item_num_pad`` -> scores ``[B, I]``."""
        hist = torch.where(seqs == item_num_pad, -1, seqs)
        lens = (hist >= 0).sum(1).clamp_min(1)
        x, mask, read = self.prompt(hist)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
            hs = self.lm(inputs_embeds=x, attention_mask=mask, use_cache=False,
                         gate_weights=self.gate(seqs, lens)).last_hidden_state                 # [B, T, d]
        u = self.out_proj(hs[torch.arange(len(read)), read].float())                           # [B, H]
        return u @ self.items.T                                                                 # [B, I]

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]


def train_e4srec(model: E4SRec, seqs: np.ndarray, target: np.ndarray, item_num_pad: int, log=None,
                 checkpoint=None, start_step: int = 0, curve: list | None = None) -> dict:
    """AdamW, CE over all items, ``epochs`` passes in a seeded order; ``checkpoint(step, curve)`` is called every
    25 steps (resumable: pass ``start_step`` and the ``curve`` so far)."""
    cfg = model.cfg
    g = np.random.default_rng(cfg.seed)
    order = np.concatenate([g.permutation(len(target)) for _ in range(cfg.epochs)])
    steps = len(order) // cfg.batch_size
    groups = [{"params": [model.items], "lr": cfg.item_lr},
              {"params": [p for n, p in model.trainable() if n != "items"], "lr": cfg.lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    if getattr(model, "_opt_state", None) is not None:
        opt.load_state_dict(model._opt_state)
    curve = list(curve or [])
    model.train()
    model.sasrec.eval()
    t0, tokens = time.perf_counter(), 0
    for step in range(start_step, steps):
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        s = torch.as_tensor(seqs[idx], dtype=torch.long)
        loss = F.cross_entropy(model(s, item_num_pad), torch.as_tensor(target[idx], dtype=torch.long))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"train_e4srec: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += int(len(model.prefix_ids) + len(model.suffix_ids)) * len(idx) + int((s != item_num_pad).sum())
        curve.append(round(loss.item(), 5))
        if log and step % 5 == 0:
            log(f"step {step}/{steps}: loss {loss.item():.4f} ({tokens / (time.perf_counter() - t0):.1f} tok/s)")
        if checkpoint and (step + 1) % 25 == 0:
            model._opt_state = opt.state_dict()
            checkpoint(step + 1, curve)
    model.eval()
    secs = time.perf_counter() - t0
    return {"steps": steps, "loss_curve": curve, "train_s": round(secs, 2),
            "train_tokens_per_s": round(tokens / max(secs, 1e-9), 1),
            "rows_per_s": round((steps - start_step) * cfg.batch_size / max(secs, 1e-9), 3)}


@torch.no_grad()
def score_all(model: E4SRec, seqs: np.ndarray, item_num_pad: int, batch: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(torch.as_tensor(seqs[s:s + batch], dtype=torch.long), item_num_pad).float()
                      for s in range(0, len(seqs), batch)])


ADAPTER_KIND = "e4srec-adapter"


def save_adapter(path, model: E4SRec, meta: dict):
    """The trainable tensors only (LoRA, in/out projections, the item table; ~0.7 M values for 6 layers, fp32):
    the compact form the results store keeps, enough to rebuild the teacher with the frozen LLM."""
    from reimpl import checkpoint as ck

    return ck.save(path, {"meta": meta, "trainable": {n: p.detach().clone() for n, p in model.trainable()}},
                   kind=ADAPTER_KIND)


def load_adapter(path, model: E4SRec) -> dict:
    """Load :func:`save_adapter`'s tensors into ``model`` (names must match exactly); returns its metadata."""
    from reimpl import checkpoint as ck

    state = ck.load(path, kind=ADAPTER_KIND)
    names = {n for n, _ in model.trainable()}
    if set(state["trainable"]) != names:
        raise ValueError(f"{path}: adapter tensors {sorted(set(state['trainable']) ^ names)[:5]} do not match "
                         "this E4SRec configuration")
    model.load_state_dict(state["trainable"], strict=False)
    return state["meta"]


def adapter_from_run_checkpoint(ckpt, out, meta: dict):
    """The compact adapter from a run's resumable checkpoint (``runs/teachers/<name>/ckpt.pt``, written by
    ``reimpl.teachers.run``), for runs finished before the adapter was written beside their export."""
    from reimpl import checkpoint as ck

    state = torch.load(ckpt, weights_only=False)   # this project's own cache file
    return ck.save(out, {"meta": {**meta, "step": state["step"]}, "trainable": state["trainable"]},
                   kind=ADAPTER_KIND)
