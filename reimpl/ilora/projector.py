"""Projector from the SASRec space into the LLM's token-embedding space, and the item/user encoders.

Mirrors ``model/mlp_projector.py:3-14`` (``MlpProjector``: ``Linear -> GELU -> Linear``) and
``MInterface.encode_items`` / ``encode_users`` (``model/model_interface.py:414-429``) of
AkaliKong/iLoRA @ 28e47371 (``--rec_embed SASRec``, ``--model_name mlp_projector``).

* :func:`encode_items`: ``projector(rec.cacu_x(ids))`` -- item ids ``[...]`` -> ``[..., llm]``.
* :func:`encode_users`: ``rec.cacul_h(seq, len_seq)`` -- ``[B, 1, H]``, *not projected*: the reference
  computes ``projector(user_rec_embs)`` and discards it (``:428-429``); the un-projected state is
  what the router receives. (We skip the discarded projection: it has no observable effect.)

Declared deviation ``ILORA-REC-TRAIN-MODE``: ``MInterface.load_rec_model`` puts the frozen SASRec
in eval mode (``:409``), but under the Lightning 1.x the reference targets
(``Trainer.from_argparse_args``, ``main.py:57``) ``trainer.fit`` calls ``.train()`` on the whole
LightningModule, so during training the SASRec runs with dropout (p = 0.1) and the router's input is
noisy (item embeddings are a plain lookup and unaffected). faithful: the user state follows the
SASRec module's mode; fixed: the user state is always computed without dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from reimpl.deviations import check_mode
from reimpl.ilora.sasrec import SASRec


class MlpProjector(nn.Module):  # Linear -> GELU -> Linear
    """``Linear(rec, llm) -> GELU -> Linear(llm, llm)`` (``mlp_projector.py:3-14``), same parameter names."""

    def __init__(self, rec_size: int = 64, llm_size: int = 4096):
        super().__init__()
        self.rec_size, self.llm_size = rec_size, llm_size
        self.mlp_proj = nn.Sequential(nn.Linear(rec_size, llm_size), nn.GELU(), nn.Linear(llm_size, llm_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., rec]`` -> ``[..., llm]``."""
        if x.shape[-1] != self.rec_size:
            raise ValueError(f"MlpProjector: input must be [..., {self.rec_size}], got {tuple(x.shape)}")
        return self.mlp_proj(x)


def encode_items(rec: SASRec, projector: MlpProjector, ids: torch.Tensor) -> torch.Tensor:
    """Projected item embeddings (``encode_items``, ``model_interface.py:414-420``): ``[...]`` -> ``[..., llm]``.

    Each distinct id is projected once and gathered back, so equal ids give bitwise-equal vectors
    wherever they sit in the batch (a batched GEMM does not guarantee that; the reference's values
    differ from these by float rounding only, ~1e-17 in float64).
    """
    uniq, inverse = torch.unique(ids, return_inverse=True)
    return projector(rec.item_embed(uniq))[inverse]


def encode_users(rec: SASRec, seq: torch.Tensor, len_seq: torch.Tensor, mode: str = "faithful") -> torch.Tensor:
    """User state fed to the router (``encode_users``, ``model_interface.py:422-429``): ``[B, 1, H]``.

    faithful: dropout iff ``rec.training``; fixed: never dropout (ILORA-REC-TRAIN-MODE).
    """
    check_mode(mode)
    return rec.cacul_h(seq, len_seq, dropout=None if mode == "faithful" else False)
