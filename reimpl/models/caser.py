"""Caser student. Mirrors DLLM2Rec ``main.py:78-144``.

forward(states ``[B, L]``, len_states (unused), llm_emb ``[B, L, d_llm]`` | None) -> ``[B, I]``.
Horizontal convolutions (heights ``filter_sizes``, full width) max-pooled over time, one vertical
convolution over the whole sequence, concatenated, dropout, linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reimpl.deviations import check_mode
from reimpl.dllm2rec.injection import inject


class Caser(nn.Module):
    def __init__(self, hidden_size: int, item_num: int, state_size: int, num_filters: int = 16,
                 filter_sizes=(2, 3, 4), dropout_rate: float = 0.1, *, d_llm: int = 4096,
                 d_proj: int = 64, ed_weight: float = 0.2, mode: str = "faithful"):
        super().__init__()
        self.mode = check_mode(mode)
        self.hidden_size, self.item_num, self.state_size = hidden_size, int(item_num), state_size
        self.filter_sizes = list(filter_sizes)
        self.num_filters, self.dropout_rate = num_filters, dropout_rate
        self.ed_weight = ed_weight
        self.item_embeddings = nn.Embedding(self.item_num + 1, hidden_size)
        nn.init.normal_(self.item_embeddings.weight, mean=0.0, std=0.01)
        # all horizontal convs are created before any is re-initialized (RNG order of main.py:97-102)
        self.horizontal_cnn = nn.ModuleList([nn.Conv2d(1, num_filters, (h, hidden_size))
                                             for h in self.filter_sizes])
        for conv in self.horizontal_cnn:
            nn.init.xavier_normal_(conv.weight, gain=1.0)
            nn.init.constant_(conv.bias, val=0.1)
        self.vertical_cnn = nn.Conv2d(1, 1, (state_size, 1))
        nn.init.xavier_normal_(self.vertical_cnn.weight, gain=1.0)
        nn.init.constant_(self.vertical_cnn.bias, val=0.1)
        self.num_filters_total = num_filters * len(self.filter_sizes)
        self.s_fc = nn.Linear(hidden_size + self.num_filters_total, self.item_num)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.fc_4096_64 = nn.Linear(d_llm, d_proj)

    def forward(self, states: torch.Tensor, len_states=None, llm_emb: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = inject(self.item_embeddings(states), llm_emb, self.fc_4096_64, self.ed_weight)
        # mask in float32 like main.py:124 (.float()); multiplying by 0/1 is exact in any dtype
        x = x * torch.ne(states, self.item_num).float().unsqueeze(-1)
        x = x.unsqueeze(1)  # [B, 1, L, H]
        pooled = []
        for cnn in self.horizontal_cnn:  # one conv per filter height (3 by default)
            h = F.relu(cnn(x))  # [B, F, L-h+1, 1]
            conv_shape = tuple(h.shape)
            if self.mode == "faithful":
                h = h.squeeze()  # main.py:130 drops *every* size-1 axis
                if h.dim() != 3:
                    raise ValueError(
                        f"Caser (faithful): squeeze() of the horizontal conv output {conv_shape}"
                        " left a tensor without a time axis; the reference crashes here (main.py:130-131,"
                        " batch size 1, num_filters 1 or a filter as tall as the sequence). Use "
                        "mode='fixed' (DLLM2REC-CASER-SQUEEZE)")
            else:
                h = h.squeeze(3)
            pooled.append(h.max(dim=2).values)  # max over time; routes the gradient like max_pool1d
        h_pool = torch.cat(pooled, 1)  # [B, F * len(filter_sizes)]
        v = F.relu(self.vertical_cnn(x)).view(-1, self.hidden_size)  # [B, H]
        out = self.dropout(torch.cat([h_pool, v], 1))
        return self.s_fc(out)
