"""reimpl/extensions/cdr.py + standin.py: cyclic refinement rounds on tiny data; config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reimpl.dllm2rec.config import DLLM2RecConfig
from reimpl.extensions.cdr import CDRConfig, run_cdr
from reimpl.extensions.hooks import ExtConfig
from reimpl.extensions.standin import StandInConfig, StandInTeacher
from tests.ext_helpers import tiny_data


def _teacher(d):
    t = StandInTeacher(StandInConfig(num_experts=2, hidden=16, epochs=1, batch_size=16, topk=10,
                                     uncertainty_candidates=12), d.item_num, d.seq_size)
    return t.fit(d.train_seq, d.train_len, d.train_next)


def test_standin_export_layout():
    d = tiny_data(teacher=False)
    t = _teacher(d)
    ex = t.export(d.train_seq, d.train_len)
    n = len(d.train_next)
    assert ex["rank"].shape == (n, 10) and ex["confidence"].shape == (n, 10) and ex["uncertainty"].shape == (n,)
    assert ex["embeddings"].shape == (d.item_num, 16)
    assert (np.diff(ex["confidence"], axis=1) >= 0).all()     # best first = smallest distance first
    assert (ex["uncertainty"] >= 0).all()
    from reimpl.ilora.export import validate
    validate(ex["rank"], ex["confidence"], ex["embeddings"], d.item_num)


@pytest.mark.parametrize("init", ["scratch", "warm"])
def test_cdr_rounds(init):
    d = tiny_data(teacher=False)
    t = _teacher(d)
    ex = t.export(d.train_seq, d.train_len)
    d.candidates = torch.as_tensor(ex["rank"])
    d.confidence = torch.as_tensor(ex["confidence"], dtype=torch.float32)
    d.llm_table = ex["embeddings"]
    cfg = DLLM2RecConfig(data="toy", batch_size=16, epoch=1, hidden_factor=16, d_llm=16, mode="fixed",
                         candidate_topk=10, alpha=0.0)
    before = [p.detach().clone() for p in t.experts[0].parameters()]
    ext = ExtConfig.from_dict({"uamd": {"enabled": True}})
    runs = run_cdr(CDRConfig(rounds=2, student_init=init), cfg, ext, d, t, uncertainty=ex["uncertainty"],
                   log=lambda m: None)
    assert [r["round"] for r in runs] == [0, 1, 2]
    for r in runs:
        assert set(r["selected"]["ext"]["test"]) >= {"ndcg@10", "mrr", "ece"}
        assert 0 <= r["teacher"]["test"]["ndcg@10"] <= 1
    after = list(t.experts[0].parameters())
    names = [n for n, _ in t.experts[0].named_parameters()]
    changed = {n for n, b, a in zip(names, before, after) if not torch.equal(b, a)}
    assert changed == {"item_embeddings.weight", "s_fc.weight", "s_fc.bias"}   # the rest stays frozen
    assert torch.equal(d.candidates, torch.as_tensor(ex["rank"]))               # caller's data untouched


def test_cdr_config_validation():
    with pytest.raises(ValueError, match="refresh"):
        CDRConfig(refresh=("logits",))
    with pytest.raises(ValueError, match="student_init"):
        CDRConfig(student_init="hot")
