"""iLoRA as a teacher on the teachers' rows (reimpl/teachers/ilora.py): answer-only logits, rows, chunked resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reimpl.ilora.data import DataConfig, LastFMData, collate
from reimpl.teachers import common
from reimpl.teachers import ilora as ti
from tests.test_ilora_teacher import _teacher


@pytest.fixture(scope="module")
def lastfm(shared_dir, refs):
    from reimpl.ilora.prompt import load_prompts

    return common.load_lastfm(shared_dir / "data/ilora/lastfm"), load_prompts(refs["iLoRA"] / "prompt/artist.txt")


def _batch(t, d, prompts, rows):
    data = ti.RowsData(d.train.take(np.array(rows)), d.titles, d.item_num)
    py = random.Random(0)
    return collate([data.sample(i, py) for i in range(len(rows))], t.tokenizer, prompts, py, train=True)


def test_answer_only_logits_give_the_same_loss_and_gradients(lastfm):
    d, prompts = lastfm
    t = _teacher("fixed", dropout=0.0)
    t.eval()   # no dropout: both passes see the same function
    b = _batch(t, d, prompts, [5, 17, 300])
    grads = []
    for only in (False, True):
        t.answer_logits_only = only
        t.zero_grad(set_to_none=True)
        out = t(b)
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in t.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-7, msg=n)
    assert out.logits.shape[1] < b["input_ids"].shape[1]   # the prompt positions were skipped


def test_rows_data_matches_lastfm_data(lastfm, shared_dir):
    """The same row and candidates give the same sample as iLoRA's own LastFM reader."""
    d, _ = lastfm
    ref = LastFMData(DataConfig(data_dir=str(shared_dir / "data/ilora/lastfm"), mode="fixed", min_len_seq=1), "train")
    rd = ti.RowsData(d.train, d.titles, d.item_num)
    for i in (0, 7, 48000):
        cans = [int(c) for c in common.candidates(d.train.take(slice(i, i + 1)), 20, 0)[0]]
        a, b = ref.sample(i, random.Random(1), cans=cans), rd.sample(i, random.Random(1), cans=cans)
        assert a == b
    s = rd.sample(3, random.Random(2))
    assert len(s["cans"]) == 20 and s["item_id"] in s["cans"] and not set(s["cans"]) & set(rd.unpadded(3))
    with pytest.raises(ValueError, match="no title for item ids \\[12\\]"):
        ti.RowsData(d.train.take(slice(0, 50)), {k: v for k, v in d.titles.items() if k != 12}, d.item_num)
    short = ti.training_rows(d.train.take(slice(0, 200)))
    assert ((short.seqs != d.item_num).sum(1) >= 3).all()


def test_compact_checkpoint_resumes_on_another_machine(lastfm, tmp_path):
    """A run cut into chunks, its runs/ checkpoint lost, continues from the compact copy; refuses another run's."""
    from reimpl.ilora.train import run_identity, train

    d, prompts = lastfm
    rows = ti.training_rows(d.train.take(slice(0, 40)))
    data = ti.RowsData(rows, d.titles, d.item_num)
    cfg = ti.ILoRAConfig(batch_size=2, accumulate_grad_batches=2, bf16=False)
    tcfg = ti.train_config(cfg)
    a = _teacher("fixed")
    ra = train(a, data, prompts, tcfg, progress=False)
    b = _teacher("fixed")
    r1 = train(b, data, prompts, tcfg, ckpt_dir=tmp_path / "m1", progress=False, stop_after_batches=4)
    ti.compact_checkpoint(r1.checkpoint, tmp_path / "store.ckpt", {"curve": r1.losses})
    c = _teacher("fixed")   # the other machine: a fresh teacher, no runs/ checkpoint
    extra = ti.restore_checkpoint(tmp_path / "store.ckpt", tmp_path / "m2" / "last.ckpt", run_identity(c, data, tcfg))
    assert extra == {"curve": r1.losses}
    r2 = train(c, data, prompts, tcfg, ckpt_dir=tmp_path / "m2", resume=tmp_path / "m2" / "last.ckpt", progress=False)
    assert len(r1.losses) + len(r2.losses) == len(ra.losses)
    np.testing.assert_allclose(r1.losses + r2.losses, ra.losses, rtol=1e-3)   # moments rounded to bf16
    other = ti.train_config(ti.ILoRAConfig(batch_size=2, accumulate_grad_batches=2, bf16=False, lr=1e-3))
    from reimpl.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="different run"):
        ti.restore_checkpoint(tmp_path / "store.ckpt", tmp_path / "m3" / "last.ckpt", run_identity(c, data, other))


def test_trainable_count_does_not_depend_on_the_last_batch():
    from reimpl.teachers.run import _ilora_trainable

    t = _teacher("fixed", dropout=0.0)
    counts = []
    for frozen in (False, True):     # train() freezes the projector on text-only batches
        t.projector.requires_grad_(not frozen)
        counts.append(_ilora_trainable(t))
    proj = sum(p.numel() for p in t.projector.parameters())
    assert counts[0] == counts[1] and proj > 0
    assert counts[0] == proj + sum(p.numel() for n, p in t.named_parameters()
                                   if p.requires_grad and not n.startswith("projector."))


def test_a_row_without_history_is_scored(lastfm):
    """A train row with no history (the data file says len_seq 1, as iLoRA's loader reads it) has no
    [HistoryEmb] in its prompt: fixed mode injects no history item (the reference skips a row without
    placeholders, model_interface.py:454) and scores it."""
    d, prompts = lastfm
    empty = int(np.flatnonzero((d.train.seqs != d.item_num).sum(1) == 0)[0])
    t = _teacher("fixed", dropout=0.0)
    t.eval()
    data = ti.RowsData(d.train.take(np.array([empty, 5])), d.titles, d.item_num)
    cands = common.candidates(data.rows, 20, 0)
    py = random.Random(0)
    samples = [data.sample(i, py, cans=cands[i].tolist()) for i in range(2)]
    assert samples[0]["len_seq"] == 1 and samples[0]["seq_name"] == []
    b = collate(samples, t.tokenizer, prompts, py, train=False)
    with torch.no_grad():
        sc = t.score_candidates(b, b["cans_name"], b["prompts"])
    assert sc.shape == (2, 20) and torch.isfinite(sc).all()
    b["len_seq"][1] += 2   # a row with items claims more than it holds: still refused
    with pytest.raises(ValueError, match="ILORA-INJECT-COUNT-MISMATCH"):
        t.score_candidates(b, b["cans_name"], b["prompts"])
