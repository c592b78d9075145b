"""SASRec student (one self-attention block). Mirrors DLLM2Rec ``main.py:146-195`` and
``SASRecModules_ori.py:7-94`` (``PositionwiseFeedForward``, ``MultiHeadAttention``).

forward(states ``[B, L]``, len_states ``[B]``, llm_emb ``[B, L, d_llm]`` | None) -> ``[B, I]``
(faithful: ``.squeeze()``d, so ``[I]`` when ``B == 1``).

Reference behaviour kept in both modes (no deviation, no effect at the defaults): attention logits
are scaled by ``sqrt(hidden_size)``, not ``sqrt(hidden_size / num_heads)``; keys are masked where the
sum of the (masked) input row is exactly 0 and queries where the sum of ``ln_1(seq)`` is exactly 0
(padded query rows are not masked once ``ln_1.bias != 0``; they are zeroed by ``ff_out * mask``);
a row with ``len == 0`` reads position ``-1`` (an all-padding row is zero there as everywhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reimpl.deviations import check_mode
from reimpl.dllm2rec.injection import inject

MASK_VALUE = -(2.0**32) + 1.0  # the reference's additive "minus infinity" (-2 ** 32 + 1)


class PointwiseFFN(nn.Module):
    """``LayerNorm(x + dropout(W2 relu(W1 x)))`` with 1x1 Conv1d weights ``[d, d, 1]``. x: ``[B, L, d]``."""

    def __init__(self, d_in: int, d_hid: int, dropout: float = 0.1):
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, kernel_size=1)
        self.w_2 = nn.Conv1d(d_hid, d_in, kernel_size=1)
        self.layer_norm = nn.LayerNorm(normalized_shape=d_in)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.w_2(F.relu(self.w_1(x.transpose(1, 2)))).transpose(1, 2)
        return self.layer_norm(self.dropout(out) + x)


class MaskedSelfAttention(nn.Module):
    """Causal self-attention with key/query masks and a residual to the queries.

    queries, keys: ``[B, L, C]`` -> ``[B, L, C]``. Heads are stacked head-major on the batch axis
    (``[h*B, L, C/h]``), the reference's order, so dropout draws the same mask for any head count.
    """

    def __init__(self, hidden_size: int, num_units: int, num_heads: int, dropout_rate: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"MaskedSelfAttention: hidden_size {hidden_size} not divisible by "
                             f"num_heads {num_heads}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        # created in q, k, v order (the reference's RNG order); names match its state dict
        for name in ("linear_q", "linear_k", "linear_v"):
            setattr(self, name, nn.Linear(hidden_size, num_units))
        self.dropout = nn.Dropout(p=dropout_rate)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [h*B, L, C/h], head-major
        return torch.cat(x.split(x.size(-1) // self.num_heads, dim=2), dim=0)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # batched matmuls on [h*B, L, C/h]: the reference's layout, so that even the rounding of the
        # (mathematically zero) gradient of linear_k.bias matches it under Adam
        q, k, v = (self._heads(self.linear_q(queries)), self._heads(self.linear_k(keys)),
                   self._heads(self.linear_v(keys)))
        logits = torch.bmm(q, k.transpose(1, 2)) / self.hidden_size**0.5  # [h*B, Lq, Lk]
        key_valid = keys.sum(-1).abs().sign().repeat(self.num_heads, 1)[:, None, :]  # [h*B, 1, Lk]
        logits = torch.where(key_valid == 0, MASK_VALUE, logits)
        Lq, Lk = logits.shape[-2:]
        causal = torch.tril(torch.ones(Lq, Lk, dtype=torch.bool, device=logits.device))
        logits = torch.where(causal, logits, MASK_VALUE)
        attn = torch.softmax(logits, dim=-1)
        attn = attn * queries.sum(-1).abs().sign().repeat(self.num_heads, 1)[:, :, None]  # query mask
        out = torch.bmm(self.dropout(attn), v)  # [h*B, Lq, C/h]
        out = torch.cat(out.split(queries.size(0), dim=0), dim=2)  # heads back on the channel axis
        return out + queries


class SASRec(nn.Module):
    def __init__(self, hidden_size: int, item_num: int, state_size: int, dropout: float = 0.1,
                 num_heads: int = 1, *, d_llm: int = 4096, d_proj: int = 64, ed_weight: float = 0.2,
                 mode: str = "faithful"):
        super().__init__()
        self.mode = check_mode(mode)
        self.state_size, self.hidden_size, self.item_num = state_size, hidden_size, int(item_num)
        self.ed_weight = ed_weight
        self.item_embeddings = nn.Embedding(self.item_num + 1, hidden_size)
        nn.init.normal_(self.item_embeddings.weight, mean=0.0, std=0.01)
        self.positional_embeddings = nn.Embedding(state_size, hidden_size)
        self.emb_dropout = nn.Dropout(p=dropout)
        self.ln_1, self.ln_2, self.ln_3 = (nn.LayerNorm(normalized_shape=hidden_size) for _ in range(3))
        self.mh_attn = MaskedSelfAttention(hidden_size, hidden_size, num_heads, dropout)
        self.feed_forward = PointwiseFFN(hidden_size, hidden_size, dropout)
        self.s_fc = nn.Linear(hidden_size, self.item_num)
        self.fc_4096_64 = nn.Linear(d_llm, d_proj)

    def forward(self, states: torch.Tensor, len_states, llm_emb: torch.Tensor | None = None
                ) -> torch.Tensor:
        B, L = states.shape
        if L != self.state_size:
            raise ValueError(f"SASRec: states must be [B, state_size={self.state_size}], got [{B}, {L}]")
        x = inject(self.item_embeddings(states), llm_emb, self.fc_4096_64, self.ed_weight)
        # every position gets its positional embedding, padding included; the mask below zeroes it
        x = x + self.positional_embeddings.weight
        mask = torch.ne(states, self.item_num).float().unsqueeze(-1)  # [B, L, 1]
        seq = self.emb_dropout(x) * mask
        h = self.mh_attn(self.ln_1(seq), seq)
        h = self.ln_3(self.feed_forward(self.ln_2(h)) * mask)  # [B, L, H]
        last = torch.as_tensor(len_states, dtype=torch.int64, device=states.device) - 1
        out = self.s_fc(h[torch.arange(B, device=states.device), last])  # [B, I]; len 0 -> index -1
        if self.mode == "faithful":
            return out.squeeze()  # main.py:193: [I] when B == 1 (DLLM2REC-SASREC-SQUEEZE)
        return out
