"""Per-layer gating networks of the MoE-LoRA tuner: user embedding ``[..., D]`` -> expert weights ``[..., E]``.

Mirrors ``model/peft/tuners/gating.py:5-124`` (``Dense``, ``topK``, ``MLP``, ``Noise``,
``MLP_noise``, ``Drop`` and ``GATING_TO_MODEL_MAPPING``) of AkaliKong/iLoRA @ 28e47371, with the
same parameter names so state dicts load both ways.

Where they are used in the reference: ``MoeLoraLayer.update_layer`` (``moelora.py:604-606``)
builds one gating network per wrapped linear layer from ``--gating`` (``Dense`` in
``train_lastfm.sh``), but ``Linear.forward`` (``moelora.py:779-780``) ignores it and uses the
shared router's gate instead (see ``reimpl/ilora/router.py``). The gating networks only drive the
8-bit/4-bit layers (``moelora.py:1094``, ``:1157``), which need bitsandbytes. In the fp/bf16 path
they are dead parameters: trainable, saved in checkpoints, never receiving a gradient
(declared ``ILORA-MOELORA-DEAD-GATING`` in ``reimpl/ilora/deviations.py``).

Quirks (all networks): the input size is hard-coded to 64 (``self.dim = 64``) whatever ``dim`` is
passed (``moelora.py:605`` passes the layer's ``in_features``); 64 is the SASRec hidden size, so the
hard-code is what makes them usable on ``user_embeds``. :class:`GatingConfig` keeps ``input_dim=64``.

Declared deviations (``fixed`` differs):

* ``ILORA-GATING-TOPK-RESOFTMAX``: ``topK`` re-applies softmax to the kept *probabilities*
  (``gating.py:29-36``) instead of renormalizing them, flattening the top-k weights towards uniform;
  ``fixed`` renormalizes (``p_k / sum p_k``). With the default ``topk=1`` both give a one-hot gate.
* ``ILORA-GATING-NOISE-IN-EVAL``: ``Noise`` and ``MLP_noise`` add Gaussian noise to the logits in
  eval mode too (``gating.py:71-72``, ``:94-95``); ``fixed`` adds it only in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reimpl.deviations import check_mode


@dataclass
class GatingConfig:
    """One gating network. ``kind`` is a key of :data:`GATINGS` (the reference's ``--gating``)."""

    kind: str = "Dense"          # main.py:132 default and train_lastfm.sh
    num_moe: int = 4             # main.py:131
    input_dim: int = 64          # hard-coded self.dim = 64 in every reference class
    hidden_dim: int = 128        # MLP / MLP_noise
    noise_std: float = 0.1       # Noise / MLP_noise
    dropout_rate: float = 0.1    # Drop
    topk: int = 1                # topK.forward default
    mode: str = "faithful"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.kind not in GATINGS:
            raise ValueError(f"GatingConfig.kind={self.kind!r} is not one of {sorted(GATINGS)} "
                             "(the reference's MoeLoraConfig default 'Standard' is not a valid key either)")
        if self.num_moe < 1:
            raise ValueError(f"GatingConfig.num_moe must be >= 1, got {self.num_moe}")
        if not 1 <= self.topk <= self.num_moe:
            raise ValueError(f"GatingConfig.topk must lie in [1, num_moe={self.num_moe}], got {self.topk}")


class _Gating(nn.Module):
    def __init__(self, cfg: GatingConfig):
        super().__init__()
        self.cfg = cfg

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.input_dim:
            raise ValueError(f"{type(self).__name__} gating: input must be [..., {self.cfg.input_dim}], "
                             f"got {tuple(x.shape)}")

    def _noise(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.mode == "fixed" and not self.training:
            return logits
        return logits + torch.randn_like(logits) * self.cfg.noise_std


class Dense(_Gating):
    """``softmax(W x)``, no bias (``gating.py:5-16``)."""

    def __init__(self, cfg: GatingConfig):
        super().__init__(cfg)
        self.linear_layer = nn.Linear(cfg.input_dim, cfg.num_moe, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.softmax(self.linear_layer(x), dim=-1)


class TopK(Dense):
    """Top-k of ``softmax(W x)`` (``gating.py:18-37``).

    faithful: ``softmax`` over the kept probabilities with ``-inf`` elsewhere.
    fixed: the kept probabilities renormalized to sum to one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        probs = torch.softmax(self.linear_layer(x), dim=-1)
        vals, idx = torch.topk(probs, k=self.cfg.topk, dim=-1)
        if self.cfg.mode == "fixed":
            return torch.zeros_like(probs).scatter(-1, idx, vals / vals.sum(dim=-1, keepdim=True))
        kept = torch.full_like(probs, float("-inf")).scatter(-1, idx, vals)
        return torch.softmax(kept, dim=-1)


class MLP(_Gating):
    """``softmax(W2 gelu(W1 x + b1) + b2)`` (``gating.py:39-56``)."""

    def __init__(self, cfg: GatingConfig):
        super().__init__(cfg)
        self.linear_layer1 = nn.Linear(cfg.input_dim, cfg.hidden_dim)
        self.linear_layer2 = nn.Linear(cfg.hidden_dim, cfg.num_moe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.softmax(self.linear_layer2(F.gelu(self.linear_layer1(x))), dim=-1)


class Noise(Dense):
    """``softmax(W x + N(0, noise_std^2))`` (``gating.py:58-75``); faithful adds noise in eval too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.softmax(self._noise(self.linear_layer(x)), dim=-1)


class MLPNoise(_Gating):
    """``softmax(W2 relu(W1 x) + noise)``, no biases (``gating.py:77-98``)."""

    def __init__(self, cfg: GatingConfig):
        super().__init__(cfg)
        self.linear1 = nn.Linear(cfg.input_dim, cfg.hidden_dim, bias=False)
        self.linear2 = nn.Linear(cfg.hidden_dim, cfg.num_moe, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.softmax(self._noise(self.linear2(F.relu(self.linear1(x)))), dim=-1)


class Drop(_Gating):
    """``softmax(Dropout(W x))`` (``gating.py:101-115``): dropout on the logits, train mode only."""

    def __init__(self, cfg: GatingConfig):
        super().__init__(cfg)
        self.linear_layer = nn.Linear(cfg.input_dim, cfg.num_moe, bias=False)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.softmax(self.dropout(self.linear_layer(x)), dim=-1)


# Keys as the reference's GATING_TO_MODEL_MAPPING (gating.py:117-124).
GATINGS: dict[str, type[_Gating]] = {
    "Dense": Dense, "topK": TopK, "MLP": MLP, "Drop": Drop, "MLP_noise": MLPNoise, "Noise": Noise,
}


def build_gating(cfg: GatingConfig) -> nn.Module:
    """The gating network named by ``cfg.kind``."""
    return GATINGS[cfg.kind](cfg)
