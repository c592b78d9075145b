"""SASRec, the frozen sequential encoder the iLoRA teacher reads item and user embeddings from.

Mirrors ``recommender/A_SASRec_final_bce_llm.py:147-222`` (``SASRec``) and
``SASRecModules_ori.py:7-94`` (``PositionwiseFeedForward``, ``MultiHeadAttention``) of
AkaliKong/iLoRA @ 28e47371. iLoRA uses two of its methods (``model/model_interface.py:414-429``):

* ``cacu_x(ids)``            -> :meth:`SASRec.item_embed`  (a plain embedding lookup) ``[..., H]``
* ``cacul_h(states, lens)``  -> :meth:`SASRec.cacul_h`     (state at the last valid position) ``[B, 1, H]``

and the scoring head ``forward(states, lens)`` -> :meth:`SASRec.forward` ``[B, I]``.

The reference checkpoints (``rec_model/*.pt``) are whole pickled modules referring to
``__main__.SASRec``; :func:`load_checkpoint` reads them with a restricted unpickler that maps the
reference classes onto a state-only stub, so no reference code is needed at run time.

Reference quirks reproduced in ``mode="faithful"`` (see ``reimpl/ilora/deviations.py``):

* ``forward(...).squeeze()`` drops the batch axis when ``B == 1`` (``:184``).
* ``len_states == 0`` indexes position ``-1`` (the last, padded, position) silently (``:183``, ``:18``).
* Not declared (no effect on what iLoRA reads): attention logits are scaled by
  ``sqrt(hidden_size)`` instead of ``sqrt(hidden_size / num_heads)`` (``SASRecModules_ori.py:59``;
  every checkpoint has one head); the query mask is computed from ``ln_1(seq)``, which is never
  exactly zero, so padded query rows are not masked (``SASRecModules_ori.py:78``); they are zeroed
  afterwards by ``ff_out *= mask`` and then become ``ln_3.bias``.
"""

from __future__ import annotations

import pickle
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reimpl.deviations import check_mode

# -2 ** 32 + 1 in the reference: the additive "minus infinity" of the masks (SASRecModules_ori.py:64).
MASK_VALUE = -(2.0**32) + 1.0


@dataclass
class SASRecConfig:
    """Hyper-parameters of the reference SASRec (``A_SASRec_final_bce_llm.py:148``).

    Defaults are those of the shipped ``rec_model/lastfm.pt`` checkpoint.
    ``item_num`` doubles as the padding id (the embedding table has ``item_num + 1`` rows).
    """

    hidden_size: int = 64
    item_num: int = 4606
    state_size: int = 10
    dropout: float = 0.1
    num_heads: int = 1
    mode: str = "faithful"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"SASRecConfig: hidden_size={self.hidden_size} must be divisible by "
                             f"num_heads={self.num_heads}")


class MaskedSelfAttention(nn.Module):
    """Causal self-attention with residual (``SASRecModules_ori.py:26-94``), vectorized over heads.

    The head split reproduces the reference's layout ``[h*N, T, C/h]`` (heads stacked on the batch
    axis) so that attention dropout draws the same mask from the same seed.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.linear_q = nn.Linear(hidden_size, hidden_size)
        self.linear_k = nn.Linear(hidden_size, hidden_size)
        self.linear_v = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(p=dropout)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        # [N, T, C] -> [h*N, T, C/h], head-major on the batch axis as torch.cat(torch.split(...), 0)
        n, t_len, c = t.shape
        return t.view(n, t_len, self.num_heads, c // self.num_heads).permute(2, 0, 1, 3).reshape(
            self.num_heads * n, t_len, c // self.num_heads)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """queries ``[N, Tq, C]``, keys ``[N, Tk, C]`` -> ``[N, Tq, C]``; ``dropout`` None = module mode."""
        n, tq, c = queries.shape
        tk = keys.shape[1]
        q = self._split(self.linear_q(queries))
        k = self._split(self.linear_k(keys))
        v = self._split(self.linear_v(keys))
        # scaled by the full hidden size, not the head size (reference quirk, no effect at 1 head)
        logits = torch.bmm(q, k.transpose(1, 2)) / self.hidden_size ** 0.5            # [h*N, Tq, Tk]
        key_valid = keys.sum(dim=-1).abs().sign().repeat(self.num_heads, 1)             # [h*N, Tk]
        logits = logits.masked_fill((key_valid == 0).unsqueeze(1), MASK_VALUE)
        causal = torch.ones(tq, tk, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, MASK_VALUE)
        attn = torch.softmax(logits, dim=-1)
        query_valid = queries.sum(dim=-1).abs().sign().repeat(self.num_heads, 1)        # [h*N, Tq]
        attn = attn * query_valid.unsqueeze(-1)
        attn = F.dropout(attn, self.dropout.p, self.training if dropout is None else dropout)
        out = torch.bmm(attn, v)                                                         # [h*N, Tq, C/h]
        out = out.view(self.num_heads, n, tq, c // self.num_heads).permute(1, 2, 0, 3).reshape(n, tq, c)
        return out + queries


class PointwiseFFN(nn.Module):
    """``LN(x + Dropout(W2 relu(W1 x)))`` with 1x1 convolutions (``SASRecModules_ori.py:7-22``)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Conv1d(hidden_size, hidden_size, 1)
        self.w_2 = nn.Conv1d(hidden_size, hidden_size, 1)
        self.layer_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """x ``[N, T, C]`` -> ``[N, T, C]``; ``dropout`` None = module mode."""
        # Kept as conv on [N, C, T]: dropout then draws its mask in the memory order of that
        # layout (empty_like keeps strides), exactly as the reference does after its transpose.
        h = self.w_2(F.relu(self.w_1(x.transpose(1, 2)))).transpose(1, 2)
        h = F.dropout(h, self.dropout.p, self.training if dropout is None else dropout)
        return self.layer_norm(h + x)


class SASRec(nn.Module):
    """Reference SASRec with the same parameter names (state dicts load both ways)."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.item_embeddings = nn.Embedding(config.item_num + 1, h)
        nn.init.normal_(self.item_embeddings.weight, mean=0.0, std=1.0)
        self.positional_embeddings = nn.Embedding(config.state_size, h)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.ln_1 = nn.LayerNorm(h)
        self.ln_2 = nn.LayerNorm(h)
        self.ln_3 = nn.LayerNorm(h)
        self.mh_attn = MaskedSelfAttention(h, config.num_heads, config.dropout)
        self.feed_forward = PointwiseFFN(h, config.dropout)
        self.s_fc = nn.Linear(h, config.item_num)

    # -- input checks -------------------------------------------------------------------------
    def _check_states(self, states: torch.Tensor) -> None:
        if states.dim() != 2 or states.shape[1] != self.config.state_size:
            raise ValueError(f"SASRec: states must be [B, {self.config.state_size}] item ids, "
                             f"got shape {tuple(states.shape)}")
        if states.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"SASRec: states must be integer item ids, got {states.dtype}")
        if states.numel() and (int(states.min()) < 0 or int(states.max()) > self.config.item_num):
            raise ValueError(f"SASRec: states ids must lie in [0, {self.config.item_num}] "
                             f"({self.config.item_num} = padding), got [{int(states.min())}, {int(states.max())}]")

    def _check_lens(self, states: torch.Tensor, len_states: torch.Tensor) -> torch.Tensor:
        len_states = torch.as_tensor(len_states, device=states.device).long().reshape(-1)
        if len_states.shape[0] != states.shape[0]:
            raise ValueError(f"SASRec: len_states must be [B]={states.shape[0]}, got {tuple(len_states.shape)}")
        lo = 1 if self.config.mode == "fixed" else 0  # faithful: 0 wraps to the last position (:183)
        if len_states.numel() and (int(len_states.min()) < lo or int(len_states.max()) > self.config.state_size):
            raise ValueError(f"SASRec: len_states must lie in [{lo}, {self.config.state_size}], "
                             f"got [{int(len_states.min())}, {int(len_states.max())}]")
        return len_states

    # -- encoder ------------------------------------------------------------------------------
    def log_feats(self, states: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """Per-position sequence states ``ff_out`` (``:173-182``): states ``[B, T]`` -> ``[B, T, H]``.

        Dropout (embedding, attention, feed-forward) is active when the module is in train mode,
        as in the reference; ``dropout=True/False`` overrides the module mode for this call only.
        """
        drop = self.training if dropout is None else dropout
        self._check_states(states)
        t = self.config.state_size
        emb = self.item_embeddings(states) + self.positional_embeddings(torch.arange(t, device=states.device))
        seq = F.dropout(emb, self.emb_dropout.p, drop)
        mask = (states != self.config.item_num).to(seq.dtype).unsqueeze(-1)               # [B, T, 1]
        seq = seq * mask
        attn_out = self.mh_attn(self.ln_1(seq), seq, drop)
        ff_out = self.feed_forward(self.ln_2(attn_out), drop) * mask
        return self.ln_3(ff_out)

    def user_state(self, states: torch.Tensor, len_states: torch.Tensor,
                   dropout: bool | None = None) -> torch.Tensor:
        """State at the last valid position (``extract_axis_1(ff_out, len - 1)``, ``:13-18``): ``[B, H]``.

        Vectorized gather instead of the reference's Python loop over the batch.
        """
        lens = self._check_lens(states, len_states)
        feats = self.log_feats(states, dropout)
        idx = (lens - 1) % self.config.state_size   # faithful: len 0 -> -1 -> last position
        return feats[torch.arange(feats.shape[0], device=feats.device), idx]

    def cacul_h(self, states: torch.Tensor, len_states: torch.Tensor,
                dropout: bool | None = None) -> torch.Tensor:
        """Reference-shaped user state ``[B, 1, H]`` (``A_SASRec_final_bce_llm.py:202-217``)."""
        return self.user_state(states, len_states, dropout).unsqueeze(1)

    def item_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Item embedding lookup (``cacu_x``, ``:219-222``): ids ``[...]`` -> ``[..., H]``.

        No positional embedding, no dropout, no layer norm: what iLoRA projects into the prompt.
        """
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > self.config.item_num):
            raise ValueError(f"SASRec.item_embed: ids must lie in [0, {self.config.item_num}], "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        return self.item_embeddings(ids)

    cacu_x = item_embed

    def forward(self, states: torch.Tensor, len_states: torch.Tensor) -> torch.Tensor:
        """Scores over all items (``:172-185``): ``[B, item_num]``.

        faithful: ``.squeeze()`` as the reference, so ``B == 1`` returns ``[item_num]``.
        fixed: always ``[B, item_num]``.
        """
        scores = self.s_fc(self.user_state(states, len_states))                            # [B, I]
        return scores.squeeze() if self.config.mode == "faithful" else scores

    forward_eval = forward  # identical in the reference (:187-200); dropout follows the module mode


# --- checkpoint loading ----------------------------------------------------------------------

_REFERENCE_CLASSES = {
    ("__main__", "SASRec"), ("recommender.A_SASRec_final_bce_llm", "SASRec"),
    ("SASRecModules_ori", "MultiHeadAttention"), ("SASRecModules_ori", "PositionwiseFeedForward"),
}
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "set"),
    ("_codecs", "encode"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("torch", "device"), ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"), ("torch", "LongStorage"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_tensor_v2"),
}
_ALLOWED_TORCH_MODULES = {
    "torch.nn.modules.activation", "torch.nn.modules.conv", "torch.nn.modules.dropout",
    "torch.nn.modules.linear", "torch.nn.modules.normalization", "torch.nn.modules.sparse",
}


class _StateOnly(nn.Module):
    """Stand-in for a reference class inside a pickle: holds the pickled state, no behaviour."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("state-only stub of a reference class; build reimpl.ilora.sasrec.SASRec instead")


class _CheckpointUnpickler(pickle.Unpickler):
    """Maps reference classes to :class:`_StateOnly` and refuses every global not listed above."""

    def find_class(self, module: str, name: str):
        if (module, name) in _REFERENCE_CLASSES:
            return type(name, (_StateOnly,), {})
        if (module, name) in _ALLOWED_GLOBALS or (module in _ALLOWED_TORCH_MODULES and name[:1].isupper()):
            if module == "numpy.core.multiarray":  # numpy >= 2 renamed numpy.core -> numpy._core
                module = "numpy._core.multiarray"
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"SASRec checkpoint refers to {module}.{name}, which is not allowed")


_PICKLE_MODULE = types.SimpleNamespace(Unpickler=_CheckpointUnpickler, load=pickle.load, __name__="sasrec_ckpt")


def read_checkpoint(path: str | Path) -> tuple[SASRecConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of a reference ``rec_model/*.pt`` (a whole pickled ``SASRec``).

    The pickled ``device`` (``cuda:0``) is ignored; tensors load on CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SASRec checkpoint not found: {path}")
    # weights_only=False is needed for a pickled module; the unpickler above restricts the globals.
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE_MODULE)
    if not isinstance(obj, _StateOnly) or type(obj).__name__ != "SASRec":
        raise ValueError(f"{path}: expected a pickled reference SASRec module, got {type(obj).__name__}")
    try:
        cfg = SASRecConfig(hidden_size=int(obj.hidden_size), item_num=int(obj.item_num),
                           state_size=int(obj.state_size), dropout=float(obj.dropout.p),
                           num_heads=int(obj.mh_attn.num_heads))
    except AttributeError as e:
        raise ValueError(f"{path}: pickled SASRec lacks an expected attribute ({e})") from e
    return cfg, dict(obj.state_dict())


def load_checkpoint(path: str | Path, mode: str = "faithful") -> SASRec:
    """A :class:`SASRec` holding the weights of a reference checkpoint, in eval mode, frozen.

    As ``MInterface.load_rec_model`` (``model/model_interface.py:406-412``): ``eval()`` and
    ``requires_grad=False``. (The checkpoints themselves were pickled in train mode.)
    """
    cfg, sd = read_checkpoint(path)
    cfg.mode = check_mode(mode)
    model = SASRec(cfg)
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model
