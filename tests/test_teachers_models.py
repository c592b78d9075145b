"""Dense-retrieval and E4SRec teachers on the tiny random Llama / random vectors (fast)."""

import numpy as np
import pytest
import torch

from reimpl.teachers import common, dense, e4srec

I = 40


def _rows(n=64, seed=0):
    g = np.random.default_rng(seed)
    seqs = np.full((n, 10), I)
    for r in range(n):
        k = int(g.integers(0, 11))
        seqs[r, :k] = g.choice(I, k, replace=False)
    nxt = np.array([(int(s[0]) + 1) % I if s[0] != I else 0 for s in seqs])   # learnable: next = first + 1
    return common.Rows("train", seqs, nxt, np.arange(n), I)


def test_candidates_hold_target_and_avoid_history():
    rows = _rows()
    c = common.candidates(rows, 20, seed=3)
    assert c.shape == (64, 20) and (c == rows.next[:, None]).sum(1).tolist() == [1] * 64
    for r in range(64):
        assert not set(rows.history(r)) & (set(c[r].tolist()) - {int(rows.next[r])})
    assert np.array_equal(c, common.candidates(rows, 20, seed=3))
    assert np.array_equal(c[5:9], common.candidates(rows.take(slice(5, 9)), 20, seed=3))


def test_metrics_and_ties_count_against_target():
    cands = np.array([[3, 4, 5], [6, 7, 8]])
    s = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    out = common.evaluate_scores(None, s, cands, np.array([3, 7]))
    assert out["candidates"]["HR@1"] == 0.5          # row 0: 3-way tie -> rank 2, row 1: rank 0
    assert out["top10_of_candidates"]["hits"] == 2 and out["top10_of_candidates"]["chance"] == 1.0


@pytest.mark.parametrize("user_encoder", ["items", "llm"])
def test_dense_learns(user_encoder):
    torch.manual_seed(0)
    rows = _rows(256)
    x = torch.randn(I, 16)
    cfg = dense.DenseConfig(dim=16, heads=2, epochs=10, batch_size=32, user_encoder=user_encoder, lr=3e-3,
                            negatives="all", tau=0.1)
    m = dense.DenseRetriever(cfg, x)
    hist = dense.hist_tensor(rows.seqs, I)
    # the "llm" user text: here the first item's vector stands in for the encoded history
    ux = x[hist[:, 0].clamp_min(0)] if user_encoder == "llm" else None
    info = dense.train_dense(m, hist if user_encoder == "items" else None, ux, torch.as_tensor(rows.next))
    assert info["loss_curve_per50"][-1] < info["loss_curve_per50"][0]
    sc = dense.score_all(m, hist if user_encoder == "items" else None, ux)
    assert sc.shape == (256, I)
    acc = (sc.argmax(1).numpy() == rows.next).mean()
    assert acc > 0.15, acc   # chance 1/40


def test_info_nce_masks_duplicate_targets():
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    t = torch.tensor([1, 1, 2, 3])
    loss = dense.info_nce(u, v, t, 0.1, "inbatch")
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def tiny():
    from reimpl.ilora.sasrec import SASRec, SASRecConfig
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama

    tok = load_tiny_tokenizer()
    llm = tiny_llama(seed=0, vocab_size=len(tok))
    torch.manual_seed(0)
    sas = SASRec(SASRecConfig(hidden_size=16, item_num=I, mode="fixed")).eval().requires_grad_(False)
    return llm, tok, sas


@pytest.mark.parametrize("num_moe, gate", [(1, "uniform"), (2, "ilora")])
def test_e4srec_prompt_scores_and_training(tiny, num_moe, gate):
    llm, tok, sas = tiny
    import copy

    cfg = e4srec.E4SRecConfig(num_moe=num_moe, gate=gate, lora_r=4, batch_size=8, epochs=3, lora_layers=1,
                              bf16=False, lr=1e-2, item_lr=1e-2)
    m = e4srec.E4SRec(cfg, copy.deepcopy(llm), tok, sas)
    rows = _rows(32)
    hist = torch.where(torch.as_tensor(rows.seqs) == I, -1, torch.as_tensor(rows.seqs))
    x, mask, read = m.prompt(hist[:4])
    k = (hist[:4] >= 0).sum(1)
    p, s = len(m.prefix_ids), len(m.suffix_ids)
    assert mask.sum(1).tolist() == (p + k + s).tolist() and read.tolist() == (p + k + s - 1).tolist()
    emb = m.lm.get_input_embeddings()
    r = int(torch.argmax(k))
    assert torch.allclose(x[r, p + k[r]: p + k[r] + s], emb(m.suffix_ids))
    assert torch.allclose(x[r, p], m.in_proj(m.items[hist[r, 0]]))
    # padding never changes a row's scores: the same row alone and in a batch
    sc = e4srec.score_all(m, rows.seqs[:4], I)
    alone = e4srec.score_all(m, rows.seqs[r:r + 1], I)
    assert torch.allclose(sc[r], alone[0], atol=1e-5)
    info = e4srec.train_e4srec(m, rows.seqs, rows.next, I)
    assert info["loss_curve"][-1] < info["loss_curve"][0]
    names = {n.split(".")[0] for n, _ in m.trainable()}
    assert names >= {"items", "in_proj", "out_proj", "lm"} and ("router" in names) == (gate == "ilora")
    assert all("lora_" in n for n, _ in m.trainable() if n.startswith("lm."))


def test_llamarec_rerank_one_pass_and_two_stage(tiny):
    from reimpl.llm.tiny import load_tiny_tokenizer
    from reimpl.teachers import llamarec

    llm, _, _ = tiny
    tok = load_tiny_tokenizer()
    titles = {i: f"Band {i}" for i in range(I)}
    cands = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    sc = llamarec.rerank(llm, tok, titles, [[1, 2], []], cands)
    assert sc.shape == (2, 4) and torch.allclose(sc.exp().sum(1), torch.ones(2))
    alone = llamarec.rerank(llm, tok, titles, [[]], cands[1:])     # left padding leaves a row unchanged
    assert torch.allclose(alone[0], sc[1], atol=1e-4)
    full = llamarec.two_stage_scores(torch.randn(2, I), sc, cands)
    top = full.topk(4, dim=1).indices
    assert set(top[0].tolist()) == {3, 4, 5, 6} and int(top[1, 0]) == int(cands[1, sc[1].argmax()])


def test_llamarec_lora_learns_the_letter_and_resumes(tiny, tmp_path):
    """Trained LlamaRec: only LoRA weights move, one step lowers the loss of the batch it was taken on, a run
    stopped at a checkpoint and resumed equals the uninterrupted run, and the adapter round-trips."""
    import copy

    from reimpl.llm.tiny import load_tiny_tokenizer
    from reimpl.teachers import llamarec

    llm, _, _ = tiny
    tok = load_tiny_tokenizer()
    titles = {i: f"Band {i}" for i in range(I)}
    rows = _rows(48)
    cfg = llamarec.LlamaRecConfig(n_cands=4, epochs=5, batch_size=8, lr=2e-2, lora_r=4, lora_dropout=0.0, bf16=False)
    torch.manual_seed(0)
    m = llamarec.LlamaRec(cfg, copy.deepcopy(llm), tok)
    assert all("lora_" in n or "gating" in n for n, _ in m.trainable())
    frozen = {n: p.clone() for n, p in m.named_parameters() if not p.requires_grad}
    saved = {}

    def keep(step, curve):
        saved[step] = ({n: p.detach().clone() for n, p in m.trainable()}, copy.deepcopy(m._opt_state), list(curve))

    info = llamarec.train_llamarec(m, titles, rows, checkpoint=keep)
    assert info["steps"] == 5 * 48 // 8 and info["rows_trained"] == 5 * 48
    c = info["loss_curve"]
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
    # resume from the step-25 checkpoint: the same weights as the run that never stopped
    torch.manual_seed(0)
    r = llamarec.LlamaRec(cfg, copy.deepcopy(llm), tok)
    w, opt, curve = saved[25]
    r.load_state_dict(w, strict=False)
    r._opt_state = opt
    info2 = llamarec.train_llamarec(r, titles, rows, start_step=25, curve=curve)
    assert info2["loss_curve"] == pytest.approx(c, abs=1e-4)
    assert all(torch.allclose(p, dict(m.trainable())[n], atol=1e-6) for n, p in r.trainable())
    # one step (8 rows, batch 8, one epoch) lowers that batch's letter NLL
    one = rows.take(slice(0, 8))
    cfg1 = llamarec.LlamaRecConfig(n_cands=4, epochs=1, batch_size=8, lr=1e-3, lora_r=4, lora_dropout=0.0, bf16=False)
    torch.manual_seed(0)
    s1 = llamarec.LlamaRec(cfg1, copy.deepcopy(llm), tok)
    lid = llamarec.letter_ids(tok, 4)
    _, cs, col = llamarec.training_candidates(one, cfg1, 0)
    texts = [llamarec.prompt(titles, one.history(i), cs[i].tolist()) for i in range(8)]

    def nll():
        with torch.no_grad():
            return float(torch.nn.functional.nll_loss(llamarec.letter_logprobs(s1, tok, texts, lid)[0],
                                                      torch.as_tensor(col)))
    before = nll()
    assert llamarec.train_llamarec(s1, titles, one)["loss_curve"][0] == pytest.approx(before, abs=1e-4)
    assert nll() < before
    path = llamarec.save_adapter(tmp_path / "a.safetensors", m, {"teacher": "t"})
    torch.manual_seed(1)
    fresh = llamarec.LlamaRec(cfg, copy.deepcopy(llm), tok)
    assert llamarec.load_adapter(path, fresh) == {"teacher": "t"}
    hists, cands = [rows.history(i) for i in range(4)], torch.as_tensor(common.candidates(rows.take(slice(0, 4)), 4, 0))
    m.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(llamarec.rerank(m, tok, titles, hists, cands),
                              llamarec.rerank(fresh, tok, titles, hists, cands), atol=1e-6)
    # under bf16 autocast the letter logits stay float32: no ties among the candidates (ties count against the
    # target; bf16 logits left 5-7 distinct values of 20 on SmolLM2)
    cfg16 = llamarec.LlamaRecConfig(n_cands=20, lora_r=4, bf16=True)
    m16 = llamarec.LlamaRec(cfg16, copy.deepcopy(llm), tok).eval()
    c20 = torch.as_tensor(common.candidates(rows.take(slice(0, 4)), 20, 0))
    with torch.no_grad():
        sc = llamarec.rerank(m16, tok, titles, hists, c20)
    assert sc.dtype == torch.float32 and all(len(set(r.tolist())) == 20 for r in sc)


def test_llamarec_retrieved_candidates_drop_rows_without_target():
    from reimpl.teachers import llamarec

    rows = _rows(6)
    ret = torch.zeros(6, I, dtype=torch.double)
    ret[torch.arange(6), torch.as_tensor(rows.next)] = 5.0
    ret[0, int(rows.next[0])] = -1e9                       # row 0: target outside the top 4
    cfg = llamarec.LlamaRecConfig(n_cands=4, epochs=1, train_cands="retrieved")
    keep, c, col = llamarec.training_candidates(rows, cfg, 0, ret)
    assert keep.tolist() == [1, 2, 3, 4, 5]
    assert (c[np.arange(5), col] == rows.next[keep]).all() and c.shape == (5, 4)
    with pytest.raises(ValueError, match="train_cands"):
        llamarec.training_candidates(rows, cfg, 0, None)


def test_history_text_per_domain():
    # LastFM's text is the one every committed LastFM teacher encoded: it must not move
    assert common.history_text({1: "A", 2: "B"}, [1, 2]) == \
        "This user has listened to A, B. The next artist this user will listen to is"
    assert common.history_text({}, []) == \
        "This user has not listened to any artist yet. The next artist this user will listen to is"
    assert common.history_text({1: "A"}, [1], "ml-100k") == \
        "This user has watched A. The next movie this user will watch is"


def test_e4srec_adapter_round_trip_and_cdr_refines_only_the_items(tiny, tmp_path):
    """CDR (reimpl.extensions.cdr_engine): the committed adapter rebuilds the teacher; a refinement round moves the
    item table and nothing else."""
    import copy

    from reimpl.extensions.cdr_engine import CDRConfig, refine_items

    llm, tok, sas = tiny
    cfg = e4srec.E4SRecConfig(lora_r=4, batch_size=8, lora_layers=1, bf16=False)
    m = e4srec.E4SRec(cfg, copy.deepcopy(llm), tok, sas)
    rows = _rows(48)
    e4srec.train_e4srec(m, rows.seqs, rows.next, I)
    e4srec.save_adapter(tmp_path / "a.safetensors", m, {"teacher": "t"})
    m2 = e4srec.E4SRec(cfg, copy.deepcopy(llm), tok, sas)
    assert e4srec.load_adapter(tmp_path / "a.safetensors", m2) == {"teacher": "t"}
    assert torch.equal(e4srec.score_all(m, rows.seqs[:8], I), e4srec.score_all(m2, rows.seqs[:8], I))
    before = {n: p.detach().clone() for n, p in m2.named_parameters()}
    curve = refine_items(m2, rows.seqs, rows.next, I, CDRConfig(refine_rows=32, refine_batch=8, refine_lr=1e-2))
    assert len(curve) == 4
    moved = {n for n, p in m2.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"items"}
    assert {n for n, p in m2.named_parameters() if p.requires_grad} == {n for n, _ in m.trainable()}
