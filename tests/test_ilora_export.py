"""Teacher export (reimpl/ilora/export.py): tocf layout read back by DLLM2Rec's own loading lines."""

from __future__ import annotations

import ast
import os
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.ilora.export import CONF_FILE, EMB_FILE, RANK_FILE, ranking_from_scores, read_tocf, validate, write_tocf


def _export(seed=0, n=7, k=5, item_num=50, d=12):
    g = np.random.default_rng(seed)
    rank = np.stack([g.choice(item_num, k, replace=False) for _ in range(n)]).astype(np.int64)
    conf = g.random((n, k)) * 3
    emb = torch.from_numpy(g.standard_normal((item_num, d)).astype(np.float32))
    return rank, conf, emb


def _dllm2rec_loading_lines(repo):
    """Statements main.py:327-343 of the DLLM2Rec reference (tocf dir + the two loading `if`s),
    taken from the pinned file by AST at run time (nothing copied), compiled with its file name."""
    path = repo / "main.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    main_if = [n for n in tree.body if isinstance(n, ast.If)][-1]
    picked = []
    for node in main_if.body:
        src = ast.unparse(node)
        if (isinstance(node, ast.Assign) and "tocf_data_directory" in src) or (
                isinstance(node, ast.If) and ("np.loadtxt" in src or "all_embeddings.pt" in src)):
            picked.append(node)
    assert len(picked) == 3, f"{path}: expected the tocf assignment + 2 loading ifs, found {len(picked)}"
    assert [n.lineno for n in picked] == [327, 328, 337], [n.lineno for n in picked]
    return compile(ast.Module(body=picked, type_ignores=[]), str(path), "exec")


def test_roundtrip_own_reader(tmp_path):
    rank, conf, emb = _export()
    folder = write_tocf(tmp_path, "lastfm", rank, conf, emb, item_num=50)
    assert folder == tmp_path / "tocf" / "lastfm"
    back = read_tocf(folder, item_num=50)
    np.testing.assert_array_equal(back.rank, rank)
    np.testing.assert_array_equal(back.confidence, conf)  # %.17g is exact
    torch.testing.assert_close(back.embeddings, emb, rtol=0, atol=0)


def test_dllm2rec_reads_export(tmp_path, refs):
    """DLLM2Rec's own main.py:327-343 reads the files with the right shapes/dtypes/values."""
    rank, conf, emb = _export(n=9, k=10, item_num=40, d=8)
    write_tocf(tmp_path, "lastfm", rank, conf, emb, item_num=40, pad_dim=4096)
    code = _dllm2rec_loading_lines(refs["DLLM2Rec"])
    args = types.SimpleNamespace(data="lastfm", lam=1.0, ed_weight=0.2)
    env = {"args": args, "np": np, "torch": torch, "os": os, "device": torch.device("cpu"),
           "print": lambda *a, **k: None}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the reference reads ./tocf/<data>/ relative to its working directory
    try:
        exec(code, env)
    finally:
        os.chdir(cwd)
    cand, confr, embr = env["all_candidate"], env["llm_confidence"], env["llm_all_emb"]
    assert cand.dtype == torch.int64 and tuple(cand.shape) == (9, 10)
    assert confr.dtype == torch.float32 and tuple(confr.shape) == (9, 10)
    assert embr.dtype == torch.float32 and tuple(embr.shape) == (40, 4096)
    np.testing.assert_array_equal(cand.numpy(), rank)
    np.testing.assert_allclose(confr.numpy(), conf.astype(np.float32))
    torch.testing.assert_close(embr[:, :8], emb)
    assert (embr[:, 8:] == 0).all()


def test_validate_errors(tmp_path):
    rank, conf, emb = _export()
    with pytest.raises(ValueError, match=RANK_FILE):
        write_tocf(tmp_path, "x", rank[:, :, None], conf, emb, 50)
    with pytest.raises(ValueError, match=CONF_FILE):
        write_tocf(tmp_path, "x", rank, conf[:, :-1], emb, 50)
    with pytest.raises(ValueError, match="item_num"):
        write_tocf(tmp_path, "x", rank, conf, emb, 10)
    with pytest.raises(ValueError, match="squeezes"):
        write_tocf(tmp_path, "x", rank[:1], conf[:1], emb, 50)
    with pytest.raises(ValueError, match=EMB_FILE):
        write_tocf(tmp_path, "x", rank, conf, emb[:-1], 50)
    bad = conf.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_tocf(tmp_path, "x", rank, bad, emb, 50)
    with pytest.raises(ValueError, match="integer"):
        validate(rank.astype(float), conf, None, 50)


def test_ranking_from_scores_fixed_case():
    scores = torch.tensor([[0.0, 2.0, 1.0, -float("inf")], [5.0, 5.0, 1.0, 0.0]])
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    rank, conf = ranking_from_scores(scores, ids, k=2)
    np.testing.assert_array_equal(rank, [[11, 12], [20, 21]])  # ties keep column order
    p = torch.softmax(scores.double(), 1)
    np.testing.assert_allclose(np.exp(-conf), [[p[0, 1], p[0, 2]], [p[1, 0], p[1, 1]]], rtol=1e-12)
    with pytest.raises(ValueError, match="fewer than k"):
        ranking_from_scores(scores, ids, k=4)
    with pytest.raises(ValueError, match="exceeds"):
        ranking_from_scores(scores, ids, k=5)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 9), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.float64]), scale=st.sampled_from([1.0, 1e4]))
def test_ranking_properties(n, c, data, dtype, scale):
    k = data.draw(st.integers(1, c))
    g = torch.Generator().manual_seed(n * 100 + c)
    scores = (torch.randn(n, c, generator=g) * scale).to(dtype)
    ids = torch.stack([torch.randperm(1000, generator=g)[:c] for _ in range(n)])
    rank, conf = ranking_from_scores(scores, ids, k)
    assert rank.shape == (n, k) and conf.shape == (n, k) and rank.dtype == np.int64
    assert np.isfinite(conf).all() and (conf >= 0).all()
    assert (np.diff(conf, axis=1) >= -1e-9).all()  # best first = smallest distance first
    for i in range(n):
        assert set(rank[i]) <= set(ids[i].tolist())
