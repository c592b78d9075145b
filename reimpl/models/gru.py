"""GRU4Rec student. Mirrors DLLM2Rec ``main.py:43-76``.

forward(states ``[B, L]``, len_states ``[B]``, llm_emb ``[B, L, d_llm]`` | None) -> scores ``[B, I]``.
The last hidden state of a packed GRU run over the first ``len`` positions feeds a linear head
over the ``I = item_num`` items (the padding id ``item_num`` has an embedding row but no score).
"""

from __future__ import annotations

import torch
from torch import nn

from reimpl.deviations import check_mode
from reimpl.dllm2rec.injection import inject


class GRU(nn.Module):
    def __init__(self, hidden_size: int, item_num: int, state_size: int, gru_layers: int = 1, *,
                 d_llm: int = 4096, d_proj: int = 64, ed_weight: float = 0.2,
                 mode: str = "faithful"):
        super().__init__()
        self.mode = check_mode(mode)
        self.hidden_size, self.item_num, self.state_size = hidden_size, int(item_num), state_size
        self.ed_weight = ed_weight  # the reference reads the global args.ed_weight (main.py:69)
        # creation + init order = the reference's (same seed -> same weights)
        self.item_embeddings = nn.Embedding(self.item_num + 1, hidden_size)
        nn.init.normal_(self.item_embeddings.weight, mean=0.0, std=0.01)
        self.gru = nn.GRU(input_size=hidden_size, hidden_size=hidden_size, num_layers=gru_layers,
                          batch_first=True)
        self.s_fc = nn.Linear(hidden_size, self.item_num)
        # name kept for state-dict compatibility; sizes are d_llm -> d_proj (4096 -> 64 in the reference)
        self.fc_4096_64 = nn.Linear(d_llm, d_proj)

    def forward(self, states: torch.Tensor, len_states, llm_emb: torch.Tensor | None = None
                ) -> torch.Tensor:
        emb = inject(self.item_embeddings(states), llm_emb, self.fc_4096_64, self.ed_weight)
        # main.py:70-71: an empty history is run as length 1 (it reads the padding embedding)
        lengths = torch.as_tensor(len_states, dtype=torch.int64).cpu().clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.gru(packed)  # [layers, B, H]
        if self.mode == "faithful":
            hidden = hidden.view(-1, hidden.shape[2])  # [layers*B, H]: all layers stacked (main.py:74)
        else:
            hidden = hidden[-1]  # [B, H]: last layer only (DLLM2REC-GRU-LAYERS)
        return self.s_fc(hidden)
