"""The composed iLoRA teacher (reimpl/ilora/teacher.py, loss.py, train.py) on a tiny random Llama."""

from __future__ import annotations

import contextlib
import io
import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.ilora.loss import IGNORE_INDEX, causal_lm_loss, lm_targets, sequence_logprob
from reimpl.ilora.train import (
    DataConfig,
    LastFMData,
    TrainConfig,
    collate,
    curriculum_prob,
    eval_batches,
    export_teacher,
    train,
)


def _teacher(mode="faithful", dropout=0.1):
    from transformers import LlamaForCausalLM

    from reimpl.ilora.sasrec import load_checkpoint
    from reimpl.ilora.teacher import TeacherConfig, build_teacher
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llm_dir

    d = tiny_llm_dir(seed=0)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        llm = LlamaForCausalLM.from_pretrained(str(d))
        from reimpl.paths import SHARED
        return build_teacher(llm, load_tiny_tokenizer(d), load_checkpoint(
            SHARED / "data/ilora/rec_model/lastfm.pt", mode=mode), TeacherConfig(mode=mode, lora_dropout=dropout))


@pytest.fixture(scope="module")
def lastfm(shared_dir, refs):
    from reimpl.ilora.prompt import load_prompts

    cfg = DataConfig(data_dir=str(shared_dir / "data/ilora/lastfm"))
    return cfg, load_prompts(refs["iLoRA"] / "prompt/artist.txt")


# ------------------------------------------------------------------------------------------- loss
def test_lm_targets_fixed_case():
    ids = torch.tensor([[1, 5, 6, 1, 8, 9, 0], [1, 5, 1, 8, 0, 0, 0]])
    tt = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0]])
    f = lm_targets(ids, tt, pad_token_id=0)
    assert f.tolist() == [[-100, -100, -100, 1, 8, 9, -100], [-100, -100, 1, 8, -100, -100, -100]]
    x = lm_targets(ids, tt, pad_token_id=0, mode="fixed", special_ids=torch.tensor([1]))
    assert x.tolist() == [[-100, -100, -100, -100, 8, 9, -100], [-100, -100, -100, 8, -100, -100, -100]]
    with pytest.raises(ValueError, match="aligned"):
        lm_targets(ids, torch.zeros(2, 8, dtype=torch.long), 0)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 4), length=st.integers(2, 9), v=st.integers(3, 17), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.float64]), scale=st.sampled_from([1.0, 1e3]))
def test_causal_lm_loss_matches_library(b, length, v, data, dtype, scale):
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(b * 100 + length)
    logits = (torch.randn(b, length, v, generator=g) * scale).to(dtype)
    labels = torch.randint(0, v, (b, length), generator=g)
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b * length, max_size=b * length))).view(b, length)
    labels = labels.masked_fill(~keep, IGNORE_INDEX)
    if not (labels[:, 1:] != IGNORE_INDEX).any():
        with pytest.raises(ValueError, match="no label"):
            causal_lm_loss(logits, labels)
        return
    ours = causal_lm_loss(logits, labels)
    lib = ForCausalLMLoss(logits, labels, v)
    assert torch.isfinite(ours) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, lib, rtol=0, atol=0)
    # the summed per-row log-likelihood agrees with the mean loss
    n = (labels[:, 1:] != IGNORE_INDEX).sum()
    lp = sequence_logprob(logits.double(), labels)
    torch.testing.assert_close(-lp.sum() / n, ours.double(), rtol=1e-5, atol=1e-5)


def test_padding_only_rows_and_batch_one():
    ids = torch.tensor([[0, 0, 0]])
    assert (lm_targets(ids, torch.zeros_like(ids), 0) == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="no label"):
        causal_lm_loss(torch.zeros(1, 3, 4), lm_targets(ids, torch.zeros_like(ids), 0))


# -------------------------------------------------------------------------------------- data quirks
def test_lastfm_candidates(lastfm):
    cfg, _ = lastfm
    data = LastFMData(cfg, "val")
    rng = random.Random(0)
    for i in range(10):
        f = data.sample(i, rng, "faithful")
        assert len(f["cans"]) == 1 and f["item_id"] not in f["cans"] and f["len_cans"] == 20
        x = data.sample(i, rng, "fixed")
        assert len(x["cans"]) == 20 and x["item_id"] in x["cans"]
        assert not set(x["cans"]) - {x["item_id"]} & set(data.unpadded(i))


def test_curriculum_schedules():
    n, bs, epochs, workers = 50_800, 8, 5, 8
    per_epoch = n // bs
    max_step = epochs * per_epoch // workers
    frac = {}
    for mode in ("faithful", "fixed"):
        p = [curriculum_prob(b, e * per_epoch + b, epochs * per_epoch, max_step, workers, mode)
             for e in range(epochs) for b in range(per_epoch)]
        frac[mode] = float(np.mean(np.minimum(p, 1.0)))
    assert frac["faithful"] == pytest.approx(0.10, abs=0.01)   # restarts every epoch, peaks at 0.2
    assert frac["fixed"] == pytest.approx(0.50, abs=0.01)


# ------------------------------------------------------------------------------------ end to end
def test_train_step_and_eval_tiny(lastfm, tmp_path):
    cfg, prompts = lastfm
    t = _teacher()
    before = {n: p.detach().clone() for n, p in t.named_parameters() if p.requires_grad}
    tcfg = TrainConfig(batch_size=2, accumulate_grad_batches=2, max_epochs=1, limit_rows=8,
                       limit_train_batches=2)
    r = train(t, LastFMData(cfg, "train"), prompts, tcfg, ckpt_dir=tmp_path, progress=False)
    assert r.global_step == 1 and len(r.losses) == 2 and all(np.isfinite(r.losses))
    changed = [n for n, p in t.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed) and any(n.startswith("router.") for n in changed)
    assert not any(".gating." in n for n in changed)   # dead gating layers never get a gradient
    t.eval()
    val = LastFMData(cfg, "val")
    res, rows = t.evaluate(eval_batches(val, t.tokenizer, prompts, [0, 1, 2], 2, 0, "faithful"), max_new_tokens=3)
    assert res.n_rows == 3 and 0 <= res.valid_ratio <= 1 and len(rows) == 3
    assert all(isinstance(x["generate"], str) for x in rows)


def test_resume_matches_uninterrupted(lastfm, tmp_path):
    cfg, prompts = lastfm
    tcfg = TrainConfig(batch_size=2, accumulate_grad_batches=2, max_epochs=1, limit_rows=8, seed=7)
    data = LastFMData(cfg, "train")
    a = _teacher()
    ra = train(a, data, prompts, tcfg, progress=False)
    b = _teacher()
    r1 = train(b, data, prompts, tcfg, ckpt_dir=tmp_path, progress=False, stop_after_batches=2)
    r2 = train(b, data, prompts, tcfg, ckpt_dir=tmp_path, resume=r1.checkpoint, progress=False)
    assert ra.losses == r1.losses + r2.losses
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_score_and_export_tiny(lastfm, tmp_path):
    from reimpl.ilora.export import read_tocf

    cfg, prompts = lastfm
    t = _teacher()
    t.eval()
    data = LastFMData(cfg, "train")
    folder = export_teacher(t, data, prompts, tmp_path, "lastfm", rows=[0, 1, 2], k=3, cans_num=4, batch_size=2,
                            emb_source="projector")
    ex = read_tocf(folder, item_num=4606)
    assert ex.rank.shape == (3, 3) and ex.confidence.shape == (3, 3)
    assert tuple(ex.embeddings.shape) == (4606, t.hf_model.config.hidden_size)
    assert (np.diff(ex.confidence, axis=1) >= 0).all()
    # a candidate's score is the log-likelihood of its title as the answer: the best has the least loss
    batch = collate([data.sample(0, random.Random(1), "fixed")], t.tokenizer, prompts[:1], random.Random(0),
                    train=False)
    s = t.score_candidates({k: (v[:, :3] if k == "cans" else v) for k, v in batch.items()},
                           [batch["cans_name"][0][:3]], batch["prompts"])
    assert s.shape == (1, 3) and torch.isfinite(s).all() and (s < 0).all()


def test_parity_teacher_step_faithful(refs, shared_dir):
    """The registered parity case (loss + all gradients vs MInterface) holds in faithful mode."""
    from parity.case import all_cases
    from parity.compare import compare_outputs

    case = all_cases()["ilora.teacher_step"]
    inputs = case.make_inputs(case.seed)
    ref = case.run_reference(inputs)
    ours = case.run_reimpl(inputs, "faithful")
    assert compare_outputs(case.name, ours, ref, case.rtol, case.atol).ok


def test_data_pipeline_matches_reference(lastfm, refs):
    """Same python RNG state -> the reference's LastfmData + TrainCollater and ours give the same samples,
    prompt texts, token ids and (aligned) token types, for a train and a val batch."""
    from parity.refs import ilora
    from reimpl.llm.tiny import add_ilora_tokens, load_tiny_tokenizer, tiny_llm_dir

    ref = ilora()
    cfg, prompts = lastfm
    tok = add_ilora_tokens(load_tiny_tokenizer(tiny_llm_dir(seed=0)))
    for stage, train_flag in (("train", True), ("val", False)):
        with contextlib.redirect_stdout(io.StringIO()):
            ref_ds = ref.LastfmData(data_dir=cfg.data_dir, stage=stage, cans_num=20)
        ours_ds = LastFMData(cfg, stage)
        rows = [0, 3, 7]
        random.seed(11)
        ref_samples = [ref_ds[i] for i in rows]
        random.seed(11)
        our_samples = [ours_ds.sample(i, random, "faithful") for i in rows]
        for a, b in zip(ref_samples, our_samples):
            assert list(a["seq"]) == b["seq"] and a["cans"] == b["cans"] and a["seq_name"] == b["seq_name"]
            assert a["item_id"] == b["item_id"] and a["correct_answer"] == b["correct_answer"]
        coll = ref.TrainCollater(prompt_list=prompts, llm_tokenizer=ref.TokenTypeBridge(tok), train=train_flag,
                                 max_step=1)
        coll.cur_step = 1  # thresh 1: the embedding prompt (p < 1 always)
        random.seed(5)
        rb = coll(ref_samples)
        random.seed(5)
        ob = collate(our_samples, tok, prompts, random, train=train_flag, emb_prob=1.0)
        assert torch.equal(rb["tokens"]["input_ids"], ob["input_ids"])
        ref_tt = rb["tokens"]["token_type_ids"]
        # the bridge prepends a column to pair encodings only (train); prompt-only encodings are aligned
        assert torch.equal(ref_tt[:, 1:] if train_flag else ref_tt, ob["token_type_ids"])
        assert torch.equal(rb["cans"], ob["cans"]) and torch.equal(rb["len_cans"], ob["len_cans"])
        if train_flag:
            assert rb["flag"] == ob["flag"] is False
        else:
            assert rb["cans_name"] == ob["cans_name"] and rb["correct_answer"] == ob["correct_answer"]


def test_fixed_mode_trains_through_text_only_curriculum_batches(lastfm, tmp_path):
    """Regression: fixed mode used to reject the text-only ([PH]) prompts of the curriculum, whose
    history/candidate lengths are non-zero while the prompt has no placeholders to fill."""
    cfg, prompts = lastfm
    t = _teacher(mode="fixed")
    tcfg = TrainConfig(batch_size=2, accumulate_grad_batches=2, max_epochs=1, limit_rows=8, limit_train_batches=4,
                       mode="fixed")
    r = train(t, LastFMData(cfg, "train"), prompts, tcfg, ckpt_dir=tmp_path, progress=False)
    assert len(r.losses) == 4 and all(np.isfinite(r.losses))


@pytest.mark.parametrize("mode,steps,batches", [("faithful", 1, 3), ("fixed", 2, 4)])
def test_max_steps_stop(lastfm, mode, steps, batches):
    """8 rows, batch 2, accumulation 3: main.py:50 gives max_steps = 8 // 6 = 1 and Lightning stops there
    (faithful, ILORA-MAX-STEPS-STOP); fixed takes the epoch's ceil(4 / 3) = 2 steps."""
    cfg, prompts = lastfm
    tcfg = TrainConfig(batch_size=2, accumulate_grad_batches=3, max_epochs=1, limit_rows=8, mode=mode)
    r = train(_teacher(mode), LastFMData(cfg, "train"), prompts, tcfg, progress=False)
    assert (r.global_step, len(r.losses)) == (steps, batches)


def test_checkpoint_keeps_a_frozen_projector(tmp_path):
    """train() freezes the projector on text-only batches; a checkpoint written then must still hold it, or a
    resume into a fresh teacher restarts from the initial projector (found by the reference audit)."""
    from reimpl.ilora.optim import OptimConfig, build_optimizer, param_groups
    from reimpl.ilora.train import _rng_state, load_checkpoint, save_checkpoint

    t = _teacher()
    opt = build_optimizer(param_groups(t.projector.named_parameters(), t.router.named_parameters(),
                                       t.llama_model.named_parameters(), OptimConfig()))
    with torch.no_grad():
        for p in t.projector.parameters():
            p.add_(0.5)
    t.projector.requires_grad_(False)
    path = save_checkpoint(tmp_path / "last.ckpt", t, opt, None, 0, 1, 1,
                           _rng_state(random.Random(0), torch.Generator()), TrainConfig())
    u = _teacher()
    load_checkpoint(path, u)
    for (n, p), (_, q) in zip(t.projector.named_parameters(), u.projector.named_parameters()):
        assert torch.equal(p, q), n


def test_test_split_drops_last_partial_batch(lastfm):
    """ILORA-TEST-DROP-LAST: faithful scores 4 of 5 test rows at batch 2 (data_interface.py:152-160)."""
    cfg, prompts = lastfm
    tok = _teacher().tokenizer
    data = LastFMData(cfg, "test")

    def rows(mode, split):
        return sum(len(b["len_seq"]) if "len_seq" in b else len(b["item_id"])
                   for b in eval_batches(data, tok, prompts, list(range(5)), 2, 0, mode, split=split))

    assert (rows("faithful", "test"), rows("fixed", "test"), rows("faithful", "val")) == (4, 5, 5)
