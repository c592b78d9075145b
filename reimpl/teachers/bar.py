"""The SASRec bar (and E4SRec's item table) on a leave-one-out split: the engine's SASRec trained on its train rows.

On LastFM as published the bar is the iLoRA authors' checkpoint ``rec_model/lastfm.pt``. On a leave-one-out split
that checkpoint is either for other items (ml-100k) or has seen the split's val/test targets (LastFM LOO: they are
rows of the published train split), so the bar is trained here: fixed mode's SASRec through :mod:`reimpl.engine`,
full-softmax cross-entropy, the reference's defaults otherwise (hidden 64, max length 10), selected on VAL NDCG@20
(patience 10, cap 200 epochs), weights of the selected epoch. Cached under ``runs/teachers/bar/`` keyed by the
split digest and the config; training takes a few minutes on one core.

:class:`StudentScorer` gives it the interface the teachers read off ``reimpl.ilora.sasrec.SASRec``:
``item_embeddings`` (``[I + 1, H]``, row ``I`` padding), ``user_state(seqs [B, L], lens [B]) -> [B, H]`` and
``s_fc``.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from reimpl.paths import RUNS

BAR_SEED = 1


class StudentScorer(nn.Module):
    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student.eval()
        self.item_embeddings, self.s_fc = student.item_embeddings, student.s_fc

    def user_state(self, seqs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        from reimpl.engine import forward

        with torch.no_grad():
            return forward.representation(self.student.eval(), seqs, lens)


def bar_config(dataset: str, seed: int = BAR_SEED):
    from reimpl.dllm2rec.config import DLLM2RecConfig
    from reimpl.engine.train import EngineConfig

    return EngineConfig(DLLM2RecConfig(model_name="SASRec", data=dataset, mode="fixed", epoch=200, patience=10,
                                       seed=seed, lam=0.0,
                                       ed_weight=0.0, alpha=0.0), objective="softmax")


def train_bar(dataset: str, seed: int = BAR_SEED, log=print) -> tuple[StudentScorer, dict]:
    """(scorer, facts: selected epoch, VAL/TEST NDCG@20, train seconds, cache file) for a LOO data set name."""
    from reimpl.baselines.converged import DATASETS, load_protocol
    from reimpl.dllm2rec.student import build_student
    from reimpl.engine.train import train

    data, digest, _ = load_protocol(DATASETS[dataset][1])
    cfg = bar_config(dataset, seed)
    key = hashlib.sha256(json.dumps([digest, cfg.as_dict()], sort_keys=True).encode()).hexdigest()[:16]
    path = RUNS / "teachers" / "bar" / f"{dataset}-{key}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
    else:
        res = train(cfg, data, log=log, keep_best=True)
        b = res["best"]
        saved = {"state": res["best_state"], "facts": {
            "selected_epoch": res["best_epoch"], "epochs_run": res["epochs_run"], "train_s": round(res["train_s"], 1),
            "val_ndcg20": b["val"]["ndcg"][-1], "test_ndcg20": b["test"]["ndcg"][-1], "digest": digest,
            "config": cfg.as_dict()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(saved, tmp)
        tmp.replace(path)
    torch.manual_seed(seed)
    student = build_student(cfg.student, data.item_num, data.seq_size)
    student.load_state_dict(saved["state"])
    return StudentScorer(student), {**saved["facts"], "cache": str(path)}
