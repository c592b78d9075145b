"""The iLoRA teacher: LLM + MoE-LoRA + projector + shared router + frozen SASRec, composed.

Mirrors ``MInterface`` of AkaliKong/iLoRA @ 28e47371 (``model/model_interface.py``) for the
configuration of ``train_lastfm.sh`` (``--llm_tuning moelora --router share --gating Dense
--rec_embed SASRec --model_name mlp_projector --loss lm``):

* ``load_llm`` (l.311-382): tokenizer edits (pad ``[PAD]``, right padding, ``[PH]``, ``[HistoryEmb]``,
  ``[CansEmb]``, ``[ItemEmb]``), ``resize_token_embeddings``, MoE-LoRA on q/k/v/o/gate/up/down
  -> :func:`build_teacher` (:func:`reimpl.llm.tiny.add_ilora_tokens`, :mod:`reimpl.ilora.moe_lora`);
* ``__init__`` (l.24-35): ``build_router()`` (:mod:`reimpl.ilora.router`), ``load_rec_model`` (frozen
  SASRec, :mod:`reimpl.ilora.sasrec`), ``load_projector`` (:mod:`reimpl.ilora.projector`);
* ``forward`` (l.37-68) -> :meth:`ILoRATeacher.forward`: ``wrap_emb`` (:mod:`reimpl.ilora.prompt`),
  gate = router(user state), LLM on ``inputs_embeds`` with the gate, LM loss on the answer tokens
  (:mod:`reimpl.ilora.loss`);
* ``generate`` (l.70-113) -> :meth:`ILoRATeacher.generate`; ``validation_step`` / ``test_step`` +
  ``calculate_hr1`` -> :meth:`ILoRATeacher.evaluate` (:mod:`reimpl.ilora.evaluate`).

Teacher outputs for DLLM2Rec (not in the reference; DLLM2Rec ships only the files, see
:mod:`reimpl.ilora.export`), derived as follows:

* **ranking + confidence** (:meth:`ILoRATeacher.score_candidates`): for row i with candidate items
  ``C_i`` (the prompt's candidate list), each candidate c is scored by the teacher's log-likelihood of
  its title as the answer, ``s(i, c) = sum_t log p(answer_t | prompt_i, answer_<t)`` over the tokens
  of ``title_c + terminator`` (the exact quantity the LM loss trains), computed with row i's gate and
  injected embeddings (teacher forcing). Definition (``cached=False``): one forward over all ``B * C``
  tokenized (prompt, candidate) pairs. Default (``cached=True``): the same numbers (float rounding
  aside) with each row's prompt run once and its KV cache reused by the C answers (~C times less
  work; ``tests/test_ilora_score_cached.py``).
  The top-K candidates by ``s`` form ``myrank_train.txt``; ``confidence = -log softmax_c s(i, c)`` (a
  distance: DLLM2Rec weights by ``exp(-confidence)`` = the teacher's candidate probability).
* **item embeddings** (:meth:`ILoRATeacher.item_embeddings`): ``source="llm"``: each item title
  alone through the adapted LLM (uniform gate 1/E: no user), last-layer hidden states mean-pooled
  over the title's tokens -> ``[item_num, d_llm]``; ``source="projector"``: the projected SASRec item
  embedding (what the teacher injects into prompts, ``projector(cacu_x(id))``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from reimpl.deviations import check_mode
from reimpl.device import on_module_device
from reimpl.ilora import deviations_teacher  # noqa: F401  (declares this module's deviations)
from reimpl.ilora.evaluate import HR1Result, first_line, hr1_valid_ratio
from reimpl.ilora.loss import IGNORE_INDEX, causal_lm_loss, lm_targets, sequence_logprob
from reimpl.ilora.moe_lora import LLAMA_TARGETS, MoeLoraConfig, wrap_moe_lora
from reimpl.ilora.projector import MlpProjector, encode_items, encode_users
from reimpl.ilora.prompt import PlaceholderIds, placeholder_ids, wrap_emb
from reimpl.ilora.router import RouterConfig, build_router
from reimpl.ilora.sasrec import SASRec
from reimpl.llm.tokens import encode

# attention implementations for which cached=True packs the answers (4-D additive mask taken as is).
# "eager" takes the mask too (cached="packed" works) but computes its softmax in float32 even for a
# float64 model, so any change of reduction shape moves float64 scores at the 1e-9 level: it gets "repeat".
PACKED_ATTENTION = ("sdpa",)


@dataclass
class TeacherConfig:
    """main.py defaults + train_lastfm.sh (see ``parity.shims.ilora.lastfm_args``)."""
    rec_size: int = 64
    lora_r: int = 8
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    num_moe: int = 4
    gating: str = "Dense"
    router: str = "share"
    target_modules: tuple[str, ...] = LLAMA_TARGETS
    terminator: str = "\n"          # data_interface.py:21
    mode: str = "faithful"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.router != "share":
            raise ValueError(f"TeacherConfig.router: only 'share' is supported (train_lastfm.sh); got "
                             f"{self.router!r} (the reference's 'unshare' path has no router and fails)")


@dataclass
class TeacherOutput:
    loss: torch.Tensor          # scalar
    logits: torch.Tensor        # [B, L, V]
    labels: torch.Tensor        # [B, L]
    gate: torch.Tensor          # [B, E]


def _tensor(x: Any, name: str, dtype=torch.long) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x, dtype=dtype)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"batch[{name!r}]: expected a tensor-like, got {type(x).__name__}") from e


class ILoRATeacher(nn.Module):
    """``forward(batch) -> TeacherOutput``; ``generate(batch) -> list[str]``.

    A batch is a dict with ``input_ids [B, L]``, ``attention_mask [B, L]``, ``token_type_ids [B, L]``
    (aligned; train batches only), ``seq [B, S]``, ``cans [B, C]``, ``len_seq [B]``, ``len_cans [B]``,
    ``item_id [B]`` and, for evaluation, ``correct_answer`` ``[B]`` and ``cans_name`` ``[B][C]``.
    """

    def __init__(self, llama_model: nn.Module, tokenizer, rec_model: SASRec, projector: MlpProjector,
                 router: nn.Module, cfg: TeacherConfig):
        super().__init__()
        self.cfg = cfg
        self.llama_model = llama_model      # MoeLoraModel around the HF causal LM
        self.tokenizer = tokenizer
        self.rec_model = rec_model
        self.projector = projector
        self.router = router
        self.ph_ids: PlaceholderIds = placeholder_ids(tokenizer)
        self.answer_logits_only = False     # fixed mode: LM head at the answer positions only (forward)
        # .train() reaches the frozen SASRec too, as Lightning 1.x's fit did (ILORA-REC-TRAIN-MODE:
        # faithful draws SASRec dropout in training; fixed's encode_users never does).

    # -- model pieces -------------------------------------------------------------------------
    @property
    def hf_model(self) -> nn.Module:
        return self.llama_model.model

    def wrap_emb(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds ``[B, L, D]``, user_embeds ``[B, 1, H]``) (model_interface.py:436-466)."""
        for k in ("input_ids", "seq", "cans", "len_seq", "len_cans", "item_id"):
            if k not in batch:
                raise KeyError(f"teacher batch lacks {k!r} (expected keys: input_ids, attention_mask, seq, cans, "
                               "len_seq, len_cans, item_id[, token_type_ids])")
        if batch.get("flag") and self.cfg.mode == "fixed":
            # text-only ([PH]) curriculum prompt: it has no placeholders, so there is nothing to inject
            # (the reference's loop replaces nothing there); fixed mode's strict placeholder/item count
            # check (ILORA-INJECT-COUNT-MISMATCH) must not see the history/candidate lengths.
            embeds = self.llama_model.get_input_embeddings()(batch["input_ids"])
            user = encode_users(self.rec_model, _tensor(batch["seq"], "seq"), _tensor(batch["len_seq"], "len_seq"),
                                self.cfg.mode)
            return embeds, user
        return wrap_emb(self.llama_model.get_input_embeddings(), self.rec_model, self.projector, self.ph_ids,
                        batch["input_ids"], _tensor(batch["seq"], "seq"), _tensor(batch["cans"], "cans"),
                        _tensor(batch["item_id"], "item_id"), _tensor(batch["len_seq"], "len_seq"),
                        _tensor(batch["len_cans"], "len_cans"), mode=self.cfg.mode)

    def gate(self, user_embeds: torch.Tensor) -> torch.Tensor:
        """Per-sample expert weights ``[B, E]`` from the user state (model_interface.py:47-48)."""
        return self.router(user_embeds)

    # -- training -----------------------------------------------------------------------------
    def labels(self, batch: dict) -> torch.Tensor:
        if "token_type_ids" not in batch:
            raise KeyError("teacher batch lacks 'token_type_ids' (needed to find the answer tokens)")
        special = torch.tensor([self.tokenizer.bos_token_id]) if self.tokenizer.bos_token_id is not None else None
        return lm_targets(batch["input_ids"], batch["token_type_ids"], self.tokenizer.pad_token_id,
                          mode=self.cfg.mode, special_ids=special)

    @on_module_device
    def forward(self, batch: dict) -> TeacherOutput:
        """LM loss of the answer given the prompt (model_interface.py:37-58, 289-294).

        With ``answer_logits_only`` (fixed mode, set by the caller, e.g. :mod:`reimpl.teachers.ilora`) the LM head
        runs only at the positions that predict an answer token (their union over the batch): the same loss up to
        float rounding, without the ``[B, L, V]`` logits of the prompt, which nothing reads in training. The
        returned ``logits`` / ``labels`` are then ``[B, K, V]`` / ``[B, K]`` at those positions (labels already
        shifted: ``labels[:, k]`` is the token that ``logits[:, k]`` predicts)."""
        labels = self.labels(batch)
        embeds, user = self.wrap_emb(batch)
        gate = self.gate(user)
        if self.answer_logits_only and self.cfg.mode == "fixed":
            shift = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
            keep = torch.nonzero((shift != IGNORE_INDEX).any(0)).flatten()
            if keep.numel() == 0:
                raise ValueError("teacher batch: no answer token to train on (every label is -100)")
            out = self.llama_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False,
                                   return_dict=True, gate_weights=gate, logits_to_keep=keep)
            tgt = shift[:, keep]
            lg = out.logits.to(torch.promote_types(out.logits.dtype, torch.float32))   # as causal_lm_loss
            loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.size(-1)),
                                                     tgt.reshape(-1), ignore_index=IGNORE_INDEX)
            return TeacherOutput(loss, out.logits, tgt, gate)
        out = self.llama_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False,
                               return_dict=True, gate_weights=gate)
        return TeacherOutput(causal_lm_loss(out.logits, labels), out.logits, labels, gate)

    # -- generation / evaluation --------------------------------------------------------------
    @torch.no_grad()
    @on_module_device
    def generate(self, batch: dict, max_new_tokens: int = 64, min_new_tokens: int = 1, num_beams: int = 1,
                 do_sample: bool = False, temperature: float = 0.8, repetition_penalty: float = 1.0,
                 length_penalty: float = 1.0) -> list[str]:
        """Greedy answers, decoded and stripped (model_interface.py:70-113; defaults as there)."""
        embeds, user = self.wrap_emb(batch)
        gate = self.gate(user)
        kw = dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                  min_new_tokens=min_new_tokens, num_beams=num_beams, do_sample=do_sample,
                  pad_token_id=self.tokenizer.pad_token_id, repetition_penalty=repetition_penalty,
                  length_penalty=length_penalty, num_return_sequences=1)
        if do_sample:
            kw["temperature"] = temperature
        ids = self.llama_model.generate(gate_weights=gate, **kw)
        text = self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [t.strip() for t in text]

    @torch.no_grad()
    def evaluate(self, batches, max_new_tokens: int = 64, mode: str | None = None) -> tuple[HR1Result, list[dict]]:
        """validation/test loop: generate, keep the first line, HR@1 + ValidRatio (l.158-220, 468-492)."""
        rows = []
        for b in batches:
            for g, r, c in zip(self.generate(b, max_new_tokens=max_new_tokens), b["correct_answer"], b["cans_name"]):
                rows.append({"generate": first_line(g), "real": r, "cans": list(c)})
        if not rows:
            raise ValueError("ILoRATeacher.evaluate: no batches")
        res = hr1_valid_ratio([r["generate"] for r in rows], [r["real"] for r in rows],
                              [r["cans"] for r in rows], mode=mode or self.cfg.mode)
        return res, rows

    # -- teacher outputs for DLLM2Rec ---------------------------------------------------------
    @torch.no_grad()
    @on_module_device
    def score_candidates(self, batch: dict, cans_titles: Sequence[Sequence[str]],
                         prompts: Sequence[str], cached: bool | str = True) -> torch.Tensor:
        """Log-likelihood ``[B, C]`` of each candidate title (+ terminator) as the answer to row i's prompt.

        ``prompts``: row i's filled prompt text (with ``[HistoryEmb]``/``[CansEmb]``), ``cans_titles``:
        ``[B][C]`` titles of ``batch['cans']``. Row i's gate and item embeddings are shared by its C pairs.

        ``cached=False`` is the definition: one forward over all ``B * C`` tokenized (prompt, answer)
        pairs. ``cached=True`` (default) computes the same numbers with each row's prompt run once
        (:meth:`_score_candidates_cached`); ``"packed"`` / ``"repeat"`` pick its answer-pass layout
        (``True``: packed under SDPA, the default attention, else repeat; see ``PACKED_ATTENTION``).
        """
        if cached not in (True, False, "packed", "repeat"):
            raise ValueError(f"score_candidates: cached must be True, False, 'packed' or 'repeat', got {cached!r}")
        cans = _tensor(batch["cans"], "cans")
        b, c = cans.shape
        if len(prompts) != b or len(cans_titles) != b or any(len(t) != c for t in cans_titles):
            raise ValueError(f"score_candidates: need {b} prompts and [B={b}][C={c}] titles")
        pairs = [[prompts[i], cans_titles[i][j] + self.cfg.terminator] for i in range(b) for j in range(c)]
        tok = encode(self.tokenizer, pairs, padding="longest", truncation=False,
                             add_special_tokens=True, return_attention_mask=True, return_token_type_ids=True)
        rep = lambda x: _tensor(x, "x").repeat_interleave(c, dim=0)  # noqa: E731
        flat = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
                "token_type_ids": tok["token_type_ids"], "seq": rep(batch["seq"]), "cans": rep(batch["cans"]),
                "len_seq": rep(batch["len_seq"]), "len_cans": rep(batch["len_cans"]),
                "item_id": rep(batch["item_id"])}
        if cached is not False:
            layout = cached if isinstance(cached, str) else (
                "packed" if getattr(self.hf_model.config, "_attn_implementation", None) in PACKED_ATTENTION
                else "repeat")
            return self._score_candidates_cached(batch, prompts, flat, b, c, layout)
        out = self.forward(flat)
        return sequence_logprob(out.logits, out.labels).reshape(b, c)

    def _score_candidates_cached(self, batch: dict, prompts: Sequence[str], flat: dict, b: int, c: int,
                                 layout: str = "packed") -> torch.Tensor:
        """Prefix-KV-cached :meth:`score_candidates` (same pairs, same labels, same sum).

        1. The prompts alone (tokenized as the pair tokenization's first segment, right-padded) go
           through ``wrap_emb`` + router + LLM once, ``use_cache=True``; only the logits at each row's
           last true prompt position ``P_i - 1`` are projected (they predict the first answer token).
        2. Per row, the cache is cut to the row's ``P_i`` true positions. The answers are the pair ids
           after position ``P_i`` -- whatever the pair template puts between the segments (tiny Llama:
           ``<s>``; SmolLM2's GGUF tokenizer: nothing) + title + terminator -- labelled as the pair
           path labels them (:meth:`labels`). Answer token t of a candidate gets ``position_ids = P_i + t``
           and sees the P_i prompt keys and its own earlier tokens only.

           * ``layout="packed"``: the C answers of a row are concatenated into one sequence (no padding)
             with a block-diagonal causal 4-D additive mask ``[1, 1, T, P_i + T]`` (SDPA / eager take it
             as is); the cache is not copied, the row's gate is used once, and only the logits that
             predict a labelled answer token are projected.
           * ``layout="repeat"``: the cache is repeated C times (``DynamicCache.batch_repeat_interleave``),
             the C answers right-padded, mask ``[ones(P_i) | answer mask]``, gate repeated C times.

           The MoE-LoRA gate is bound per call (``gate_weights``, one row per batch row), so each pass
           binds the gate of its own rows; nothing about the gate lives in the cache.

        Equal to the uncached path up to float rounding (different reduction shapes: attention over
        ``P_i`` keys instead of a padded width, logits of fewer positions) -- in eval mode: in training
        mode the LoRA dropout masks of the prompt are shared by the C answers here, not drawn per pair.
        Refuses (ValueError, use ``cached=False``) a tokenizer whose pair encoding does not start with
        the prompt's own encoding, left padding, labels inside the prompt, placeholders in an answer.
        """
        from transformers import DynamicCache

        if layout not in ("packed", "repeat"):
            raise ValueError(f"score_candidates: layout must be 'packed' or 'repeat', got {layout!r}")
        t = self._answer_tokens(flat, prompts, c)
        ids_p, mask_p, plen, ans_ids, ans_lab, a_valid = (t[k] for k in ("ids_p", "mask_p", "plen", "ans_ids",
                                                                         "ans_lab", "a_valid"))
        # 1. prompts once
        rep = {k: _tensor(batch[k], k) for k in ("seq", "cans", "len_seq", "len_cans", "item_id")}
        embeds, user = self.wrap_emb({"input_ids": ids_p, "attention_mask": mask_p, **rep})
        gate = self.gate(user)
        out = self.llama_model(inputs_embeds=embeds, attention_mask=mask_p, use_cache=True, return_dict=True,
                               gate_weights=gate, logits_to_keep=(plen - 1)[:, None])
        ftype = torch.promote_types(out.logits.dtype, torch.float32)
        lp_last = torch.log_softmax(out.logits[:, 0].to(ftype), dim=-1)                      # [B, V]
        first = lp_last.repeat_interleave(c, 0).gather(1, ans_ids[:, :1]).squeeze(1)       # [N]
        scores = torch.where(ans_lab[:, 0] != IGNORE_INDEX, first, torch.zeros_like(first))
        layers = [(k, v) for k, v, *_ in out.past_key_values]
        del out

        # 2. the C answers of each row against its cached prompt
        rest = torch.zeros(b * c, dtype=ftype)
        for i in range(b):
            p = int(plen[i])
            rows = slice(i * c, (i + 1) * c)
            row_cache = DynamicCache(ddp_cache_data=[(k[i:i + 1, :, :p], v[i:i + 1, :, :p]) for k, v in layers])
            if layout == "repeat":
                row_cache.batch_repeat_interleave(c)
                att = torch.cat((torch.ones(c, p, dtype=mask_p.dtype), a_valid[rows].to(mask_p.dtype)), 1)
                o = self.llama_model(inputs_embeds=self.llama_model.get_input_embeddings()(ans_ids[rows]),
                                     attention_mask=att, position_ids=t["a_pos"][rows], past_key_values=row_cache,
                                     use_cache=True, return_dict=True,
                                     gate_weights=gate[i:i + 1].repeat_interleave(c, 0))
                rest[rows] = sequence_logprob(o.logits, ans_lab[rows])
            else:
                self._packed_answers(rest[rows], p, ans_ids[rows], ans_lab[rows], a_valid[rows], t["alen"][rows],
                                     row_cache, gate[i:i + 1], ftype)
        return (scores.to(ftype) + rest).reshape(b, c)

    def _answer_tokens(self, flat: dict, prompts: Sequence[str], c: int) -> dict:
        """The prompts tokenized alone (``ids_p``/``mask_p`` ``[B, Lp]``, true lengths ``plen`` ``[B]``) and each
        pair's answer segment after its prompt: ``ans_ids``/``ans_lab`` ``[N, A]`` (pad / IGNORE_INDEX beyond
        ``alen`` ``[N]``; ``a_valid`` marks the real tokens), ``a_pos`` ``[N, A]`` their positions in the pair.
        Raises the ValueErrors of :meth:`_score_candidates_cached` (tokenizations that cannot be split)."""
        ids_pair, mask_pair = flat["input_ids"], flat["attention_mask"]
        labels_pair = self.labels(flat)                                                   # [N, Lpair]
        ptok = encode(self.tokenizer, list(prompts), padding="longest", truncation=False,
                              add_special_tokens=True, return_attention_mask=True)
        ids_p, mask_p = ptok["input_ids"], ptok["attention_mask"]                           # [B, Lp]
        plen = mask_p.sum(1)                                                                # [B]
        if not torch.equal(mask_p, (torch.arange(mask_p.shape[1]) < plen[:, None]).to(mask_p.dtype)):
            raise ValueError("score_candidates(cached=True): prompts must be right-padded "
                             f"(tokenizer.padding_side={getattr(self.tokenizer, 'padding_side', None)!r})")
        if int(plen.min()) < 1:
            raise ValueError("score_candidates(cached=True): a prompt tokenizes to no token")
        plen_n = plen.repeat_interleave(c)                                                  # [N]
        alen = mask_pair.sum(1) - plen_n                                                    # [N]
        in_prompt = torch.arange(ids_pair.shape[1])[None, :] < plen_n[:, None]             # [N, Lpair]
        ids_p_n = ids_p.repeat_interleave(c, 0)
        w = min(ids_p.shape[1], ids_pair.shape[1])
        same = (ids_pair[:, :w] == ids_p_n[:, :w]) | ~in_prompt[:, :w]
        if (alen < 1).any() or not bool(same.all()) or bool((in_prompt & (mask_pair == 0)).any()):
            bad = sorted({int(k) // c for k in torch.nonzero((alen < 1) | ~same.all(1)).flatten()})
            raise ValueError(f"score_candidates(cached=True): rows {bad}: the pair tokenization does not start "
                             "with the prompt's own tokenization (tokenizer pair template); use cached=False")
        if bool(((labels_pair[:, 1:] != IGNORE_INDEX) & in_prompt[:, 1:]).any()):
            raise ValueError("score_candidates(cached=True): a label falls inside the prompt segment; use cached=False")
        amax = int(alen.max())
        a_pos = plen_n[:, None] + torch.arange(amax)[None, :]                               # [N, A]
        a_valid = torch.arange(amax)[None, :] < alen[:, None]
        a_idx = a_pos.clamp(max=ids_pair.shape[1] - 1)
        ans_ids = torch.where(a_valid, ids_pair.gather(1, a_idx), self.tokenizer.pad_token_id)
        ans_lab = torch.where(a_valid, labels_pair.gather(1, a_idx), IGNORE_INDEX)
        ph = torch.tensor([self.ph_ids.his, self.ph_ids.cans, self.ph_ids.item])
        if bool(torch.isin(ans_ids[a_valid], ph).any()):
            raise ValueError("score_candidates(cached=True): an answer holds an item placeholder token; "
                             "use cached=False")
        return {"ids_p": ids_p, "mask_p": mask_p, "plen": plen, "alen": alen, "a_pos": a_pos, "a_valid": a_valid,
                "ans_ids": ans_ids, "ans_lab": ans_lab}

    def _packed_answers(self, out: torch.Tensor, p: int, ans_ids: torch.Tensor, ans_lab: torch.Tensor,
                        a_valid: torch.Tensor, ln: torch.Tensor, row_cache, gate: torch.Tensor, ftype) -> None:
        """``layout="packed"`` for one row: its C answers (``ans_*`` ``[C, A]``, lengths ``ln`` ``[C]``) as one
        sequence after the row's ``p`` cached prompt positions; adds each answer's log-probability of its
        tokens after the first (the prompt pass scored those) into ``out`` ``[C]`` in place."""
        c = ln.shape[0]
        ids = ans_ids[a_valid]                                                              # [T] (candidate-major)
        lab = ans_lab[a_valid]
        seg = torch.repeat_interleave(torch.arange(c), ln)                                  # [T] candidate of each
        off = torch.arange(ids.shape[0]) - torch.repeat_interleave(ln.cumsum(0) - ln, ln)  # offset in it
        q = torch.nonzero((off[1:] > 0) & (lab[1:] != IGNORE_INDEX)).flatten()              # predicts q + 1
        if q.numel() == 0:   # every answer is one token: the prompt pass scored them all
            return
        x = self.llama_model.get_input_embeddings()(ids)[None]
        blocked = (seg[:, None] != seg[None, :]) | (off[None, :] > off[:, None])            # [T, T]
        mask = torch.zeros(1, 1, ids.shape[0], p + ids.shape[0], dtype=x.dtype)
        mask[0, 0, :, p:].masked_fill_(blocked, torch.finfo(x.dtype).min)
        o = self.llama_model(inputs_embeds=x, attention_mask=mask, position_ids=(p + off)[None],
                             past_key_values=row_cache, use_cache=True, return_dict=True,
                             gate_weights=gate, logits_to_keep=q)
        lp = torch.log_softmax(o.logits[0].to(ftype), dim=-1).gather(1, ids[q + 1, None]).squeeze(1)
        out.copy_(torch.zeros(c, dtype=ftype).index_add_(0, seg[q + 1], lp))

    @torch.no_grad()
    @on_module_device
    def item_embeddings(self, titles: Sequence[str] | None = None, item_ids: torch.Tensor | None = None,
                        source: str = "llm", batch_size: int = 64) -> torch.Tensor:
        """``[N, d_llm]`` item embeddings (see the module docstring for both sources)."""
        if source == "projector":
            if item_ids is None:
                raise ValueError("item_embeddings(source='projector') needs item_ids [N]")
            return encode_items(self.rec_model, self.projector, item_ids)
        if source != "llm":
            raise ValueError(f"item_embeddings: source must be 'llm' or 'projector', got {source!r}")
        if not titles:
            raise ValueError("item_embeddings(source='llm') needs item titles")
        e = self.router.cfg.num_experts if hasattr(self.router, "cfg") else self.cfg.num_moe
        outs = []
        for s in range(0, len(titles), batch_size):
            tok = encode(self.tokenizer, list(titles[s:s + batch_size]), padding="longest",
                                 add_special_tokens=True)
            n = tok["input_ids"].shape[0]
            gate = torch.full((n, e), 1.0 / e)
            h = self.llama_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                 output_hidden_states=True, use_cache=False, return_dict=True,
                                 gate_weights=gate).hidden_states[-1]
            m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
            outs.append((h * m).sum(1) / m.sum(1))
        return torch.cat(outs)


def prepare_tokenizer(tokenizer):
    """The reference's load-time tokenizer edits (model_interface.py:314-317), in place."""
    from reimpl.llm.tiny import add_ilora_tokens

    return add_ilora_tokens(tokenizer)


def build_teacher(llm: nn.Module, tokenizer, rec_model: SASRec, cfg: TeacherConfig | None = None) -> ILoRATeacher:
    """Assemble the teacher as ``MInterface.__init__`` does (model_interface.py:24-35, 311-412).

    ``llm``: a HF causal LM (tiny random Llama, SmolLM2, Llama-2); ``tokenizer``: its tokenizer,
    *unmodified* (the iLoRA tokens are added here); ``rec_model``: a loaded SASRec (frozen here).
    """
    cfg = cfg or TeacherConfig()
    prepare_tokenizer(tokenizer)
    # model_interface.py:319 ran on transformers 4.28, which initialised added rows with the model's
    # _init_weights (normal(0, initializer_range)); transformers 5's default mean_resizing=True would
    # draw them from the old rows' mean/covariance instead (the reference shim bridges the same way).
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    llama = wrap_moe_lora(llm, MoeLoraConfig(r=cfg.lora_r, num_moe=cfg.num_moe, lora_alpha=cfg.lora_alpha,
                                             lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
                                             gating=cfg.gating, mode=cfg.mode))
    router = build_router(RouterConfig(kind="share", num_moe=cfg.num_moe, mode=cfg.mode))
    rec_model.eval()
    rec_model.requires_grad_(False)
    projector = MlpProjector(rec_size=cfg.rec_size, llm_size=llm.config.hidden_size)
    return ILoRATeacher(llama, tokenizer, rec_model, projector, router, cfg)


# -- reference state mapping (parity, checkpoints) ------------------------------------------------
def reference_key(key: str) -> str:
    """Teacher state-dict key -> the reference ``MInterface`` key."""
    if key.startswith("llama_model.model."):
        key = "llama_model.base_model.model." + key[len("llama_model.model."):]
        key = key.replace(".base_layer.", ".")
    return key


def load_reference_state(teacher: ILoRATeacher, ref_state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy a reference ``MInterface.state_dict()`` into the teacher (names mapped by :func:`reference_key`)."""
    own = teacher.state_dict()
    mapped = {}
    missing = []
    for k in own:
        rk = reference_key(k)
        if rk in ref_state:
            mapped[k] = ref_state[rk]
        else:
            missing.append(rk)
    if strict and missing:
        raise KeyError(f"load_reference_state: reference state lacks {len(missing)} keys, e.g. {missing[:5]}")
    teacher.load_state_dict(mapped, strict=strict)


def trainable_names(teacher: ILoRATeacher) -> list[str]:
    """Reference-named trainable parameters (requires_grad), sorted."""
    return sorted(reference_key(n) for n, p in teacher.named_parameters() if p.requires_grad)
