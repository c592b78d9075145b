"""Training loop + CLI on a tiny synthetic export in the reference layout: metrics JSON, determinism,
checkpoint/resume, selection rule per mode, input validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.train import load_data, main, train

I, L, N = 40, 10, 70


def write_export(root, name="toy", d_llm=4096, seed=0):
    rs = np.random.RandomState(seed)
    ddir, tdir = root / "data" / name, root / "tocf" / name
    ddir.mkdir(parents=True)
    tdir.mkdir(parents=True)
    pd.DataFrame({"seq_size": [L], "item_num": [I]}).to_pickle(ddir / "data_statis.df")

    def rows(n):
        lens = rs.randint(1, L + 1, size=n)
        seq = rs.randint(0, I, size=(n, L))
        seq[np.arange(L)[None] >= lens[:, None]] = I
        return seq, lens, rs.randint(0, I, size=n)

    seq, lens, nxt = rows(N)
    pd.DataFrame({"seq": [list(map(int, s)) for s in seq], "len_seq": lens, "next": nxt}).to_pickle(
        ddir / "train_data.df")
    for split in ("val", "test"):
        s, l, t = rows(15)
        lines = ["seq,len_seq,next"] + [f"\"[{', '.join(map(str, a))}]\",{b},{float(c)}"
                                        for a, b, c in zip(s, l, t)]
        (ddir / f"{split}_data.csv").write_text("\n".join(lines) + "\n")
    np.savetxt(tdir / "myrank_train.txt", np.stack([rs.permutation(I)[:12] for _ in range(N)]), fmt="%d")
    np.savetxt(tdir / "confidence_train.txt", rs.random_sample((N, 12)))
    torch.save(torch.randn(I, d_llm), tdir / "all_embeddings.pt")
    return root


def cfg(**kw):
    base = dict(data="toy", batch_size=16, epoch=2, hidden_factor=64, model_name="SASRec")
    base.update(kw)
    return DLLM2RecConfig(**base)


def test_cli_writes_metrics(tmp_path):
    write_export(tmp_path)
    out = tmp_path / "m.json"
    assert main(["--data-dir", str(tmp_path), "--data", "toy", "--batch_size", "16", "--epoch", "2",
                 "--model_name", "GRU", "--out", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["epochs_run"] == 2 and m["selected_on"] == "test"
    assert len(m["history"][0]["test"]["ndcg"]) == 4


def test_deterministic_and_resume(tmp_path):
    write_export(tmp_path)
    quiet = dict(log=lambda *_: None, progress=False)
    load = lambda: load_data(tmp_path, "toy", need_rank=True, need_emb=True)
    full = train(cfg(epoch=2), load(), **quiet)
    again = train(cfg(epoch=2), load(), **quiet)
    assert [h["loss"] for h in full["history"]] == [h["loss"] for h in again["history"]]
    # stop after 1 epoch, then resume to 2 (--epoch may grow on resume): the uninterrupted trajectory
    ck = tmp_path / "ck.pt"
    train(cfg(epoch=1), load(), checkpoint=ck, **quiet)
    resumed = train(cfg(epoch=2), load(), checkpoint=ck, resume=True, **quiet)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert resumed["history"][-1]["test"] == full["history"][-1]["test"]


def test_fixed_selects_on_validation(tmp_path):
    write_export(tmp_path)
    m = train(cfg(mode="fixed", epoch=1, model_name="Caser", ed_weight=0.0),
              load_data(tmp_path, "toy", need_rank=True, need_emb=False),
              log=lambda *_: None, progress=False)
    assert m["selected_on"] == "val"


def test_bad_inputs(tmp_path):
    write_export(tmp_path)
    np.savetxt(tmp_path / "tocf/toy/myrank_train.txt", np.zeros((N, 3)), fmt="%d")
    with pytest.raises(ValueError, match=r"myrank_train.txt: field 'rank': expected >= candidate_topk = 10 ids"):
        load_data(tmp_path, "toy", need_rank=True, need_emb=False)
    df = pd.read_pickle(tmp_path / "data/toy/train_data.df")
    df.index = df.index + 5
    df.to_pickle(tmp_path / "data/toy/train_data.df")
    with pytest.raises(ValueError, match="train_data.df: field 'index': expected 0..N-1"):
        load_data(tmp_path, "toy", need_rank=False, need_emb=False)
