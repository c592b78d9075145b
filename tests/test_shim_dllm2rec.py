"""The DLLM2Rec reference loader: imports without running __main__, extracts the loop blocks, isolates
generic module names, writes nothing into the checkout, fails loudly on a changed anchor."""

from __future__ import annotations

import ast
import sys

import numpy as np
import pandas as pd
import pytest
import torch


@pytest.fixture(scope="module")
def ref(refs):
    from parity.refs import dllm2rec

    return dllm2rec()


def test_load_exposes_reference_objects(ref):
    for name in ("GRU", "Caser", "SASRec", "calcu_propensity_score", "myevaluate", "calculate_hit",
                 "extract_axis_1"):
        assert callable(getattr(ref, name))
    assert ref.GRU.__module__ == "_dllm2rec_ref_main"
    assert set(ref.blocks) == {"neg_sampling", "llm_emb_lookup", "bce", "dro", "ranking_distill",
                               "train_step"}
    assert ref.default_args().lam == 0.8  # parse_args defaults, argv ignored


def test_generic_module_names_not_left_behind(ref):
    assert "utility" not in sys.modules or not str(getattr(sys.modules["utility"], "__file__", "")).startswith(
        str(ref.path))
    assert "SASRecModules_ori" not in sys.modules or not str(
        getattr(sys.modules["SASRecModules_ori"], "__file__", "")).startswith(str(ref.path))


def test_no_bytecode_in_checkout(ref):
    from parity.materialize import load_lock, verify

    assert not list(ref.path.rglob("__pycache__")) and not list(ref.path.rglob("*.pyc"))
    verify(load_lock()["DLLM2Rec"])


def test_changed_anchor_fails_loudly(ref):
    from parity.materialize import RefError
    from parity.shims import dllm2rec as shim

    tree = ast.parse((ref.path / "main.py").read_text())
    body = shim.batch_loop_body(tree)
    a = shim.ANCHORS["dro"]
    with pytest.raises(RefError, match="fingerprint"):
        shim.select(body, "dro", shim._Anchor(a.first, a.last, a.params, a.returns, "0" * 16))
    with pytest.raises(RefError, match="expected statements spanning"):
        shim.select(body, "dro", shim._Anchor(a.first + 1, a.last, a.params, a.returns, a.fingerprint))


def _batch(B=5, I=30, L=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, I, (B, L), generator=g)
    seq[0, 4:] = I
    return seq, torch.randint(0, I, (B,), generator=g), torch.randn(B, I, generator=g, dtype=torch.float64)


def test_blocks_run_on_tiny_inputs(ref):
    B, I = 5, 30
    seq, target, out = _batch(B, I)
    args = ref.default_args(batch_size=B, candidate_topk=4)
    neg = ref.neg_sampling(args=args, item_num=I, device="cpu", seq=seq, target=target)
    assert neg["target_neg"].shape == (B, 1)
    assert ref.llm_emb_lookup(device="cpu", seq=seq, llm_all_emb=torch.randn(I, 4096))["llm_emb"].shape == (
        B, 10, 4096)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # the width 4096 is hard-coded
        ref.llm_emb_lookup(device="cpu", seq=seq, llm_all_emb=torch.randn(I, 8))
    assert ref.llm_emb_lookup(device="cpu", seq=seq, llm_all_emb=None)["llm_emb"] is None
    b = ref.bce(args=args, device="cpu", model_output=out, target=target, target_neg=neg["target_neg"],
                bce_loss=torch.nn.BCEWithLogitsLoss())
    with ref.globals(item_num=I):
        ps = torch.tensor(ref.calcu_propensity_score(pd.DataFrame({"next": np.arange(40) % I})))
    d = ref.dro(args=args, model_output=out, target=b["target"], ps=ps, loss=b["loss"])
    assert d["loss_dro"].shape == (B,) and d["loss_dro"].dtype == torch.float64
    rd = ref.ranking_distill(args=args, device="cpu", model_output=out, target_neg=neg["target_neg"], ps=ps,
                             sample=pd.Index(range(B)), all_candidate=torch.randint(0, I, (B, 6)),
                             llm_confidence=torch.rand(B, 6), loss_all=d["loss_all"])
    assert rd["weight"].shape == (B, 4) and torch.isfinite(rd["loss_all"])


def test_globals_context_restores(ref):
    with ref.globals(topk=[1, 2]):
        assert ref.main.topk == [1, 2]
    assert not hasattr(ref.main, "topk")


def test_reference_exit_is_an_exception(ref):
    from parity.shims.dllm2rec import ReferenceExit, _ref_exit

    with pytest.raises(ReferenceExit):
        _ref_exit(-1)
