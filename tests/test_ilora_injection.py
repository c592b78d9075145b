"""reimpl/ilora/prompt.py + projector.py: templates, placeholder ids, vectorized injection, encoders, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.ilora.projector import MlpProjector, encode_items, encode_users
from reimpl.ilora.prompt import PlaceholderIds, fill_prompt, inject_item_embeds, load_prompts, placeholder_ids, wrap_emb
from reimpl.ilora.sasrec import SASRec, SASRecConfig

IDS = PlaceholderIds(his=101, cans=102, item=103)
D = 6


def test_fill_prompt():
    t = "History [HistoryHere]. Pick from [CansHere]. Target [TargetHere]"
    assert fill_prompt(t, ["A", "B c"], ["X"], "Z") == \
        "History A [HistoryEmb], B c [HistoryEmb]. Pick from X [CansEmb]. Target Z [ItemEmb]"
    assert fill_prompt(t, ["A", "B c"], ["X"], "Z", with_embeddings=False) == \
        "History A [PH], B c [PH]. Pick from X [PH]. Target [TargetHere]"
    with pytest.raises(ValueError, match="TargetHere"):
        fill_prompt(t, ["A"], ["X"])


def test_load_reference_prompts(refs, tmp_path):
    for name in ("artist", "game", "movie", "read"):
        prompts = load_prompts(refs["iLoRA"] / "prompt" / f"{name}.txt")
        assert len(prompts) == 3 and all("[HistoryHere]" in p and "[CansHere]" in p for p in prompts)
        assert all(p == p.strip() for p in prompts)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "none.txt")


def test_placeholder_ids_tiny_tokenizer():
    from reimpl.llm.tiny import add_ilora_tokens, load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    with pytest.raises(ValueError, match="special token"):
        placeholder_ids(tok)
    ids = placeholder_ids(add_ilora_tokens(tok))
    assert len({ids.his, ids.cans, ids.item}) == 3 and min(ids.his, ids.cans, ids.item) >= len(tok) - 5


def _naive(embeds, input_ids, his, cans, item, len_seq, len_cans):
    """Per-row, per-placeholder loop with the reference's semantics (k-th placeholder <- k-th item, zip)."""
    out = embeds.clone()
    for i in range(input_ids.shape[0]):
        for tok, src, n in ((IDS.his, his[i], int(len_seq[i])), (IDS.cans, cans[i], int(len_cans[i]))):
            pos = (input_ids[i] == tok).nonzero().flatten().tolist()
            for p, e in zip(pos, src[:n]):
                out[i, p] = e
        pos = (input_ids[i] == IDS.item).nonzero().flatten().tolist()
        for p in pos:
            out[i, p] = item[i]
    return out


@st.composite
def _batch(draw):
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 14))
    s, c = draw(st.integers(0, 5)), draw(st.integers(0, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    ids = torch.randint(0, 100, (b, t), generator=g)
    for i in range(b):
        n_his = draw(st.integers(0, min(t, 6)))
        pos = torch.randperm(t, generator=g)
        ids[i, pos[:n_his]] = IDS.his
        n_c = draw(st.integers(0, min(t - n_his, 3)))
        ids[i, pos[n_his:n_his + n_c]] = IDS.cans
        if t > n_his + n_c and draw(st.booleans()):
            ids[i, pos[n_his + n_c]] = IDS.item
    len_seq = torch.tensor(draw(st.lists(st.integers(0, 7), min_size=b, max_size=b)))
    len_cans = torch.tensor(draw(st.lists(st.integers(0, 4), min_size=b, max_size=b)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return (torch.randn(b, t, D, generator=g, dtype=dtype), ids, torch.randn(b, s, D, generator=g, dtype=dtype),
            torch.randn(b, c, D, generator=g, dtype=dtype), torch.randn(b, D, generator=g, dtype=dtype),
            len_seq, len_cans)


@settings(max_examples=60, deadline=None)
@given(_batch())
def test_inject_matches_loop_semantics(batch):
    got = inject_item_embeds(*batch[:2], IDS, *batch[2:], mode="faithful")
    assert got.dtype == batch[0].dtype
    assert torch.equal(got, _naive(*batch))


def test_identical_rows_identical_embeds():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[5, IDS.his, 7, IDS.his, IDS.cans, IDS.item, 9]] * 3)
    ids[1, 0] = 6                                           # row 1 differs in one ordinary token
    his = torch.randn(1, 4, D, generator=g).expand(3, 4, D)
    cans = torch.randn(1, 2, D, generator=g).expand(3, 2, D)
    item = torch.randn(1, D, generator=g).expand(3, D)
    table = torch.nn.Embedding(110, D)
    out = inject_item_embeds(table(ids), ids, IDS, his, cans, item, torch.tensor([2, 2, 2]), torch.tensor([1, 1, 1]))
    assert torch.equal(out[0], out[2]) and torch.equal(out[0, 1:], out[1, 1:])
    assert torch.equal(out[0, 1], his[0, 0]) and torch.equal(out[0, 3], his[0, 1])
    assert torch.equal(out[0, 4], cans[0, 0]) and torch.equal(out[0, 5], item[0])


def test_count_mismatch_fixed_raises_and_grad_flows():
    ids = torch.tensor([[IDS.his, IDS.his, 1], [IDS.his, 1, 1]])
    emb = torch.zeros(2, 3, D)
    his = torch.randn(2, 3, D, requires_grad=True)
    cans, item = torch.zeros(2, 0, D), torch.zeros(2, D)
    lens = torch.tensor([1, 2])                            # row 0: 2 placeholders, 1 item; row 1: 1 vs 2
    out = inject_item_embeds(emb, ids, IDS, his, cans, item, lens, torch.tensor([0, 0]))
    assert torch.equal(out[0, 1], emb[0, 1]) and torch.equal(out[1, 0], his[1, 0])   # faithful truncation
    out.sum().backward()
    assert his.grad[0, 0].eq(1).all() and his.grad[0, 1].eq(0).all()
    with pytest.raises(ValueError, match=r"rows \[0, 1\]"):
        inject_item_embeds(emb, ids, IDS, his, cans, item, lens, torch.tensor([0, 0]), mode="fixed")
    ok = inject_item_embeds(emb, ids, IDS, his, cans, item, torch.tensor([2, 1]), torch.tensor([0, 0]), mode="fixed")
    assert ok.shape == emb.shape


def test_inject_errors():
    emb, ids = torch.zeros(2, 3, D), torch.tensor([[IDS.item, IDS.item, 0], [0, 0, 0]])
    z = torch.zeros(2, 1, D)
    with pytest.raises(ValueError, match="more than one"):
        inject_item_embeds(emb, ids, IDS, z, z, torch.zeros(2, D), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="his_embeds"):
        inject_item_embeds(emb, ids * 0, IDS, torch.zeros(2, 1, D + 1), z, torch.zeros(2, D), torch.ones(2),
                           torch.ones(2))
    with pytest.raises(ValueError, match="len_seq"):
        inject_item_embeds(emb, ids * 0, IDS, z, z, torch.zeros(2, D), torch.tensor([-1, 0]), torch.ones(2))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        MlpProjector(4, 8)(torch.zeros(2, 5))


def test_encoders_and_wrap_emb():
    torch.manual_seed(0)
    rec = SASRec(SASRecConfig(hidden_size=8, item_num=20, state_size=5)).eval()
    proj = MlpProjector(8, D)
    seq = torch.tensor([[1, 2, 3, 20, 20], [4, 5, 20, 20, 20]])
    lens = torch.tensor([3, 2])
    assert encode_items(rec, proj, seq).shape == (2, 5, D)
    rec.train()
    torch.manual_seed(1)
    noisy = encode_users(rec, seq, lens, "faithful")        # ILORA-REC-TRAIN-MODE: dropout in train mode
    clean = encode_users(rec, seq, lens, "fixed")
    assert noisy.shape == clean.shape == (2, 1, 8) and not torch.allclose(noisy, clean)
    torch.testing.assert_close(clean, rec.eval().cacul_h(seq, lens))
    ids = torch.tensor([[IDS.his, IDS.his, IDS.his, IDS.cans, IDS.item], [IDS.his, IDS.his, 0, IDS.cans, 0]])
    embeds, user = wrap_emb(torch.nn.Embedding(110, D), rec, proj, IDS, ids, seq, torch.tensor([[7], [8]]),
                            torch.tensor([9, 10]), lens, torch.tensor([20, 20]), mode="fixed")
    torch.testing.assert_close(embeds[0, 2], proj(rec.item_embeddings.weight[3]))
    torch.testing.assert_close(embeds[1, 3], proj(rec.item_embeddings.weight[8]))
    torch.testing.assert_close(embeds[0, 4], proj(rec.item_embeddings.weight[9]))
    assert user.shape == (2, 1, 8)


def test_parity_injection(refs, shared_dir):
    from parity.cases import ilora_injection as case

    inp = case.make_inputs(case.SEED)
    a, b = case._run_reference(inp), case._run_reimpl(inp, "faithful")
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-10, atol=0, err_msg=k)
    e = b["emb.inputs_embeds"]
    assert torch.equal(e[0], e[-1])                         # duplicated row 0 -> identical inputs_embeds
    with pytest.raises(ValueError, match="ILORA-INJECT-COUNT-MISMATCH"):
        case._run_reimpl(case.make_inputs_mismatch(case.SEED), "fixed")
