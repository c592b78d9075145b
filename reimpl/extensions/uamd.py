"""UAMD: uncertainty-aware distillation from a mixture-of-LoRA-experts teacher (issue 8, seed 000 §2.1).

**Uncertainty (what is implemented).** For train row ``b`` the iLoRA teacher scores its ``C`` candidate
items by the log-likelihood of each title as the answer (:meth:`reimpl.ilora.teacher.ILoRATeacher.
score_candidates`). We score the same (prompt, candidate) pairs ``E`` more times, once per expert, with
the row's gate replaced by the one-hot gate ``e_k`` (expert ``k`` alone at full weight; every other
part of the teacher -- injected embeddings, frozen LLM weights -- unchanged), giving per-expert
candidate distributions ``p_k = softmax_c(s_k(b, c))`` ``[B, E, C]``. With the row's real gate
``g [B, E]`` (the router's output, which sums to 1) and the gated mean ``pbar = sum_k g_k p_k``:

* ``kind="variance"`` (default, the seed's "variance of the experts' output distributions"):
  ``u_b = sum_c sum_k g_bk (p_bkc - pbar_bc)^2`` -- the gate-weighted variance across experts, summed
  over candidates; in ``[0, 1]``.
* ``kind="jsd"``: ``u_b = H(pbar_b) - sum_k g_bk H(p_bk)`` -- gate-weighted Jensen-Shannon divergence
  (the mutual-information form of epistemic uncertainty); in ``[0, log E]``.

Cost: ``E`` extra teacher forwards per row (the seed's "no additional cost" does not hold for a
non-linear network: a mixture of deltas inside every layer is not a mixture of outputs).

**Export.** :func:`export_teacher_with_uncertainty` writes the usual ``tocf/<data>/`` files (ranking
and confidence from the *gated* scores, identical to :func:`reimpl.ilora.train.export_teacher` for the
same seed) plus ``tocf/<data>/uncertainty_train.txt`` ``[N]`` (one float per train row, ``%.17g``).

**Weight.** ``w(u)`` (:func:`uncertainty_weight`): ``exp(-u / s)`` (``fn="exp"``), ``1 / (1 + u / s)``
(``"inverse"``), ``1[u <= s]`` (``"threshold"``) or ``1`` (``"none"``), with scale ``s`` given or, by
default, the median of ``u`` over the train rows; ``normalize=True`` divides by ``mean_N(w)`` so
that the average KD magnitude is unchanged and only its distribution over rows moves.
The weight multiplies DLLM2Rec's per-row ranking-distillation weights (``TrainHooks.kd_weight``), so
the student loss is ``L_task + lam * sum_k mean_b(w(u_b) * w_bk * l_bk)`` -- the seed's
``(1 - a) L_CE + a w(u) L_KD`` with DLLM2Rec's unnormalized composition (``main.py:486``).
``permute_seed`` (:func:`permute_weights`) deals the same weights to the rows in a random order: the control
that tells whether *which* rows ``u`` picks matters, or only how much distillation is left and how it is spread.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

UNCERTAINTY_FILE = "uncertainty_train.txt"
KINDS = ("variance", "jsd")
WEIGHT_FNS = ("exp", "inverse", "threshold", "none")


@dataclass
class UAMDConfig:
    enabled: bool = False
    fn: str = "exp"
    scale: float | None = None   # None: median of u over the train rows
    normalize: bool = True
    kind: str = "variance"       # which uncertainty the teacher export holds (recorded for the report)
    # the control arm: the same weights w(u) given to the rows in a fixed random order, so the kept fraction and the
    # distillation mass stay and only which rows get which weight is lost
    permute_seed: int | None = None

    def __post_init__(self) -> None:
        if self.fn not in WEIGHT_FNS:
            raise ValueError(f"UAMDConfig.fn must be one of {WEIGHT_FNS}, got {self.fn!r}")
        if self.kind not in KINDS:
            raise ValueError(f"UAMDConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"UAMDConfig.scale must be > 0 (or None for the median), got {self.scale}")


# ----------------------------------------------------------------------------------- pure functions
def expert_disagreement(expert_scores: torch.Tensor, gate: torch.Tensor, kind: str = "variance") -> torch.Tensor:
    """Per-row uncertainty ``[B]`` (float64) from per-expert candidate scores.

    expert_scores ``[B, E, C]``: log-likelihood-like scores (``-inf`` = not a candidate; at least one
    finite per (b, k)); gate ``[B, E]``: non-negative, rows summing to 1 (renormalized here).
    """
    if kind not in KINDS:
        raise ValueError(f"expert_disagreement: kind must be one of {KINDS}, got {kind!r}")
    if expert_scores.dim() != 3 or gate.shape != expert_scores.shape[:2]:
        raise ValueError(f"expert_disagreement: expert_scores must be [B, E, C] and gate [B, E]; got "
                         f"{tuple(expert_scores.shape)} and {tuple(gate.shape)}")
    s = expert_scores.detach().double()
    if torch.isnan(s).any() or (~torch.isfinite(s).any(-1)).any():
        raise ValueError("expert_disagreement: expert_scores hold NaN or a row without a finite score")
    g = gate.detach().double()
    if (g < 0).any() or not torch.isfinite(g).all() or (g.sum(1) <= 0).any():
        raise ValueError("expert_disagreement: gate must be finite, non-negative, with positive row sums")
    g = g / g.sum(1, keepdim=True)
    logp = torch.log_softmax(s, dim=-1)                     # [B, E, C]
    p = logp.exp()
    pbar = (g.unsqueeze(-1) * p).sum(1)                     # [B, C]
    if kind == "variance":
        return (g.unsqueeze(-1) * (p - pbar.unsqueeze(1)) ** 2).sum((1, 2))
    ent = lambda q, lq: -(q * torch.where(q > 0, lq, torch.zeros_like(lq))).sum(-1)  # noqa: E731
    h_mix = ent(pbar, torch.log(pbar.clamp_min(torch.finfo(torch.float64).tiny)))
    h_k = ent(p, logp)                                      # [B, E]
    return (h_mix - (g * h_k).sum(1)).clamp_min(0.0)


def uncertainty_weight(u: np.ndarray | torch.Tensor, fn: str = "exp", scale: float | None = None,
                       normalize: bool = True) -> torch.Tensor:
    """``w(u)`` ``[N]`` float64 for uncertainties ``u`` ``[N]`` >= 0 (module docstring)."""
    if fn not in WEIGHT_FNS:
        raise ValueError(f"uncertainty_weight: fn must be one of {WEIGHT_FNS}, got {fn!r}")
    u = torch.as_tensor(np.asarray(u, dtype=np.float64))
    if u.dim() != 1 or u.numel() == 0:
        raise ValueError(f"uncertainty_weight: u must be a non-empty [N] vector, got shape {tuple(u.shape)}")
    if not torch.isfinite(u).all() or (u < 0).any():
        raise ValueError("uncertainty_weight: u must be finite and >= 0")
    s = float(scale) if scale is not None else float(u.median())
    if s <= 0:
        s = float(u.mean()) if float(u.mean()) > 0 else 1.0  # all-zero (or mostly zero) uncertainty
    if fn == "exp":
        w = torch.exp(-u / s)
    elif fn == "inverse":
        w = 1.0 / (1.0 + u / s)
    elif fn == "threshold":
        w = (u <= s).double()
    else:
        w = torch.ones_like(u)
    if normalize:
        m = w.mean()
        w = w / m if m > 0 else torch.ones_like(w)
    return w


def permute_weights(w: torch.Tensor, seed: int) -> torch.Tensor:
    """``w`` ``[N]`` dealt to the rows in the order of a fixed random permutation (same multiset, same mean)."""
    g = torch.Generator().manual_seed(int(seed))
    return w[torch.randperm(w.numel(), generator=g)]


# -------------------------------------------------------------------------------------- file I/O
def write_uncertainty(folder: str | Path, u: np.ndarray) -> Path:
    """``<folder>/uncertainty_train.txt``: one float per train row (``[N]``)."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 1 or not np.isfinite(u).all() or (u < 0).any():
        raise ValueError(f"write_uncertainty: expected finite non-negative [N], got shape {u.shape}")
    p = Path(folder) / UNCERTAINTY_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(p, u, fmt="%.17g")
    return p


def read_uncertainty(folder: str | Path, n_rows: int) -> np.ndarray:
    """Read ``uncertainty_train.txt`` and check it holds ``n_rows`` finite non-negative values."""
    p = Path(folder) / UNCERTAINTY_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p}: UAMD needs the teacher's per-row uncertainty (export it with "
                                "reimpl.extensions.uamd.export_teacher_with_uncertainty)")
    u = np.loadtxt(p, ndmin=1)
    if u.shape != (n_rows,):
        raise ValueError(f"{p}: expected [N_train={n_rows}] values, got shape {u.shape}")
    if not np.isfinite(u).all() or (u < 0).any():
        raise ValueError(f"{p}: values must be finite and >= 0")
    return u


# ---------------------------------------------------------------------------------- teacher side
@contextlib.contextmanager
def forced_gate(teacher, expert: int | None, record: list | None = None) -> Iterator[None]:
    """Within the block ``teacher.gate`` returns the one-hot gate of ``expert`` (``None``: the real
    gate). ``record`` receives the real gates ``[B, E]`` computed during the block."""
    real = teacher.gate

    def gate(user_embeds: torch.Tensor) -> torch.Tensor:
        g = real(user_embeds)
        if record is not None:
            record.append(g.detach())
        if expert is None:
            return g
        gg = g.reshape(g.shape[0], -1)
        if not 0 <= expert < gg.shape[-1]:
            raise ValueError(f"forced_gate: expert {expert} outside [0, {gg.shape[-1]})")
        onehot = torch.zeros_like(gg)
        onehot[:, expert] = 1.0
        return onehot.reshape(g.shape)

    teacher.gate = gate
    try:
        yield
    finally:
        del teacher.gate   # back to the class method


@torch.no_grad()
def expert_candidate_scores(teacher, batch: dict, cans_titles: Sequence[Sequence[str]], prompts: Sequence[str],
                            cached: bool | str = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gated scores ``[B, C]``, per-expert scores ``[B, E, C]``, gate ``[B, E]``) for one batch
    (``1 + E`` calls of :meth:`ILoRATeacher.score_candidates`; ``cached`` is passed on: the cached
    path runs each row's prompt once per gate, the uncached one all ``B * C`` pairs per gate)."""
    rec: list = []
    with forced_gate(teacher, None, rec):
        mixed = teacher.score_candidates(batch, cans_titles, prompts, cached=cached)
    b, c = mixed.shape
    gate = rec[-1].reshape(rec[-1].shape[0], -1)
    if gate.shape[0] == b * c:                                # uncached: one gate row per (row, candidate) pair
        gate = gate[::c]
    if gate.shape[0] != b:
        raise RuntimeError(f"expert_candidate_scores: recorded gate has {gate.shape[0]} rows, expected {b} or {b * c}")
    experts = []
    for k in range(gate.shape[1]):
        with forced_gate(teacher, k):
            experts.append(teacher.score_candidates(batch, cans_titles, prompts, cached=cached))
    return mixed, torch.stack(experts, 1), gate


def score_rows_with_uncertainty(teacher, data, prompts: Sequence[str], rows: Sequence[int], k: int = 10,
                                cans_num: int = 20, batch_size: int = 4, seed: int = 0, kind: str = "variance",
                                cached: bool | str = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranking ``[N, k]``, confidence ``[N, k]`` (from the gated scores, as
    :func:`reimpl.ilora.train.export_teacher` for the same ``seed``) and uncertainty ``[N]`` of train ``rows``.
    ``data``: a :class:`reimpl.ilora.train.LastFMData`; ``cached``: prefix-KV-cached scoring
    (:meth:`ILoRATeacher.score_candidates`)."""
    from reimpl.ilora.data import export_batches
    from reimpl.ilora.export import ranking_from_scores

    teacher.eval()
    ranks, confs, us = [], [], []
    for batch in export_batches(data, teacher.tokenizer, prompts, rows, batch_size, seed, cans_num,
                                teacher.cfg.terminator):
        mixed, experts, gate = expert_candidate_scores(teacher, batch, batch["cans_name"], batch["prompts"],
                                                       cached=cached)
        r, c = ranking_from_scores(mixed, batch["cans"], k)
        ranks.append(r)
        confs.append(c)
        us.append(expert_disagreement(experts, gate, kind).numpy())
    return np.concatenate(ranks), np.concatenate(confs), np.concatenate(us)


def export_teacher_with_uncertainty(teacher, data, prompts: Sequence[str], out_dir: str | Path, data_name: str,
                                    rows: Sequence[int], k: int = 10, cans_num: int = 20, batch_size: int = 4,
                                    seed: int = 0, kind: str = "variance", emb_source: str = "llm",
                                    pad_dim: int | None = None, with_embeddings: bool = True,
                                    cached: bool | str = True, embeddings: torch.Tensor | None = None) -> Path:
    """:func:`reimpl.ilora.train.export_teacher` (same candidates for the same ``seed``, same files)
    plus ``uncertainty_train.txt`` (:func:`score_rows_with_uncertainty`). ``embeddings``: a precomputed
    ``[item_num, d]`` all-items tensor to write instead of computing it (``with_embeddings`` ignored)."""
    from reimpl.ilora.export import all_item_embeddings, write_tocf

    rank, conf, u = score_rows_with_uncertainty(teacher, data, prompts, rows, k=k, cans_num=cans_num,
                                                batch_size=batch_size, seed=seed, kind=kind, cached=cached)
    emb = embeddings
    if emb is None and with_embeddings:
        emb = all_item_embeddings(teacher, data, emb_source)
    folder = write_tocf(out_dir, data_name, rank, conf, emb, data.cfg.padding_item_id, pad_dim=pad_dim)
    write_uncertainty(folder, u)
    return folder
