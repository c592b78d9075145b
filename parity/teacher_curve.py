"""Multi-step loss curve of the iLoRA teacher: reference ``MInterface`` under a Lightning Trainer vs
``reimpl.ilora.train.train`` (``python -m parity.teacher_curve --help``).

Issue 7: "same config through the reference MInterface on a small slice gives the same loss curve
within tolerance". One-step parity (loss + every gradient) is ``parity/cases/ilora_teacher_step.py``;
this runs K optimizer steps on each side, each with its own optimizer and LR schedule:

* reference: ``parity.shims.ilora.build_minterface`` (train_lastfm.sh hparams, ``pl.seed_everything``
  first, main.py:40-41), fitted by a ``pytorch_lightning.Trainer`` with ``accumulate_grad_batches=A``
  and ``max_steps`` = main.py:50 evaluated on the slice. Its own ``configure_optimizers``
  (model_interface.py:222-287) builds the Adam + ``LinearWarmupCosineLRScheduler`` (optims.py), which
  its ``training_step`` (l.134-149) steps before every micro-batch; Lightning scales the loss by 1/A
  and steps/zeroes the optimizer every A micro-batches (as Lightning 1.8.6, requirements.txt, did).
* reimpl: ``reimpl.ilora.teacher.build_teacher`` + ``reimpl.ilora.train.train`` (its own
  ``reimpl.ilora.optim`` groups and schedule, its own accumulation loop). ``train`` normally draws and
  collates its batches itself; here its ``batch_source`` is a feeder that returns the reference's batches,
  so both sides see the same tensors.

Identical starting point: after both are built, every tensor of the reference module (LoRA A/B, dead
gating layers, router incl. BatchNorm buffers, projector, resized embedding rows, base weights,
SASRec) is copied into the teacher (``reimpl.ilora.teacher.load_reference_state``); the base weights
and the SASRec are checked to be bit-identical before the copy (they come from different loaders).

Batches: the reference's LastFM dataset + ``TrainCollater`` (data_interface.py:16-113) through
``build_data_module``, made once: the slice is ``--rows`` train rows drawn by a seeded permutation,
python ``random`` is seeded once (negative sampling lastfm_data.py:45, prompt choice l.32, curriculum
draw l.39), the collater's ``max_step`` is data_interface.py:135 evaluated on the slice, so the
curriculum mixes [PH] (``flag`` True: projector frozen) and embedding batches as it would in a run on
that slice.

Randomness: LoRA dropout (0.1) and the SASRec's dropout (the whole module is in train mode, as
Lightning 1.8.6's ``fit`` left it; ILORA-REC-TRAIN-MODE) are *kept*: torch's global RNG is seeded with
``dropout_seed + i`` right before micro-batch i on both sides (reference: a callback's
``on_train_batch_start``; reimpl: the batch feeder), so both draw identical masks (the one-step case
shows the draw order is the same).

Precision: ``--dtype float32`` (the suggested check), ``float64`` (the library as it is, which keeps
float32 RMSNorm and LM loss on both sides, so only float32-tight) and ``float64-strict`` (those two
spots lifted to float64 on both sides by :func:`float32_islands_lifted`; judged at 1e-10). Both sides
are built in float32 and cast, so every precision starts from the same values.

SmolLM2: the reference needs an HF folder (model_interface.py:313,318); the GGUF is de-quantized once
into ``runs/cache/smollm2-hf/`` (float32 safetensors + the GGUF's tokenizer). Tokenizer bridge:
model_interface.py:313 hardcodes ``LlamaTokenizer``, which in transformers 5 re-imposes Llama's
sentencepiece pre-tokenizer (Metaspace) on SmolLM2's GPT2-style byte-level BPE: spaces become
unknown "▁" pieces and the "\\n" answer terminator is dropped. The reference module's
``llama_tokenizer`` is therefore replaced by the folder's own tokenizer with the same load-time edits
(pad ``[PAD]``, right padding, 4 special tokens: same length and ids, checked).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reimpl.paths import REPORTS, ROOT, RUNS

SMOLLM2_CACHE = RUNS / "cache" / "smollm2-hf"
LLMS = ("smollm2", "tiny")
GROUPS = ("projector", "router", "llm")

# Tolerances (see TOLERANCE_NOTE). loss/lr: relative to the reference value, per micro-batch;
# param_atol: max |param_ref - param_reimpl| after every optimizer step (None: reported, not judged).
# "float64" keeps the library's float32 islands (LlamaRMSNorm, ForCausalLMLoss) on both sides, so it
# is judged like float32; "float64-strict" lifts them to float64 on both sides (FLOAT32_ISLANDS).
DTYPES = ("float32", "float64", "float64-strict")
TOL = {"float32": {"loss_rtol": 1e-6, "lr_rtol": 1e-15, "param_atol": None},
       "float64": {"loss_rtol": 1e-6, "lr_rtol": 1e-15, "param_atol": None},
       "float64-strict": {"loss_rtol": 1e-10, "lr_rtol": 1e-15, "param_atol": 1e-10}}


@dataclass
class CurveConfig:
    llm: str = "smollm2"            # "smollm2" (real, GGUF de-quantized) or "tiny" (random tiny Llama)
    batch: int = 2                  # micro-batch size (train_lastfm.sh: 8)
    steps: int = 6                  # optimizer steps
    accumulate: int = 1             # accumulate_grad_batches (train_lastfm.sh: 16)
    rows: int | None = None         # train rows in the slice; default batch * (steps * accumulate + 1)
    mode: str = "faithful"
    dtype: str = "float32"
    seed: int = 1234                # main.py --seed: pl.seed_everything before MInterface.__init__
    data_seed: int = 0              # slice permutation + python random for the collater
    dropout_seed: int = 20240       # torch.manual_seed(dropout_seed + i) before micro-batch i
    max_epochs: int = 5             # train_lastfm.sh (enters max_steps -> warmup/cosine)
    num_workers: int = 8            # main.py default (enters the curriculum's max_step)
    threads: int = 1

    def __post_init__(self) -> None:
        if self.llm not in LLMS:
            raise ValueError(f"CurveConfig.llm must be one of {LLMS}, got {self.llm!r}")
        if self.mode not in ("faithful", "fixed"):
            raise ValueError(f"CurveConfig.mode must be 'faithful' or 'fixed', got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"CurveConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        for k in ("batch", "steps", "accumulate", "threads"):
            if getattr(self, k) < 1:
                raise ValueError(f"CurveConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.batch < 2:
            # the router's BatchNorm1d in train mode needs > 1 value per channel (both sides raise)
            raise ValueError("CurveConfig.batch must be >= 2 (router BatchNorm in train mode)")
        if self.rows is None:
            self.rows = self.batch * (self.micro_batches + 1)
        if self.rows // self.batch <= self.micro_batches:
            # reimpl train() stops mid-epoch (stop_after_batches) only before the epoch's last batch
            raise ValueError(f"CurveConfig.rows={self.rows}: need rows // batch > steps * accumulate = "
                             f"{self.micro_batches} (one spare batch), e.g. "
                             f"rows={self.batch * (self.micro_batches + 1)}")

    @property
    def torch_dtype(self):
        import torch

        return torch.float32 if self.dtype == "float32" else torch.float64

    @property
    def micro_batches(self) -> int:
        return self.steps * self.accumulate

    @property
    def max_steps(self) -> int:
        """main.py:50 (``len(trainset) * max_epochs // (accumulate * batch)``) with the slice as trainset."""
        return self.rows * self.max_epochs // (self.accumulate * self.batch)

    @property
    def curriculum_max_step(self) -> int:
        """data_interface.py:135 (``max_epochs * (len(trainset) // batch) // num_workers``) on the slice."""
        return self.max_epochs * (self.rows // self.batch) // self.num_workers


# --------------------------------------------------------------------------------------------- LLM sources
@contextlib.contextmanager
def _silenced():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def smollm2_hf_dir(folder: Path = SMOLLM2_CACHE) -> Path:
    """HF folder (config.json + float32 safetensors + tokenizer) of the de-quantized SmolLM2 GGUF.

    Made once and reused; written to a temporary sibling and renamed so an interrupted save never
    leaves a half folder behind. transformers refuses ``save_pretrained`` on a GGUF-loaded model, so
    the de-quantized tensors go into a plain ``LlamaForCausalLM`` built from the same config.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reimpl.llm.real import load_smollm2

    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() \
            and (folder / "tokenizer.json").is_file():
        return folder
    with _silenced():
        model, tok = load_smollm2(dtype=torch.float32)
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        plain = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
        plain.load_state_dict(model.state_dict(), strict=True)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    if folder.exists():  # a concurrent writer finished first
        import shutil

        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return folder


def _llm_dir(cfg: CurveConfig) -> Path:
    if cfg.llm == "smollm2":
        return smollm2_hf_dir()
    from parity.cases.ilora_teacher_step import tiny_dir

    return tiny_dir()


def _reimpl_llm(cfg: CurveConfig):
    """(llm, tokenizer) as the reimpl pipeline loads them (reimpl.ilora.train.build_from_args)."""
    import torch
    from transformers import LlamaForCausalLM

    with _silenced():
        if cfg.llm == "smollm2":
            from reimpl.llm.real import load_smollm2

            return load_smollm2(dtype=torch.float32)
        from reimpl.llm.tiny import load_tiny_tokenizer

        d = _llm_dir(cfg)
        return LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32), load_tiny_tokenizer(d)


def _token_ids(tok) -> dict:
    from reimpl.llm.tiny import ILORA_SPECIAL_TOKENS

    return {"len": len(tok), "pad": tok.pad_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id,
            "specials": [tok.convert_tokens_to_ids(t) for t in ILORA_SPECIAL_TOKENS]}


# --------------------------------------------------------------------------------------------- build
def build_reference(cfg: CurveConfig):
    """(reference namespace, MInterface, notes) in train mode, dtype ``cfg.dtype``."""
    import torch
    from transformers import AutoTokenizer

    from parity.refs import ilora
    from reimpl.llm.tiny import add_ilora_tokens

    ref = ilora()
    d = _llm_dir(cfg)
    with _silenced():
        # built in float32 and then cast, so a float64 run starts from the float32 run's exact values
        # (random init drawn directly in float64 would give other numbers from the same seed)
        m = ref.build_minterface(d, seed=cfg.seed, dtype=torch.float32)
    m.to(cfg.torch_dtype)
    notes = {}
    if cfg.llm == "smollm2":
        own = add_ilora_tokens(AutoTokenizer.from_pretrained(str(d), local_files_only=True))
        probe = "The answer is Muse\n"
        notes["tokenizer_bridge"] = {
            "why": "model_interface.py:313 LlamaTokenizer re-imposes Llama's Metaspace pre-tokenizer on "
                   "SmolLM2's byte-level BPE",
            "probe": probe,
            "LlamaTokenizer": m.llama_tokenizer(probe, add_special_tokens=False).input_ids,
            "own_tokenizer": own(probe, add_special_tokens=False).input_ids}
        if _token_ids(own) != _token_ids(m.llama_tokenizer):
            raise RuntimeError(f"tokenizer bridge: ids differ from the reference's LlamaTokenizer "
                               f"({_token_ids(own)} vs {_token_ids(m.llama_tokenizer)}): the resized "
                               "embedding rows would not line up")
        m.llama_tokenizer = own
    return ref, m, notes


def build_reimpl(cfg: CurveConfig):
    from parity.cases.ilora_teacher_step import rec_checkpoint
    from reimpl.ilora.sasrec import load_checkpoint
    from reimpl.ilora.teacher import TeacherConfig, build_teacher

    llm, tok = _reimpl_llm(cfg)
    with _silenced():
        t = build_teacher(llm, tok, load_checkpoint(rec_checkpoint(), mode=cfg.mode), TeacherConfig(mode=cfg.mode))
    return t.to(cfg.torch_dtype)


def sync_weights(teacher, m) -> dict:
    """Copy the reference module's whole state into the teacher; report which tensors differed before.

    Returns ``{"identical": n, "differing": {prefix: count}, "identical_base": bool}`` where
    "base" means the LLM's own weights (rows of the original vocabulary) and the SASRec.
    """
    import torch

    from reimpl.ilora.teacher import load_reference_state, reference_key

    ref_sd = m.state_dict()
    own = teacher.state_dict()
    identical, differing, base_bad = 0, {}, []
    for k, v in own.items():
        rk = reference_key(k)
        if rk not in ref_sd:
            raise KeyError(f"sync_weights: reference MInterface has no tensor {rk!r} (teacher key {k!r})")
        r = ref_sd[rk]
        if r.shape != v.shape:
            raise ValueError(f"sync_weights: {rk}: reference {tuple(r.shape)} vs teacher {tuple(v.shape)}")
        random_init = any(s in rk for s in ("lora_", ".gating.")) or rk.startswith(("router.", "projector."))
        if rk.endswith(("embed_tokens.weight", "lm_head.weight")):
            n_new = 5  # resize_token_embeddings rows of [PAD] + 4 specials: random on each side
            same = torch.equal(r[:-n_new], v[:-n_new])
            random_init = True
            if not same:
                base_bad.append(rk + "[:-5]")
        else:
            same = torch.equal(r, v)
            if not same and not random_init:
                base_bad.append(rk)
        if torch.equal(r, v):
            identical += 1
        else:
            prefix = rk.split(".")[0] + ("/lora" if "lora_" in rk else "/gating" if ".gating." in rk else "")
            differing[prefix] = differing.get(prefix, 0) + 1
    load_reference_state(teacher, ref_sd, strict=True)
    after = teacher.state_dict()
    bad_after = [k for k, v in after.items() if not torch.equal(v, ref_sd[reference_key(k)])]
    if bad_after:
        raise RuntimeError(f"sync_weights: tensors still differ after the copy, e.g. {bad_after[:3]}")
    return {"identical_before_copy": identical, "differing_before_copy": differing,
            "base_weights_identical": not base_bad, "base_differing": base_bad[:10]}


# --------------------------------------------------------------------------------------------- batches
def make_batches(ref, m, cfg: CurveConfig) -> tuple[list[dict], dict]:
    """``cfg.micro_batches`` LastFM train batches from the reference's dataset + collater (numpy,
    reference layout incl. the [B, L+1] token types) and a description of the slice."""
    import torch

    with _silenced():
        dm = ref.build_data_module(m.llama_tokenizer, batch_size=cfg.batch, max_epochs=cfg.max_epochs,
                                   accumulate_grad_batches=cfg.accumulate)
    n_train = len(dm.trainset)
    if cfg.rows > n_train:
        raise ValueError(f"--rows {cfg.rows} exceeds the LastFM train set ({n_train} rows)")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.data_seed))[:cfg.rows].tolist()
    dm.max_steps = cfg.curriculum_max_step  # what DInterface.__init__ computes for an N-row trainset
    collate = dm.train_dataloader().collate_fn
    state = random.getstate()
    random.seed(cfg.data_seed)
    out = []
    try:
        with _silenced():
            for i in range(cfg.micro_batches):
                rows = perm[i * cfg.batch:(i + 1) * cfg.batch]
                b = collate([dm.trainset[r] for r in rows])
                tk = b["tokens"]
                out.append({"input_ids": tk["input_ids"].numpy(), "attention_mask": tk["attention_mask"].numpy(),
                            "token_type_ids_ref": tk["token_type_ids"].numpy(), "seq": b["seq"].numpy(),
                            "cans": b["cans"].numpy(), "len_seq": b["len_seq"].numpy(),
                            "len_cans": b["len_cans"].numpy(), "item_id": b["item_id"].numpy(),
                            "flag": bool(b["flag"]), "rows": rows})
    finally:
        random.setstate(state)
    info = {"train_rows": n_train, "slice_rows": perm, "curriculum_max_step": cfg.curriculum_max_step,
            "flags": [b["flag"] for b in out], "lengths": [int(b["input_ids"].shape[1]) for b in out],
            "answer_tokens": [int((b["token_type_ids_ref"][:, 1:] * b["attention_mask"]).sum()) for b in out]}
    return out, info


def _ref_batch(b: dict):
    from parity.cases.ilora_teacher_step import reference_batch

    rb = reference_batch(b)
    rb["flag"] = b["flag"]
    return rb


def _reimpl_batch(b: dict) -> dict:
    from parity.cases.ilora_teacher_step import reimpl_batch

    rb = reimpl_batch(b)
    rb["flag"] = b["flag"]
    return rb


# --------------------------------------------------------------------------------------------- runs
FLOAT32_ISLANDS = ("transformers LlamaRMSNorm.forward computes in float32 (x.to(torch.float32), "
                   "models/llama/modeling_llama.py)", "transformers ForCausalLMLoss casts logits with "
                   "logits.float() (loss/loss_utils.py); reimpl's causal_lm_loss mirrors it (compute_dtype=float32)")


@contextlib.contextmanager
def float32_islands_lifted(m, teacher):
    """float64-strict: on BOTH sides, RMSNorm and the LM loss stay in float64 for float64 inputs.

    In a plain float64 run these two library spots round to float32: a 1e-16 difference (e.g. the
    MoE-LoRA's summation order) that crosses a float32 rounding boundary there becomes a float32 ulp,
    so "float64" is only float32-tight. The patch is symmetric (the same class / the same formula on
    both sides) and undone on exit; it is a diagnostic, not what the reference runs.
    """
    import torch
    import torch.nn.functional as F
    from transformers.loss.loss_utils import fixed_cross_entropy
    from transformers.models.llama import modeling_llama

    import reimpl.ilora.teacher as teacher_mod

    orig_norm = modeling_llama.LlamaRMSNorm.forward
    orig_loss = teacher_mod.causal_lm_loss

    def norm_forward(self, x):
        if x.dtype != torch.float64:
            return orig_norm(self, x)
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def lm_loss_no_cast(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100,
                        shift_labels=None, **kw):
        # ForCausalLMLoss without its logits.float()
        if shift_labels is None:
            shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous()
        return fixed_cross_entropy(logits.view(-1, vocab_size), shift_labels.view(-1).to(logits.device),
                                   num_items_in_batch, ignore_index, **kw)

    llama = m.llama_model.base_model.model  # PeftModelForCausalLM -> MoeLoraModel -> LlamaForCausalLM
    modeling_llama.LlamaRMSNorm.forward = norm_forward
    llama._loss_function = lm_loss_no_cast
    teacher_mod.causal_lm_loss = lambda logits, labels: orig_loss(logits, labels, compute_dtype=None)
    try:
        yield
    finally:
        modeling_llama.LlamaRMSNorm.forward = orig_norm
        del llama._loss_function
        teacher_mod.causal_lm_loss = orig_loss


@contextlib.contextmanager
def _step_snapshots(named: dict, sink: list):
    """After every optimizer step (any optimizer), append a copy of the tensors in ``named``
    (``{reference name: tensor}``) to ``sink``."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(optimizer, args, kwargs):
        sink.append({k: v.detach().clone() for k, v in named.items()})

    h = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        h.remove()


def _trainable(module, key=lambda k: k) -> dict:
    return {key(n): p for n, p in module.named_parameters() if p.requires_grad}


def run_reference(m, batches: list[dict], cfg: CurveConfig) -> dict:
    """Fit the MInterface with a Lightning Trainer on exactly ``batches`` (in order)."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    rec: dict[str, list] = {"loss": [], "lr": [], "global_step": [], "flag": []}

    class Seeder(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            torch.manual_seed(cfg.dropout_seed + batch_idx)

    orig_loss = m.configure_loss

    def configure_loss(out, labels=None):  # instance attribute: records, then defers to the reference
        loss = orig_loss(out, labels)
        opt = m.trainer.optimizers[0]
        rec["loss"].append(float(loss.detach()))
        rec["lr"].append([float(g["lr"]) for g in opt.param_groups])
        rec["global_step"].append(int(m.trainer.global_step))
        return loss

    m.configure_loss = configure_loss
    ref_batches = [_ref_batch(b) for b in batches]
    for b in ref_batches:
        rec["flag"].append(bool(b["flag"]))
    loader = DataLoader(ref_batches, batch_size=None, shuffle=False, num_workers=0, collate_fn=lambda x: x)
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # "GPU available: False ..." banners of Trainer() and fit()
        lg.setLevel(logging.WARNING)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=cfg.max_steps, max_epochs=1,
                         accumulate_grad_batches=cfg.accumulate, precision="32-true" if cfg.dtype == "float32"
                         else "64-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[Seeder()], deterministic=False)
    # Lightning 1.8.6 (the reference's pin) called model.train() on the whole module before the loop
    # (Trainer._run_train); 2.x keeps submodule modes, which would leave the SASRec in eval mode.
    m.train()
    snaps: list[dict] = []
    t0 = time.perf_counter()
    try:
        with _silenced(), _step_snapshots(_trainable(m), snaps):
            trainer.fit(m, train_dataloaders=loader)
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
    rec["seconds"] = time.perf_counter() - t0
    rec["optimizer_steps"] = int(trainer.global_step)
    rec["trainer_max_steps"] = int(trainer.max_steps)
    rec["warmup_steps"] = int(m.scheduler.warmup_steps)
    rec["snapshots"] = snaps
    del m.configure_loss
    return rec


class _SliceRows:
    """Stands in for ``LastFMData`` in ``train``: with a ``batch_source`` only its length (the slice) matters."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def run_reimpl(teacher, batches: list[dict], cfg: CurveConfig, ref_snaps: list[dict] | None = None) -> dict:
    """``reimpl.ilora.train.train`` on exactly ``batches``, given to it as its ``batch_source``."""
    import torch

    from reimpl.ilora import train as T
    from reimpl.ilora.optim import OptimConfig
    from reimpl.ilora.teacher import reference_key

    fed = [_reimpl_batch(b) for b in batches]
    calls = {"n": 0}

    def feeder(rows, rng, emb_prob):
        i = calls["n"]
        if i >= len(fed):
            raise RuntimeError(f"teacher_curve feeder: train() asked for micro-batch {i} of {len(fed)}")
        if len(rows) != cfg.batch:
            raise RuntimeError(f"teacher_curve feeder: train() built a batch of {len(rows)} rows, "
                               f"expected {cfg.batch}")
        calls["n"] += 1
        torch.manual_seed(cfg.dropout_seed + i)
        return fed[i]

    tcfg = T.TrainConfig(batch_size=cfg.batch, accumulate_grad_batches=cfg.accumulate, max_epochs=cfg.max_epochs,
                         seed=cfg.data_seed, ref_num_workers=cfg.num_workers,
                         optim=OptimConfig(mode=cfg.mode), mode=cfg.mode)
    snaps: list[dict] = []
    t0 = time.perf_counter()
    with _silenced(), _step_snapshots(_trainable(teacher, reference_key), snaps):
        r = T.train(teacher, _SliceRows(cfg.rows), ["(batches come from the reference collater)"], tcfg,
                    progress=False, stop_after_batches=cfg.micro_batches, batch_source=feeder)
    seconds = time.perf_counter() - t0
    if calls["n"] != cfg.micro_batches:
        raise RuntimeError(f"teacher_curve: train() consumed {calls['n']} of {cfg.micro_batches} batches")
    return {"loss": list(r.losses), "lr": [list(x) for x in r.lrs], "optimizer_steps": int(r.global_step),
            "seconds": seconds, "snapshots": snaps, "flag": [bool(b["flag"]) for b in fed]}


# --------------------------------------------------------------------------------------------- compare
def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def compare(ref: dict, imp: dict, cfg: CurveConfig) -> dict:
    """Per micro-batch loss / lr diffs, per step parameter diffs, verdict against ``TOL[cfg.dtype]``."""
    tol = dict(TOL[cfg.dtype])
    n = len(ref["loss"])
    if len(imp["loss"]) != n:
        raise RuntimeError(f"compare: reference recorded {n} losses, reimpl {len(imp['loss'])}")
    rows = []
    for i in range(n):
        lr_r, lr_i = ref["lr"][i], imp["lr"][i]
        rows.append({"micro_batch": i, "step": i // cfg.accumulate, "flag": ref["flag"][i],
                     "loss_ref": ref["loss"][i], "loss_reimpl": imp["loss"][i],
                     "loss_abs": abs(ref["loss"][i] - imp["loss"][i]), "loss_rel": _rel(imp["loss"][i], ref["loss"][i]),
                     "lr_ref": lr_r, "lr_reimpl": lr_i,
                     "lr_rel": max(_rel(a, b) for a, b in zip(lr_i, lr_r))})
    params = []
    only = {}
    for s, (a, b) in enumerate(zip(ref["snapshots"], imp["snapshots"])):
        if set(a) != set(b):
            if cfg.mode == "faithful":
                raise RuntimeError(f"compare: trainable tensors differ at step {s}: "
                                   f"{sorted(set(a) ^ set(b))[:5]}")
            # fixed mode changes which tensors train (declared deviations): compare the common ones
            only = {"reference_only": len(set(a) - set(b)), "reimpl_only": len(set(b) - set(a))}
        worst, worst_name, scale = 0.0, "", 0.0
        for k in sorted(set(a) & set(b)):
            d = float((a[k].double() - b[k].double()).abs().max())
            if d > worst:
                worst, worst_name = d, k
            scale = max(scale, float(a[k].double().abs().max()))
        params.append({"step": s, "max_abs": worst, "tensor": worst_name, "max_abs_param": scale})
    steps = []
    for s in range(cfg.steps):
        sub = [r for r in rows if r["step"] == s]
        steps.append({"step": s, "max_loss_abs": max(r["loss_abs"] for r in sub),
                      "max_loss_rel": max(r["loss_rel"] for r in sub), "max_lr_rel": max(r["lr_rel"] for r in sub),
                      "lr_ref_group0": sub[0]["lr_ref"][0],
                      "param_max_abs_after": params[s]["max_abs"] if s < len(params) else None})
    ok_loss = all(r["loss_rel"] <= tol["loss_rtol"] for r in rows)
    ok_lr = all(r["lr_rel"] <= tol["lr_rtol"] for r in rows)
    ok_steps = ref["optimizer_steps"] == imp["optimizer_steps"] == cfg.steps == len(params)
    ok_params = tol["param_atol"] is None or all(p["max_abs"] <= tol["param_atol"] for p in params)
    return {"rows": rows, "steps": steps, "params": params, "tolerance": tol, "trainable_mismatch": only,
            "ok_loss": ok_loss, "ok_lr": ok_lr, "ok_steps": ok_steps, "ok_params": ok_params,
            "ok": ok_loss and ok_lr and ok_steps and ok_params,
            "max_loss_rel": max(r["loss_rel"] for r in rows), "max_loss_abs": max(r["loss_abs"] for r in rows),
            "max_lr_rel": max(r["lr_rel"] for r in rows)}


def run_curve(cfg: CurveConfig) -> dict:
    """Build both sides, feed them the same batches, run ``cfg.steps`` optimizer steps each, compare."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.dont_write_bytecode = True
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    ref, m, notes = build_reference(cfg)
    teacher = build_reimpl(cfg)
    ids_ref, ids_imp = _token_ids(m.llama_tokenizer), _token_ids(teacher.tokenizer)
    if ids_ref != ids_imp:
        raise RuntimeError(f"tokenizers disagree on special ids: reference {ids_ref} vs reimpl {ids_imp}")
    sync = sync_weights(teacher, m)
    batches, data_info = make_batches(ref, m, cfg)
    build_s = time.perf_counter() - t0
    lift = float32_islands_lifted(m, teacher) if cfg.dtype == "float64-strict" else contextlib.nullcontext()
    with lift:
        r = run_reference(m, batches, cfg)
        i = run_reimpl(teacher, batches, cfg)
    cmp = compare(r, i, cfg)
    n_trainable = int(sum(p.numel() for p in teacher.parameters() if p.requires_grad))
    for d in (r, i):
        d.pop("snapshots")
    return {"config": asdict(cfg) | {"rows": cfg.rows, "max_steps": cfg.max_steps},
            "env": {"torch": torch.__version__, "python": platform.python_version(),
                    "threads": torch.get_num_threads(), "lightning": _version("pytorch_lightning"),
                    "transformers": _version("transformers")},
            "notes": notes, "sync": sync, "data": data_info, "trainable_params": n_trainable,
            "reference": r, "reimpl": i, "compare": cmp,
            "seconds": {"build": build_s, "reference": r["seconds"], "reimpl": i["seconds"],
                        "total": time.perf_counter() - t0}}


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------------------------- report
# The report's prose is parity/templates/teacher_curve.md.j2; the functions below only compute its numbers.
TEMPLATES = Path(__file__).parent / "templates"
SAME_SLICE = ("llm", "batch", "steps", "accumulate", "rows", "mode", "seed", "data_seed", "dropout_seed")


def _short(x: Any, p: int = 6) -> str:
    return f"{x:.{p}g}" if isinstance(x, float) else str(x)


def _max_param(cmp: dict) -> float:
    return max((p["max_abs"] for p in cmp["params"]), default=float("nan"))


def _same_slice(a: dict, b: dict) -> bool:
    return all(a["config"][k] == b["config"][k] for k in SAME_SLICE)


def _strict_twin(e: dict, runs: list[dict]) -> dict | None:
    """The float64-strict run of ``e``'s slice: its max loss rel diff and max param diff."""
    for o in runs:
        if o["config"]["dtype"] == "float64-strict" and _same_slice(o, e):
            return {"max_loss_rel": o["compare"]["max_loss_rel"], "max_param": _max_param(o["compare"])}
    return None


def _observations(res: dict, extra: list[dict]) -> list[dict]:
    """How sensitive the curve itself is: the reference's own curve in another dtype (same slice and seeds)
    (``kind="dtype"``), and where plain float64 runs first leave 1e-10 (``kind="float64"``)."""
    out: list[dict] = []
    for e in extra:
        if e["config"]["dtype"] == res["config"]["dtype"] or not _same_slice(e, res):
            continue
        a, b = res["reference"]["loss"], e["reference"]["loss"]
        rel = [abs(x - y) / abs(y) for x, y in zip(a, b)]
        i = int(np.argmax(rel))
        rr = res["compare"]["max_loss_rel"]
        out.append({"kind": "dtype", "dtype": e["config"]["dtype"], "rel0": rel[0], "rel_max": rel[i], "i": i,
                    "rr": rr, "within": rr <= 10 * max(rel)})
    for e in [res] + extra:
        if e["config"]["dtype"] != "float64":
            continue
        k = e["compare"]
        out.append({"kind": "float64", "command": e.get("command", ""), "max_loss_rel": k["max_loss_rel"],
                    "first": next((p for p in k["params"] if p["max_abs"] > 1e-10), None),
                    "strict": _strict_twin(e, [res] + extra)})
    return out


def report_context(res: dict, path: Path, figure: Path | None, json_path: Path, command: str,
                   extra: list[dict]) -> dict:
    """What ``teacher_curve.md.j2`` renders: the main run ``res`` and the further runs ``extra``."""
    cmp = res["compare"]
    return {"res": res, "cfg": res["config"], "cmp": cmp, "command": command,
            "json_path": str(json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path),
            "figure": figure.relative_to(path.parent).as_posix() if figure else "",
            "tb": res["notes"].get("tokenizer_bridge"), "step_params": list(zip(cmp["steps"], cmp["params"])),
            "extra": [{"command": e["command"], "cfg": e["config"], "cmp": e["compare"], "ok": e["compare"]["ok"],
                       "max_param": _max_param(e["compare"])} for e in extra],
            "observations": _observations(res, extra)}


def write_report(res: dict, path: Path, figure: Path | None, json_path: Path, command: str,
                 extra: list[dict] | None = None) -> None:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(f=format, short=_short, repr=repr)
    text = env.get_template("teacher_curve.md.j2").render(
        **report_context(res, path, figure, json_path, command, extra or []))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def plot(res: dict, figure: Path, extra: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmp = res["compare"]
    x = [r["micro_batch"] for r in cmp["rows"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(x, [r["loss_ref"] for r in cmp["rows"]], "o-", label="reference MInterface (Lightning)", lw=2.5, ms=7)
    ax.plot(x, [r["loss_reimpl"] for r in cmp["rows"]], "x--", label="reimpl train()", lw=1.5, ms=8)
    for r in cmp["rows"]:
        if r["flag"]:
            ax.axvspan(r["micro_batch"] - 0.4, r["micro_batch"] + 0.4, color="0.9", zorder=0)
    ax.set_xlabel("micro-batch (grey: [PH] prompt)")
    ax.set_ylabel("LM loss")
    ax.set_title(f"{res['config']['llm']} {res['config']['dtype']} {res['config']['mode']}")
    ax.legend()
    ax = axes[1]
    ax.semilogy(x, [max(r["loss_rel"], 1e-17) for r in cmp["rows"]], "o-",
                label=f"{res['config']['dtype']} (0 drawn at 1e-17)")
    for e in extra or []:
        c = e["config"]
        if c["llm"] == res["config"]["llm"] and c["dtype"] != res["config"]["dtype"] \
                and c["steps"] == res["config"]["steps"] and c["accumulate"] == res["config"]["accumulate"]:
            line = ax.semilogy([r["micro_batch"] for r in e["compare"]["rows"]],
                               [max(r["loss_rel"], 1e-17) for r in e["compare"]["rows"]], "s-",
                               label=f"{c['dtype']} (0 drawn at 1e-17)")[0]
            if e["compare"]["tolerance"]["loss_rtol"] != cmp["tolerance"]["loss_rtol"]:
                ax.axhline(e["compare"]["tolerance"]["loss_rtol"], color=line.get_color(), ls=":",
                           label=f"tolerance ({c['dtype']})")
    ax.axhline(cmp["tolerance"]["loss_rtol"], color="r", ls=":", label=f"tolerance ({res['config']['dtype']})")
    ax.set_xlabel("micro-batch")
    ax.set_ylabel("|loss_reimpl - loss_ref| / |loss_ref|")
    ax.set_title("loss relative difference")
    ax.legend()
    ax = axes[2]
    for gi, g in enumerate(GROUPS):
        ax.plot(x, [r["lr_ref"][gi] for r in cmp["rows"]], "o-", label=f"ref {g}")
        ax.plot(x, [r["lr_reimpl"][gi] for r in cmp["rows"]], "x--", label=f"reimpl {g}")
    ax.set_xlabel("micro-batch")
    ax.set_ylabel("lr")
    ax.set_title(f"LR schedule (max_steps {res['config']['max_steps']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- CLI
def _command(argv: list[str]) -> str:
    return "python -m parity.teacher_curve" + ("" if not argv else " " + " ".join(argv))


def _command_for(cfg: CurveConfig) -> str:
    """The explicit command of one run (every flag that differs from the CLI defaults)."""
    d = CurveConfig(llm=cfg.llm)
    flags = [f"--llm {cfg.llm}"]
    for k in ("rows", "batch", "steps", "accumulate", "mode", "dtype", "seed", "data_seed", "dropout_seed", "threads"):
        v = getattr(cfg, k)
        if k == "rows" and v == CurveConfig(llm=cfg.llm, batch=cfg.batch, steps=cfg.steps,
                                            accumulate=cfg.accumulate).rows:
            continue
        if k != "rows" and v == getattr(d, k):
            continue
        flags.append(f"--{k.replace('_', '-')} {v}")
    return "python -m parity.teacher_curve " + " ".join(flags)


def _parse_variant(spec: str) -> dict:
    fields = {f.name: f.type for f in CurveConfig.__dataclass_fields__.values()}
    out: dict[str, Any] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise SystemExit(f"--variants {spec!r}: expected key=value[,key=value]")
        k, v = part.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in fields:
            raise SystemExit(f"--variants {spec!r}: unknown field {k!r} (one of {sorted(fields)})")
        out[k] = int(v) if k in ("batch", "steps", "accumulate", "rows", "seed", "data_seed", "dropout_seed",
                                 "max_epochs", "num_workers", "threads") else v
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m parity.teacher_curve", description=__doc__.split("\n")[0])
    ap.add_argument("--llm", choices=LLMS, default="smollm2")
    ap.add_argument("--rows", type=int, default=None,
                    help="train rows in the slice (default batch*(steps*accumulate+1))")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--mode", choices=["faithful", "fixed"], default="faithful",
                    help="reimpl mode (only faithful is a parity check; fixed differs by design)")
    ap.add_argument("--dtype", choices=DTYPES, default="float32",
                    help="float64 keeps the library's float32 RMSNorm / loss on both sides; float64-strict lifts "
                         "them to float64 on both sides (a diagnostic, not the library's behaviour)")
    ap.add_argument("--variants", nargs="*", default=[], metavar="K=V[,K=V]",
                    help="further runs listed in the report, each overriding the main config, e.g. "
                         "dtype=float64 accumulate=2,steps=4")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--dropout-seed", type=int, default=20240)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", default=str(REPORTS / "teacher_curve.md"))
    ap.add_argument("--figure", default=str(REPORTS / "figures" / "teacher_curve.png"))
    ap.add_argument("--json", default=None, help="raw numbers (default runs/teacher_curve/<llm>-<dtype>.json)")
    ap.add_argument("--no-report", action="store_true", help="print the comparison only")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="re-render the report and figure from the raw numbers of an earlier run (no training)")
    return ap


def _print_run(r: dict) -> None:
    c = r["compare"]
    print(f"[{r['config']['llm']} {r['config']['dtype']} {r['config']['mode']}] "
          f"{'SAME' if c['ok'] else 'DIFFER'}: max loss rel {c['max_loss_rel']:.3g} "
          f"(tol {c['tolerance']['loss_rtol']:g}), max lr rel {c['max_lr_rel']:.2g}, steps "
          f"{r['reference']['optimizer_steps']}/{r['reimpl']['optimizer_steps']}, "
          f"{r['seconds']['total']:.0f} s")
    for row in c["rows"]:
        print(f"  mb {row['micro_batch']:2d} step {row['step']:2d} flag {int(row['flag'])} "
              f"ref {row['loss_ref']:.9g} reimpl {row['loss_reimpl']:.9g} rel {row['loss_rel']:.3g} "
              f"lr {row['lr_ref'][0]:.6g}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    if a.from_json:
        raw = json.loads(Path(a.from_json).read_text())
        runs = raw if isinstance(raw, list) else [raw]
        plot(runs[0], Path(a.figure), runs[1:])
        write_report(runs[0], Path(a.report), Path(a.figure), Path(a.from_json).resolve(), runs[0]["command"], runs[1:])
        print(f"wrote {a.report}, {a.figure} from {a.from_json}")
        return 0
    cfg = CurveConfig(llm=a.llm, batch=a.batch, steps=a.steps, accumulate=a.accumulate, rows=a.rows, mode=a.mode,
                      dtype=a.dtype, seed=a.seed, data_seed=a.data_seed, dropout_seed=a.dropout_seed,
                      threads=a.threads)
    res = run_curve(cfg)
    res["command"] = cmd = _command(argv)
    runs = [res]
    for spec in a.variants:
        over = _parse_variant(spec)
        base = asdict(cfg) | {"rows": a.rows}
        vcfg = CurveConfig(**(base | over))
        rv = run_curve(vcfg)
        rv["command"] = _command_for(vcfg)
        runs.append(rv)
    out_dir = RUNS / "teacher_curve"
    for r in runs:
        _print_run(r)
    if not a.no_report:
        json_path = Path(a.json) if a.json else out_dir / f"{cfg.llm}-{cfg.dtype}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(runs if len(runs) > 1 else res, indent=1, default=float))
        plot(res, Path(a.figure), runs[1:])
        write_report(res, Path(a.report), Path(a.figure), json_path, cmd, runs[1:])
        print(f"wrote {a.report}, {a.figure}, {json_path}")
    # fixed mode differs from the reference by design (declared deviations): only faithful runs gate
    return 0 if all(r["compare"]["ok"] for r in runs if r["config"]["mode"] == "faithful") else 1


if __name__ == "__main__":
    sys.exit(main())
