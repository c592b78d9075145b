"""Engine training loop: a killed run resumes from its last epoch to the same result, evaluation every N epochs,
both objectives, refusal of faithful configs and foreign checkpoints."""

from __future__ import annotations

import pytest

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.dllm2rec.train import load_data
from reimpl.engine.train import EngineConfig, train
from tests.test_dllm2rec_train import write_export


def _strip(hist):
    return [{k: v for k, v in h.items() if not k.endswith("_s")} for h in hist]


def _cfg(model="SASRec", **kw):
    base = dict(data="toy", batch_size=16, epoch=3, model_name=model, mode="fixed", seed=3)
    eng = {k: kw.pop(k) for k in ("objective", "eval_every", "epoch_order") if k in kw}
    return EngineConfig(DLLM2RecConfig(**{**base, **kw}), **eng)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = write_export(tmp_path_factory.mktemp("toy"), d_llm=32)
    return load_data(root, "toy", need_rank=True, need_emb=True, d_llm=32)


class Killed(Exception):
    pass


def kill_after(epoch: int):
    """An ``on_epoch`` that raises once epoch ``epoch`` has run and been checkpointed."""
    def kill(rec):
        if rec["epoch"] == epoch:
            raise Killed
    return kill


@pytest.mark.parametrize("model", ["SASRec", "GRU", "Caser"])
def test_killed_run_resumes_to_the_same_result(toy, tmp_path, model):
    cfg = _cfg(model, d_llm=32)
    full = train(cfg, toy, log=lambda m: None)
    ck = tmp_path / "ck.pt"
    with pytest.raises(Killed):
        train(cfg, toy, checkpoint=ck, log=lambda m: None, on_epoch=kill_after(2))
    msgs = []
    resumed = train(cfg, toy, checkpoint=ck, log=msgs.append)
    assert any("resumed" in m and "epoch 2" in m for m in msgs)
    assert _strip(resumed["history"]) == _strip(full["history"])
    assert resumed["best_epoch"] == full["best_epoch"]


def test_a_resumed_run_keeps_the_selected_weights(toy, tmp_path):
    """keep_best across a kill after the last epoch's checkpoint: the resumed run trains nothing more, and returns
    the uninterrupted run's best weights from the checkpoint."""
    import torch

    cfg = _cfg("SASRec", d_llm=32, epoch=4)
    full = train(cfg, toy, log=lambda m: None, keep_best=True)
    ck = tmp_path / "ck.pt"
    with pytest.raises(Killed):
        train(cfg, toy, checkpoint=ck, log=lambda m: None, on_epoch=kill_after(4), keep_best=True)
    resumed = train(cfg, toy, checkpoint=ck, log=lambda m: None, keep_best=True)
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["best_state"] is not None
    for k, v in full["best_state"].items():
        torch.testing.assert_close(resumed["best_state"][k], v, rtol=0, atol=0)


def test_eval_every_and_objectives(toy):
    r = train(_cfg(eval_every=2, epoch=3, lam=0.0, alpha=0.0, ed_weight=0.0), toy, log=lambda m: None)
    assert ["val" in h for h in r["history"]] == [False, True, True]  # every 2nd epoch and the last
    s = train(_cfg(objective="softmax", epoch=1, lam=0.0, alpha=0.0, ed_weight=0.0), toy, log=lambda m: None)
    assert s["history"][0]["loss"] > 0 and s["best_epoch"] == 1


def test_epoch_cpu_time_brackets_the_training_loop_only(toy, monkeypatch):
    """``train_cpu_s`` is the epoch's training loop only: CPU the session's set-up burns (in a fresh process, the
    one-off imports of Adam's first construction) is not in it; `make bench` reads it."""
    import time

    from reimpl.engine import train as etrain

    init = etrain.Session.__init__

    def slow_init(self, *a, **k):
        t = time.process_time()
        while time.process_time() - t < 0.5:  # set-up that burns CPU
            pass
        init(self, *a, **k)

    monkeypatch.setattr(etrain.Session, "__init__", slow_init)
    r = train(_cfg(epoch=1, lam=0.0, alpha=0.0, ed_weight=0.0), toy, log=lambda m: None)
    h = r["history"][0]
    assert 0 < h["train_cpu_s"] < 0.5


def test_refusals(toy, tmp_path):
    with pytest.raises(ValueError, match="must be 'fixed'"):
        EngineConfig(DLLM2RecConfig(mode="faithful"))
    with pytest.raises(ValueError, match="objective"):
        EngineConfig(DLLM2RecConfig(mode="fixed"), objective="bpr")
    ck = tmp_path / "ck.pt"
    train(_cfg(epoch=1, lam=0.0, alpha=0.0, ed_weight=0.0), toy, checkpoint=ck, log=lambda m: None)
    with pytest.raises(ValueError, match="different engine config"):
        train(_cfg(epoch=1, lam=0.0, alpha=0.0, ed_weight=0.0, lr=0.01), toy, checkpoint=ck, log=lambda m: None)
