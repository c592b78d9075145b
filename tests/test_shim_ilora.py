"""Smoke tests: every iLoRA reference component runs in-process under parity/shims/ilora.py.

Needs the verified checkout (`make refs`) and ../shared/data; skips with a message otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.paths import ROOT


@pytest.fixture(scope="module")
def ns(refs):
    from parity.shims import ilora

    return ilora.load()


@pytest.fixture(scope="module")
def rec(ns, shared_dir):
    return ns.load_rec_model(shared_dir / "data" / "ilora" / "rec_model" / "lastfm.pt")


@pytest.fixture(scope="module")
def lastfm_rows(shared_dir):
    import pandas as pd

    df = pd.read_pickle(shared_dir / "data" / "ilora" / "lastfm" / "Test_data.df").iloc[:5]
    return torch.tensor(np.stack(df["seq"].to_list())), torch.tensor(df["len_seq"].to_numpy())


@pytest.fixture(scope="module")
def built(ns, shared_dir):
    """(MInterface float32, data module, train batch, val batch) around the tiny seeded Llama."""
    from parity.shims import ilora
    from reimpl.llm import tiny

    llm = tiny.tiny_llm_dir(seed=0)
    model = ilora.build_minterface(llm, dtype=torch.float32)
    dm = ilora.build_data_module(model.llama_tokenizer)
    train = ilora.build_lastfm_batch(model.llama_tokenizer, stage="train", batch_size=3, seed=1, data_module=dm)
    val = ilora.build_lastfm_batch(model.llama_tokenizer, stage="val", batch_size=2, seed=1, data_module=dm)
    return model, dm, train, val


# ------------------------------------------------------------------------------------------- SASRec
def test_sasrec_checkpoint(ns, rec, lastfm_rows):
    seq, len_seq = lastfm_rows
    assert isinstance(rec, ns.SASRec) and str(rec.device) == "cpu"
    assert rec.training  # pickled in train mode; MInterface calls .eval() (model_interface.py:409)
    rec.eval()
    assert (rec.item_num, int(rec.state_size), rec.hidden_size) == (4606, 10, 64)
    with torch.no_grad():
        h = rec.cacul_h(seq, len_seq)
        x = rec.cacu_x(seq)
        logits = rec.forward_eval(seq, len_seq)
    assert h.shape == (5, 1, 64) and x.shape == (5, 10, 64) and logits.shape == (5, 4606)
    assert torch.isfinite(h).all() and torch.isfinite(logits).all()
    # batch of one: same state as in the batch (eval mode, no cross-row terms)
    with torch.no_grad():
        h1 = rec.cacul_h(seq[:1], len_seq[:1])
    torch.testing.assert_close(h1, h[:1], rtol=1e-6, atol=1e-6)


def test_rec_checkpoint_errors(ns, tmp_path):
    with pytest.raises(FileNotFoundError, match="rec_model"):
        ns.load_rec_model(tmp_path / "missing.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(TypeError, match="nn.Module"):
        ns.load_rec_model(tmp_path / "sd.pt")


def test_gru_caser_classes(ns):
    torch.manual_seed(0)
    states, lens = torch.randint(0, 20, (2, 10)), torch.tensor([10, 4])
    gru = ns.GRU(hidden_size=8, item_num=20, state_size=10)
    assert gru(states, lens).shape == (2, 20)
    caser = ns.Caser(hidden_size=8, item_num=20, state_size=10, num_filters=2, filter_sizes="[2,3]", dropout_rate=0.1)
    assert caser.eval().forward_eval(states, lens).shape == (2, 20)


# ------------------------------------------------------------------------------------------- routers
@pytest.mark.parametrize("batch", [1, 4])
def test_nlpr_router(ns, batch):
    torch.manual_seed(0)
    r = ns.build_router().eval()
    w = r(torch.randn(batch, 1, 64))
    assert w.shape == (batch, 1, 4)  # nlpr.py:80 unsqueeze(1): [B, 1, E]
    torch.testing.assert_close(w.sum(-1), torch.ones(batch, 1))


@pytest.mark.parametrize("batch", [1, 3])
def test_cvr_router(ns, batch):
    torch.manual_seed(0)
    r = ns.build_cvr_router(num_experts=4).eval()
    assert r(torch.randn(batch, 3, 8, 8)).shape == (batch, 4)  # logits, no softmax (cvr.py:151)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 5), experts=st.integers(1, 6), name=st.sampled_from(
    ["Dense", "topK", "MLP", "Drop", "MLP_noise", "Noise"]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_gating_variants(ns, batch, experts, name, dtype):
    torch.manual_seed(batch)
    g = ns.GATING_TO_MODEL_MAPPING[name](dim=64, num_moe=experts).to(dtype).eval()
    w = g(torch.randn(batch, 64, dtype=dtype))
    assert w.shape == (batch, experts) and w.dtype == dtype
    torch.testing.assert_close(w.sum(-1), torch.ones(batch, dtype=dtype))


# ------------------------------------------------------------------------------------------- MoE-LoRA
def _moe_linear(ns, gate):
    torch.manual_seed(0)
    lin = ns.MoeLoraLinear("default", 16, 12, r=8, num_moe=4, gating="Dense", global_user_embeds=[],
                           gate_weights=[gate], lora_alpha=32, lora_dropout=0.0)
    torch.nn.init.normal_(lin.lora_B["default"].weight)  # B starts at zero (moelora.py:674)
    return lin


def test_moelora_linear(ns):
    gate = torch.softmax(torch.randn(2, 1, 4), -1)
    lin = _moe_linear(ns, gate)
    assert lin.scaling["default"] == 32 / (8 // 4)  # moelora.py:618: alpha / (r // num_moe)
    x = torch.randn(2, 5, 16)
    y = lin(x)
    base = torch.nn.functional.linear(x, lin.weight, lin.bias)
    assert y.shape == (2, 5, 12) and not torch.allclose(y, base)
    lin.gate_weights[0] = torch.softmax(torch.randn(2, 1, 4), -1)  # gate is read at call time
    assert not torch.allclose(lin(x), y)


def test_moelora_swallowed_errors(ns):
    from parity.shims import ilora

    lin = _moe_linear(ns, torch.ones(2, 1, 3) / 3)  # 3 gate weights for 4 experts: broadcast error
    x = torch.randn(2, 5, 16)
    with pytest.raises(RuntimeError, match="swallowed"):
        lin(x)
    with ilora.moelora_strict(False):  # the reference's own behaviour: zeros shaped like the *input*
        out = lin(x)
    assert out.shape == x.shape and not out.any()


def test_projector(ns):
    torch.manual_seed(0)
    p = ns.MlpProjector(rec_size=64, llm_size=32)
    assert p(torch.randn(3, 10, 64)).shape == (3, 10, 32)
    assert p(torch.randn(1, 1, 64)).shape == (1, 1, 32)


# ------------------------------------------------------------------------------------------- MInterface
def test_lastfm_args(ns):
    a = ns.lastfm_args()
    assert (a.router, a.gating, a.llm_tuning, a.cans_num, a.batch_size, a.accumulate_grad_batches) == (
        "share", "Dense", "moelora", 20, 8, 16)
    assert (a.lr, a.lr_decay_min_lr, a.lr_warmup_start_lr, a.max_epochs) == (7e-4, 7e-6, 7e-6, 5)
    assert (a.padding_item_id, a.num_workers, a.lora_r, a.lora_alpha, a.num_moe, a.rec_size) == (
        4606, 8, 8, 32, 4, 64)
    assert a.prompt_path.endswith("prompt/artist.txt") and a.rec_model_path.endswith("rec_model/lastfm.pt")
    assert ns.lastfm_args(cans_num=5).cans_num == 5


def test_lastfm_batch_errors(ns, built):
    from parity.shims import ilora

    model, dm, _, _ = built
    with pytest.raises(IndexError, match="outside LastFM val"):
        ilora.build_lastfm_batch(model.llama_tokenizer, stage="val", indices=[10**6], data_module=dm)
    with pytest.raises(ValueError, match="stage"):
        ilora.build_lastfm_batch(model.llama_tokenizer, stage="dev", data_module=dm)
    with pytest.raises(FileNotFoundError, match="LastFM data"):
        ilora.build_data_module(model.llama_tokenizer, data_dir="/nonexistent/lastfm")


def test_lastfm_batch(built):
    model, dm, train, val = built
    tok = model.llama_tokenizer
    ids, tt = train["tokens"].input_ids, train["tokens"].token_type_ids
    assert ids.shape[0] == 3 and tt.shape == (3, ids.shape[1] + 1)  # 4.28 layout (TokenTypeBridge)
    assert train["flag"] is False and train["seq"].shape == (3, 10) and train["cans"].shape == (3, 1)
    his = tok.convert_tokens_to_ids("[HistoryEmb]")
    assert ((ids == his).sum(1) == train["len_seq"]).all()
    # labels start at the answer's BOS (second <s>), exactly as with transformers 4.28
    second_bos = [int((row == 1).nonzero()[1]) for row in ids]
    first_label = [int((row == 1).nonzero()[0]) for row in tt[:, 1:]]
    assert second_bos == first_label
    assert "correct_answer" in val and val["tokens"].input_ids.shape[0] == 2
    from parity.shims import ilora

    again = ilora.build_lastfm_batch(tok, stage="train", batch_size=3, seed=1, data_module=dm)
    assert torch.equal(again["tokens"].input_ids, ids) and torch.equal(again["cans"], train["cans"])


def test_minterface_loss_step_generate(ns, built):
    model, _, train, val = built
    assert model.hparams.router == "share" and model.llama_model.base_model.model.dtype == torch.float32
    ns.attach_trainer(model, max_steps=10)
    opt = model.configure_optimizers()
    model.train()
    model.scheduler.step(0, 0, 10)
    loss = model.configure_loss(model(train))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    lora_b = model.llama_model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    before = (model.projector.mlp_proj[0].weight.detach().clone(), lora_b.detach().clone())
    opt.step()
    opt.zero_grad()
    assert not torch.equal(before[0], model.projector.mlp_proj[0].weight)
    assert not torch.equal(before[1], lora_b)
    model.eval()
    with torch.no_grad():
        out = model.generate(val, max_gen_length=2, min_gen_length=1)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out)


def test_minterface_lightning_fit_step(ns, built, tmp_path):
    """One real Lightning 2 step through the reference's training_step (scheduler, flag, logging)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    model, _, train, _ = built
    seen = {}
    step = model.training_step

    def spy(batch, batch_idx=0):
        seen["rec_training"] = model.rec_model.training
        return step(batch, batch_idx)

    model.training_step = spy
    try:
        tr = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path))
        tr.fit(model, train_dataloaders=DataLoader([train], batch_size=None, collate_fn=lambda x: x))
    finally:
        del model.training_step
    assert tr.global_step == 1
    # Lightning 2.x keeps the frozen SASRec in eval mode; Lightning 1.8.6 (the reference's pin) called
    # model.train() on the whole module at fit start (trainer.py:1194), re-enabling SASRec dropout.
    assert seen["rec_training"] is False


def test_minterface_deterministic(ns, built):
    from parity.shims import ilora
    from reimpl.llm import tiny

    a = ilora.build_minterface(tiny.tiny_llm_dir(seed=0), dtype=torch.float32)
    b = ilora.build_minterface(tiny.tiny_llm_dir(seed=0), dtype=torch.float32)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------- isolation
def test_installed_peft_untouched_in_process(ns):
    import peft

    from parity.materialize import load_lock, verify

    assert peft.__version__ != ns.ref_peft.__version__ == "0.4.0.dev0"
    assert "site-packages" in peft.__file__ and ns.ref_peft.__name__.startswith("_recparity_ref_ilora.")
    for name, mod in list(sys.modules.items()):
        if name == "peft" or name.startswith("peft."):
            assert "ref_repositories" not in (getattr(mod, "__file__", "") or ""), name
    assert "optims" not in sys.modules and "SASRecModules_ori" not in sys.modules
    verify(load_lock()["iLoRA"])  # no bytecode or other file written into the checkout


def test_installed_peft_untouched_subprocess(refs):
    code = textwrap.dedent("""
        import sys
        from parity.shims import ilora
        ns = ilora.load()
        assert "peft" not in sys.modules, sorted(k for k in sys.modules if k.startswith("peft"))[:5]
        import peft
        from peft import LoraConfig
        assert peft.__version__ == "0.21.2" and "site-packages" in peft.__file__, peft.__file__
        assert LoraConfig is not ns.ref_peft.LoraConfig
        print("ok")
    """)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
