"""Teacher phase of a distillation plan: train the reimpl iLoRA teacher, evaluate it, export ``tocf/``.

Issue 7 parts 2-3. One :class:`TeacherSpec` (config as data) describes the teacher; :func:`run_teacher`
runs three cached, resumable phases under ``<root>/teacher/<spec.name>/``::

    train.json     per micro-batch loss / lr, emb-prompt flags, wall-clock (appended chunk by chunk)
    ckpt/last.ckpt trainable tensors + optimizer / schedule / RNG (``reimpl.ilora.train.save_checkpoint``)
    eval_<split>.json  HR@1, ValidRatio (``teacher.evaluate``, iLoRA's generation metric) + every generation
    export/chunk_<i>.npz  ranks / confidences / uncertainties of export chunk i (resume skips finished chunks)
    item_embeddings.pt    all-items LLM embeddings (one pass, cached)
    tocf/<data>/          myrank_train.txt, confidence_train.txt, all_embeddings.pt (padded to 4096),
                          uncertainty_train.txt, rows.txt (original train-row index of each exported row)
    teacher.json   summary of all phases (the report reads it)

Training: ``reimpl.ilora.train.train`` on the first ``train_rows`` rows of iLoRA's LastFM train frame
(``len_seq >= 3``, as the reference dataset filters), run ``chunk`` micro-batches at a time with
``stop_after_batches`` + ``resume`` (bit-identical to an uninterrupted run: the checkpoint holds the RNG
states and the epoch's permutation).

Export: the DLLM2Rec train rows are those of the plan's student slice (``rows``: indices into the
*unfiltered* train frame, which is the DLLM2Rec ``train_data.df`` row for row), in that order. Each row's
candidates are its target + ``cans_num - 1`` random unseen items; scores, ranking, confidence and the UAMD
uncertainty come from :func:`reimpl.extensions.uamd.export_teacher_with_uncertainty`, one call per chunk with
seed ``export_seed + chunk index`` (so a resumed export draws the same candidates).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from reimpl.paths import ROOT, SHARED


@dataclass(frozen=True)
class TeacherSpec:
    """The iLoRA teacher a distillation plan uses. Defaults: train_lastfm.sh, except where noted."""

    name: str
    llm: str = "smollm2"            # reimpl.ilora.train --llm: smollm2 | tiny | <local HF folder>
    mode: str = "fixed"             # fixed: the target is among the prompt's candidates (faithful LastFM: never)
    seed: int = 1234
    train_rows: int = 320           # first N rows of the (len_seq >= 3) train frame
    batch_size: int = 8
    accumulate: int = 2             # train_lastfm.sh: 16 (2 optimizer steps for 320 rows would be nothing)
    max_epochs: int = 1
    lr: float = 7e-4
    eval_splits: tuple[str, ...] = ("val", "test")
    eval_rows: int | None = None    # None: every row of the split
    max_new_tokens: int = 32        # model_interface.py generates up to 64; HR@1 reads only the first line
    cans_num: int = 20
    topk: int = 10                  # DLLM2Rec --candidate_topk default (main.py:35)
    uncertainty: str = "variance"   # reimpl.extensions.uamd kinds
    export_seed: int = 0
    export_chunk: int = 32          # rows per resumable export chunk
    export_batch: int = 4
    pad_dim: int = 4096             # main.py's fc_4096_64 hard-codes the Llama-2-7B width
    chunk: int = 8                  # micro-batches per training checkpoint
    threads: int = 2


TEACHERS = {
    # issue 7 part 2 on this CPU: about 15-26 s per training micro-batch of 8 (reports/teacher.md)
    "smollm2-fixed": TeacherSpec("smollm2-fixed"),
    # CI pipeline check: the tiny random Llama of the unit tests, a handful of rows
    "tiny": TeacherSpec("tiny", llm="tiny", train_rows=32, batch_size=4, accumulate=2, eval_rows=8,
                        max_new_tokens=8, export_chunk=64, export_batch=16, chunk=4, threads=1),
}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _paths(shared: Path = SHARED) -> dict:
    return {"data_dir": shared / "data" / "ilora" / "lastfm",
            "rec_model": shared / "data" / "ilora" / "rec_model" / "lastfm.pt",
            "prompt": ROOT / "ref_repositories" / "iLoRA" / "prompt" / "artist.txt"}


def _build(spec: TeacherSpec, shared: Path):
    import argparse

    from reimpl.ilora.train import build_from_args

    p = _paths(shared)
    for k in ("data_dir", "rec_model", "prompt"):
        if not p[k].exists():
            raise FileNotFoundError(f"teacher {spec.name}: {k} {p[k]} not found (run `make refs`; ../shared/data)")
    a = argparse.Namespace(llm=spec.llm, rec_model_path=str(p["rec_model"]), lora_r=8, lora_alpha=32,
                           lora_dropout=0.1, num_moe=4, mode=spec.mode)
    return build_from_args(a), p


PHASES = ("train", "eval", "export")


def run_teacher(spec: TeacherSpec, rows: Sequence[int], out: Path, data_name: str = "lastfm",
                shared: Path = SHARED, progress: bool = True, log=print, phases: Sequence[str] = PHASES) -> Path:
    """Run (or resume) the phases (``train`` is always completed first); returns ``tocf/<data_name>``."""
    import torch

    from reimpl.ilora.prompt import load_prompts
    from reimpl.ilora.train import DataConfig, LastFMData

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [int(r) for r in rows]
    summary_path = out / "teacher.json"
    tocf = out / "tocf" / data_name
    prev = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if prev.get("done") and prev.get("spec") == _spec_json(spec) and prev.get("rows_sha") == _rows_sha(rows):
        return tocf
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(spec.threads)
    timings = dict(prev.get("timings", {}))   # phase timings of earlier (resumed) calls are kept
    t = time.perf_counter()
    torch.manual_seed(spec.seed)
    teacher, p = _build(spec, shared)
    prompts = load_prompts(str(p["prompt"]))
    timings["load_s"] = time.perf_counter() - t

    dcfg = DataConfig(data_dir=str(p["data_dir"]), prompt_path=str(p["prompt"]), cans_num=spec.cans_num,
                      mode=spec.mode)
    tr = _train_phase(spec, teacher, prompts, dcfg, out, progress)
    timings["train_s"] = tr["seconds"]
    teacher.eval()

    if "export" not in phases:
        _evaluate(spec, teacher, prompts, dcfg, out, phases, log)
        _write_json(summary_path, {"spec": _spec_json(spec), "done": False, "timings": timings})
        return tocf
    # ---- phase 2: export for the student slice (chunked, resumable) ------------------------------------
    full = LastFMData(DataConfig(data_dir=str(p["data_dir"]), prompt_path=str(p["prompt"]), cans_num=spec.cans_num,
                                 mode=spec.mode, min_len_seq=1), "train")   # unfiltered = DLLM2Rec's frame
    if rows and max(rows) >= len(full):
        raise ValueError(f"teacher export: row {max(rows)} outside the train frame ({len(full)} rows)")
    parts = _export_chunks(spec, teacher, full, prompts, rows, out / "export", progress, timings)
    folder, rank, unc = _write_export(spec, teacher, full, rows, parts, out, data_name, timings)
    quality = _export_quality(spec, full, rows, rank, unc)
    # ---- phase 3: evaluate (generation HR@1 / ValidRatio), after the export the students need ---------------
    evals = _evaluate(spec, teacher, prompts, dcfg, out, phases, log)
    _write_json(summary_path, {
        "spec": _spec_json(spec), "rows_sha": _rows_sha(rows), "done": "eval" in phases,
        "train": {k: tr[k] for k in ("losses", "lrs", "emb_batches", "seconds", "global_step")},
        "eval": {s: {k: v for k, v in e.items() if k != "generations"} for s, e in evals.items()},
        "export": quality, "timings": timings, "tocf": str(folder)})
    return folder


def _train_phase(spec: TeacherSpec, teacher, prompts, dcfg, out: Path, progress: bool) -> dict:
    """Phase 1: train ``spec.chunk`` micro-batches at a time, logging to ``train.json`` and checkpointing
    after each chunk (resumable); a finished run only loads its checkpoint. Returns the ``train.json`` record."""
    from tqdm.auto import tqdm

    from reimpl import checkpoint as ckpt_io
    from reimpl.ilora.optim import OptimConfig
    from reimpl.ilora.train import CKPT_KIND, LastFMData, TrainConfig, load_checkpoint, train

    tr_path, ckpt_dir = out / "train.json", out / "ckpt"
    tr = json.loads(tr_path.read_text()) if tr_path.is_file() else None
    if tr is not None and tr.get("spec") != _train_spec(spec):
        raise ValueError(f"{tr_path}: written for another teacher training spec; remove {out} to retrain")
    tr = tr or {"spec": _train_spec(spec), "losses": [], "lrs": [], "emb_batches": 0, "seconds": 0.0,
                "global_step": 0, "done": False}
    tcfg = TrainConfig(batch_size=spec.batch_size, accumulate_grad_batches=spec.accumulate,
                       max_epochs=spec.max_epochs, seed=spec.seed, limit_rows=spec.train_rows,
                       optim=OptimConfig(lr=spec.lr, mode=spec.mode), mode=spec.mode)
    data_tr = LastFMData(dcfg, "train")
    per_epoch = min(len(data_tr), spec.train_rows) // spec.batch_size
    total = per_epoch * spec.max_epochs
    ckpt = ckpt_dir / "last.ckpt"
    if tr["done"]:
        load_checkpoint(ckpt, teacher)
        return tr
    if ckpt.is_file() and tr["losses"]:
        ck = ckpt_io.load(ckpt, kind=CKPT_KIND)
        at = ck["epoch"] * per_epoch + ck["batch_in_epoch"]
        if at != len(tr["losses"]):
            raise ValueError(f"{ckpt} is at micro-batch {at} but {tr_path} logged {len(tr['losses'])}; "
                             f"the run was interrupted between the two writes: remove {out} to retrain")
    bar = tqdm(total=total, initial=len(tr["losses"]), desc=f"teacher {spec.name} train", unit="batch",
               disable=not progress)
    while not tr["done"]:
        resume = ckpt if (ckpt.is_file() and tr["losses"]) else None
        r = train(teacher, data_tr, prompts, tcfg, ckpt_dir=ckpt_dir, resume=resume, progress=False,
                  stop_after_batches=spec.chunk)
        tr["losses"] += r.losses
        tr["lrs"] += r.lrs
        tr["emb_batches"] += r.emb_batches
        tr["seconds"] += r.seconds
        tr["global_step"] = r.global_step
        tr["done"] = len(tr["losses"]) >= total
        _write_json(tr_path, tr)
        bar.update(len(r.losses))
        bar.set_postfix(loss=f"{tr['losses'][-1]:.3f}", step=tr["global_step"])
    bar.close()
    return tr


def export_chunk_bounds(n_rows: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` of the export chunks: ``chunk`` rows each, no 1-row last chunk (merged into the one
    before; chunk i draws with seed + i, so this is kept for existing exports to resume identically)."""
    bounds = list(range(0, n_rows, chunk)) + [n_rows]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        bounds.pop(-2)
    return list(zip(bounds[:-1], bounds[1:]))


def _export_chunks(spec: TeacherSpec, teacher, full, prompts, rows: list[int], exp_dir: Path, progress: bool,
                   timings: dict) -> list:
    """Score the rows chunk by chunk into ``export/chunk_<i>.npz`` (finished chunks are kept); returns the
    loaded chunks, checked to cover exactly ``rows`` in order."""
    from tqdm.auto import tqdm

    from reimpl.extensions.uamd import score_rows_with_uncertainty

    exp_dir.mkdir(exist_ok=True)
    chunks = export_chunk_bounds(len(rows), spec.export_chunk)
    t = time.perf_counter()
    done_before = sum((exp_dir / f"chunk_{i:04d}.npz").is_file() for i in range(len(chunks)))
    bar = tqdm(total=len(rows), desc=f"teacher {spec.name} export", unit="row", disable=not progress,
               initial=sum(b - a for i, (a, b) in enumerate(chunks) if (exp_dir / f"chunk_{i:04d}.npz").is_file()))
    for i, (a, b) in enumerate(chunks):
        cp = exp_dir / f"chunk_{i:04d}.npz"
        if cp.is_file():
            continue
        rank, conf, u = score_rows_with_uncertainty(teacher, full, prompts, rows[a:b], k=spec.topk,
                                                    cans_num=spec.cans_num, batch_size=spec.export_batch,
                                                    seed=spec.export_seed + i, kind=spec.uncertainty)
        np.savez(cp.with_suffix(".tmp.npz"), rank=rank, confidence=conf, uncertainty=u, rows=np.asarray(rows[a:b]))
        cp.with_suffix(".tmp.npz").replace(cp)
        bar.update(b - a)
    bar.close()
    if len(chunks) > done_before:
        timings["export_score_s"] = timings.get("export_score_s", 0.0) + time.perf_counter() - t
        timings["export_rows_timed"] = timings.get("export_rows_timed", 0) + sum(
            b - a for (a, b) in chunks[done_before:])
    parts = [np.load(exp_dir / f"chunk_{i:04d}.npz") for i in range(len(chunks))]
    got_rows = np.concatenate([q["rows"] for q in parts])
    if not np.array_equal(got_rows, np.asarray(rows)):
        raise ValueError(f"{exp_dir}: export chunks cover other rows than requested; remove the folder")
    return parts


def _write_export(spec: TeacherSpec, teacher, full, rows: list[int], parts: list, out: Path, data_name: str,
                  timings: dict):
    """``tocf/<data_name>/`` from the chunks + the all-items embeddings (cached in ``item_embeddings.pt``);
    returns (folder, rank ``[R, k]``, uncertainty ``[R]``)."""
    import torch

    from reimpl.extensions.uamd import write_uncertainty
    from reimpl.ilora.export import write_tocf
    from reimpl.ilora.train import all_item_embeddings

    emb_path = out / "item_embeddings.pt"
    if not emb_path.is_file():
        t = time.perf_counter()
        torch.save(all_item_embeddings(teacher, full, "llm").contiguous(), emb_path)
        timings["embeddings_s"] = time.perf_counter() - t
    emb = torch.load(emb_path, weights_only=True)
    rank = np.concatenate([q["rank"] for q in parts])
    conf = np.concatenate([q["confidence"] for q in parts])
    unc = np.concatenate([q["uncertainty"] for q in parts])
    folder = write_tocf(out, data_name, rank, conf, emb, full.cfg.padding_item_id, pad_dim=spec.pad_dim)
    write_uncertainty(folder, unc)
    np.savetxt(folder / "rows.txt", np.asarray(rows, dtype=np.int64), fmt="%d")
    return folder, rank, unc


def _export_quality(spec: TeacherSpec, full, rows: list[int], rank: np.ndarray, unc: np.ndarray) -> dict:
    """Where each exported row's target sits in the teacher's top-k (how good the ranking the students get is)."""
    targets = full.frame["next"].to_numpy()[np.asarray(rows)]
    hit = (rank == targets[:, None])
    pos = np.where(hit.any(1), hit.argmax(1) + 1, 0)
    return {"rows": len(rows), "k": spec.topk, "cans_num": spec.cans_num,
            "target_in_topk": float(hit.any(1).mean()),
            "target_at_1": float((pos == 1).mean()),
            "chance_in_topk": spec.topk / spec.cans_num, "chance_at_1": 1 / spec.cans_num,
            "mean_rank_when_in_topk": float(pos[pos > 0].mean()) if (pos > 0).any() else None,
            "uncertainty_mean": float(unc.mean()), "uncertainty_median": float(np.median(unc))}


def _evaluate(spec: TeacherSpec, teacher, prompts, dcfg, out: Path, phases: Sequence[str], log) -> dict:
    """Generation HR@1 / ValidRatio per split (cached in ``eval_<split>.json``)."""
    import torch

    from reimpl.ilora.train import LastFMData, eval_batches

    evals = {}
    for split in (spec.eval_splits if "eval" in phases else ()):
        ep = out / f"eval_{split}.json"
        if ep.is_file():
            evals[split] = json.loads(ep.read_text())
            continue
        data = LastFMData(dcfg, split)
        n = len(data) if spec.eval_rows is None else min(spec.eval_rows, len(data))
        t = time.perf_counter()
        with torch.no_grad():
            res, gens = teacher.evaluate(eval_batches(data, teacher.tokenizer, prompts, list(range(n)), spec.batch_size,
                                                      spec.seed, spec.mode, split=split),
                                         max_new_tokens=spec.max_new_tokens)
        evals[split] = {"split": split, "rows": res.n_rows, "hr1": res.hr1, "valid_ratio": res.valid_ratio,
                        "metric": res.metric, "n_valid": res.n_valid, "n_correct": res.n_correct,
                        "seconds": time.perf_counter() - t, "generations": gens}
        _write_json(ep, evals[split])
        log(f"teacher {spec.name} {split}: HR@1 {res.hr1:.4f} ValidRatio {res.valid_ratio:.4f} ({res.n_rows} rows)")

    return evals


def _spec_json(spec: TeacherSpec) -> dict:
    return json.loads(json.dumps(asdict(spec)))


TRAIN_FIELDS = ("llm", "mode", "seed", "train_rows", "batch_size", "accumulate", "max_epochs", "lr", "cans_num")


def _train_spec(spec: TeacherSpec) -> dict:
    """The fields that decide the trained weights (a change of evaluation/export settings keeps them)."""
    d = _spec_json(spec)
    return {k: d[k] for k in TRAIN_FIELDS}


def _rows_sha(rows: Sequence[int]) -> str:
    import hashlib

    return hashlib.sha256(",".join(map(str, rows)).encode()).hexdigest()
