"""LM training targets and loss of the iLoRA teacher.

Mirrors iLoRA @ 28e47371 ``model/model_interface.py``:

* ``forward`` l.38-42 -> :func:`lm_targets`: labels are the input ids with pad positions and every
  position whose token type is 0 (the prompt segment) set to -100. The reference indexes
  ``token_type_ids[:, 1:]`` because the tokenizer it was written for (transformers 4.28 slow
  ``LlamaTokenizer``) returned pair token types one longer than the ids; :func:`lm_targets` takes the
  *aligned* token types today's tokenizers return (``[B, L]``), which equal that slice exactly
  (see ``parity/shims/ilora.py`` TokenTypeBridge). With a BOS-adding tokenizer the answer segment
  starts with ``<s>``, which the reference keeps as a label (deviation ``ILORA-ANSWER-BOS-LABEL``:
  ``fixed`` masks special tokens that open the answer segment).
* ``configure_loss`` l.289-294 (``loss == 'lm'`` -> ``out.loss``) and the Llama causal-LM loss it
  returns -> :func:`causal_lm_loss`: next-token cross entropy, mean over all label tokens of the batch
  (a token-level mean: rows with longer answers weigh more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reimpl.deviations import check_mode
from reimpl.ilora import deviations_teacher  # noqa: F401  (declares this module's deviations)

IGNORE_INDEX = -100


def lm_targets(input_ids: torch.Tensor, token_type_ids: torch.Tensor, pad_token_id: int,
               mode: str = "faithful", special_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Labels ``[B, L]`` for the causal-LM loss (model_interface.py:38-42).

    input_ids ``[B, L]``; token_type_ids ``[B, L]`` aligned with input_ids (0 = prompt, 1 = answer);
    ``special_ids`` (fixed mode only): ids such as BOS to mask where they open the answer segment.
    """
    check_mode(mode)
    if input_ids.ndim != 2:
        raise ValueError(f"lm_targets: input_ids must be [B, L], got {tuple(input_ids.shape)}")
    if token_type_ids.shape != input_ids.shape:
        raise ValueError(f"lm_targets: token_type_ids must be aligned with input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(token_type_ids.shape)} (drop the reference-layout leading column first)")
    targets = input_ids.masked_fill(input_ids == pad_token_id, IGNORE_INDEX)
    targets = targets.masked_fill(token_type_ids == 0, IGNORE_INDEX)
    if mode == "fixed" and special_ids is not None and special_ids.numel() > 0:
        # first answer position of each row = first position whose token type is 1
        is_ans = token_type_ids == 1
        first = is_ans & (is_ans.cumsum(1) == 1)
        opens_with_special = first & torch.isin(input_ids, special_ids.to(input_ids.device))
        targets = targets.masked_fill(opens_with_special, IGNORE_INDEX)
    return targets


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   compute_dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Mean next-token cross entropy over label positions != -100 (the Llama ``out.loss``).

    logits ``[B, L, V]``, labels ``[B, L]``; position t's logits predict label t+1. As the library
    loss the reference returns (transformers ``ForCausalLMLoss``), the logits are cast to
    ``compute_dtype`` (float32; ``None`` keeps their dtype, e.g. float64) and the labels are padded
    with -100 and shifted over all ``B * L`` positions, so the reduction is the library's to the bit.
    Raises if no label is left: the library would return NaN (0/0).
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"causal_lm_loss: logits must be [B, L, V] and labels [B, L]; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    if not (shift_labels != IGNORE_INDEX).any():
        raise ValueError("causal_lm_loss: no label token in the batch (every target is -100); "
                         "the reference would return NaN")
    if compute_dtype is not None:
        logits = logits.to(compute_dtype)
    v = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, v), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row summed log-probability of the label tokens ``[B]`` (used to score candidates).

    logits ``[B, L, V]``, labels ``[B, L]`` with -100 outside the scored span.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"sequence_logprob: logits must be [B, L, V] and labels [B, L]; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    lp = torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    tgt = labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    tok = lp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (tok * keep).sum(1)
