"""Teacher export in the layout DLLM2Rec reads (``tocf/<data>/``).

DLLM2Rec @ b78cc658 ``main.py:326-343`` loads, relative to its working directory:

* ``tocf/<data>/myrank_train.txt``   -- ``np.loadtxt`` -> ``torch.LongTensor``: ``[N_train, K]`` item ids,
  best first, row ``i`` for train-frame row ``i`` (rows are picked by the frame's index, l.434);
* ``tocf/<data>/confidence_train.txt`` -- ``np.loadtxt`` -> float tensor ``[N_train, K]``; used as
  ``exp(-confidence)`` (l.451-454), i.e. a *distance*: lower = more confident;
* ``tocf/<data>/all_embeddings.pt``  -- ``torch.load`` -> ``[item_num, d_llm]``; rows looked up by item id
  for ids ``< item_num`` (l.396-399). The students' ``fc_4096_64`` (l.62, 117, 172) hard-code
  ``d_llm = 4096`` (Llama-2-7B); a smaller teacher (SmolLM2: 576) needs ``pad_dim=4096``: zero columns
  added on the right, which a Linear maps exactly as it maps the unpadded vector (the extra weight
  columns only ever see zeros, so they get zero gradient).

How the iLoRA teacher fills these is documented in :mod:`reimpl.ilora.teacher`
(``score_candidates`` / ``item_embeddings``); this module scores the rows (:func:`export_teacher`), and writes,
validates and reads the files (the readers and their rules: :mod:`reimpl.data.teacher`, docs/data.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reimpl.data import teacher as teacher_files
from reimpl.ilora.data import LastFMData, export_batches

RANK_FILE, CONF_FILE, EMB_FILE = teacher_files.RANK_FILE, teacher_files.CONF_FILE, teacher_files.EMB_FILE


@dataclass
class TeacherExport:
    rank: np.ndarray          # [N, K] int64 item ids, best first
    confidence: np.ndarray    # [N, K] float64 distance-like (lower = more confident)
    embeddings: torch.Tensor  # [item_num, d_llm] float32


def validate(rank: np.ndarray, confidence: np.ndarray, embeddings: torch.Tensor | None, item_num: int,
             where: str = "teacher export") -> None:
    """Raise ValueError naming the field and the expected shape unless the export is well formed."""
    rank = np.asarray(rank)
    confidence = np.asarray(confidence)
    if rank.ndim != 2:
        raise ValueError(f"{where}: {RANK_FILE} must be [N_train, K], got shape {rank.shape}")
    if confidence.shape != rank.shape:
        raise ValueError(f"{where}: {CONF_FILE} must have the shape of {RANK_FILE} {rank.shape}, "
                         f"got {confidence.shape}")
    n, k = rank.shape
    if n < 2 or k < 2:
        # np.loadtxt (default ndmin=0) squeezes a single row/column to 1-D and DLLM2Rec's
        # ``candidate[:, :k]`` then fails: refuse here instead of producing an unreadable file.
        raise ValueError(f"{where}: {RANK_FILE} shape {rank.shape}: DLLM2Rec's np.loadtxt squeezes N=1 or "
                         "K=1 to 1-D; export at least 2 rows and 2 columns")
    if not np.issubdtype(rank.dtype, np.integer):
        raise ValueError(f"{where}: {RANK_FILE} must hold integer item ids, got dtype {rank.dtype}")
    if rank.min() < 0 or rank.max() >= item_num:
        raise ValueError(f"{where}: {RANK_FILE} ids must lie in [0, item_num={item_num}), got "
                         f"[{rank.min()}, {rank.max()}]")
    srt = np.sort(rank, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise ValueError(f"{where}: {RANK_FILE} lists an item twice in one row")
    if not np.isfinite(confidence).all():
        raise ValueError(f"{where}: {CONF_FILE} holds non-finite values")
    if (confidence < 0).any():
        raise ValueError(f"{where}: {CONF_FILE} holds negative values (a distance; the weight is exp(-c))")
    if embeddings is not None:
        if embeddings.ndim != 2 or embeddings.shape[0] != item_num:
            raise ValueError(f"{where}: {EMB_FILE} must be [item_num={item_num}, d_llm], "
                             f"got {tuple(embeddings.shape)}")
        if not torch.isfinite(embeddings).all():
            raise ValueError(f"{where}: {EMB_FILE} holds non-finite values")


def write_tocf(out_dir: str | Path, data: str, rank: np.ndarray, confidence: np.ndarray,
               embeddings: torch.Tensor | None, item_num: int, pad_dim: int | None = None) -> Path:
    """Write ``<out_dir>/tocf/<data>/{myrank_train.txt, confidence_train.txt, all_embeddings.pt}``.

    rank ``[N, K]`` int, confidence ``[N, K]`` float, embeddings ``[item_num, d]`` (or None to skip).
    ``pad_dim``: zero-pad the embedding width to this size (4096 for the unmodified DLLM2Rec).
    Returns the ``tocf/<data>`` folder.
    """
    rank = np.asarray(rank)
    confidence = np.asarray(confidence, dtype=np.float64)
    if embeddings is not None:
        embeddings = embeddings.detach().to(torch.float32).cpu()
        if pad_dim is not None:
            if pad_dim < embeddings.shape[1]:
                raise ValueError(f"write_tocf: pad_dim={pad_dim} is smaller than d_llm={embeddings.shape[1]}")
            embeddings = torch.nn.functional.pad(embeddings, (0, pad_dim - embeddings.shape[1]))
    validate(rank, confidence, embeddings, item_num, where=f"write_tocf({data})")
    folder = Path(out_dir) / "tocf" / data
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / RANK_FILE, rank.astype(np.int64), fmt="%d")
    # %.17g round-trips float64 exactly through np.loadtxt
    np.savetxt(folder / CONF_FILE, confidence, fmt="%.17g")
    if embeddings is not None:
        torch.save(embeddings.contiguous(), folder / EMB_FILE)
    return folder


def read_tocf(folder: str | Path, item_num: int, n_rows: int | None = None) -> TeacherExport:
    """Read an export back through the typed readers of :mod:`reimpl.data.teacher` (``ndmin=2``: never squeezed;
    every value checked; ``n_rows``: the train split's row count, when known)."""
    folder = Path(folder)
    rank = teacher_files.read_ranking(folder / RANK_FILE, item_num, n_rows)
    conf = teacher_files.read_confidence(folder / CONF_FILE, n_rows, shape=rank.shape)
    emb = teacher_files.read_embeddings(folder / EMB_FILE, item_num) if (folder / EMB_FILE).is_file() else None
    return TeacherExport(rank, conf, emb)


def ranking_from_scores(scores: torch.Tensor, item_ids: torch.Tensor, k: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item ids and their distance-like confidences from per-candidate teacher scores.

    scores ``[N, C]`` (higher = better, e.g. candidate log-likelihoods; ``-inf`` = not a candidate),
    item_ids ``[N, C]`` the item id of each column. Confidence = ``-log_softmax(scores)`` over the
    C candidates (the teacher's negative log-probability of the item among the candidates), so
    DLLM2Rec's ``exp(-confidence)`` weight is the teacher's candidate probability.
    Ties keep column order (stable sort). Returns ``(rank [N, k] int64, confidence [N, k] float64)``.
    """
    if scores.ndim != 2 or scores.shape != item_ids.shape:
        raise ValueError(f"ranking_from_scores: scores {tuple(scores.shape)} and item_ids "
                         f"{tuple(item_ids.shape)} must both be [N, C]")
    if k > scores.shape[1]:
        raise ValueError(f"ranking_from_scores: k={k} exceeds the number of candidates C={scores.shape[1]}")
    s = scores.detach().to(torch.float64)
    if torch.isnan(s).any():
        raise ValueError("ranking_from_scores: scores hold NaN")
    finite_per_row = torch.isfinite(s).sum(1)
    if (finite_per_row < k).any():
        raise ValueError(f"ranking_from_scores: some rows have fewer than k={k} finite candidate scores")
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    conf = -torch.log_softmax(s, dim=1).gather(1, order)
    return item_ids.gather(1, order).cpu().numpy().astype(np.int64), conf.cpu().numpy()


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
