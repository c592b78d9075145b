"""Routers: the shared gate network that turns a SASRec user state into per-sample expert weights.

``train_lastfm.sh`` runs ``--router share``: ``MInterface.__init__`` builds
``model/router/nlpr.py:build_router()`` (``model_interface.py:30-31``) and ``forward`` computes
``gate_weights = self.router(user_embeds)`` (``:47-48``), which every MoE-LoRA layer then uses.

* :class:`NLPRouter` mirrors ``model/router/nlpr.py:6-84``: a 1-D ResNet (3 stages x 3
  residual blocks, 16/32/64 channels, BatchNorm) over the 64-d user state read as a one-channel
  signal, average pooling, ``softmax(Linear(64 -> E))``. Input ``[B, 1, 64]`` or ``[B, 64]``,
  output ``[B, E]`` (the reference returns ``[B, 1, E]``, nlpr.py:80; MoeLoraLinear accepts both).
* :class:`CVRouter` mirrors ``model/router/cvr.py:1-73``: the 2-D (CIFAR-style, 3-channel
  image) variant. No code path in the reference builds it; it returns raw logits (no softmax).

Train vs eval: BatchNorm uses batch statistics (and updates its running statistics) in train
mode and the running statistics in eval mode, as in the reference. Batch size 1 works in train
mode because the 1-D signal has length >= 16 at every stage (BatchNorm1d normalizes over B*L).

Declared deviation ``ILORA-ROUTER-NUM-EXPERTS``: the reference ``build_router(**kwargs)``
ignores its arguments and always builds 4 experts (``nlpr.py:83-84``); with ``--num_moe`` other
than 4 the gate no longer matches the experts and the MoE-LoRA layers' ``try/except`` turns every
wrapped projection into zeros. ``fixed`` builds ``num_moe`` experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reimpl.deviations import check_mode


@dataclass
class RouterConfig:
    kind: str = "share"        # main.py:138 choices share|unshare; only "share" builds a router
    num_moe: int = 4           # main.py:131
    input_size: int = 64       # nlpr.py:84 (= channels of the last stage, not the user-state size)
    num_blocks: tuple[int, int, int] = (3, 3, 3)
    mode: str = "faithful"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.kind not in ("share", "cvr"):
            raise ValueError(f"RouterConfig.kind must be 'share' (nlpr.py) or 'cvr' (cvr.py), got {self.kind!r}; "
                             "the reference builds no router for 'unshare' (and then fails in generate "
                             "and configure_optimizers, model_interface.py:93, :230)")

    @property
    def num_experts(self) -> int:
        # faithful: nlpr.build_router hard-codes 4 experts whatever --num_moe says (nlpr.py:84)
        return 4 if (self.mode == "faithful" and self.kind == "share") else self.num_moe


def _shortcut_pad(x: torch.Tensor, diff: int, dims: int) -> torch.Tensor:
    """Option-A ResNet shortcut: subsample spatially by 2, zero-pad channels (nlpr.py:28-29, cvr.py:27-28)."""
    if dims == 1:
        return F.pad(x[:, :, ::2], (0, 0, diff // 2, (diff + 1) // 2), "constant", 0)
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, diff // 2, (diff + 1) // 2), "constant", 0)


class ResBlock1d(nn.Module):
    """Two 3-wide convs + BatchNorm with a padded identity shortcut (``nlpr.py:15-36``, ``cvr.py:14-34``)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dims: int):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.dims = dims
        self.conv1 = conv(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = conv(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = bn(planes)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=False)
        out = self.bn2(self.conv2(out))  # second conv, no activation before the shortcut
        out = out + (x if self.pad is None else _shortcut_pad(x, self.pad, self.dims))
        return F.relu(out)


class SoftmaxGate(nn.Module):
    """``softmax(Linear(x))`` (``nlpr.py:39-45``)."""

    def __init__(self, input_size: int, output_size: int):
        super().__init__()
        self.fc = nn.Linear(in_features=input_size, out_features=output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=-1)


def _make_stages(module: nn.Module, num_blocks: tuple[int, int, int], dims: int) -> None:
    in_planes = 16
    for i, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
        blocks = []
        for s in [stride] + [1] * (num_blocks[i] - 1):
            blocks.append(ResBlock1d(in_planes, planes, s, dims))
            in_planes = planes
        setattr(module, f"layer{i + 1}", nn.Sequential(*blocks))


class NLPRouter(nn.Module):
    """The shared router of ``--router share`` (``nlpr.py:48-84``): user state -> gate ``[B, E]``."""

    def __init__(self, cfg: RouterConfig | None = None):
        super().__init__()
        self.cfg = cfg or RouterConfig()
        self.conv1 = nn.Conv1d(1, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        _make_stages(self, self.cfg.num_blocks, dims=1)
        self.gate = SoftmaxGate(self.cfg.input_size, self.cfg.num_experts)

    def forward(self, user_embeds: torch.Tensor) -> torch.Tensor:
        """user_embeds ``[B, 1, H]`` (``cacul_h``) or ``[B, H]`` -> gate ``[B, E]`` (rows sum to 1)."""
        if user_embeds.dim() == 2:
            user_embeds = user_embeds.unsqueeze(1)
        if user_embeds.dim() != 3 or user_embeds.shape[1] != 1 or user_embeds.shape[2] < 4:
            raise ValueError(f"NLPRouter: user_embeds must be [B, 1, H] or [B, H] with H >= 4, "
                             f"got {tuple(user_embeds.shape)}")
        out = F.relu(self.bn1(self.conv1(user_embeds)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=-1)                      # AdaptiveAvgPool1d(1) + view(B, -1)
        return self.gate(out)


class CVRouter(nn.Module):
    """The unused 2-D router (``cvr.py:37-73``): image ``[B, 3, H, W]`` -> logits ``[B, E]`` (no softmax)."""

    def __init__(self, cfg: RouterConfig | None = None):
        super().__init__()
        self.cfg = cfg or RouterConfig(kind="cvr", num_moe=2)
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        _make_stages(self, self.cfg.num_blocks, dims=2)
        self.fc = nn.Linear(64, self.cfg.num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"CVRouter: input must be [B, 3, H, W], got {tuple(x.shape)}")
        out = F.relu(self.bn1(self.conv1(x)), inplace=False)
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=(-2, -1)))


def build_router(cfg: RouterConfig | None = None) -> nn.Module:
    """``share`` -> :class:`NLPRouter` (what MInterface builds), ``cvr`` -> :class:`CVRouter`."""
    cfg = cfg or RouterConfig()
    return NLPRouter(cfg) if cfg.kind == "share" else CVRouter(cfg)

