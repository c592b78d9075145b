"""Training, evaluation and export recipe of the iLoRA teacher (``python -m reimpl.ilora.train --help``).

Mirrors, in AkaliKong/iLoRA @ 28e47371:

* ``main.py:92`` (``max_steps``) and Lightning's loop as the reference configures it
  (``accumulate_grad_batches``: loss / k, an optimizer step every k micro-batches and at the end of
  each epoch; ``training_step`` sets the LR and toggles the projector on the ``flag``, l.134-149) ->
  :func:`train`; its batches come from a *batch source* (default: :func:`train_batches`, the reference's
  dataset + ``TrainCollater``, :mod:`reimpl.ilora.data`);
* ``on_save_checkpoint`` with ``--save part`` (l.296-307: only trainable tensors, here *with* the
  optimizer / schedule / RNG state so that a run can resume) -> :func:`save_checkpoint` (a
  :mod:`reimpl.checkpoint` file: safetensors + JSON, atomic, resumed only by the same run).

The data side (``LastFMData``, ``collate``, ``curriculum_prob``, the eval/export batch generators) lives in
:mod:`reimpl.ilora.data`, the export (``export_teacher``, all-items embeddings and their cache) in
:mod:`reimpl.ilora.export`; both are re-exported here for existing callers.

CLI (:func:`main`, options generated from :class:`RunOptions` and the component configs
:class:`TrainConfig`, :class:`~reimpl.ilora.optim.OptimConfig`, :class:`~reimpl.ilora.teacher.TeacherConfig`,
:class:`~reimpl.ilora.data.DataConfig`): options and paths are checked first, then every data file is read and
validated, then the LLM is loaded; train (``--max_epochs``, ``--resume``; ``--init_ckpt`` loads a trained
teacher), evaluate HR@1 / ValidRatio on ``--eval_splits`` (first ``--eval_rows`` rows of each, or ``all``),
export ``tocf/`` for the first ``--export_rows`` rows of the ``len_seq >= 3`` frame or the rows listed in
``--export_rows_file`` (unfiltered ``train_data.df`` indices), with ``--uncertainty`` (UAMD) and an
``--emb_cache``; prints (and ``--out`` writes, atomically) a JSON report with the full config, the environment
(threads, platform) and per-phase wall clock (``timings``).

Randomness: one ``random.Random(seed)`` (negatives, prompt choice, curriculum draws) and one torch
``Generator`` (shuffling) instead of the reference's global RNGs and worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from reimpl import checkpoint as ckpt_io
from reimpl.cliconf import add_dataclass_arguments, build, check_writable, from_namespace, require
from reimpl.data import DataError
from reimpl.deviations import check_mode
from reimpl.device import cuda_rng_state, module_device, set_cuda_rng_state
from reimpl.ilora import deviations_teacher  # noqa: F401
from reimpl.ilora.data import DataConfig, LastFMData, collate, curriculum_prob, eval_batches, export_batches
from reimpl.ilora.export import all_item_embeddings, cached_item_embeddings, export_teacher, teacher_fingerprint
from reimpl.ilora.optim import OptimConfig, WarmupCosineSchedule, build_optimizer, max_steps, param_groups
from reimpl.ilora.prompt import load_prompts
from reimpl.paths import DATA, REF_DIR

__all__ = ["TrainConfig", "RunOptions", "TrainResult", "train", "train_batches", "save_checkpoint", "load_checkpoint",
           "run_identity", "make_accelerator", "main",
           # re-exported from reimpl.ilora.data / reimpl.ilora.export for existing callers
           "DataConfig", "LastFMData", "collate", "curriculum_prob", "eval_batches", "export_batches",
           "all_item_embeddings", "cached_item_embeddings", "export_teacher", "teacher_fingerprint"]

CKPT_KIND = "ilora-teacher"
CODE = ("ilora", "llm", "data", "checkpoint.py", "device.py")   # reimpl/ sources a teacher run depends on

BatchSource = Callable[[list, random.Random, float], dict]   # (row indices, rng, emb_prob) -> batch


# -------------------------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """main.py defaults + train_lastfm.sh."""
    batch_size: int = 8
    accumulate_grad_batches: int = 16
    max_epochs: int = 5
    seed: int = 1234
    ref_num_workers: int = 8          # main.py default; enters max_step of the curriculum (faithful)
    limit_train_batches: int | None = None   # cap micro-batches per epoch (smoke runs); None = all
    limit_rows: int | None = None     # use only the first rows of the train split
    optim: OptimConfig = field(default_factory=OptimConfig)
    mode: str = field(default="faithful", metadata={"choices": ("faithful", "fixed")})
    # bf16 autocast of the forward on CPU (AVX-512 BF16 matmuls; fixed mode only: the reference trains in the
    # LLM's own dtype, and the loss curve of a bf16 run is compared with an fp32 one in reports/teachers.md)
    bf16: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        for name in ("batch_size", "accumulate_grad_batches", "ref_num_workers"):
            require(getattr(self, name) >= 1, f"--{name}", "an integer >= 1", getattr(self, name))
        require(self.max_epochs >= 0, "--max_epochs", "an integer >= 0 (0: evaluate / export only)", self.max_epochs)
        for name in ("limit_train_batches", "limit_rows"):
            v = getattr(self, name)
            require(v is None or v >= 1, f"--{name}", "an integer >= 1 (or none)", v)
        require(not self.bf16 or self.mode == "fixed", "--bf16", "false in faithful mode (the reference has no "
                "autocast)", self.bf16)


def train_batches(data: LastFMData, tokenizer, prompts: Sequence[str], mode: str, terminator: str = "\n"
                  ) -> BatchSource:
    """The reference's training batches: ``data.sample`` per row (negatives), then ``collate`` (template,
    curriculum draw, tokenization), all from the run's one ``random.Random``, in that order."""
    def source(idx: list, rng: random.Random, emb_prob: float) -> dict:
        samples = [data.sample(i, rng, mode) for i in idx]
        # ``collate`` looked up at call time (callers may replace the module attribute)
        return collate(samples, tokenizer, prompts, rng, train=True, emb_prob=emb_prob, terminator=terminator)
    return source


def _rng_state(py: random.Random, gen: torch.Generator) -> dict:
    return {"python": py.getstate(), "torch_gen": gen.get_state(), "torch": torch.get_rng_state(), **cuda_rng_state()}


def run_identity(teacher, data, cfg: TrainConfig, world: int = 1) -> dict:
    """What a resume must match: train / data / teacher config, a digest of the rows and titles read, the base
    LLM's config, the code version, the thread count and the number of processes."""
    split = getattr(data, "split", None)
    digest = {"rows": len(data), "source": str(getattr(data, "source", None))}
    if split is not None:
        digest.update(seq=ckpt_io.digest(split.seqs), len_seq=ckpt_io.digest(split.lens),
                      next=ckpt_io.digest(split.next), titles=ckpt_io.digest(getattr(data, "id2name", None)))
    hf = getattr(teacher, "hf_model", None)
    config = {"train": asdict(cfg), "world": world,
              "data": asdict(data.cfg) if hasattr(data, "cfg") else None,
              "teacher": asdict(teacher.cfg) if hasattr(teacher, "cfg") else None,
              "llm": ckpt_io.digest(hf.config.to_json_string(use_diff=False)) if hf is not None else None}
    return ckpt_io.run_identity(config, digest, ckpt_io.code_version(*CODE))


def save_checkpoint(path: str | Path, teacher, optimizer, schedule, epoch: int, batch_in_epoch: int,
                    global_step: int, rng: dict, cfg: TrainConfig, order: list[int] | None = None,
                    identity: dict | None = None) -> Path:
    """Trainable tensors only (``--save part``, model_interface.py:296-307) + optimizer/schedule/RNG state, written
    atomically (:func:`reimpl.checkpoint.save`); ``identity``: :func:`run_identity`, checked on resume."""
    # every tensor the optimizer trains, whatever its requires_grad now: train() freezes the projector on
    # text-only batches, and a checkpoint written after one must still hold it (the reference's --save part
    # loses it, docs/reference-audit.md)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    state = {n: p for n, p in teacher.named_parameters() if id(p) in trained}
    buffers = dict(teacher.router.named_buffers())
    return ckpt_io.save(path, {"trainable": state, "router_buffers": buffers, "optimizer": optimizer.state_dict(),
                               "schedule": schedule.state_dict() if schedule is not None else None, "epoch": epoch,
                               "batch_in_epoch": batch_in_epoch, "global_step": global_step, "rng": rng,
                               "config": asdict(cfg), "order": order, "identity": identity}, kind=CKPT_KIND)


def load_checkpoint(path: str | Path, teacher, optimizer=None, schedule=None, identity: dict | None = None) -> dict:
    """Load a :func:`save_checkpoint` file into ``teacher`` (and the optimizer / schedule when given). With
    ``identity`` (a resume) the checkpoint must have been written by the same run (:func:`run_identity`)."""
    ck = ckpt_io.load(path, kind=CKPT_KIND)
    if identity is not None:
        ckpt_io.check_resume(path, ck.get("identity"), identity)
    own = dict(teacher.named_parameters())
    missing = [n for n in ck["trainable"] if n not in own]
    if missing:
        raise ckpt_io.CheckpointError(f"{path}: checkpoint tensors not in the teacher, e.g. {missing[:3]}")
    with torch.no_grad():
        for n, v in ck["trainable"].items():
            if own[n].shape != v.shape:
                raise ckpt_io.CheckpointError(f"{path}: tensor {n} has shape {list(v.shape)}, the teacher's "
                                              f"{list(own[n].shape)}")
            own[n].copy_(v)
        bufs = dict(teacher.router.named_buffers())
        for n, v in ck["router_buffers"].items():
            bufs[n].copy_(v)
    if optimizer is not None:
        optimizer.load_state_dict(ck["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(ck["schedule"])
    return ck


@dataclass
class TrainResult:
    global_step: int
    losses: list[float]
    lrs: list[list[float]]
    emb_batches: int
    batches: int
    seconds: float
    checkpoint: str | None = None


def _epoch_sizes(data, cfg: TrainConfig, world: int) -> tuple[int, int, int]:
    """(train rows, rows per process and epoch, batches per epoch: drop_last=True, capped by
    ``limit_train_batches``)."""
    n = len(data) if cfg.limit_rows is None else min(len(data), cfg.limit_rows)
    n_local = n // world
    per_epoch = n_local // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"--batch_size: expected at most the {n} train rows per process (drop_last: no full "
                         f"batch of {cfg.batch_size} otherwise; {getattr(data, 'source', 'train split')})")
    if cfg.limit_train_batches is not None:
        per_epoch = min(per_epoch, cfg.limit_train_batches)
    return n, n_local, per_epoch


def _schedule_sizes(cfg: TrainConfig, n: int, n_local: int, per_epoch: int) -> tuple[int, int]:
    """(optimizer steps the LR schedule spans, the curriculum's max_step).

    faithful: main.py:50 and data_interface.py:135 count every row of the train set, on every process
    (ILORA-DDP-GLOBAL-SCHEDULE), and Lightning stops at max_steps (ILORA-MAX-STEPS-STOP). fixed: the optimizer
    steps this process really takes, and its own batches."""
    if cfg.mode == "faithful":
        return (max_steps(n, cfg.max_epochs, cfg.accumulate_grad_batches, cfg.batch_size),
                cfg.max_epochs * (n // cfg.batch_size) // cfg.ref_num_workers)
    return (cfg.max_epochs * -(-per_epoch // cfg.accumulate_grad_batches),
            cfg.max_epochs * (n_local // cfg.batch_size) // cfg.ref_num_workers)


def train(teacher, data: LastFMData, prompts: Sequence[str], cfg: TrainConfig, ckpt_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True, stop_after_batches: int | None = None,
          accelerator=None, batch_source: BatchSource | None = None) -> TrainResult:
    """Train the teacher (Lightning's loop as main.py configures it), checkpointing at each epoch end.

    ``batch_source(rows, rng, emb_prob) -> batch``: builds micro-batch ``rows`` (indices into ``data``, this
    process's share of the epoch permutation) with the run's ``random.Random`` and the curriculum probability
    of the embedding prompt; default :func:`train_batches` (``data.sample`` + ``collate``). ``data`` then only
    needs ``len()``.

    ``stop_after_batches``: stop (and checkpoint) after this many micro-batches of this call -- used to
    test resuming; the run continues from there with ``resume=``, which refuses a checkpoint written by another
    run (config, data, code, threads: :func:`run_identity`).

    ``accelerator``: an ``accelerate.Accelerator`` for data-parallel training when the script is started by
    ``torchrun`` / ``accelerate launch`` (see :func:`make_accelerator`): the model is wrapped by
    ``accelerator.prepare_model`` (DDP; gradients averaged over processes at every backward), each process
    takes every ``world``-th row of the shared epoch permutation (as Lightning's DistributedSampler, so a
    micro-batch holds ``batch_size`` rows per process), and only the main process writes checkpoints.
    ``None`` (default): one process, exactly the single-device loop.
    """
    from tqdm.auto import tqdm

    check_mode(cfg.mode)
    source = batch_source or train_batches(data, teacher.tokenizer, prompts, cfg.mode, teacher.cfg.terminator)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    model = accelerator.prepare_model(teacher) if accelerator is not None and world > 1 else teacher
    n, n_local, per_epoch = _epoch_sizes(data, cfg, world)
    total_steps, curriculum_max = _schedule_sizes(cfg, n, n_local, per_epoch)
    opt = build_optimizer(param_groups(teacher.projector.named_parameters(), teacher.router.named_parameters(),
                                       teacher.llama_model.named_parameters(), cfg.optim))
    sched = WarmupCosineSchedule.from_config(opt, cfg.optim, max(total_steps, 1)) if cfg.optim.lr_scheduler else None
    py = random.Random(cfg.seed + rank)         # per-process negatives / prompt draws (rank 0 = single process)
    gen = torch.Generator().manual_seed(cfg.seed)   # the same permutation on every process, then sharded
    epoch0, b0, step = 0, 0, 0
    main_proc = rank == 0
    identity = (run_identity(teacher, data, cfg, world) if (ckpt_dir is not None or resume is not None)
                else None)
    if resume is not None:
        ck = load_checkpoint(resume, teacher, opt, sched, identity=identity)
        epoch0, b0, step = ck["epoch"], ck["batch_in_epoch"], ck["global_step"]
        py.setstate(ck["rng"]["python"])
        gen.set_state(ck["rng"]["torch_gen"])
        torch.set_rng_state(ck["rng"]["torch"])
        set_cuda_rng_state(ck["rng"])
    teacher.train()
    losses, lrs, emb_batches, done = [], [], 0, 0
    t0 = time.perf_counter()
    ckpt = None
    for epoch in range(epoch0, cfg.max_epochs):
        # the permutation is drawn at epoch start; a mid-epoch resume reuses the saved one
        if epoch == epoch0 and b0 > 0:
            order = torch.as_tensor(ck["order"])
        else:
            order = torch.randperm(n, generator=gen)[: per_epoch * cfg.batch_size * world][rank::world]
        bar = tqdm(range(b0 if epoch == epoch0 else 0, per_epoch), desc=f"epoch {epoch}", disable=not progress,
                   leave=False) if main_proc else range(b0 if epoch == epoch0 else 0, per_epoch)
        for b in bar:
            if cfg.mode == "faithful" and step >= total_steps:
                break  # Lightning's max_steps (main.py:57) ends training mid-epoch
            if sched is not None:
                lrs.append(sched.step(step, epoch, max(total_steps, 1)))
            p = curriculum_prob(b, epoch * per_epoch + b, cfg.max_epochs * per_epoch, curriculum_max,
                                cfg.ref_num_workers, cfg.mode)
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].tolist()
            batch = source(idx, py, p)
            use_emb = not batch["flag"]
            emb_batches += int(use_emb)
            teacher.projector.requires_grad_(not batch["flag"])   # training_step l.137-142
            with torch.autocast(module_device(teacher).type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = model(batch)
            (out.loss / cfg.accumulate_grad_batches).backward()
            losses.append(accelerator.reduce(out.loss.detach(), "mean").item() if world > 1 else out.loss.item())
            last = b == per_epoch - 1
            if (b + 1) % cfg.accumulate_grad_batches == 0 or last:
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
            if main_proc:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", step=step)
            done += 1
            if stop_after_batches is not None and done >= stop_after_batches and not last:
                if ckpt_dir is not None and main_proc:
                    ckpt = save_checkpoint(Path(ckpt_dir) / "last.ckpt", teacher, opt, sched, epoch, b + 1, step,
                                           _rng_state(py, gen), cfg, order=order.tolist(), identity=identity)
                return TrainResult(step, losses, lrs, emb_batches, done, time.perf_counter() - t0,
                                   str(ckpt) if ckpt else None)
        if ckpt_dir is not None and main_proc:
            ckpt = save_checkpoint(Path(ckpt_dir) / "last.ckpt", teacher, opt, sched, epoch + 1, 0, step,
                                   _rng_state(py, gen), cfg, identity=identity)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        b0 = 0
        if cfg.mode == "faithful" and step >= total_steps:
            break
    return TrainResult(step, losses, lrs, emb_batches, done, time.perf_counter() - t0, str(ckpt) if ckpt else None)


def make_accelerator():
    """An ``accelerate.Accelerator`` when this process was started by ``torchrun`` / ``accelerate launch``
    (``WORLD_SIZE`` > 1), else None (the single-process default). DDP is told that parameters may be unused
    in a step: the projector is frozen on text-only curriculum batches (training_step l.137-142)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


# ------------------------------------------------------------------------------------------------ CLI
def read_rows_file(path: str | Path, n_rows: int) -> list[int]:
    """Row indices (one integer per line; blank lines skipped) into a frame of ``n_rows`` rows, in order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--export_rows_file {path}: not found")
    rows: list[int] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = int(line.strip())
        except ValueError:
            raise DataError(f"{path}:{n}: expected one train-row index (integer) per line, got {line!r}") from None
        if not 0 <= r < n_rows:
            raise DataError(f"{path}:{n}: row {r} outside the train frame [0, {n_rows})")
        rows.append(r)
    if len(rows) < 2:
        raise DataError(f"{path}: needs at least 2 rows (the tocf files of one row squeeze to 1-D), got {len(rows)}")
    if len(set(rows)) != len(rows):
        raise DataError(f"{path}: duplicate row indices")
    return rows


def parse_eval_rows(value: str) -> int | None:
    """``--eval_rows``: ``N`` (first N rows of each split; 0 = off) or ``all`` (-> None)."""
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eval_rows: expected an integer >= 0 or 'all', got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"--eval_rows: expected an integer >= 0 or 'all', got {n}")
    return n


def build_from_args(a):
    """(The teacher of) ``--llm``, ``--rec_model_path`` and the LoRA options of namespace / options ``a``."""
    from reimpl.ilora.sasrec import load_checkpoint as load_sasrec
    from reimpl.ilora.teacher import TeacherConfig, build_teacher

    if a.llm == "tiny":
        from transformers import LlamaForCausalLM

        from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llm_dir
        d = tiny_llm_dir(seed=0)
        llm, tok = LlamaForCausalLM.from_pretrained(str(d)), load_tiny_tokenizer(d)
    elif a.llm == "smollm2":
        from reimpl.llm.real import load_smollm2
        llm, tok = load_smollm2()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        llm = AutoModelForCausalLM.from_pretrained(a.llm, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(a.llm, local_files_only=True)
    tcfg = from_namespace(TeacherConfig, a)   # the TeacherConfig fields ``a`` has (CLI: all its options)
    return build_teacher(llm, tok, load_sasrec(a.rec_model_path, mode=a.mode), tcfg)




def _help(text: str, **kw) -> dict:
    return {"help": text, **kw}


@dataclass
class RunOptions:
    """Options of ``python -m reimpl.ilora.train`` that no component config holds (run control, eval, export)."""
    llm: str = field(default="tiny", metadata=_help("'tiny' (random tiny Llama), 'smollm2' (offline GGUF), or a "
                                                    "local HF folder"))
    data_dir: str = field(default=str(DATA / "ilora/lastfm"),
                          metadata=_help("iLoRA LastFM folder: {train_data,Val_data,Test_data}.df, id2name.txt"))
    rec_model_path: str = str(DATA / "ilora/rec_model/lastfm.pt")
    prompt_path: str = str(REF_DIR / "iLoRA/prompt/artist.txt")
    ckpt_dir: str | None = field(default=None, metadata=_help("write <ckpt_dir>/last.ckpt after every epoch"))
    resume: str | None = field(default=None, metadata=_help("checkpoint to resume from (ckpt_dir/last.ckpt)"))
    init_ckpt: str | None = field(default=None, metadata=_help(
        "load the trainable tensors of this checkpoint (save_checkpoint) before anything else; with --max_epochs 0 "
        "this evaluates / exports a trained teacher"))
    eval_splits: str = field(default="val", metadata=_help(
        "comma-separated splits to evaluate (val, test, train) or 'all' (= val,test)"))
    eval_rows: int | None = field(default=0, metadata=_help(
        "evaluate HR@1/ValidRatio on the first N rows of each --eval_splits split; 0 = off, 'all' = every row",
        parse=parse_eval_rows))
    max_new_tokens: int = 64
    export_dir: str | None = field(default=None, metadata=_help(
        "write tocf/<export_name>/ for the first --export_rows rows (or --export_rows_file)"))
    export_name: str = "lastfm"
    export_rows: int = field(default=0, metadata=_help("export the first N rows of the (len_seq >= 3) train frame"))
    export_rows_file: str | None = field(default=None, metadata=_help(
        "text file, one row index per line into the *unfiltered* train frame (train_data.df row order = DLLM2Rec's), "
        "exported in that order (instead of --export_rows); also written to tocf/<export_name>/rows.txt"))
    export_batch: int = field(default=4, metadata=_help("prompt rows per scoring batch"))
    export_seed: int = field(default=0, metadata=_help("seed of the export's candidate draw"))
    scoring: str = field(default="cached", metadata=_help(
        "candidate scoring: prefix-KV-cached (default) or one forward per (prompt, candidate) pair (the definition; "
        "same numbers up to float rounding, ~C times slower)", choices=("cached", "uncached")))
    uncertainty: str = field(default="none", metadata=_help(
        "also write uncertainty_train.txt (reimpl.extensions.uamd; 1 + num_moe scorings per row)",
        choices=("none", "variance", "jsd")))
    emb_source: str = field(default="llm", metadata=_help("item embeddings from", choices=("llm", "projector")))
    emb_cache: str | None = field(default=None, metadata=_help(
        "all-items embedding tensor: loaded when the file exists (fingerprint-checked via PATH.json), else computed "
        "and saved there"))
    topk: int = field(default=10, metadata=_help("ranked candidates per exported row"))
    pad_dim: int | None = field(default=None, metadata=_help("zero-pad all_embeddings to this width (4096)"))
    threads: int | None = field(default=None, metadata=_help("torch.set_num_threads(N)"))
    out: str | None = field(default=None, metadata=_help("also write the JSON report to this file"))
    no_progress: bool = field(default=False, metadata={"store_true": True})

    def splits(self) -> list[str]:
        s = self.eval_splits.strip().lower()
        return ["val", "test"] if s == "all" else [x.strip() for x in self.eval_splits.split(",") if x.strip()]


# component config fields that are not options of this CLI (fixed by the recipe, or given through RunOptions)
_SKIP = {OptimConfig: ("mode",), "TeacherConfig": ("mode", "router", "target_modules", "terminator"),
         DataConfig: ("mode", "data_dir", "prompt_path")}


def _parser():
    from reimpl.ilora.teacher import TeacherConfig

    ap = argparse.ArgumentParser(prog="python -m reimpl.ilora.train",
                                 description="Train / evaluate / export the iLoRA teacher (defaults: train_lastfm.sh).")
    add_dataclass_arguments(ap, RunOptions)
    add_dataclass_arguments(ap, TrainConfig)
    add_dataclass_arguments(ap, OptimConfig, skip=_SKIP[OptimConfig])
    add_dataclass_arguments(ap, TeacherConfig, skip=_SKIP["TeacherConfig"])
    add_dataclass_arguments(ap, DataConfig, skip=_SKIP[DataConfig])
    return ap


def parse_options(argv: list[str] | None = None) -> tuple[argparse.Namespace, RunOptions, TrainConfig, DataConfig]:
    """Parse and check every option before any work: values (each error names its flag) and paths (inputs
    exist, outputs writable). Returns (namespace, run options, train config, data config)."""
    from reimpl.ilora.teacher import TeacherConfig

    ap = _parser()
    a = ap.parse_args(argv)
    opts = build(ap, lambda: from_namespace(RunOptions, a))
    tcfg = build(ap, lambda: from_namespace(TrainConfig, a, optim=from_namespace(OptimConfig, a, mode=a.mode)))
    dcfg = build(ap, lambda: from_namespace(DataConfig, a, data_dir=opts.data_dir, prompt_path=opts.prompt_path))
    build(ap, lambda: from_namespace(TeacherConfig, a))
    build(ap, lambda: check_options(opts, tcfg, dcfg))
    return a, opts, tcfg, dcfg


def check_options(o: RunOptions, tcfg: TrainConfig, dcfg: DataConfig) -> None:
    """ValueError naming the flag for the first option that cannot work (creates nothing)."""
    bad = [x for x in o.splits() if x not in LastFMData.FILES]
    require(not bad and bool(o.splits()), "--eval_splits",
            f"a comma-separated subset of {list(LastFMData.FILES)} or 'all'", o.eval_splits)
    require(not (o.export_rows_file and o.export_rows), "--export_rows",
            "0 with --export_rows_file (alternatives; give one)", o.export_rows)
    for name in ("max_new_tokens", "export_batch"):
        require(getattr(o, name) >= 1, f"--{name}", "an integer >= 1", getattr(o, name))
    require(o.export_rows >= 0, "--export_rows", "an integer >= 0", o.export_rows)
    require(1 <= o.topk <= dcfg.cans_num, "--topk", f"an integer in [1, --cans_num={dcfg.cans_num}]", o.topk)
    require(o.threads is None or o.threads >= 1, "--threads", "an integer >= 1", o.threads)
    require(o.pad_dim is None or o.pad_dim >= 1, "--pad_dim", "an integer >= 1", o.pad_dim)
    for flag, path, kind in (("--data_dir", o.data_dir, "dir"), ("--prompt_path", o.prompt_path, "file"),
                             ("--rec_model_path", o.rec_model_path, "file"), ("--resume", o.resume, "file"),
                             ("--init_ckpt", o.init_ckpt, "file"), ("--export_rows_file", o.export_rows_file, "file"),
                             ("--llm", o.llm if o.llm not in ("tiny", "smollm2") else None, "dir")):
        if path is not None and not (Path(path).is_dir() if kind == "dir" else Path(path).is_file()):
            raise ValueError(f"{flag} {path}: expected an existing {'folder' if kind == 'dir' else 'file'}")
    check_writable(o.out, "--out")
    check_writable(o.ckpt_dir, "--ckpt_dir", directory=True)
    check_writable(o.export_dir, "--export_dir", directory=True)
    check_writable(o.emb_cache, "--emb_cache")


def load_inputs(o: RunOptions, tcfg: TrainConfig, dcfg: DataConfig) -> dict:
    """Every data file the run will read, read and validated now (before the LLM is loaded): the train frame,
    the evaluated splits, the export rows, the prompts."""
    out: dict = {"prompts": load_prompts(o.prompt_path)}
    if tcfg.max_epochs > 0:
        out["train"] = LastFMData(dcfg, "train")
    if o.eval_rows is None or o.eval_rows > 0:
        out["eval"] = {s: LastFMData(dcfg, s) for s in o.splits()}
    if o.export_dir and (o.export_rows > 0 or o.export_rows_file):
        if o.export_rows_file:   # unfiltered frame: row r = train_data.df row r (DLLM2Rec's train rows)
            tr = LastFMData(DataConfig(**{**asdict(dcfg), "min_len_seq": 1}), "train")
            out["export_rows"] = read_rows_file(o.export_rows_file, len(tr))
        else:
            tr = out.get("train") or LastFMData(dcfg, "train")
            require(o.export_rows <= len(tr), "--export_rows", f"at most the {len(tr)} rows of the train frame "
                    f"with len_seq >= {dcfg.min_len_seq}", o.export_rows)
            out["export_rows"] = list(range(o.export_rows))
        out["export"] = tr
    return out


def run_train(teacher, o: RunOptions, tcfg: TrainConfig, inputs: dict, report: dict, timings: dict) -> bool:
    """Training phase; False on a non-main DDP process (which then stops)."""
    t = time.perf_counter()
    acc = make_accelerator()   # torchrun / accelerate launch: data parallel; else None (single process)
    r = train(teacher, inputs["train"], inputs["prompts"], tcfg, ckpt_dir=o.ckpt_dir, resume=o.resume,
              progress=not o.no_progress, accelerator=acc)
    if acc is not None and not acc.is_main_process:
        return False   # evaluation, export and the report happen once, on the main process
    report["train"] = {"global_step": r.global_step, "batches": r.batches, "emb_batches": r.emb_batches,
                       "first_loss": r.losses[0] if r.losses else None,
                       "last_loss": r.losses[-1] if r.losses else None, "seconds": round(r.seconds, 2),
                       "checkpoint": r.checkpoint}
    timings["train_s"] = time.perf_counter() - t
    return True


def run_eval(teacher, o: RunOptions, tcfg: TrainConfig, inputs: dict, report: dict, timings: dict) -> None:
    teacher.eval()
    for split, d in inputs["eval"].items():
        t = time.perf_counter()
        n = len(d) if o.eval_rows is None else min(o.eval_rows, len(d))
        res, _ = teacher.evaluate(eval_batches(d, teacher.tokenizer, inputs["prompts"], list(range(n)),
                                               tcfg.batch_size, tcfg.seed, tcfg.mode, split=split),
                                  max_new_tokens=o.max_new_tokens)
        timings[f"eval_{split}_s"] = time.perf_counter() - t
        report[split] = {"hr1": res.hr1, "valid_ratio": res.valid_ratio, "metric": res.metric,
                         "rows": res.n_rows, "seconds": timings[f"eval_{split}_s"]}


def run_export(teacher, o: RunOptions, dcfg: DataConfig, inputs: dict, report: dict, timings: dict) -> None:
    tr, rows, prompts = inputs["export"], inputs["export_rows"], inputs["prompts"]
    emb = None
    if o.emb_cache:
        t = time.perf_counter()
        emb, report["emb_cache"] = cached_item_embeddings(o.emb_cache, teacher, tr, o.emb_source,
                                                          llm=f"{o.llm}|{o.rec_model_path}")
        timings["embeddings_s"] = time.perf_counter() - t
    ex_t: dict = {}
    kw = dict(k=o.topk, cans_num=dcfg.cans_num, batch_size=o.export_batch, seed=o.export_seed,
              emb_source=o.emb_source, pad_dim=o.pad_dim, cached=o.scoring == "cached")
    if o.uncertainty == "none":
        folder = export_teacher(teacher, tr, prompts, o.export_dir, o.export_name, rows, embeddings=emb,
                                timings=ex_t, **kw)
    else:
        from reimpl.extensions.uamd import export_teacher_with_uncertainty

        t = time.perf_counter()
        if emb is None:
            emb = all_item_embeddings(teacher, tr, o.emb_source)
            ex_t["embeddings_s"] = time.perf_counter() - t
        t = time.perf_counter()
        folder = export_teacher_with_uncertainty(teacher, tr, prompts, o.export_dir, o.export_name, rows,
                                                 kind=o.uncertainty, embeddings=emb, **kw)
        ex_t["export_scoring_s"] = time.perf_counter() - t   # incl. writing the files (small)
    if emb is not None and o.emb_cache:
        ex_t.pop("embeddings_s", None)   # timed above (cache load or computation)
    timings.update(ex_t)
    if o.export_rows_file:
        (Path(folder) / "rows.txt").write_text("".join(f"{r}\n" for r in rows))
    report["export"] = str(folder)
    report["export_stats"] = {"rows": len(rows), "scoring": o.scoring, "uncertainty": o.uncertainty,
                              "scoring_seconds_per_row": timings["export_scoring_s"] / len(rows)}


def main(argv: list[str] | None = None) -> int:
    """Options -> data -> LLM -> train / eval / export; a bad option or file exits 2 naming it, before any work."""
    from reimpl.ilora.teacher import TeacherConfig

    a, o, tcfg, dcfg = parse_options(argv)
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_all = time.perf_counter()
    timings: dict = {}
    try:
        inputs = load_inputs(o, tcfg, dcfg)
        torch.manual_seed(tcfg.seed)
        t = time.perf_counter()
        teacher = build_from_args(a)
        if o.init_ckpt:
            load_checkpoint(o.init_ckpt, teacher)
        timings["load_s"] = time.perf_counter() - t
        report: dict = {"threads": torch.get_num_threads(), "environment": ckpt_io.environment(),
                        "config": {"run": asdict(o), "train": asdict(tcfg), "data": asdict(dcfg),
                                   "teacher": asdict(from_namespace(TeacherConfig, a))}}
        if tcfg.max_epochs > 0 and not run_train(teacher, o, tcfg, inputs, report, timings):
            return 0
    except ValueError as e:   # DataError, CheckpointError, an option the data cannot satisfy: names file/flag
        print(f"python -m reimpl.ilora.train: error: {e}", file=sys.stderr)
        return 2
    if "eval" in inputs:
        run_eval(teacher, o, tcfg, inputs, report, timings)
    if "export" in inputs:
        run_export(teacher, o, dcfg, inputs, report, timings)
    timings["total_s"] = time.perf_counter() - t_all
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    text = json.dumps(report, indent=2)
    print(text)
    if o.out:
        ckpt_io.write_text_atomic(o.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
