"""Prefix-KV-cached candidate scoring (ILoRATeacher.score_candidates, cached=True) == the pair definition
(cached=False), on the tiny random Llama with non-zero LoRA so that the per-row gate matters.

Tolerances: float64 1e-10 relative (the project's parity bar). float32 1e-5 relative: the two paths
compute the same sums in different shapes -- attention over a row's P_i prompt keys vs. a padded pair
width, matmuls blocked by other batch/sequence sizes, logits of a few positions vs. all, the first
answer token's log-prob added separately -- so each op rounds differently (~1e-7 relative); that
accumulates over the layers and the ~10 answer tokens of a score (measured: <= 3e-7 relative here,
<= 2.1e-6 on the 30-layer SmolLM2-135M).
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODES = ("faithful", "fixed")


@pytest.fixture(scope="module")
def env(shared_dir, refs):
    from parity.cases.ilora_teacher_step import build_reimpl_teacher
    from reimpl.ilora.prompt import load_prompts
    from reimpl.ilora.train import DataConfig, LastFMData

    cache: dict = {}

    def teacher(mode: str, dtype: torch.dtype):
        if (mode, dtype) not in cache:
            torch.manual_seed(0)
            t = build_reimpl_teacher(mode, dtype=dtype)
            with torch.no_grad():   # non-zero LoRA B: the experts (and so the gate) change the scores
                g = torch.Generator().manual_seed(1)
                for layer in t.llama_model.layers():
                    w = layer.lora_B["default"].weight
                    w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype) * 0.05)
            cache[mode, dtype] = t.eval()
        return cache[mode, dtype]

    data = LastFMData(DataConfig(data_dir=str(shared_dir / "data/ilora/lastfm"), mode="fixed"), "train")
    return teacher, data, load_prompts(refs["iLoRA"] / "prompt/artist.txt")


def _batch(t, data, prompts, rows, c, template=0, seed=0):
    """Eval-style batch of ``rows`` with ``c`` candidates each (the prompt lists exactly those)."""
    from reimpl.ilora.train import collate

    py = random.Random(seed)
    samples = []
    for i in rows:
        s = data.sample(i, py, mode="fixed")
        s["cans"], s["cans_name"], s["len_cans"] = s["cans"][:c], s["cans_name"][:c], c
        samples.append(s)
    return collate(samples, t.tokenizer, [prompts[template]], py, train=False)


def _both(t, batch, cached=True):
    args = (batch, batch["cans_name"], batch["prompts"])
    return t.score_candidates(*args, cached=False), t.score_candidates(*args, cached=cached)


def _rel(a, b):
    return float(((a - b).abs() / a.abs().clamp_min(1e-30)).max())


TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("mode", MODES)
def test_cached_equals_pairs_fixed_case(env, mode):
    teacher, data, prompts = env
    for dtype in (torch.float64, torch.float32):
        t = teacher(mode, dtype)
        batch = _batch(t, data, prompts, (0, 5, 9), c=5)
        plen = t.tokenizer(batch["prompts"], padding="longest", return_tensors="pt")["attention_mask"].sum(1)
        assert len(set(plen.tolist())) == 3          # right-padded prompts of three lengths
        for layout in ("packed", "repeat"):
            ref, got = _both(t, batch, layout)
            assert ref.shape == got.shape == (3, 5) and ref.dtype == got.dtype
            assert torch.isfinite(got).all() and (got < 0).all()
            assert _rel(ref, got) <= TOL[dtype], (dtype, layout, _rel(ref, got))
            assert not torch.allclose(got[0], got[1])   # rows really get their own prompt / gate


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 3), c=st.sampled_from([1, 2, 3, 5, 7]), mode=st.sampled_from(MODES),
       dtype=st.sampled_from([torch.float64, torch.float32]), template=st.integers(0, 1),
       layout=st.sampled_from([True, "packed", "repeat"]),
       rows=st.lists(st.integers(0, 400), min_size=3, max_size=3, unique=True))
def test_cached_equals_pairs_properties(env, b, c, mode, dtype, template, layout, rows):
    teacher, data, prompts = env
    t = teacher(mode, dtype)
    batch = _batch(t, data, prompts, rows[:b], c, template=template % len(prompts))
    ref, got = _both(t, batch, layout)
    assert got.shape == (b, c)
    assert _rel(ref, got) <= TOL[dtype]


@contextlib.contextmanager
def _pair_template(tok, pair: str):
    """Temporarily give the tiny tokenizer another pair template (e.g. SmolLM2's ``$A $B``)."""
    from tokenizers.processors import TemplateProcessing

    backend = tok._tokenizer
    old = backend.post_processor
    backend.post_processor = TemplateProcessing(single="<s> $A", pair=pair, special_tokens=[("<s>", 1)])
    try:
        yield
    finally:
        backend.post_processor = old


@pytest.mark.parametrize("mode", MODES)
def test_pair_template_without_separator(env, mode):
    """SmolLM2's GGUF tokenizer pairs as ``$A $B`` (no token between prompt and answer); the Llama one as
    ``<s> $A <s> $B``. The cached path takes whatever follows the prompt's own tokens, so both agree."""
    teacher, data, prompts = env
    t = teacher(mode, torch.float64)
    with _pair_template(t.tokenizer, "<s> $A $B:1"):
        enc = t.tokenizer([["x y", "z"]], add_special_tokens=True)["input_ids"][0]
        assert enc.count(1) == 1                     # no <s> between the segments now
        batch = _batch(t, data, prompts, (3, 4), c=3)
        for layout in ("packed", "repeat"):
            ref, got = _both(t, batch, layout)
            assert _rel(ref, got) <= 1e-10


def test_eager_attention(env):
    """cached=True picks "packed" under SDPA (the default here), "repeat" under eager. Eager's softmax
    runs in float32 even in a float64 model, so its scores move with the reduction shape at ~1e-9
    relative: "repeat" keeps the pair path's key layout, "packed" is float32-softmax accurate."""
    teacher, data, prompts = env
    t = teacher("fixed", torch.float64)
    assert t.hf_model.config._attn_implementation == "sdpa"
    batch = _batch(t, data, prompts, (1, 6), c=3)
    ref_sdpa = _both(t, batch, "packed")[0]
    t.hf_model.set_attn_implementation("eager")
    try:
        ref, got = _both(t, batch, True)
        assert _rel(ref, got) <= 1e-10
        assert _rel(ref, _both(t, batch, "packed")[1]) <= 1e-7
        assert _rel(ref_sdpa, ref) <= 1e-7
    finally:
        t.hf_model.set_attn_implementation("sdpa")


def test_refuses_what_it_cannot_cache(env):
    teacher, data, prompts = env
    t = teacher("fixed", torch.float64)
    batch = _batch(t, data, prompts, (0, 5), c=2)
    args = (batch, batch["cans_name"], batch["prompts"])
    t.tokenizer.padding_side = "left"
    try:
        with pytest.raises(ValueError, match="right-padded"):
            t.score_candidates(*args)
    finally:
        t.tokenizer.padding_side = "right"
    with _pair_template(t.tokenizer, "<s> $B:1 $A"):   # the pair does not start with the prompt
        with pytest.raises(ValueError, match="pair tokenization"):
            t.score_candidates(*args)
    with pytest.raises(ValueError, match="cached must be"):
        t.score_candidates(*args, cached="yes")
    with pytest.raises(ValueError, match=r"\[B=2\]\[C=2\]"):
        t.score_candidates(batch, [n[:1] for n in batch["cans_name"]], batch["prompts"])


def test_uamd_expert_scores_cached_equal(env):
    """Per-expert one-hot gates (reimpl.extensions.uamd) through the cached path == through the pairs."""
    from reimpl.extensions.uamd import expert_candidate_scores

    teacher, data, prompts = env
    t = teacher("fixed", torch.float64)
    batch = _batch(t, data, prompts, (2, 7), c=3)
    args = (t, batch, batch["cans_name"], batch["prompts"])
    m0, e0, g0 = expert_candidate_scores(*args, cached=False)
    for layout in ("packed", "repeat"):
        m1, e1, g1 = expert_candidate_scores(*args, cached=layout)
        assert e1.shape == (2, t.cfg.num_moe, 3) and g1.shape == (2, t.cfg.num_moe)
        torch.testing.assert_close(g1, g0, rtol=0, atol=0)
        assert _rel(m0, m1) <= 1e-10 and _rel(e0, e1) <= 1e-10
    assert not torch.allclose(e1[:, 0], e1[:, 1])     # the one-hot gates really select different experts
    assert "gate" not in t.__dict__


def test_cli_eval_splits_rows_file_uncertainty_emb_cache(env, shared_dir, refs, tmp_path, capsys):
    """python -m reimpl.ilora.train: --eval_splits/--eval_rows, --export_rows_file, --uncertainty,
    --emb_cache (miss, then hit), --scoring, --out; per-phase timings in the report."""
    import json

    import numpy as np

    from reimpl.extensions.uamd import read_uncertainty
    from reimpl.ilora.export import read_tocf
    from reimpl.ilora.train import cached_item_embeddings, main

    (tmp_path / "rows.txt").write_text("5\n2\n17\n")
    base = ["--llm", "tiny", "--mode", "fixed", "--max_epochs", "0",
            "--data_dir", str(shared_dir / "data/ilora/lastfm"),
            "--rec_model_path", str(shared_dir / "data/ilora/rec_model/lastfm.pt"),
            "--prompt_path", str(refs["iLoRA"] / "prompt/artist.txt"), "--cans_num", "4", "--topk", "2",
            "--export_rows_file", str(tmp_path / "rows.txt"), "--emb_cache", str(tmp_path / "emb.pt"),
            "--threads", "1", "--no_progress"]
    assert main(base + ["--eval_splits", "all", "--eval_rows", "1", "--max_new_tokens", "2", "--uncertainty",
                        "variance", "--export_dir", str(tmp_path / "a"), "--out", str(tmp_path / "a.json")]) == 0
    ra = json.loads((tmp_path / "a.json").read_text())
    assert ra["val"]["rows"] == ra["test"]["rows"] == 1 and 0 <= ra["val"]["valid_ratio"] <= 1
    assert ra["emb_cache"]["hit"] is False and (tmp_path / "emb.pt.json").is_file()
    assert {"load_s", "eval_val_s", "eval_test_s", "export_scoring_s", "embeddings_s", "total_s"} <= set(ra["timings"])
    fa = tmp_path / "a/tocf/lastfm"
    assert (fa / "rows.txt").read_text().split() == ["5", "2", "17"]
    assert read_uncertainty(fa, 3).shape == (3,)
    assert main(base + ["--eval_rows", "0", "--scoring", "uncached", "--export_dir", str(tmp_path / "b"),
                        "--out", str(tmp_path / "b.json")]) == 0
    rb = json.loads((tmp_path / "b.json").read_text())
    assert rb["emb_cache"] == {"path": str(tmp_path / "emb.pt"), "hit": True, "verified": True} and "val" not in rb
    a, b = read_tocf(fa, 4606), read_tocf(tmp_path / "b/tocf/lastfm", 4606)
    assert np.array_equal(a.rank, b.rank)     # same candidate draw; cached + uamd vs uncached scoring
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "b/tocf/lastfm/uncertainty_train.txt").exists()
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=0)
    teacher, data, _ = env   # another teacher: the cache's fingerprint refuses it
    with pytest.raises(ValueError, match="fingerprint"):
        cached_item_embeddings(tmp_path / "emb.pt", teacher("fixed", torch.float32), data, "llm", llm="tiny")
    with pytest.raises(SystemExit):
        main(base + ["--eval_splits", "val,nope"])
    (tmp_path / "bad.txt").write_text("1\nx\n")
    capsys.readouterr()
    assert main([str(tmp_path / "bad.txt") if x == str(tmp_path / "rows.txt") else x for x in base]
                + ["--export_dir", str(tmp_path / "c")]) == 2   # refused before the LLM is loaded
    assert "bad.txt:2: expected one train-row index" in capsys.readouterr().err
