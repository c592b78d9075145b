"""MoE-LoRA: a LoRA of rank ``r`` split into ``E`` experts of rank ``r / E``, mixed per sample by a gate.

Mirrors the fp/bf16 path of the vendored peft fork in AkaliKong/iLoRA @ 28e47371:
``model/peft/tuners/moelora.py`` — ``MoeLoraConfig`` (``:50-117``), ``MoeLoraModel``
(``:120-230``, ``:242-266`` target matching, ``:268-412`` module replacement, ``:449-457``
merge/unmerge), ``mark_only_lora_as_trainable`` (``:554-569``), ``MoeLoraLayer.update_layer``
(``:596-621``), ``reset_lora_parameters`` (``:670-678``) and ``Linear`` (``:681-799``).

For a wrapped ``nn.Linear`` ``W`` and a gate ``g [B, E]`` (rows of the shared router):

    y[b, l] = W x[b, l] + scaling * sum_e g[b, e] * B_e A_e dropout(x[b, l]),
    scaling = lora_alpha / (r // E)

where ``A_e`` are rows ``e*r/E:(e+1)*r/E`` of ``lora_A.weight [r, in]`` and ``B_e`` the matching
columns of ``lora_B.weight [out, r]``; one dropout mask is shared by all experts.

How the gate reaches the layers: the reference stores the latest gate in a Python list shared by
every layer (``MoeLoraModel.forward`` clears and refills it, ``:195-204``; each ``Linear.forward``
reads ``self.gate_weights[0]``, ``:759``) -- global state that outlives the call. Here a
:class:`GateContext` owned by :class:`MoeLoraModel` is *bound for exactly one call*
(``with ctx.bind(gate): model(...)``); reading it outside a call is an error, so no gate can leak
from one batch into the next. A layer can also be called directly with ``layer(x, gate)``.

Reference quirks (``mode="faithful"`` reproduces them; ids in ``reimpl/ilora/deviations.py``):

* ``ILORA-MOELORA-SWALLOW-ERRORS``: ``Linear.forward`` wraps its body in ``try/except Exception``
  and returns ``torch.zeros_like(x)`` (shape of the *input*) on any error (``:797-799``): a gate of
  the wrong batch size or expert count, ``r`` not divisible by ``E``, a dtype mismatch. ``fixed``
  validates shapes up front and raises.
* ``ILORA-MOELORA-MERGE-UNGATED``: ``merge()`` adds ``B @ A * scaling`` (``:725-731``) -- the sum of
  all experts with weight 1 each, ignoring any gate -- and a merged layer ignores the gate. ``fixed``
  merges one given gate vector ``sum_e g_e B_e A_e * scaling`` (and refuses to merge without one).
* ``ILORA-MOELORA-DEAD-GATING``: every wrapped layer builds a ``--gating`` network
  (``:604-606``) that ``forward`` never calls (``:779``): trainable, saved, consuming RNG at init,
  never receiving a gradient. ``fixed`` builds none.

Not declared (same in both modes): the reference's init RNG order is replayed when
``replay_reference_init`` is set (a base ``nn.Linear`` is initialised twice and discarded, the
gating network, then ``lora_A``/``lora_B``, then ``lora_A`` again), so the same seed gives the same
LoRA weights as the reference; target modules match by ``key.endswith(name)`` (``:246``); LoRA
weights are created in the default dtype (float32) whatever the base dtype, the input is cast to
it and the delta is added in place into the base result (``:772-783``).
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from reimpl.deviations import check_mode
from reimpl.ilora.gating import GatingConfig, build_gating

# model_interface.py:369 (the list MInterface passes for llm_tuning == "moelora")
LLAMA_TARGETS = ("k_proj", "v_proj", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class MoeLoraConfig:
    """MoE-LoRA hyper-parameters as ``MInterface.load_llm`` builds them (``model_interface.py:364-371``)
    from the ``main.py`` defaults used by ``train_lastfm.sh`` (r 8, alpha 32, dropout 0.1, 4 experts,
    ``Dense`` gating). (The fork's own ``MoeLoraConfig`` defaults, r 8 / alpha 8 / 8 experts /
    gating "Standard", are never used, and "Standard" is not a valid gating.)"""

    r: int = 8
    num_moe: int = 4
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = LLAMA_TARGETS
    gating: str = "Dense"
    adapter_name: str = "default"
    init_lora_weights: bool = True
    replay_reference_init: bool = True   # draw the reference's discarded init tensors too (same RNG stream)
    mode: str = "faithful"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        self.target_modules = tuple(self.target_modules)
        if int(self.r) != self.r or int(self.num_moe) != self.num_moe:
            raise ValueError(f"MoeLoraConfig: r and num_moe must be integers, got r={self.r!r}, "
                             f"num_moe={self.num_moe!r}")
        self.r, self.num_moe = int(self.r), int(self.num_moe)
        if self.num_moe < 1 or self.r < self.num_moe:
            # the reference divides by r // num_moe (moelora.py:618): ZeroDivisionError when r < num_moe
            raise ValueError(f"MoeLoraConfig: need 1 <= num_moe <= r, got r={self.r}, num_moe={self.num_moe}")
        if self.mode == "fixed" and self.r % self.num_moe:
            raise ValueError(f"MoeLoraConfig: r={self.r} must be divisible by num_moe={self.num_moe} "
                             "(each expert has rank r / num_moe)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"MoeLoraConfig: lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ValueError("MoeLoraConfig: target_modules is empty")

    @property
    def scaling(self) -> float:
        """``lora_alpha / (r // num_moe)``: alpha over the per-expert rank (``moelora.py:618``)."""
        return self.lora_alpha / (self.r // self.num_moe)


class GateContext:
    """Carries the gate ``[B, E]`` to every MoE-LoRA layer of one model during one call.

    Bound with ``with ctx.bind(gate): ...`` by :meth:`MoeLoraModel.forward` / ``generate``; unbound
    (reading raises) outside that block. Nested binding is refused.
    """

    def __init__(self) -> None:
        self._gate: torch.Tensor | None = None

    @contextlib.contextmanager
    def bind(self, gate: torch.Tensor) -> Iterator[torch.Tensor]:
        if not isinstance(gate, torch.Tensor):
            raise TypeError(f"GateContext.bind: gate must be a tensor [B, E], got {type(gate).__name__}")
        if self._gate is not None:
            raise RuntimeError("GateContext.bind: a gate is already bound (nested MoE-LoRA calls)")
        self._gate = gate
        try:
            yield gate
        finally:
            self._gate = None

    @property
    def gate(self) -> torch.Tensor:
        if self._gate is None:
            raise RuntimeError("MoE-LoRA layer called without a gate: call the MoeLoraModel with "
                               "gate_weights=[B, E], or the layer as layer(x, gate)")
        return self._gate


def _replay_linear_init(in_features: int, out_features: int, bias: bool) -> None:
    """Consume the RNG exactly as ``nn.Linear(in, out, bias).reset_parameters()`` does, then discard."""
    w = torch.empty(out_features, in_features)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    if bias:
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        torch.empty(out_features).uniform_(-bound, bound)


class MoeLoraLinear(nn.Module):
    """A MoE-LoRA tuner layer wrapping a frozen base ``nn.Linear`` (``moelora.py:681-799``).

    ``forward(x [B, L, in], gate [B, E] | None) -> [B, L, out]``; with ``gate=None`` the gate is read
    from ``ctx`` (bound by :class:`MoeLoraModel`). Parameter names follow the reference
    (``lora_A.<adapter>.weight``, ``lora_B.<adapter>.weight``, ``gating.<adapter>.*``) except that
    the base weight lives in ``base_layer`` (see :func:`to_reference_key`).
    """

    def __init__(self, base: nn.Linear, cfg: MoeLoraConfig, ctx: GateContext | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"MoeLoraLinear wraps torch.nn.Linear only, got {type(base).__name__}")
        self.cfg = cfg
        self.ctx = ctx
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.num_moe, self.scaling = cfg.r, cfg.num_moe, cfg.scaling
        self.adapter = cfg.adapter_name
        if cfg.replay_reference_init:
            # Linear.__init__ builds and resets a throwaway base weight twice (moelora.py:704, :712)
            _replay_linear_init(self.in_features, self.out_features, base.bias is not None)
            _replay_linear_init(self.in_features, self.out_features, base.bias is not None)
        self.base_layer = base
        base.requires_grad_(False)
        self.gating = nn.ModuleDict()
        if cfg.mode == "faithful":
            self.gating[self.adapter] = build_gating(GatingConfig(kind=cfg.gating, num_moe=cfg.num_moe))
        self.lora_dropout = nn.ModuleDict(
            {self.adapter: nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()})
        self.lora_A = nn.ModuleDict({self.adapter: nn.Linear(self.in_features, cfg.r, bias=False)})
        self.lora_B = nn.ModuleDict({self.adapter: nn.Linear(cfg.r, self.out_features, bias=False)})
        if cfg.init_lora_weights:
            nn.init.kaiming_uniform_(self.lora_A[self.adapter].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[self.adapter].weight)
        self.lora_A.to(base.weight.device)
        self.lora_B.to(base.weight.device)
        self.gating.to(base.weight.device)
        self.merged = False
        self.disable_adapters = False
        self._merged_delta: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # -- gate handling ----------------------------------------------------------------------
    def _gate(self, gate: torch.Tensor | None) -> torch.Tensor:
        if gate is None:
            if self.ctx is None:
                raise RuntimeError("MoeLoraLinear: no gate passed and no GateContext attached")
            gate = self.ctx.gate
        return gate

    def _check_fixed(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """fixed: gate must be ``[B, E]`` (or the reference's ``[B, 1, E]``) matching ``x``'s batch."""
        if gate.dim() == 3 and gate.shape[1] == 1:
            gate = gate[:, 0]
        if gate.dim() != 2 or gate.shape != (x.shape[0], self.num_moe):
            raise ValueError(f"MoeLoraLinear: gate must be [B={x.shape[0]}, E={self.num_moe}] for input "
                             f"{tuple(x.shape)}, got {tuple(gate.shape)}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MoeLoraLinear: input must be [B, L, {self.in_features}], got {tuple(x.shape)}")
        return gate

    def _delta(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Gated LoRA update ``[B, L, out]`` (before the dtype cast back)."""
        b, l, _ = x.shape
        a_w, b_w = self.lora_A[self.adapter], self.lora_B[self.adapter]
        a_out = a_w(self.lora_dropout[self.adapter](x)).reshape(b, l, self.num_moe, -1)   # [B, L, E, r/E]
        if gate.dim() == 2:
            gate = gate.unsqueeze(1)                                                       # [B, 1, E]
        if self.cfg.mode == "faithful":
            # moelora.py:750-753, :783: lora_B per expert, then the gated sum over experts; in float32
            # this order rounds differently from mixing first, so faithful keeps it
            w = b_w.weight.t().reshape(self.num_moe, a_out.size(-1), -1)                   # [E, r/E, out]
            b_out = torch.einsum("blek,eko->bleo", a_out, w)                               # [B, L, E, out]
            return (b_out * gate.unsqueeze(-1)).sum(dim=-2) * self.scaling
        # fixed: the expert mix before lora_B, sum_e g_e B_e (A_e x) = B (g (.) A x): one [r, out]
        # matmul instead of E (ILORA-MOELORA-MIX-ORDER)
        mixed = (a_out * gate.unsqueeze(-1)).reshape(b, l, -1)                            # [B, L, r]
        return b_w(mixed) * self.scaling

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, L, in]``, gate ``[B, E]`` (or ``[B, 1, E]``) -> ``[B, L, out]``."""
        gate = self._gate(gate)
        if x.dim() != 3:   # the reference unpacks x.size() outside its try block (moelora.py:761)
            raise ValueError(f"MoeLoraLinear: input must be [B, L, {self.in_features}], got {tuple(x.shape)}")
        prev_dtype = x.dtype
        if self.cfg.mode == "fixed":
            gate = self._check_fixed(x, gate)
            return self._forward(x, gate).to(prev_dtype)
        try:
            return self._forward(x, gate).to(prev_dtype)
        except Exception as e:  # faithful: the reference prints and returns zeros shaped like x
            warnings.warn(f"MoeLoraLinear (faithful): error swallowed as the reference does, returning "
                          f"zeros_like(input): {e}", RuntimeWarning, stacklevel=2)
            return torch.zeros_like(x)

    def _forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x)
        if self.merged:
            return self.base_layer(x)
        result = self.base_layer(x)
        result += self._delta(x.to(self.lora_A[self.adapter].weight.dtype), gate)
        return result

    # -- merge / unmerge --------------------------------------------------------------------
    def merge(self, gate: torch.Tensor | None = None) -> None:
        """Fold the LoRA update into the base weight.

        faithful: ``W += B @ A * scaling`` -- all experts with weight 1, ``gate`` ignored
        (``moelora.py:718-732``). fixed: ``gate`` ``[E]`` required, ``W += B diag(g) A * scaling``.
        """
        if self.merged:
            warnings.warn("MoE-LoRA layer is already merged; merge() does nothing.", stacklevel=2)
            return
        a = self.lora_A[self.adapter].weight
        b = self.lora_B[self.adapter].weight
        if self.cfg.mode == "fixed":
            if gate is None or gate.reshape(-1).shape[0] != self.num_moe:
                raise ValueError(f"MoeLoraLinear.merge (fixed): a per-sample gate cannot be merged; pass one "
                                 f"gate vector [E={self.num_moe}], got {None if gate is None else tuple(gate.shape)}")
            g = gate.reshape(-1).to(a.dtype).repeat_interleave(self.r // self.num_moe)    # [r]
            delta = (b * g) @ a * self.scaling
        else:
            delta = b @ a * self.scaling
        self._merged_delta = delta.detach()
        self.base_layer.weight.data += delta.detach().to(self.base_layer.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract what :meth:`merge` added (``moelora.py:734-748``)."""
        if not self.merged:
            warnings.warn("MoE-LoRA layer is not merged; unmerge() does nothing.", stacklevel=2)
            return
        if self.cfg.mode == "faithful":  # recomputed from the current weights, as the reference
            delta = self.lora_B[self.adapter].weight @ self.lora_A[self.adapter].weight * self.scaling
        else:
            delta = self._merged_delta
        self.base_layer.weight.data -= delta.detach().to(self.base_layer.weight.dtype)
        self._merged_delta = None
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, experts={self.num_moe}, "
                f"scaling={self.scaling}, mode={self.cfg.mode}")


def _matches(key: str, targets: tuple[str, ...]) -> bool:
    # moelora.py:246: suffix match on the dotted module name
    return any(key.endswith(t) for t in targets)


class MoeLoraModel(nn.Module):
    """Wraps any HF causal LM (e.g. ``LlamaForCausalLM``): replaces the target linears with
    :class:`MoeLoraLinear`, freezes everything else, and binds the gate for each call.

    ``forward(gate_weights=[B, E], **hf_kwargs)`` and ``generate(gate_weights=..., **hf_kwargs)``;
    ``gate_weights`` may also be the reference's ``[B, 1, E]``.
    """

    def __init__(self, model: nn.Module, cfg: MoeLoraConfig | None = None):
        super().__init__()
        self.cfg = cfg or MoeLoraConfig()
        self.model = model
        self.gate_ctx = GateContext()
        self.wrapped: list[str] = []
        keys = [k for k, _ in model.named_modules()]   # snapshot before replacing (moelora.py:355)
        for key in keys:
            if not key or not _matches(key, self.cfg.target_modules):
                continue
            parent_name, _, child = key.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            target = getattr(parent, child)
            if not isinstance(target, nn.Linear):
                raise ValueError(f"MoeLoraModel: target module {key!r} is {type(target).__name__}; "
                                 "only torch.nn.Linear is supported")
            setattr(parent, child, MoeLoraLinear(target, self.cfg, self.gate_ctx))
            self.wrapped.append(key)
        if not self.wrapped:
            raise ValueError(f"MoeLoraModel: target modules {list(self.cfg.target_modules)} not found in the model")
        # mark_only_lora_as_trainable (moelora.py:554-557), bias="none"
        for name, param in model.named_parameters():
            param.requires_grad = ("lora_" in name) or ("gating" in name)

    def layers(self) -> list[MoeLoraLinear]:
        return [m for m in self.model.modules() if isinstance(m, MoeLoraLinear)]

    def forward(self, *args, gate_weights: torch.Tensor, **kwargs):
        with self.gate_ctx.bind(gate_weights):
            return self.model(*args, **kwargs)

    def generate(self, *args, gate_weights: torch.Tensor, **kwargs):
        """HF ``generate`` with one gate per sample held for every decoding step
        (as ``MoeLoraModel.generate``, ``moelora.py:207-217``). Beam search / several return
        sequences expand the batch: faithful then yields zeros (reference), fixed raises."""
        with self.gate_ctx.bind(gate_weights):
            return self.model.generate(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()


def wrap_moe_lora(model: nn.Module, cfg: MoeLoraConfig | None = None) -> MoeLoraModel:
    """Builder: ``MoeLoraModel(model, cfg)`` (modifies ``model`` in place, returns the wrapper)."""
    return MoeLoraModel(model, cfg)


def to_reference_key(key: str) -> str:
    """Map a state-dict key of a wrapped model to the reference's naming (``...q_proj.weight``
    instead of ``...q_proj.base_layer.weight``); prefixes are left to the caller."""
    return re.sub(r"(^|\.)base_layer\.", r"\1", key)
