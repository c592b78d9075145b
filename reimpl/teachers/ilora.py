"""iLoRA as a teacher beside seed 003's alternatives: trained on the teachers' rows, scored on their candidates.

The model is :mod:`reimpl.ilora` in fixed mode (``build_teacher``: SmolLM2 + MoE-LoRA + projector + shared
router + the frozen SASRec the other teachers use as the bar); this module only feeds it the rows of
:mod:`reimpl.teachers.common` and measures it there:

* **rows** (:class:`RowsData`): a :class:`reimpl.teachers.common.Rows` behind the interface of
  :class:`reimpl.ilora.data.LastFMData` (``sample`` draws the target + ``cans_num - 1`` unseen negatives, shuffled:
  fixed mode's candidate rule), so :func:`reimpl.ilora.train.train` trains on it unchanged. Training rows are the
  teachers' non-held-out rows (a seeded sample of ``max_train_rows``), of history length >= 3 (iLoRA's own rule,
  ``lastfm_data.py:71``).
* **training in chunks**: ``chunk_batches`` micro-batches per call, then a checkpoint
  (``runs/teachers/<name>/last.ckpt``, exact resume on this machine) and a compact copy in the results store
  (:func:`compact_checkpoint`: the trainable tensors in float32, Adam's moments rounded to bfloat16, the RNG
  state and the epoch order), from which a run on another machine continues (:func:`restore_checkpoint`: not
  bit-exact with an uninterrupted run, because of the rounded moments; the record says which chunks resumed so).
* **evaluation** on the same rows and candidates as every other teacher: each candidate's log-likelihood as the
  answer (``ILoRATeacher.score_candidates``), then :func:`reimpl.teachers.common.evaluate_scores` (no all-items
  metrics: a generator scores the candidates it is shown), and iLoRA's own generation metrics (HR@1 over valid
  answers, ValidRatio) on val / test with those candidates in the prompt.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from reimpl import checkpoint as ckpt_io
from reimpl.cliconf import require
from reimpl.device import module_device
from reimpl.ilora.data import DataConfig, LastFMData, collate
from reimpl.teachers import common

PROMPTS = {"lastfm": "artist.txt", "ml-100k": "movie.txt"}   # ref_repositories/iLoRA/prompt/
MIN_LEN_SEQ = 3                                                 # lastfm_data.py:71


@dataclass
class ILoRAConfig:
    """The teacher run's knobs; LoRA / router / projector are ``TeacherConfig``'s defaults (train_lastfm.sh)."""
    batch_size: int = 8
    accumulate_grad_batches: int = 2     # the reference's 16 gives too few optimizer steps on a few thousand rows
    epochs: int = 1
    lr: float = 7e-4                     # train_lastfm.sh
    bf16: bool = True
    seed: int = 1234
    llm_layers: int | None = None        # keep only the first n decoder layers (None: the whole LLM)
    chunk_batches: int | None = None     # stop after this many micro-batches in one call (None: to the end)
    eval_batch: int = 4
    max_new_tokens: int = 32
    generation: bool = True              # also iLoRA's HR@1 / ValidRatio by generation on val and test

    def __post_init__(self) -> None:
        for name in ("batch_size", "accumulate_grad_batches", "epochs", "eval_batch", "max_new_tokens"):
            require(getattr(self, name) >= 1, f"--{name}", "an integer >= 1", getattr(self, name))
        require(self.chunk_batches is None or self.chunk_batches >= 1, "--chunk_batches", "an integer >= 1",
                self.chunk_batches)
        require(self.llm_layers is None or self.llm_layers >= 1, "--llm_layers", "an integer >= 1", self.llm_layers)


class RowsData:
    """:class:`LastFMData`'s interface over teacher rows (``sample``, ``unpadded``, ``candidates``, ``len``)."""

    def __init__(self, rows: common.Rows, titles: dict[int, str], item_num: int, cans_num: int = 20,
                 source: str = ""):
        used = {int(i) for i in np.unique(rows.seqs) if i != item_num} | set(map(int, rows.next))
        missing = sorted(used - set(titles))
        if missing:
            raise ValueError(f"{source}: no title for item ids {missing[:20]} (the iLoRA prompt names every item)")
        self.rows, self.id2name = rows, titles
        self.all_ids = sorted(titles)
        self.cfg = DataConfig(data_dir=source, prompt_path="", cans_num=cans_num, padding_item_id=item_num,
                              min_len_seq=1, mode="fixed")
        lens = (rows.seqs != item_num).sum(1)
        self.split = SimpleNamespace(seqs=rows.seqs, lens=lens, next=rows.next)
        self.source = f"{source} ({rows.split}, {len(rows)} rows)"

    def __len__(self) -> int:
        return len(self.rows)

    def unpadded(self, i: int) -> list[int]:
        return self.rows.history(i)

    candidates = LastFMData.candidates

    def sample(self, i: int, rng: random.Random, mode: str | None = None, cans: list[int] | None = None) -> dict:
        hist = self.unpadded(i)
        target = int(self.rows.next[i])
        cans = [int(c) for c in cans] if cans is not None else self.candidates(hist, target, rng, "fixed")
        return {"seq": [int(x) for x in self.rows.seqs[i]], "seq_name": [self.id2name[x] for x in hist],
                "len_seq": max(1, len(hist)), "cans": cans, "cans_name": [self.id2name[c] for c in cans],
                "len_cans": len(cans), "item_id": target, "correct_answer": self.id2name[target]}


def training_rows(rows: common.Rows) -> common.Rows:
    """iLoRA trains on rows with at least :data:`MIN_LEN_SEQ` history items."""
    return rows.take(np.flatnonzero((rows.seqs != rows.item_num).sum(1) >= MIN_LEN_SEQ))


def build(cfg: ILoRAConfig, rec_model, llm: str = "smollm2", llm_path: str | None = None):
    """The fixed-mode iLoRA teacher on ``llm`` ('smollm2', 'tiny', or 'hf': the save_pretrained folder
    ``llm_path``, e.g. a Llama-class model for the GPU path) with ``rec_model`` (frozen SASRec)."""
    from reimpl.ilora.teacher import TeacherConfig, build_teacher

    if llm == "tiny":
        from transformers import LlamaForCausalLM

        from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llm_dir

        d = tiny_llm_dir(seed=0)
        model, tok = LlamaForCausalLM.from_pretrained(str(d)), load_tiny_tokenizer(d)
    elif llm == "hf":
        from reimpl.llm.real import load_local_llm

        require(llm_path is not None, "--llm_path", "a save_pretrained folder with --llm hf", llm_path)
        model, tok = load_local_llm(llm_path)
    else:
        require(llm == "smollm2", "--llm", "smollm2, tiny or hf for ilora", llm)
        from reimpl.llm.real import load_smollm2

        model, tok = load_smollm2()
    if cfg.llm_layers is not None:
        from reimpl.teachers.e4srec import keep_first_layers

        keep_first_layers(model, cfg.llm_layers)
    teacher = build_teacher(model, tok, rec_model, TeacherConfig(mode="fixed"))
    teacher.answer_logits_only = True   # the LM head at the answer positions only (same loss, ~25 % less time)
    return teacher


def train_config(cfg: ILoRAConfig):
    from reimpl.ilora.optim import OptimConfig
    from reimpl.ilora.train import TrainConfig

    return TrainConfig(batch_size=cfg.batch_size, accumulate_grad_batches=cfg.accumulate_grad_batches,
                       max_epochs=cfg.epochs, seed=cfg.seed, mode="fixed", bf16=cfg.bf16,
                       optim=OptimConfig(lr=cfg.lr, mode="fixed"))


# ----------------------------------------------------------------------------------------------- checkpoints
def _round_moments(opt_state: dict) -> dict:
    st = {k: ({n: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and n != "step" else v)
               for n, v in s.items()}) for k, s in opt_state["state"].items()}
    return {**opt_state, "state": st}


def compact_checkpoint(src: str | Path, dst: str | Path, extra: dict) -> Path:
    """The results-store copy of a ``last.ckpt``: float32 trainable tensors, bfloat16 Adam moments, ``extra``
    (the loss curve so far, which chunks ran where)."""
    from reimpl.ilora.train import CKPT_KIND

    ck = ckpt_io.load(src, kind=CKPT_KIND)
    ck["optimizer"] = _round_moments(ck["optimizer"])
    ck["extra"] = extra
    return ckpt_io.save(dst, ck, kind=CKPT_KIND)


def restore_checkpoint(src: str | Path, dst: str | Path, identity: dict) -> dict:
    """Write the committed ``src`` as this machine's ``dst`` (``last.ckpt``) for ``train(resume=dst)``.

    The checkpoint must come from the same run (config and data equal to ``identity``'s); the code version and
    thread count may differ (a later session's code, another machine), and the stored identity is replaced by
    ``identity`` so that the resume check passes. Returns the checkpoint's ``extra``."""
    from reimpl.ilora.train import CKPT_KIND

    ck = ckpt_io.load(src, kind=CKPT_KIND)
    saved = ck.get("identity") or {}
    for key in ("config", "data"):
        if saved.get(key) != identity.get(key):
            ckpt_io.check_resume(src, {key: saved.get(key)}, {key: identity.get(key)})   # raises, listing the diff
    ck["identity"] = identity
    extra = ck.pop("extra", {})
    ckpt_io.save(dst, ck, kind=CKPT_KIND)
    return extra


# ------------------------------------------------------------------------------------------------ evaluation
def _batches(data: RowsData, tokenizer, prompts, cands: np.ndarray, batch: int, seed: int):
    py = random.Random(seed)
    for s in range(0, len(data), batch):
        samples = [data.sample(i, py, cans=cands[i].tolist()) for i in range(s, min(s + batch, len(data)))]
        yield collate(samples, tokenizer, prompts, py, train=False)


def evaluate(teacher, rows: common.Rows, titles: dict, prompts, cfg: ILoRAConfig, n_cands: int, cand_seed: int,
             generation: bool) -> dict:
    """Candidate log-likelihood metrics (and generation metrics) on ``rows`` with the shared candidates."""
    data = RowsData(rows, titles, rows.item_num, n_cands, source=rows.split)
    cands = common.candidates(rows, n_cands, cand_seed)
    teacher.eval()
    t0 = time.perf_counter()
    scores = []
    with torch.no_grad(), torch.autocast(module_device(teacher).type, dtype=torch.bfloat16, enabled=cfg.bf16):
        for b in _batches(data, teacher.tokenizer, prompts, cands, cfg.eval_batch, cfg.seed):
            scores.append(teacher.score_candidates(b, b["cans_name"], b["prompts"]).float().cpu())
    sc = torch.cat(scores)
    out = common.evaluate_scores(None, sc, cands, rows.next)
    out["scoring_s"] = round(time.perf_counter() - t0, 2)
    if generation:
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(module_device(teacher).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            res, _ = teacher.evaluate(_batches(data, teacher.tokenizer, prompts, cands, cfg.eval_batch, cfg.seed),
                                      max_new_tokens=cfg.max_new_tokens)
        out["generation"] = {"HR@1": res.hr1, "ValidRatio": res.valid_ratio, "rows": res.n_rows,
                             "seconds": round(time.perf_counter() - t0, 2)}
    return out


def config_dict(cfg: ILoRAConfig) -> dict:
    """The run's identity-bearing config (``chunk_batches`` is how it is cut into calls, not what it computes)."""
    d = asdict(cfg)
    d.pop("chunk_batches")
    return d
