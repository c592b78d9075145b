"""Train, evaluate and export the inner-product teachers on LastFM; one JSON per run in ``results/teachers/``.

    python -m reimpl.teachers.run dense  --llm smollm2 --pooling mean [--id_embeddings true] [--export true]
    python -m reimpl.teachers.run e4srec --max_train_rows 1000 --eval_rows 500 --llm_layers 6
    python -m reimpl.teachers.run llamarec --splits val,test   # zero-shot two-stage reranker
    python -m reimpl.teachers.run llamarec --epochs 1 --max_train_rows 2000 --splits heldout,val,test  # LoRA-tuned
    python -m reimpl.teachers.run sasrec          # the SASRec checkpoint alone (the bar)
    python -m reimpl.teachers.run ilora --max_train_rows 5000 --chunk_batches 50   # iLoRA, in resumable chunks

Every run evaluates on the same rows and candidates (:mod:`reimpl.teachers.common`): the held-out train rows
(the last ``--heldout_rows``, never trained on by these teachers; ``--eval_rows`` takes the first n of them), val
and test (122 rows each), 20 candidates per row, and scores the SASRec checkpoint on exactly those rows and
candidates beside it. Costs are wall-clock on a shared machine; ``uptime``'s load average is recorded at start and
end. Runs resume: LLM encodings are cached chunk by chunk under ``runs/teachers/enc/``, E4SRec checkpoints its
trainable weights every 25 steps under ``runs/teachers/<name>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reimpl import checkpoint as ckpt_io
from reimpl.cliconf import add_dataclass_arguments, build, from_namespace, require
from reimpl.device import DEVICES, require_device
from reimpl.paths import ROOT, RUNS, SHARED
from reimpl.teachers import common, dense, e4srec, ilora
from reimpl.teachers import export as ex

RESULTS = ROOT / "results" / "teachers"
SMOLLM2_ID = "smollm2-135m-instruct-q4_1"


@dataclass
class RunOptions:
    # lastfm: iLoRA's LastFM as published (held-out = the last train rows, SASRec bar = rec_model/lastfm.pt);
    # ml100k-loo / lastfm-loo: the leave-one-out splits of the converged baselines (eval on every user's val and
    # test row; SASRec bar trained here on the split's train rows, reimpl.teachers.bar); records go to
    # results/teachers/<dataset>/
    dataset: str = field(default="lastfm", metadata={"choices": list(common.DATASETS)})
    data_dir: str = str(SHARED / "data" / "ilora" / "lastfm")
    sasrec_ckpt: str = str(SHARED / "data" / "ilora" / "rec_model" / "lastfm.pt")
    heldout_rows: int = 2000
    eval_rows: int | None = None        # first n held-out rows only (None: all)
    n_cands: int = 20
    cand_seed: int = 0
    name: str | None = None             # result name (default: derived from the config)
    export: bool = False                # export the full train split to results/teachers/<name>.safetensors
    threads: int = 2
    llm: str = field(default="smollm2", metadata={"choices": ["smollm2", "minilm", "random", "tiny", "hf"]})
    llm_path: str | None = None         # --llm hf (ilora): a save_pretrained folder, read offline (e.g. Llama-2-7B)
    device: str = field(default="cpu", metadata={"choices": list(DEVICES)})   # cuda: ilora only (docs/teachers_gpu.md)
    results_dir: str = str(RESULTS)
    max_train_rows: int | None = None   # a seeded sample of the training rows (None: all non-held-out rows)

    def __post_init__(self) -> None:
        require((self.llm == "hf") == (self.llm_path is not None), "--llm_path", "given exactly when --llm hf",
                self.llm_path)
        require(self.n_cands >= 10, "--n_cands", ">= 10 (target in the top 10 is reported)", self.n_cands)
        require(self.heldout_rows > 0, "--heldout_rows", "> 0", self.heldout_rows)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _env(opts: RunOptions) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "load_at_start": _load()}


def load_data(opts: RunOptions) -> common.LastFM:
    return common.load_dataset(opts.dataset, opts.data_dir)


def results_dir(opts: RunOptions) -> str:
    return opts.results_dir if opts.dataset == "lastfm" else str(Path(opts.results_dir) / opts.dataset)


def teacher_name(opts: RunOptions, default: str) -> str:
    return opts.name or (default if opts.dataset == "lastfm" else f"{opts.dataset}-{default}")


def data_facts(d: common.LastFM) -> dict:
    return {"dataset": d.name, "digest": d.digest, "rows": {k: len(getattr(d, k)) for k in ("train", "val", "test")}}


def load_bar(d: common.LastFM, opts: RunOptions):
    """(SASRec bar, facts): the iLoRA checkpoint on LastFM as published, else trained on the LOO train rows."""
    if d.loo:
        from reimpl.teachers.bar import train_bar

        return train_bar(d.name, log=lambda m: print(f"bar: {m}", flush=True))
    from reimpl.ilora.sasrec import load_checkpoint

    return load_checkpoint(opts.sasrec_ckpt, mode="fixed"), {"checkpoint": opts.sasrec_ckpt}


def train_rows(d: common.LastFM, opts: RunOptions, seed: int) -> common.Rows:
    """The non-held-out train rows (every train row of a LOO split), or a seeded sample of ``max_train_rows``
    of them (in frame order)."""
    train = d.train if d.loo else common.split_train(d.train, opts.heldout_rows)[0]
    if opts.max_train_rows is None or opts.max_train_rows >= len(train):
        return train
    g = np.random.default_rng(seed)
    return train.take(np.sort(g.choice(len(train), opts.max_train_rows, replace=False)))


def eval_sets(d: common.LastFM, opts: RunOptions) -> dict[str, common.Rows]:
    if d.loo:  # every user's val and test row (the first eval_rows of each when given)
        return {k: r if opts.eval_rows is None else r.take(slice(0, opts.eval_rows))
                for k, r in (("val", d.val), ("test", d.test))}
    _, held = common.split_train(d.train, opts.heldout_rows)
    if opts.eval_rows is not None:
        held = held.take(slice(0, opts.eval_rows))
    return {"heldout": held, "val": d.val, "test": d.test}


def evaluate(full: torch.Tensor, rows: common.Rows, opts: RunOptions) -> dict:
    cands = common.candidates(rows, opts.n_cands, opts.cand_seed)
    cs = full.gather(1, torch.as_tensor(cands))
    return common.evaluate_scores(full, cs, cands, rows.next, [rows.history(i) for i in range(len(rows))])


def sasrec_bar(sas, sets: dict[str, common.Rows], opts: RunOptions) -> dict:
    return {k: evaluate(common.sasrec_scores(sas, r), r, opts) for k, r in sets.items()}


def _write(folder: str, name: str, rec: dict) -> Path:
    Path(folder).mkdir(parents=True, exist_ok=True)
    p = Path(folder) / f"{name}.json"
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True, default=float) + "\n")
    tmp.replace(p)
    return p


def _export(folder: str, name: str, scores_fn, d: common.LastFM, emb: torch.Tensor, meta: dict, k: int = 10,
            chunk: int = 4096) -> dict:
    """Top-k over all items for every train row (history items masked), compact file in results/teachers/."""
    t0 = time.perf_counter()
    ranks, confs = [], []
    for s in range(0, len(d.train), chunk):
        rows = d.train.take(slice(s, s + chunk))
        sc = scores_fn(rows).double()
        for r in range(len(rows)):
            h = rows.history(r)
            if h:
                sc[r, h] = -torch.inf   # a teacher recommends the next item, not one already heard
        rk, cf = ex.ranking_from_scores(sc, k)
        ranks.append(rk)
        confs.append(cf)
    files = ex.TeacherFiles(np.arange(len(d.train)), np.concatenate(ranks), np.concatenate(confs), emb.float())
    p = ex.write_compact(Path(folder) / f"{name}.safetensors", files, d.item_num, n_train=len(d.train), meta=meta)
    hit = (files.rank == d.train.next[:, None]).any(1)
    return {"file": str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p), "rows": len(d.train), "k": k,
            "bytes": p.stat().st_size,
            "export_s": round(time.perf_counter() - t0, 2), "target_in_topk_all_items": float(hit.mean()),
            "note": (f"top-k over all items (history masked); rows 0..N-1 of the {d.name} train split (the student's "
                     "train rows, in order)" if d.loo else
                     "top-k over all items (history masked); rows 0..N-1 of the LastFM train split, held-out rows "
                     "included (the teacher never trained on them)")}


# ------------------------------------------------------------------------------------------------- encoders
def _smollm2():
    from reimpl.llm.real import load_smollm2

    return load_smollm2()


def _command() -> str:
    return "python -m reimpl.teachers.run " + " ".join(_ARGV)


_ARGV: list[str] = []

def item_vectors(d: common.LastFM, opts: RunOptions, pooling: str) -> tuple[torch.Tensor, dict]:
    """``[I, d_llm]`` frozen text vectors of every item title (cached)."""
    titles = [d.titles[i] for i in range(d.item_num)]
    tag = "" if d.name == "lastfm" else f"{d.name}-"   # LastFM keeps its cache names
    if opts.llm == "random":   # control: no text at all
        g = torch.Generator().manual_seed(0)
        return torch.randn(d.item_num, 576, generator=g), {"llm": "random N(0,1) vectors (no text; a control)"}
    if opts.llm == "minilm":
        from reimpl.llm.real import load_minilm

        cache = RUNS / "teachers" / "enc" / f"{tag}minilm-items.npy"
        t0 = time.perf_counter()
        if not cache.is_file():
            m = load_minilm()
            v = m.encode(titles, batch_size=256, convert_to_numpy=True, normalize_embeddings=False)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, v.astype(np.float32))
        return torch.from_numpy(np.load(cache)), {"llm": "all-MiniLM-L6-v2 (sentence-transformers mean pooling)",
                                                   "encode_s": round(time.perf_counter() - t0, 1)}
    if opts.llm == "tiny":
        from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama

        tok = load_tiny_tokenizer()
        model, mid = tiny_llama(seed=0, vocab_size=len(tok)), "tiny-llama-seed0"
    else:
        mid = SMOLLM2_ID
        folder = RUNS / "teachers" / "enc" / f"{tag}{mid}-items"
        done = all((folder / f"chunk_{c:05d}.npz").is_file() for c in range(-(-len(titles) // 512)))
        model, tok = (None, None) if done else _smollm2()   # a complete cache needs no model (meta.json pins it)
    from reimpl.teachers.encode import encode_cached

    last, mean, st = encode_cached(RUNS / "teachers" / "enc" / f"{tag}{mid}-items", model, tok, titles, mid, chunk=512,
                                   dtype=torch.bfloat16 if opts.llm == "smollm2" else None)
    return torch.from_numpy(last if pooling == "last" else mean), {"llm": mid, "pooling": pooling, "encode": st}


# ----------------------------------------------------------------------------------------------- commands
def run_dense(cfg: dense.DenseConfig, opts: RunOptions) -> Path:
    torch.manual_seed(cfg.seed)
    d = load_data(opts)
    train = train_rows(d, opts, cfg.seed)
    sets = eval_sets(d, opts)
    name = teacher_name(opts, f"dense-{opts.llm}-{cfg.pooling}" + ("-id" if cfg.id_embeddings else ""))
    rec = {"teacher": name, "method": "dense", "config": dataclasses.asdict(cfg), "options": dataclasses.asdict(opts),
           "env": _env(opts), "command": _command()}
    require(cfg.user_encoder == "items", "--user_encoder",
            "'items' in this CLI (the 'llm' user tower needs one LLM pass per row; see the module)", cfg.user_encoder)
    x, rec["encoder"] = item_vectors(d, opts, cfg.pooling)
    model = dense.DenseRetriever(cfg, x)
    rec["train"] = {"rows": len(train), **dense.train_dense(model, dense.hist_tensor(train.seqs, d.item_num), None,
                                                              torch.as_tensor(train.next),
                                                              log=lambda m: print(m, flush=True))}
    t0 = time.perf_counter()
    rec["eval"] = {k: evaluate(dense.score_all(model, dense.hist_tensor(r.seqs, d.item_num), None), r, opts)
                   for k, r in sets.items()}
    rec["eval_s"] = round(time.perf_counter() - t0, 2)
    sas, rec["sasrec_bar_model"] = load_bar(d, opts)
    rec["sasrec_bar"] = sasrec_bar(sas, sets, opts)
    if opts.export:
        with torch.no_grad():
            emb = model.items()
        rec["export"] = _export(results_dir(opts), name,
                                lambda r: dense.score_all(model, dense.hist_tensor(r.seqs, d.item_num), None), d, emb,
                                {"teacher": name, "config": rec["config"]})
    rec["env"]["load_at_end"] = _load()
    rec["data"] = data_facts(d)
    return _write(results_dir(opts), name, rec)


def run_e4srec(cfg: e4srec.E4SRecConfig, opts: RunOptions) -> Path:
    d = load_data(opts)
    bar = load_bar(d, opts) if d.loo else None   # before the seed: the bar's training must not move this run's RNG
    torch.manual_seed(cfg.seed)
    tr = train_rows(d, opts, cfg.seed)
    sets = eval_sets(d, opts)
    sas, bar_facts = bar or load_bar(d, opts)    # LastFM: the checkpoint, built after the seed as it always was
    if opts.llm == "tiny":
        from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama

        tok = load_tiny_tokenizer()
        llm = tiny_llama(seed=0, vocab_size=len(tok))
    else:
        require(opts.llm == "smollm2", "--llm", "smollm2 or tiny for e4srec", opts.llm)
        from reimpl.llm.real import load_smollm2

        llm, tok = load_smollm2()
    name = teacher_name(opts, f"e4srec-{opts.llm}" + (f"-moe{cfg.num_moe}-{cfg.gate}" if cfg.num_moe > 1 else ""))
    prefix, _, suffix = common.DOMAIN_TEXT[d.domain]
    model = e4srec.E4SRec(cfg, llm, tok, sas, prefix=prefix.rstrip(), suffix=suffix)
    ck_dir = RUNS / "teachers" / name
    ck = ck_dir / "ckpt.pt"
    start, curve = 0, []
    if ck.is_file():
        state = torch.load(ck, weights_only=False)
        if state["config"] != dataclasses.asdict(cfg) or state["rows"] != len(tr):
            raise ValueError(f"{ck}: checkpoint of another configuration; delete it or pass another --name")
        model.load_state_dict(state["trainable"], strict=False)
        model._opt_state = state["opt"]
        start, curve = state["step"], state["curve"]
        print(f"resuming {name} at step {start}", flush=True)

    def save(step, cur):
        ck_dir.mkdir(parents=True, exist_ok=True)
        tmp = ck.with_name("ckpt.pt.tmp")
        torch.save({"config": dataclasses.asdict(cfg), "rows": len(tr), "step": step, "curve": cur,
                    "trainable": {n: p.detach() for n, p in model.trainable()}, "opt": model._opt_state}, tmp)
        tmp.replace(ck)

    rec = {"teacher": name, "method": "e4srec", "config": dataclasses.asdict(cfg), "options": dataclasses.asdict(opts),
           "env": _env(opts), "command": _command(),
           "encoder": {"llm": SMOLLM2_ID if opts.llm == "smollm2" else "tiny-llama-seed0",
                       "trainable_params": sum(p.numel() for _, p in model.trainable())}}
    info = e4srec.train_e4srec(model, tr.seqs, tr.next, d.item_num, log=lambda m: print(m, flush=True),
                               checkpoint=save, start_step=start, curve=curve)
    rec["train"] = {"rows": len(tr), "resumed_at_step": start, **info}
    if d.loo:   # the adapter in the results store: CDR (reimpl.extensions.cdr_engine) rebuilds the teacher from it
        adapter = Path(results_dir(opts)) / f"{name}.adapter.safetensors"
        adapter.parent.mkdir(parents=True, exist_ok=True)
        e4srec.save_adapter(adapter, model, {"teacher": name, "config": dataclasses.asdict(cfg), "dataset": d.name})
        rec["adapter"] = str(adapter.relative_to(ROOT)) if adapter.is_relative_to(ROOT) else str(adapter)
    prev = Path(results_dir(opts)) / f"{name}.json"
    if start == info["steps"] and prev.is_file():
        # a finished run re-entered (e.g. to add --export): keep the record of the training that produced it
        old = json.loads(prev.read_text())
        same_cfg = old.get("config") == json.loads(json.dumps(rec["config"]))   # tuples come back as lists
        if same_cfg and old.get("train", {}).get("rows") == len(tr):
            rec["train"] = old["train"]
            rec["train_command"] = old.get("train_command", old.get("command"))
    t0 = time.perf_counter()
    rec["eval"] = {}
    n_eval = 0
    for k, r in sets.items():
        rec["eval"][k] = evaluate(e4srec.score_all(model, r.seqs, d.item_num), r, opts)
        n_eval += len(r)
    secs = time.perf_counter() - t0
    rec["eval_s"] = round(secs, 2)
    rec["export_rows_per_s"] = round(n_eval / max(secs, 1e-9), 2)   # one forward per row scores every item
    rec["sasrec_bar"] = sasrec_bar(sas, sets, opts)
    rec["sasrec_bar_model"] = bar_facts
    if opts.export:
        rec["export"] = _export(results_dir(opts), name, lambda r: e4srec.score_all(model, r.seqs, d.item_num), d,
                                model.items.detach(), {"teacher": name, "config": rec["config"]}, chunk=256)
    rec["env"]["load_at_end"] = _load()
    rec["data"] = data_facts(d)
    return _write(results_dir(opts), name, rec)


def _ilora_trainable(teacher) -> int:
    """Parameters iLoRA trains: LoRA experts, gate and the projector. ``requires_grad`` alone would depend on the
    last batch: train() freezes the projector on text-only batches (reimpl/ilora/train.py, training_step)."""
    ps = {id(p): p for p in teacher.parameters() if p.requires_grad}
    ps.update({id(p): p for p in teacher.projector.parameters()})
    return sum(p.numel() for p in ps.values())


def run_ilora(cfg: ilora.ILoRAConfig, opts: RunOptions) -> Path:
    """iLoRA (reimpl.ilora, fixed mode) trained on the teachers' rows in chunks, evaluated once training ends.

    Each call trains ``--chunk_batches`` micro-batches (or to the end), checkpoints to ``runs/teachers/<name>/``
    and to the results store (``<name>.ckpt.safetensors``, compact), and rewrites ``<name>.json`` with the
    progress; a call on a machine without the runs/ checkpoint continues from the committed one."""
    from reimpl.ilora import train as it
    from reimpl.ilora.prompt import load_prompts
    from reimpl.paths import REF_DIR

    d = load_data(opts)
    sas, bar_facts = load_bar(d, opts)
    base = ilora.training_rows(d.train if d.loo else common.split_train(d.train, opts.heldout_rows)[0])
    if opts.max_train_rows is not None and opts.max_train_rows < len(base):
        g = np.random.default_rng(cfg.seed)
        base = base.take(np.sort(g.choice(len(base), opts.max_train_rows, replace=False)))
    sets = eval_sets(d, opts)
    torch.manual_seed(cfg.seed)
    teacher = ilora.build(cfg, sas, opts.llm, opts.llm_path).to(require_device(opts.device))
    prompts = load_prompts(REF_DIR / "iLoRA" / "prompt" / ilora.PROMPTS[d.domain])
    data = ilora.RowsData(base, d.titles, d.item_num, opts.n_cands, source=d.data_dir)
    llm_name = Path(opts.llm_path).name if opts.llm == "hf" else opts.llm
    name = teacher_name(opts, f"ilora-{llm_name}" + (f"-l{cfg.llm_layers}" if cfg.llm_layers else ""))
    tcfg = ilora.train_config(cfg)
    ck_dir = RUNS / "teachers" / name
    last, side = ck_dir / "last.ckpt", ck_dir / "extra.json"
    committed = Path(results_dir(opts)) / f"{name}.ckpt.safetensors"
    identity = it.run_identity(teacher, data, tcfg)
    resume, note = None, "fresh start"
    extra: dict = {"curve": [], "chunks": []}
    if last.is_file():
        resume, note = last, "resumed from this machine's checkpoint (exact)"
        if side.is_file():
            extra = json.loads(side.read_text())
    elif committed.is_file():
        extra = ilora.restore_checkpoint(committed, last, identity)
        resume, note = last, "resumed from the committed checkpoint (Adam moments rounded to bfloat16)"
    n_batches = tcfg.max_epochs * (len(data) // tcfg.batch_size)
    print(f"{name}: {len(data)} train rows, {n_batches} micro-batches; {note}", flush=True)
    load0 = _load()
    tokens = {"real": 0, "padded": 0}
    rows_batches = it.train_batches(data, teacher.tokenizer, prompts, "fixed", teacher.cfg.terminator)

    def counted(idx, rng, p):   # the default batches, counted (tokens/s for make bench)
        b = rows_batches(idx, rng, p)
        tokens["real"] += int(b["attention_mask"].sum())
        tokens["padded"] += int(b["input_ids"].numel())
        return b

    r = it.train(teacher, data, prompts, tcfg, ckpt_dir=ck_dir, resume=resume, progress=False,
                 stop_after_batches=cfg.chunk_batches, batch_source=counted)
    ck = ckpt_io.load(last, kind=it.CKPT_KIND)
    finished = ck["epoch"] >= tcfg.max_epochs
    if r.batches:
        extra["curve"] += [round(x, 5) for x in r.losses]
        extra["chunks"].append({"batches": r.batches, "seconds": round(r.seconds, 2), "start": note,
                                "threads": torch.get_num_threads(), "machine": platform.node(),
                                "load_at_start": load0, "load_at_end": _load(), "code": _git_head(),
                                "tokens": tokens["real"], "padded_tokens": tokens["padded"]})
        side.write_text(json.dumps(extra))
        ilora.compact_checkpoint(last, committed, extra)
    done = len(extra["curve"])
    secs = sum(c["seconds"] for c in extra["chunks"])
    rec = {"teacher": name, "method": "ilora", "config": ilora.config_dict(cfg), "options": dataclasses.asdict(opts),
           "env": _env(opts), "command": _command(),
           "encoder": {"llm": {"smollm2": SMOLLM2_ID, "hf": opts.llm_path}.get(opts.llm, "tiny-llama-seed0"),
                       "trainable_params": _ilora_trainable(teacher)},
           "train": {"rows": len(data), "micro_batches": n_batches, "micro_batches_done": done,
                     "optimizer_steps": int(ck["global_step"]), "finished": finished, "train_s": round(secs, 2),
                     "s_per_row": round(secs / max(done * tcfg.batch_size, 1), 3), "loss_curve": extra["curve"],
                     "chunks": extra["chunks"]},
           "checkpoint": {"file": _rel(committed), "bytes": committed.stat().st_size if committed.is_file() else 0},
           "sasrec_bar_model": bar_facts}
    if finished:
        t0 = time.perf_counter()
        rec["eval"] = {k: ilora.evaluate(teacher, rows, d.titles, prompts, cfg, opts.n_cands, opts.cand_seed,
                                         cfg.generation and k in ("val", "test")) for k, rows in sets.items()}
        rec["eval_s"] = round(time.perf_counter() - t0, 2)
        rec["sasrec_bar"] = sasrec_bar(sas, sets, opts)
    rec["env"]["load_at_end"] = _load()
    rec["data"] = data_facts(d)
    return _write(results_dir(opts), name, rec)


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _git_head() -> str:
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run_llamarec(cfg, opts: RunOptions, splits: tuple[str, ...]) -> Path:
    """LlamaRec: the shared candidates reranked by the verbalizer, and the two-stage ranking over all items (SASRec
    top ``n``, reranked); two LLM passes per row. ``--epochs 0``: zero-shot; ``--epochs n``: LoRA trained first on
    the non-held-out train rows (``--max_train_rows``, a seeded sample), checkpointed every 25 steps under
    ``runs/teachers/<name>/`` (a rerun resumes) and kept as ``<name>.adapter.safetensors`` in the results store."""
    from reimpl.ilora.sasrec import load_checkpoint
    from reimpl.teachers import llamarec

    opts = dataclasses.replace(opts, n_cands=cfg.n_cands)
    d = common.load_lastfm(opts.data_dir)
    sets = {k: v for k, v in eval_sets(d, opts).items() if k in splits}
    sas = load_checkpoint(opts.sasrec_ckpt, mode="fixed")
    torch.manual_seed(cfg.seed)
    if opts.llm == "tiny":
        from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama

        tok = load_tiny_tokenizer()
        llm, mid = tiny_llama(seed=0, vocab_size=len(tok)), "tiny-llama-seed0"
    else:
        require(opts.llm == "smollm2", "--llm", "smollm2 or tiny for llamarec", opts.llm)
        from reimpl.llm.real import load_smollm2

        (llm, tok), mid = load_smollm2(), SMOLLM2_ID
    tr = train_rows(d, opts, cfg.seed) if cfg.epochs else None
    name = opts.name or (f"llamarec-{opts.llm}-zeroshot" if not cfg.epochs else
                         f"llamarec-{opts.llm}" + (f"-l{cfg.llm_layers}" if cfg.llm_layers else "") + f"-{len(tr)}")
    rec = {"teacher": name, "method": "llamarec", "config": dataclasses.asdict(cfg),
           "options": dataclasses.asdict(opts),
           "env": _env(opts), "command": _command(), "encoder": {"llm": mid},
           "train": {"rows": 0, "note": "zero-shot: the verbalizer reads the untuned LLM"}, "eval": {},
           "sasrec_bar": sasrec_bar(sas, sets, opts)}
    model = llm
    if cfg.epochs:
        model = llamarec.LlamaRec(cfg, llm, tok)
        retrieval = None
        if cfg.train_cands == "retrieved":
            retrieval = common.sasrec_scores(sas, tr).double()
            for i in range(len(tr)):
                retrieval[i, tr.history(i)] = -torch.inf
        ck = RUNS / "teachers" / name / "ckpt.pt"
        start, curve = 0, []
        if ck.is_file():
            state = torch.load(ck, weights_only=False)   # this project's own cache file
            if state["config"] != dataclasses.asdict(cfg) or state["rows"] != len(tr):
                raise ValueError(f"{ck}: checkpoint of another configuration; delete it or pass another --name")
            model.load_state_dict(state["trainable"], strict=False)
            model._opt_state = state["opt"]
            start, curve = state["step"], state["curve"]
            torch.set_rng_state(state["torch_rng"])     # LoRA dropout continues its stream
            print(f"resuming {name} at step {start}", flush=True)

        def save(step, cur):
            ck.parent.mkdir(parents=True, exist_ok=True)
            tmp = ck.with_name("ckpt.pt.tmp")
            torch.save({"config": dataclasses.asdict(cfg), "rows": len(tr), "step": step, "curve": cur,
                        "trainable": {n: p.detach() for n, p in model.trainable()}, "opt": model._opt_state,
                        "torch_rng": torch.get_rng_state()}, tmp)
            tmp.replace(ck)

        info = llamarec.train_llamarec(model, d.titles, tr, log=lambda m: print(m, flush=True), checkpoint=save,
                                       start_step=start, curve=curve, retrieval=retrieval)
        rec["train"] = {"rows": len(tr), "resumed_at_step": start, **info}
        rec["encoder"]["trainable_params"] = sum(p.numel() for _, p in model.trainable())
        adapter = Path(opts.results_dir) / f"{name}.adapter.safetensors"
        adapter.parent.mkdir(parents=True, exist_ok=True)
        llamarec.save_adapter(adapter, model, {"teacher": name, "config": dataclasses.asdict(cfg)})
        rec["adapter"] = _rel(adapter)
    t0, n_rows, tokens = time.perf_counter(), 0, 0
    for k, r in sets.items():
        hists = [r.history(i) for i in range(len(r))]
        cands = torch.as_tensor(common.candidates(r, opts.n_cands, opts.cand_seed))
        with torch.no_grad():
            cs = llamarec.rerank(model, tok, d.titles, hists, cands)
            retr = common.sasrec_scores(sas, r).double()
            for i, h in enumerate(hists):
                if h:
                    retr[i, h] = -torch.inf
            top = retr.topk(cfg.n_cands, dim=1).indices
            full = llamarec.two_stage_scores(retr.clamp_min(-1e9), llamarec.rerank(model, tok, d.titles, hists, top),
                                             top)
        rec["eval"][k] = common.evaluate_scores(full, cs, cands.numpy(), r.next, hists)
        rec["eval"][k]["stage1_recall@n"] = float((top == torch.as_tensor(r.next)[:, None]).any(1).double().mean())
        n_rows += len(r)
        tokens += sum(len(tok(llamarec.prompt(d.titles, h, c.tolist()))["input_ids"]) for h, c in zip(hists, cands))
    secs = time.perf_counter() - t0
    rec["eval_s"] = round(secs, 2)
    rec["export_rows_per_s"] = round(n_rows / secs, 3)
    rec["eval_tokens_per_s"] = round(2 * tokens / secs, 1)
    rec["env"]["load_at_end"] = _load()
    rec["data"] = data_facts(d)
    return _write(opts.results_dir, name, rec)


def retrain_sasrec(d: common.LastFM, opts: RunOptions, epochs: int, seed: int = 0) -> tuple:
    """A fresh SASRec of the checkpoint's shape trained on the non-held-out rows only (CE over all items, Adam
    1e-3, batch 256): the bar for the held-out rows, which the shipped checkpoint has seen."""
    from reimpl.ilora.sasrec import SASRec, read_checkpoint

    cfg, _ = read_checkpoint(opts.sasrec_ckpt)
    cfg.mode = "fixed"
    torch.manual_seed(seed)
    m = SASRec(cfg)
    tr = train_rows(d, opts, seed)
    seqs = torch.as_tensor(tr.seqs, dtype=torch.long)
    lens = torch.as_tensor(np.maximum(1, (tr.seqs != d.item_num).sum(1)), dtype=torch.long)
    nxt = torch.as_tensor(tr.next, dtype=torch.long)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0, curve = time.perf_counter(), []
    m.train()
    for ep in range(epochs):
        perm, tot = torch.randperm(len(nxt), generator=g), []
        for s in range(0, len(perm) - 255, 256):
            i = perm[s:s + 256]
            loss = torch.nn.functional.cross_entropy(m(seqs[i], lens[i]), nxt[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot.append(loss.item())
        curve.append(round(float(np.mean(tot)), 4))
        print(f"sasrec epoch {ep}: loss {curve[-1]}", flush=True)
    m.eval()
    secs = round(time.perf_counter() - t0, 2)
    return m, {"rows": len(tr), "epochs": epochs, "loss_per_epoch": curve, "train_s": secs}


def run_sasrec(opts: RunOptions, retrain_epochs: int = 0) -> Path:
    from reimpl.ilora.sasrec import load_checkpoint

    d = common.load_lastfm(opts.data_dir)
    sets = eval_sets(d, opts)
    rec = {"method": "sasrec", "options": dataclasses.asdict(opts), "env": _env(opts), "command": _command()}
    if retrain_epochs:
        sas, rec["train"] = retrain_sasrec(d, opts, retrain_epochs)
        rec.update(teacher=opts.name or "sasrec-retrained", method="sasrec-retrained",
                   note="same architecture as rec_model/lastfm.pt, trained here on the non-held-out train rows only "
                        "(cross-entropy over all items, not the checkpoint's BCE)")
    else:
        sas = load_checkpoint(opts.sasrec_ckpt, mode="fixed")
        rec.update(teacher="sasrec", note="rec_model/lastfm.pt as shipped by iLoRA; trained by its authors on the "
                                          "whole train split, held-out rows included")
    rec["eval"] = sasrec_bar(sas, sets, opts)
    rec["env"]["load_at_end"] = _load()
    return _write(opts.results_dir, opts.name or rec["teacher"], rec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reimpl.teachers.run", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pd = sub.add_parser("dense")
    add_dataclass_arguments(pd, dense.DenseConfig)
    add_dataclass_arguments(pd, RunOptions)
    pe = sub.add_parser("e4srec")
    add_dataclass_arguments(pe, e4srec.E4SRecConfig)
    add_dataclass_arguments(pe, RunOptions, skip=("seed",))
    from reimpl.teachers.llamarec import LlamaRecConfig

    pl = sub.add_parser("llamarec")
    add_dataclass_arguments(pl, LlamaRecConfig)
    add_dataclass_arguments(pl, RunOptions, skip=("n_cands",))
    pl.add_argument("--splits", default="val,test", help="eval sets among heldout,val,test (default: val,test)")
    pi = sub.add_parser("ilora")
    add_dataclass_arguments(pi, ilora.ILoRAConfig)
    add_dataclass_arguments(pi, RunOptions)
    ps = sub.add_parser("sasrec")
    add_dataclass_arguments(ps, RunOptions)
    ps.add_argument("--retrain_epochs", type=int, default=0,
                    help="0: the shipped checkpoint; n: a fresh SASRec trained n epochs on the non-held-out rows")
    a = p.parse_args(argv)
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    parser = {"dense": pd, "e4srec": pe, "llamarec": pl, "sasrec": ps, "ilora": pi}[a.cmd]
    opts = build(parser, lambda: from_namespace(RunOptions, a))
    require(a.cmd == "ilora" or opts.device == "cpu", "--device", f"cpu for the {a.cmd} command (cuda: ilora only)",
            opts.device)
    require(a.cmd == "ilora" or opts.llm != "hf", "--llm", f"not hf for the {a.cmd} command (hf: ilora only)", opts.llm)
    require(a.cmd in ("dense", "e4srec", "ilora") or opts.dataset == "lastfm", "--dataset",
            "lastfm for the llamarec and sasrec commands (leave-one-out splits: dense, e4srec, ilora)", opts.dataset)
    torch.set_num_threads(opts.threads)
    if a.cmd == "dense":
        out = run_dense(build(parser, lambda: from_namespace(dense.DenseConfig, a)), opts)
    elif a.cmd == "e4srec":
        out = run_e4srec(build(parser, lambda: from_namespace(e4srec.E4SRecConfig, a)), opts)
    elif a.cmd == "ilora":
        out = run_ilora(build(parser, lambda: from_namespace(ilora.ILoRAConfig, a)), opts)
    elif a.cmd == "llamarec":
        out = run_llamarec(build(parser, lambda: from_namespace(LlamaRecConfig, a)), opts, tuple(a.splits.split(",")))
    else:
        out = run_sasrec(opts, a.retrain_epochs)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
