"""Training, evaluation and export loop of the iLoRA teacher (``python -m reimpl.ilora.train --help``).

Mirrors, in AkaliKong/iLoRA @ 28e47371:

* ``data/lastfm_data.py`` (dataset: rows with ``len_seq >= 3``, titles from ``id2name.txt``, negative
  sampling) and ``data/data_interface.py`` (``TrainCollater``: prompt choice, curriculum draw, pair
  tokenization; ``DInterface``: ``shuffle=True, drop_last=True`` for train) -> :class:`LastFMData`,
  :func:`collate`, :func:`curriculum_prob`;
* ``main.py:92`` (``max_steps``) and Lightning's loop as the reference configures it
  (``accumulate_grad_batches``: loss / k, an optimizer step every k micro-batches and at the end of
  each epoch; ``training_step`` sets the LR and toggles the projector on the ``flag``, l.134-149) ->
  :func:`train`;
* ``on_save_checkpoint`` with ``--save part`` (l.296-307: only trainable tensors, here *with* the
  optimizer / schedule / RNG state so that a run can resume) -> :func:`save_checkpoint`.

Faithful quirks kept here (ids in :mod:`reimpl.ilora.deviations_teacher`):

* ``ILORA-LASTFM-ONE-CANDIDATE``: LastFM's ``negative_sampling`` returns ONE random item that is neither
  in the history nor the target (``lastfm_data.py:33-36``): the prompt's candidate list never holds
  the answer (``len_cans`` still says ``cans_num``). ``fixed``: ``cans_num - 1`` negatives + the target,
  shuffled (as the reference's MovieLens/Steam datasets do).
* ``ILORA-CURRICULUM-RESET``: see :func:`curriculum_prob`.

CLI (:func:`main`): train (``--max_epochs``, ``--resume``; ``--init_ckpt`` loads a trained teacher),
evaluate HR@1 / ValidRatio on ``--eval_splits`` (first ``--eval_rows`` rows of each, or ``all``), export
``tocf/`` for the first ``--export_rows`` rows of the ``len_seq >= 3`` frame or the rows listed in
``--export_rows_file`` (unfiltered ``train_data.df`` indices), with ``--uncertainty`` (UAMD) and an
``--emb_cache``; prints (and ``--out`` writes) a JSON report with per-phase wall clock (``timings``).

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
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from reimpl.deviations import check_mode
from reimpl.ilora import deviations_teacher  # noqa: F401
from reimpl.ilora.optim import OptimConfig, WarmupCosineSchedule, build_optimizer, max_steps, param_groups
from reimpl.ilora.prompt import fill_prompt, load_prompts



# ------------------------------------------------------------------------------------------------ data
@dataclass
class DataConfig:
    data_dir: str = "../shared/data/ilora/lastfm"
    prompt_path: str = "ref_repositories/iLoRA/prompt/artist.txt"
    cans_num: int = 20              # train_lastfm.sh --cans_num 20
    padding_item_id: int = 4606     # main.py:153
    min_len_seq: int = 3            # lastfm_data.py:71
    mode: str = "faithful"


class LastFMData:
    """LastFM split as ``LastfmData`` reads it (``lastfm_data.py``): ``sample(i, rng)`` -> dict."""

    FILES = {"train": "train_data.df", "val": "Val_data.df", "test": "Test_data.df"}

    def __init__(self, cfg: DataConfig, stage: str):
        check_mode(cfg.mode)
        if stage not in self.FILES:
            raise ValueError(f"LastFMData: stage must be one of {list(self.FILES)}, got {stage!r}")
        self.cfg, self.stage = cfg, stage
        d = Path(cfg.data_dir)
        names = d / "id2name.txt"
        if not names.is_file():
            raise FileNotFoundError(f"{names}: LastFM id2name.txt not found (data_dir={cfg.data_dir})")
        self.id2name: dict[int, str] = {}
        for n, line in enumerate(names.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if "::" not in line:
                raise ValueError(f"{names}:{n}: expected '<id>::<name>', got {line!r}")
            k, v = line.split("::", 1)
            self.id2name[int(k)] = v.strip()
        frame = pd.read_pickle(d / self.FILES[stage])
        for col in ("seq", "len_seq", "next"):
            if col not in frame.columns:
                raise ValueError(f"{d / self.FILES[stage]}: column {col!r} missing (have {list(frame.columns)})")
        self.frame = frame[frame["len_seq"] >= cfg.min_len_seq].reset_index(drop=True)
        self.all_ids = list(self.id2name.keys())

    def __len__(self) -> int:
        return len(self.frame)

    def unpadded(self, i: int) -> list[int]:
        return [int(x) for x in self.frame["seq"].iloc[i] if int(x) != self.cfg.padding_item_id]

    def candidates(self, seq_unpad: Sequence[int], target: int, rng: random.Random, mode: str) -> list[int]:
        """lastfm_data.py:33-36 (faithful: one negative) / movielens_data.py:44-48 (fixed)."""
        seen = set(seq_unpad)
        canset = [i for i in self.all_ids if i not in seen and i != target]
        if mode == "faithful":
            return rng.sample(canset, 1)
        cands = rng.sample(canset, self.cfg.cans_num - 1) + [target]
        rng.shuffle(cands)
        return cands

    def sample(self, i: int, rng: random.Random, mode: str | None = None, cans: list[int] | None = None) -> dict:
        mode = mode or self.cfg.mode
        row = self.frame.iloc[i]
        seq_unpad = self.unpadded(i)
        target = int(row["next"])
        cans = cans if cans is not None else self.candidates(seq_unpad, target, rng, mode)
        return {"seq": [int(x) for x in row["seq"]], "seq_name": [self.id2name[x] for x in seq_unpad],
                "len_seq": int(row["len_seq"]), "cans": cans, "cans_name": [self.id2name[c] for c in cans],
                "len_cans": self.cfg.cans_num, "item_id": target, "correct_answer": self.id2name[target]}


def collate(samples: list[dict], tokenizer, prompts: Sequence[str], rng: random.Random, train: bool,
            emb_prob: float = 1.0, terminator: str = "\n") -> dict:
    """TrainCollater.__call__ (data_interface.py:30-113): one template for the batch, filled per sample;
    train batches are (prompt, answer + terminator) pairs with aligned token types. The embedding
    prompt is used when ``rng.random() < emb_prob`` (drawn after the template, as l.32-40) or not train."""
    if not samples:
        raise ValueError("collate: empty batch")
    template = rng.choice(list(prompts))
    use_emb = rng.random() < emb_prob or not train
    texts = [fill_prompt(template, s["seq_name"], s["cans_name"], s["correct_answer"], with_embeddings=use_emb)
             for s in samples]
    kw = dict(return_tensors="pt", padding="longest", truncation=False, add_special_tokens=True,
              return_token_type_ids=True, return_attention_mask=True)
    if train:
        tok = tokenizer([[p, s["correct_answer"] + terminator] for p, s in zip(texts, samples)], **kw)
    else:
        tok = tokenizer(texts, **kw)
    lens = {len(s["cans"]) for s in samples}
    if len(lens) != 1:
        raise ValueError(f"collate: samples have different candidate counts {sorted(lens)}")
    batch = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
             "token_type_ids": tok["token_type_ids"],
             "seq": torch.tensor([s["seq"] for s in samples]), "cans": torch.tensor([s["cans"] for s in samples]),
             "len_seq": torch.tensor([s["len_seq"] for s in samples]),
             "len_cans": torch.tensor([s["len_cans"] for s in samples]),
             "item_id": torch.tensor([s["item_id"] for s in samples]), "flag": not use_emb,
             "prompts": texts, "correct_answer": [s["correct_answer"] for s in samples],
             "cans_name": [s["cans_name"] for s in samples]}
    return batch


def curriculum_prob(batch_in_epoch: int, global_batch: int, total_batches: int, max_step: int,
                    num_workers: int, mode: str) -> float:
    """Probability that a training batch uses the embedding prompt (data_interface.py:38-40).

    faithful: ``cur_step / max_step`` where ``max_step = max_epochs * (N // bs) // num_workers``
    (data_interface.py:135) and ``cur_step`` is the counter of the worker's own copy of the collater,
    re-created each epoch: batch b of an epoch is worker ``b % W``'s ``(b // W + 1)``-th
    (ILORA-CURRICULUM-RESET). fixed: ``(global_batch + 1) / total_batches``.
    """
    check_mode(mode)
    if mode == "faithful":
        w = max(num_workers, 1)
        return (batch_in_epoch // w + 1) / max(max_step, 1)
    return (global_batch + 1) / max(total_batches, 1)


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
    mode: str = "faithful"


def _rng_state(py: random.Random, gen: torch.Generator) -> dict:
    return {"python": py.getstate(), "torch_gen": gen.get_state(), "torch": torch.get_rng_state()}


def save_checkpoint(path: str | Path, teacher, optimizer, schedule, epoch: int, batch_in_epoch: int,
                    global_step: int, rng: dict, cfg: TrainConfig, order: list[int] | None = None) -> Path:
    """Trainable tensors only (``--save part``, model_interface.py:296-307) + optimizer/schedule/RNG state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().clone() for n, p in teacher.named_parameters() if p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in teacher.router.named_buffers()}
    torch.save({"trainable": state, "router_buffers": buffers, "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "global_step": global_step, "rng": rng, "config": asdict(cfg),
                "order": order}, path)
    return path


def load_checkpoint(path: str | Path, teacher, optimizer=None, schedule=None) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    own = dict(teacher.named_parameters())
    missing = [n for n in ck["trainable"] if n not in own]
    if missing:
        raise KeyError(f"{path}: checkpoint tensors not in the teacher, e.g. {missing[:3]}")
    with torch.no_grad():
        for n, v in ck["trainable"].items():
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


def train(teacher, data: LastFMData, prompts: Sequence[str], cfg: TrainConfig, ckpt_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True, stop_after_batches: int | None = None,
          accelerator=None) -> TrainResult:
    """Train the teacher (Lightning's loop as main.py configures it), checkpointing at each epoch end.

    ``stop_after_batches``: stop (and checkpoint) after this many micro-batches of this call -- used to
    test resuming; the run continues from there with ``resume=``.

    ``accelerator``: an ``accelerate.Accelerator`` for data-parallel training when the script is started by
    ``torchrun`` / ``accelerate launch`` (see :func:`make_accelerator`): the model is wrapped by
    ``accelerator.prepare_model`` (DDP; gradients averaged over processes at every backward), each process
    takes every ``world``-th row of the shared epoch permutation (as Lightning's DistributedSampler, so a
    micro-batch holds ``batch_size`` rows per process), and only the main process writes checkpoints.
    ``None`` (default): one process, exactly the single-device loop.
    """
    from tqdm.auto import tqdm

    check_mode(cfg.mode)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    model = accelerator.prepare_model(teacher) if accelerator is not None and world > 1 else teacher
    n = len(data) if cfg.limit_rows is None else min(len(data), cfg.limit_rows)
    n_local = n // world                                            # rows per process and epoch
    per_epoch = n_local // cfg.batch_size                           # drop_last=True
    if per_epoch == 0:
        raise ValueError(f"train: {n} rows < batch_size {cfg.batch_size}: no full batch (drop_last)")
    if cfg.limit_train_batches is not None:
        per_epoch = min(per_epoch, cfg.limit_train_batches)
    total_steps = max_steps(n_local, cfg.max_epochs, cfg.accumulate_grad_batches, cfg.batch_size)
    curriculum_max = cfg.max_epochs * (n_local // cfg.batch_size) // cfg.ref_num_workers
    opt = build_optimizer(param_groups(teacher.projector.named_parameters(), teacher.router.named_parameters(),
                                       teacher.llama_model.named_parameters(), cfg.optim))
    sched = WarmupCosineSchedule.from_config(opt, cfg.optim, max(total_steps, 1)) if cfg.optim.lr_scheduler else None
    py = random.Random(cfg.seed + rank)         # per-process negatives / prompt draws (rank 0 = single process)
    gen = torch.Generator().manual_seed(cfg.seed)   # the same permutation on every process, then sharded
    epoch0, b0, step = 0, 0, 0
    main_proc = rank == 0
    if resume is not None:
        ck = load_checkpoint(resume, teacher, opt, sched)
        epoch0, b0, step = ck["epoch"], ck["batch_in_epoch"], ck["global_step"]
        py.setstate(ck["rng"]["python"])
        gen.set_state(ck["rng"]["torch_gen"])
        torch.set_rng_state(ck["rng"]["torch"])
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
            if sched is not None:
                lrs.append(sched.step(step, epoch, max(total_steps, 1)))
            p = curriculum_prob(b, epoch * per_epoch + b, cfg.max_epochs * per_epoch, curriculum_max,
                                cfg.ref_num_workers, cfg.mode)
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].tolist()
            samples = [data.sample(i, py, cfg.mode) for i in idx]
            batch = collate(samples, teacher.tokenizer, prompts, py, train=True, emb_prob=p,
                            terminator=teacher.cfg.terminator)
            use_emb = not batch["flag"]
            emb_batches += int(use_emb)
            teacher.projector.requires_grad_(not batch["flag"])   # training_step l.137-142
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
                                           _rng_state(py, gen), cfg, order=order.tolist())
                return TrainResult(step, losses, lrs, emb_batches, done, time.perf_counter() - t0,
                                   str(ckpt) if ckpt else None)
        if ckpt_dir is not None and main_proc:
            ckpt = save_checkpoint(Path(ckpt_dir) / "last.ckpt", teacher, opt, sched, epoch + 1, 0, step,
                                   _rng_state(py, gen), cfg)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        b0 = 0
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


# -------------------------------------------------------------------------------------- eval / export
def eval_batches(data: LastFMData, tokenizer, prompts, rows: Sequence[int], batch_size: int, seed: int,
                 mode: str, terminator: str = "\n"):
    """Evaluation batches (prompt only, embedding placeholders), as the val/test loaders (no shuffle)."""
    py = random.Random(seed)
    for s in range(0, len(rows), batch_size):
        samples = [data.sample(i, py, mode) for i in rows[s:s + batch_size]]
        yield collate(samples, tokenizer, prompts, py, train=False, terminator=terminator)


def export_batches(data: LastFMData, tokenizer, prompts: Sequence[str], rows: Sequence[int], batch_size: int,
                   seed: int, cans_num: int, terminator: str = "\n"):
    """Evaluation-style batches of train ``rows`` (in order) for the teacher export: each row's candidates are
    its target + ``cans_num - 1`` random items outside its history, shuffled (one ``random.Random(seed)``
    for the draws and the prompt templates, so the same seed gives the same candidates)."""
    py = random.Random(seed)
    for s in range(0, len(rows), batch_size):
        samples = []
        for i in rows[s:s + batch_size]:
            seen = set(data.unpadded(i))
            target = int(data.frame["next"].iloc[i])
            cands = py.sample([j for j in data.all_ids if j not in seen and j != target], cans_num - 1) + [target]
            py.shuffle(cands)
            samples.append(data.sample(i, py, cans=cands))
        yield collate(samples, tokenizer, prompts, py, train=False, terminator=terminator)


def export_teacher(teacher, data: LastFMData, prompts: Sequence[str], out_dir: str | Path, data_name: str,
                   rows: Sequence[int], k: int = 10, cans_num: int = 20, batch_size: int = 4, seed: int = 0,
                   emb_source: str = "llm", pad_dim: int | None = None, cached: bool | str = True,
                   embeddings: torch.Tensor | None = None, timings: dict | None = None) -> Path:
    """Write ``tocf/<data_name>/`` for train rows ``rows`` (in order; DLLM2Rec needs all N rows of its
    train frame, in frame order). Candidates per row: the target + ``cans_num - 1`` random negatives
    (the teacher must see the answer among what it ranks); scores = candidate log-likelihoods, see
    :mod:`reimpl.ilora.teacher` (``cached``: prefix-KV-cached scoring, same numbers). Embeddings for all
    ``item_num`` items (``emb_source``), or ``embeddings`` ``[item_num, d]`` when given. ``timings``
    receives ``export_scoring_s`` and ``embeddings_s`` (wall clock)."""
    from reimpl.ilora.export import ranking_from_scores, write_tocf

    teacher.eval()
    ranks, confs = [], []
    t0 = time.perf_counter()
    for batch in export_batches(data, teacher.tokenizer, prompts, rows, batch_size, seed, cans_num,
                                teacher.cfg.terminator):
        scores = teacher.score_candidates(batch, batch["cans_name"], batch["prompts"], cached=cached)
        r, c = ranking_from_scores(scores, batch["cans"], k)
        ranks.append(r)
        confs.append(c)
    t1 = time.perf_counter()
    emb = embeddings if embeddings is not None else all_item_embeddings(teacher, data, emb_source)
    if timings is not None:
        timings["export_scoring_s"] = t1 - t0
        timings["embeddings_s"] = time.perf_counter() - t1
    return write_tocf(out_dir, data_name, np.concatenate(ranks), np.concatenate(confs), emb, data.cfg.padding_item_id,
                      pad_dim=pad_dim)


def all_item_embeddings(teacher, data: LastFMData, emb_source: str = "llm") -> torch.Tensor:
    """``[item_num, d]`` embeddings of every item id ``0 .. padding_item_id - 1`` (``ILoRATeacher.item_embeddings``)."""
    item_num = data.cfg.padding_item_id
    ids = torch.arange(item_num)
    titles = [data.id2name.get(int(i), "") for i in ids]
    with torch.no_grad():
        return teacher.item_embeddings(titles=titles, item_ids=ids, source=emb_source)


def teacher_fingerprint(teacher, llm: str, emb_source: str, item_num: int) -> str:
    """sha256 over what the all-items embeddings depend on beyond the frozen base LLM named ``llm``:
    every trainable tensor of the teacher (LoRA, projector, router), the LLM config, the source."""
    import hashlib

    h = hashlib.sha256(json.dumps({"llm": llm, "source": emb_source, "item_num": item_num,
                                   "config": teacher.hf_model.config.to_json_string(use_diff=False)},
                                  sort_keys=True).encode())
    for n, p in sorted(teacher.named_parameters()):
        if p.requires_grad:
            h.update(n.encode())
            h.update(p.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cached_item_embeddings(path: str | Path, teacher, data: LastFMData, emb_source: str, llm: str
                           ) -> tuple[torch.Tensor, dict]:
    """All-items embeddings from ``path`` when it exists, else computed and saved there.

    ``path`` holds the plain tensor (``torch.save``, as ``reimpl.baselines`` ``item_embeddings.pt``);
    ``<path>.json`` the :func:`teacher_fingerprint` it was computed with. A file whose shape is not
    ``[item_num, d_llm]`` (both sources give the LLM width) or whose fingerprint differs from
    this teacher's is refused; a file without ``.json`` is used after the shape check (``verified: false``).
    """
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    item_num = data.cfg.padding_item_id
    fp = teacher_fingerprint(teacher, llm, emb_source, item_num)
    d = teacher.hf_model.config.hidden_size
    if path.is_file():
        emb = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or tuple(emb.shape) != (item_num, d):
            raise ValueError(f"{path}: --emb_cache must hold a [item_num={item_num}, d={d}] tensor, got "
                             f"{tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__}")
        verified = False
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") != fp:
                raise ValueError(f"{meta_path}: fingerprint {meta.get('fingerprint', '')[:12]}... differs from this "
                                 f"teacher's {fp[:12]}... (other weights, LLM or emb_source {meta.get('source')!r}); "
                                 "delete the cache or pass another --emb_cache path")
            verified = True
        return emb, {"path": str(path), "hit": True, "verified": verified}
    emb = all_item_embeddings(teacher, data, emb_source).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(emb, tmp)
    tmp.replace(path)
    meta_path.write_text(json.dumps({"fingerprint": fp, "source": emb_source, "llm": llm,
                                     "shape": list(emb.shape)}, indent=2))
    return emb, {"path": str(path), "hit": False, "verified": True}


def read_rows_file(path: str | Path, n_rows: int) -> list[int]:
    """Row indices (one integer per line; blank lines skipped) into a frame of ``n_rows`` rows, in order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--export_rows_file {path}: not found")
    rows: list[int] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = int(line.strip())
        except ValueError:
            raise ValueError(f"{path}:{n}: expected one train-row index (integer) per line, got {line!r}") from None
        if not 0 <= r < n_rows:
            raise ValueError(f"{path}:{n}: row {r} outside the train frame [0, {n_rows})")
        rows.append(r)
    if len(rows) < 2:
        raise ValueError(f"{path}: needs at least 2 rows (the tocf files of one row squeeze to 1-D), got {len(rows)}")
    if len(set(rows)) != len(rows):
        raise ValueError(f"{path}: duplicate row indices")
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


# ------------------------------------------------------------------------------------------------ CLI
def build_from_args(a):
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
    tcfg = TeacherConfig(lora_r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                         num_moe=a.num_moe, mode=a.mode)
    return build_teacher(llm, tok, load_sasrec(a.rec_model_path, mode=a.mode), tcfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reimpl.ilora.train",
                                 description="Train / evaluate / export the iLoRA teacher (defaults: train_lastfm.sh).")
    ap.add_argument("--llm", default="tiny", help="'tiny' (random tiny Llama), 'smollm2' (offline GGUF), or a local "
                                                  "HF folder")
    ap.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[3] / "shared/data/ilora/lastfm"))
    ap.add_argument("--rec_model_path", default=str(Path(__file__).resolve().parents[3] /
                                                    "shared/data/ilora/rec_model/lastfm.pt"))
    ap.add_argument("--prompt_path", default=str(Path(__file__).resolve().parents[2] /
                                                 "ref_repositories/iLoRA/prompt/artist.txt"))
    ap.add_argument("--mode", default="faithful", choices=["faithful", "fixed"])
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--accumulate_grad_batches", type=int, default=16)
    ap.add_argument("--max_epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--lr_warmup_start_lr", type=float, default=7e-6)
    ap.add_argument("--lr_decay_min_lr", type=float, default=7e-6)
    ap.add_argument("--weight_decay", type=float, default=1e-5)
    ap.add_argument("--lora_r", type=int, default=8)
    ap.add_argument("--lora_alpha", type=float, default=32)
    ap.add_argument("--lora_dropout", type=float, default=0.1)
    ap.add_argument("--num_moe", type=int, default=4)
    ap.add_argument("--cans_num", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--limit_rows", type=int, default=None, help="use only the first N train rows")
    ap.add_argument("--limit_train_batches", type=int, default=None, help="micro-batches per epoch cap")
    ap.add_argument("--ckpt_dir", default=None)
    ap.add_argument("--resume", default=None, help="checkpoint to resume from (ckpt_dir/last.ckpt)")
    ap.add_argument("--init_ckpt", default=None,
                    help="load the trainable tensors of this checkpoint (train.py save_checkpoint) before anything "
                         "else; with --max_epochs 0 this evaluates / exports a trained teacher")
    ap.add_argument("--eval_splits", default="val",
                    help="comma-separated splits to evaluate (val, test, train) or 'all' (= val,test)")
    ap.add_argument("--eval_rows", type=parse_eval_rows, default=0,
                    help="evaluate HR@1/ValidRatio on the first N rows of each --eval_splits split; 0 = off, "
                         "'all' = every row")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--export_dir", default=None,
                    help="write tocf/<export_name>/ for the first --export_rows rows (or --export_rows_file)")
    ap.add_argument("--export_name", default="lastfm")
    ap.add_argument("--export_rows", type=int, default=0,
                    help="export the first N rows of the (len_seq >= 3) train frame")
    ap.add_argument("--export_rows_file", default=None,
                    help="text file, one row index per line into the *unfiltered* train frame (train_data.df row "
                         "order = DLLM2Rec's), exported in that order (instead of --export_rows); also written to "
                         "tocf/<export_name>/rows.txt")
    ap.add_argument("--export_batch", type=int, default=4, help="prompt rows per scoring batch")
    ap.add_argument("--export_seed", type=int, default=0, help="seed of the export's candidate draw")
    ap.add_argument("--scoring", default="cached", choices=["cached", "uncached"],
                    help="candidate scoring: prefix-KV-cached (default) or one forward per (prompt, candidate) pair "
                         "(the definition; same numbers up to float rounding, ~C times slower)")
    ap.add_argument("--uncertainty", default="none", choices=["none", "variance", "jsd"],
                    help="also write uncertainty_train.txt (reimpl.extensions.uamd; 1 + num_moe scorings per row)")
    ap.add_argument("--emb_source", default="llm", choices=["llm", "projector"])
    ap.add_argument("--emb_cache", default=None,
                    help="all-items embedding tensor: loaded when the file exists (fingerprint-checked via "
                         "PATH.json), else computed and saved there")
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--pad_dim", type=int, default=None, help="zero-pad all_embeddings to this width (4096)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    ap.add_argument("--out", default=None, help="also write the JSON report to this file")
    ap.add_argument("--no_progress", action="store_true")
    a = ap.parse_args(argv)
    splits = ["val", "test"] if a.eval_splits.strip().lower() == "all" else [
        x.strip() for x in a.eval_splits.split(",") if x.strip()]
    bad = [x for x in splits if x not in LastFMData.FILES]
    if bad or not splits:
        ap.error(f"--eval_splits: expected a comma-separated subset of {list(LastFMData.FILES)} or 'all', "
                 f"got {a.eval_splits!r}")
    if a.export_rows_file and a.export_rows:
        ap.error("--export_rows and --export_rows_file are alternatives; give one")
    if a.threads is not None:
        if a.threads < 1:
            ap.error(f"--threads: expected >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_all = time.perf_counter()
    timings: dict = {}
    torch.manual_seed(a.seed)
    t = time.perf_counter()
    teacher = build_from_args(a)
    if a.init_ckpt:
        load_checkpoint(a.init_ckpt, teacher)
    timings["load_s"] = time.perf_counter() - t
    prompts = load_prompts(a.prompt_path)
    dcfg = DataConfig(data_dir=a.data_dir, cans_num=a.cans_num, mode=a.mode)
    report: dict = {"threads": torch.get_num_threads()}
    if a.max_epochs > 0:
        t = time.perf_counter()
        ocfg = OptimConfig(lr=a.lr, weight_decay=a.weight_decay, lr_decay_min_lr=a.lr_decay_min_lr,
                           lr_warmup_start_lr=a.lr_warmup_start_lr, mode=a.mode)
        tcfg = TrainConfig(batch_size=a.batch_size, accumulate_grad_batches=a.accumulate_grad_batches,
                           max_epochs=a.max_epochs, seed=a.seed, limit_rows=a.limit_rows,
                           limit_train_batches=a.limit_train_batches, optim=ocfg, mode=a.mode)
        acc = make_accelerator()   # torchrun / accelerate launch: data parallel; else None (single process)
        r = train(teacher, LastFMData(dcfg, "train"), prompts, tcfg, ckpt_dir=a.ckpt_dir, resume=a.resume,
                  progress=not a.no_progress, accelerator=acc)
        if acc is not None and not acc.is_main_process:
            return 0   # evaluation, export and the report happen once, on the main process
        report["train"] = {"global_step": r.global_step, "batches": r.batches, "emb_batches": r.emb_batches,
                           "first_loss": r.losses[0] if r.losses else None,
                           "last_loss": r.losses[-1] if r.losses else None, "seconds": round(r.seconds, 2),
                           "checkpoint": r.checkpoint}
        timings["train_s"] = time.perf_counter() - t
    if a.eval_rows is None or a.eval_rows > 0:
        teacher.eval()
        for split in splits:
            t = time.perf_counter()
            d = LastFMData(dcfg, split)
            n = len(d) if a.eval_rows is None else min(a.eval_rows, len(d))
            res, _ = teacher.evaluate(eval_batches(d, teacher.tokenizer, prompts, list(range(n)), a.batch_size,
                                                   a.seed, a.mode), max_new_tokens=a.max_new_tokens)
            timings[f"eval_{split}_s"] = time.perf_counter() - t
            report[split] = {"hr1": res.hr1, "valid_ratio": res.valid_ratio, "metric": res.metric,
                             "rows": res.n_rows, "seconds": timings[f"eval_{split}_s"]}
    if a.export_dir and (a.export_rows > 0 or a.export_rows_file):
        if a.export_rows_file:   # unfiltered frame: row r = train_data.df row r (DLLM2Rec's train rows)
            tr = LastFMData(DataConfig(data_dir=a.data_dir, cans_num=a.cans_num, mode=a.mode, min_len_seq=1), "train")
            rows = read_rows_file(a.export_rows_file, len(tr))
        else:
            tr = LastFMData(dcfg, "train")
            rows = list(range(a.export_rows))
        emb = None
        if a.emb_cache:
            t = time.perf_counter()
            emb, report["emb_cache"] = cached_item_embeddings(a.emb_cache, teacher, tr, a.emb_source,
                                                              llm=f"{a.llm}|{a.rec_model_path}")
            timings["embeddings_s"] = time.perf_counter() - t
        ex_t: dict = {}
        kw = dict(k=a.topk, cans_num=a.cans_num, batch_size=a.export_batch, seed=a.export_seed,
                  emb_source=a.emb_source, pad_dim=a.pad_dim, cached=a.scoring == "cached")
        if a.uncertainty == "none":
            folder = export_teacher(teacher, tr, prompts, a.export_dir, a.export_name, rows, embeddings=emb,
                                    timings=ex_t, **kw)
        else:
            from reimpl.extensions.uamd import export_teacher_with_uncertainty

            t = time.perf_counter()
            if emb is None:
                emb = all_item_embeddings(teacher, tr, a.emb_source)
                ex_t["embeddings_s"] = time.perf_counter() - t
            t = time.perf_counter()
            folder = export_teacher_with_uncertainty(teacher, tr, prompts, a.export_dir, a.export_name, rows,
                                                     kind=a.uncertainty, embeddings=emb, **kw)
            ex_t["export_scoring_s"] = time.perf_counter() - t   # incl. writing the files (small)
        if emb is not None and a.emb_cache:
            ex_t.pop("embeddings_s", None)   # timed above (cache load or computation)
        timings.update(ex_t)
        if a.export_rows_file:
            (Path(folder) / "rows.txt").write_text("".join(f"{r}\n" for r in rows))
        report["export"] = str(folder)
        report["export_stats"] = {"rows": len(rows), "scoring": a.scoring, "uncertainty": a.uncertainty,
                                  "scoring_seconds_per_row": timings["export_scoring_s"] / len(rows)}
    timings["total_s"] = time.perf_counter() - t_all
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
