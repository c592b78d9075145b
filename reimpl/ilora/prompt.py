"""Prompt templates and the injection of projected item embeddings into the LLM input.

Mirrors, in AkaliKong/iLoRA @ 28e47371:

* the templates ``prompt/*.txt`` as read by ``DInterface.load_prompt`` (``data/data_interface.py:182-190``:
  one template per line, stripped) and filled by ``TrainCollater.__call__`` (``:40-66``):
  ``[HistoryHere]`` -> ``"t1 [HistoryEmb], t2 [HistoryEmb], ..."``, ``[CansHere]`` ->
  ``"c1 [CansEmb], ..."``, ``[TargetHere]`` -> ``"answer [ItemEmb]"``; in the text-only branch the
  placeholders are ``[PH]`` and ``[TargetHere]`` is left as is. (:func:`fill_prompt`)
* the special tokens added by ``MInterface.load_llm`` (``model/model_interface.py:313-317``).
* ``MInterface.wrap_emb`` (``model/model_interface.py:436-466``): token embeddings, then the k-th
  ``[HistoryEmb]`` of a row replaced by the k-th history item's projected embedding, the k-th
  ``[CansEmb]`` by the k-th candidate's, the ``[ItemEmb]`` by the target's. The reference loops over
  rows and placeholders in Python; :func:`inject_item_embeds` finds every placeholder at once
  (``nonzero``) and writes them with one ``index_put``, so identical token ids and item ids give
  identical embeddings whatever the batch.

Quirks (``faithful``): the reference ``zip``s placeholder positions with
``embeds[i, :len]`` (``:456``, ``:460``), so a row with more placeholders than items keeps the
token embedding of the extra placeholders, and one with fewer drops the extra items, silently.
``fixed`` raises (declared ``ILORA-INJECT-COUNT-MISMATCH``). Two ``[ItemEmb]`` in a row fail in both
(the reference's ``.nonzero().item()``, ``:463``). ``[PH]`` tokens are never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from reimpl.deviations import check_mode
from reimpl.ilora.projector import MlpProjector, encode_items, encode_users
from reimpl.ilora.sasrec import SASRec

PAD_TOKEN = "[PAD]"
# model_interface.py:317, in this order
SPECIAL_TOKENS = ("[PH]", "[HistoryEmb]", "[CansEmb]", "[ItemEmb]")
HIS, CANS, ITEM, PH = "[HistoryEmb]", "[CansEmb]", "[ItemEmb]", "[PH]"
SEP = ", "   # data_interface.py:44 (", ".join)


def load_prompts(path: str | Path) -> list[str]:
    """Templates of a ``prompt/*.txt`` file: its lines, each stripped (``data_interface.py:182-186``).

    The reference returns ``[]`` for a missing file and fails later in ``random.choice``; we raise here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    prompts = [p.strip() for p in path.read_text().splitlines()]
    if not prompts:
        raise ValueError(f"{path}: no prompt templates (empty file)")
    return prompts


def fill_prompt(template: str, seq_names: Sequence[str], cans_names: Sequence[str],
                correct_answer: str | None = None, with_embeddings: bool = True) -> str:
    """One sample's prompt text (``TrainCollater.__call__``, ``data_interface.py:40-66``).

    ``with_embeddings`` selects the ``[HistoryEmb]``/``[CansEmb]`` branch (the reference's
    ``p < cur_step / max_step or not train``), otherwise titles are followed by ``[PH]``.
    """
    text = template
    his_tok, cans_tok = (HIS, CANS) if with_embeddings else (PH, PH)
    if "[HistoryHere]" in text:
        text = text.replace("[HistoryHere]", SEP.join(f"{t} {his_tok}" for t in seq_names))
    if "[CansHere]" in text:
        text = text.replace("[CansHere]", SEP.join(f"{t} {cans_tok}" for t in cans_names))
    if with_embeddings and "[TargetHere]" in text:
        if correct_answer is None:
            raise ValueError("fill_prompt: template has [TargetHere] but correct_answer is None")
        text = text.replace("[TargetHere]", f"{correct_answer} {ITEM}")
    return text


@dataclass(frozen=True)
class PlaceholderIds:
    his: int
    cans: int
    item: int


def placeholder_ids(tokenizer) -> PlaceholderIds:
    """Token ids of ``[HistoryEmb]``, ``[CansEmb]``, ``[ItemEmb]`` (``model_interface.py:441-443``).

    Each must tokenize to exactly one id (i.e. be an added special token).
    """
    out = []
    for tok in (HIS, CANS, ITEM):
        ids = tokenizer(tok, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"tokenizer splits {tok!r} into {len(ids)} ids {ids}; add it as a special token "
                             f"(tokenizer.add_special_tokens({{'additional_special_tokens': {list(SPECIAL_TOKENS)}}}))")
        out.append(int(ids[0]))
    return PlaceholderIds(*out)


def _check_len(name: str, lens: torch.Tensor, b: int) -> torch.Tensor:
    lens = torch.as_tensor(lens).reshape(-1).long()
    if lens.shape[0] != b:
        raise ValueError(f"inject_item_embeds: {name} must be [B={b}], got {tuple(lens.shape)}")
    if lens.numel() and int(lens.min()) < 0:
        raise ValueError(f"inject_item_embeds: {name} must be >= 0, got {lens.tolist()}")
    return lens


def _slots(input_ids: torch.Tensor, token_id: int, lens: torch.Tensor, n: int, name: str, mode: str):
    """Positions ``(rows, cols)`` of the ``token_id`` placeholders that receive an item, and which item
    ``k`` (the k-th occurrence of the row, for ``k < min(len, N)``), each ``[P]`` long."""
    is_ph = input_ids == token_id                                                   # [B, T]
    limit = lens.to(input_ids.device).clamp(max=n)                                  # embeds[i, :len] clips at N
    if mode == "fixed":
        count = is_ph.sum(dim=1)
        bad = (count != limit).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"inject_item_embeds: rows {bad} have {count[bad].tolist()} {name} placeholders "
                             f"but {limit[bad].tolist()} items (ILORA-INJECT-COUNT-MISMATCH)")
    rows, cols = is_ph.nonzero(as_tuple=True)                                       # row-major
    counts = is_ph.sum(dim=1)
    k = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    keep = k < limit[rows]
    return rows[keep], cols[keep], k[keep]


def inject_item_embeds(input_embeds: torch.Tensor, input_ids: torch.Tensor, ids: PlaceholderIds,
                       his_embeds: torch.Tensor, cans_embeds: torch.Tensor, item_embeds: torch.Tensor,
                       len_seq: torch.Tensor, len_cans: torch.Tensor, mode: str = "faithful") -> torch.Tensor:
    """The placeholder replacement of ``wrap_emb`` (``model_interface.py:453-464``), vectorized.

    input_embeds ``[B, T, D]``, input_ids ``[B, T]``, his_embeds ``[B, S, D]``, cans_embeds ``[B, C, D]``,
    item_embeds ``[B, D]``, len_seq ``[B]``, len_cans ``[B]`` -> ``[B, T, D]`` (a new tensor, dtype of
    ``input_embeds``; gradients flow to the injected embeddings).
    Only the placeholder rows are written (one ``index_put`` on a copy): work beyond the copy is
    proportional to the number of placeholders, as in the reference's loop.
    """
    check_mode(mode)
    if input_embeds.dim() != 3 or input_ids.shape != input_embeds.shape[:2]:
        raise ValueError(f"inject_item_embeds: input_embeds must be [B, T, D] and input_ids [B, T], got "
                         f"{tuple(input_embeds.shape)} and {tuple(input_ids.shape)}")
    b, _, d = input_embeds.shape
    for name, e, nd in (("his_embeds", his_embeds, 3), ("cans_embeds", cans_embeds, 3),
                        ("item_embeds", item_embeds, 2)):
        if e.dim() != nd or e.shape[0] != b or e.shape[-1] != d:
            want = f"[B={b}, N, D={d}]" if nd == 3 else f"[B={b}, D={d}]"
            raise ValueError(f"inject_item_embeds: {name} must be {want}, got {tuple(e.shape)}")
    len_seq, len_cans = _check_len("len_seq", len_seq, b), _check_len("len_cans", len_cans, b)
    r_his, c_his, k_his = _slots(input_ids, ids.his, len_seq, his_embeds.size(1), HIS, mode)
    r_cans, c_cans, k_cans = _slots(input_ids, ids.cans, len_cans, cans_embeds.size(1), CANS, mode)
    is_item = input_ids == ids.item
    many = (is_item.sum(dim=1) > 1).nonzero().flatten().tolist()
    if many:  # the reference fails too: .nonzero().item() on several positions (model_interface.py:463)
        raise ValueError(f"inject_item_embeds: rows {many} hold more than one {ITEM} placeholder")
    r_item, c_item = is_item.nonzero(as_tuple=True)
    rows = torch.cat((r_his, r_cans, r_item))
    cols = torch.cat((c_his, c_cans, c_item))
    src = torch.cat((his_embeds[r_his, k_his].to(input_embeds.dtype),
                     cans_embeds[r_cans, k_cans].to(input_embeds.dtype),
                     item_embeds[r_item].to(input_embeds.dtype)))                    # [P, D]
    out = input_embeds.clone()
    out[rows, cols] = src
    return out


def wrap_emb(embed_tokens: nn.Module, rec: SASRec, projector: MlpProjector, ids: PlaceholderIds,
             input_ids: torch.Tensor, seq: torch.Tensor, cans: torch.Tensor, item_id: torch.Tensor,
             len_seq: torch.Tensor, len_cans: torch.Tensor, mode: str = "faithful"):
    """``MInterface.wrap_emb`` (``model_interface.py:436-466``): -> (inputs_embeds ``[B, T, D]``,
    user_embeds ``[B, 1, H]``).

    ``embed_tokens`` is the LLM's input embedding (``get_input_embeddings()``); seq ``[B, S]``,
    cans ``[B, C]``, item_id ``[B]`` item ids; len_seq, len_cans ``[B]``.
    """
    input_embeds = embed_tokens(input_ids)
    his = encode_items(rec, projector, seq)
    cans_e = encode_items(rec, projector, cans)
    item = encode_items(rec, projector, item_id)
    user = encode_users(rec, seq, len_seq, mode)
    n_his = len_seq
    if mode == "fixed":   # data files give an empty history len_seq 1; no placeholder (ref skips it, l.454)
        len_seq = torch.as_tensor(len_seq)
        empty = (seq != rec.config.item_num).sum(1).to(len_seq.device) == 0
        n_his = torch.where(empty, torch.zeros_like(len_seq), len_seq)
    out = inject_item_embeds(input_embeds, input_ids, ids, his, cans_e, item, n_his, len_cans, mode)
    return out, user
