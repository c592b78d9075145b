"""reimpl/extensions/uamd.py: expert-disagreement uncertainty, w(u), export beside the teacher ranking."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.extensions.uamd import (
    UAMDConfig,
    expert_disagreement,
    read_uncertainty,
    uncertainty_weight,
    write_uncertainty,
)


def test_disagreement_fixed_case():
    # two experts, two candidates: p_1 = [1, 0] (almost), p_2 = [0.5, 0.5]; gate [0.5, 0.5]
    s = torch.tensor([[[0.0, -1e4], [0.0, 0.0]]])
    g = torch.tensor([[0.5, 0.5]])
    pbar = torch.tensor([0.75, 0.25])
    var = 0.5 * ((1 - 0.75) ** 2 + (0 - 0.25) ** 2) + 0.5 * ((0.5 - 0.75) ** 2 + (0.5 - 0.25) ** 2)
    assert expert_disagreement(s, g).item() == pytest.approx(var)
    h = lambda p: -(p * torch.log(p)).sum().item()  # noqa: E731
    assert expert_disagreement(s, g, "jsd").item() == pytest.approx(h(pbar) - 0.5 * h(torch.tensor([.5, .5])))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 5), e=st.integers(1, 5), c=st.integers(1, 7), scale=st.sampled_from([1.0, 1e4]),
       kind=st.sampled_from(["variance", "jsd"]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_disagreement_properties(b, e, c, scale, kind, dtype):
    g = torch.Generator().manual_seed(b * 100 + e * 10 + c)
    s = (torch.randn(b, e, c, generator=g) * scale).to(dtype)
    gate = torch.softmax(torch.randn(b, e, generator=g), 1).to(dtype)
    u = expert_disagreement(s, gate, kind)
    assert u.shape == (b,) and u.dtype == torch.float64 and torch.isfinite(u).all() and (u >= 0).all()
    assert (u <= (1.0 if kind == "variance" else math.log(e) + 1e-9)).all()
    same = s[:, :1].expand(b, e, c)
    assert torch.allclose(expert_disagreement(same, gate, kind), torch.zeros(b, dtype=torch.float64), atol=1e-12)
    one_hot = torch.zeros(b, e, dtype=dtype)
    one_hot[:, 0] = 1
    assert torch.allclose(expert_disagreement(s, one_hot, kind), torch.zeros(b, dtype=torch.float64), atol=1e-12)


def test_disagreement_errors_and_padding():
    s = torch.tensor([[[0.0, -math.inf], [1.0, -math.inf]]])  # a padded candidate column
    assert torch.isfinite(expert_disagreement(s, torch.tensor([[0.5, 0.5]]))).all()
    with pytest.raises(ValueError, match=r"\[B, E, C\]"):
        expert_disagreement(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="finite"):
        expert_disagreement(torch.full((1, 2, 2), -math.inf), torch.ones(1, 2))
    with pytest.raises(ValueError, match="non-negative"):
        expert_disagreement(torch.zeros(1, 2, 2), torch.tensor([[-1.0, 2.0]]))


def test_weight_functions():
    u = np.array([0.0, 1.0, 2.0, 3.0])
    w = uncertainty_weight(u, "exp", scale=1.0, normalize=False)
    assert torch.allclose(w, torch.exp(-torch.tensor(u)))
    assert uncertainty_weight(u, "exp").mean().item() == pytest.approx(1.0)   # normalized, median scale
    assert (uncertainty_weight(u, "exp").diff() < 0).all()                    # decreasing in u
    assert torch.equal(uncertainty_weight(u, "threshold", scale=1.0, normalize=False),
                       torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(uncertainty_weight(np.zeros(3)), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=">= 0"):
        uncertainty_weight(np.array([-1.0]))
    with pytest.raises(ValueError, match="fn"):
        UAMDConfig(fn="sqrt")


def test_uncertainty_file_roundtrip(tmp_path):
    u = np.array([0.1, 0.0, 1 / 3])
    write_uncertainty(tmp_path, u)
    assert np.array_equal(read_uncertainty(tmp_path, 3), u)
    with pytest.raises(ValueError, match=r"N_train=4"):
        read_uncertainty(tmp_path, 4)
    with pytest.raises(FileNotFoundError, match="uncertainty_train.txt"):
        read_uncertainty(tmp_path / "nope", 3)


# ------------------------------------------------------------------ with the iLoRA teacher (tiny Llama)
@pytest.fixture(scope="module")
def tiny_teacher(shared_dir, refs):
    import contextlib
    import io
    import warnings

    from transformers import LlamaForCausalLM

    from reimpl.ilora.prompt import load_prompts
    from reimpl.ilora.sasrec import load_checkpoint
    from reimpl.ilora.teacher import TeacherConfig, build_teacher
    from reimpl.ilora.train import DataConfig, LastFMData
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llm_dir

    d = tiny_llm_dir(seed=0)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        llm = LlamaForCausalLM.from_pretrained(str(d))
        t = build_teacher(llm, load_tiny_tokenizer(d), load_checkpoint(shared_dir / "data/ilora/rec_model/lastfm.pt",
                                                                        mode="fixed"), TeacherConfig(mode="fixed"))
    with torch.no_grad():   # non-zero LoRA B so that the experts differ
        g = torch.Generator().manual_seed(1)
        for layer in t.llama_model.layers():
            w = layer.lora_B["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.05)
    data = LastFMData(DataConfig(data_dir=str(shared_dir / "data/ilora/lastfm"), mode="fixed"), "train")
    return t, data, load_prompts(refs["iLoRA"] / "prompt/artist.txt")


def test_expert_scores_and_export_match_teacher_export(tiny_teacher, tmp_path):
    from reimpl.extensions.uamd import expert_candidate_scores, export_teacher_with_uncertainty, forced_gate
    from reimpl.ilora.export import read_tocf
    from reimpl.ilora.train import collate, export_teacher

    t, data, prompts = tiny_teacher
    t.eval()
    py = random.Random(0)
    batch = collate([data.sample(i, py, mode="fixed") for i in (0, 1)], t.tokenizer, prompts, py, train=False)
    mixed, experts, gate = expert_candidate_scores(t, batch, batch["cans_name"], batch["prompts"])
    c = batch["cans"].shape[1]
    assert mixed.shape == (2, c) and experts.shape == (2, t.cfg.num_moe, c) and gate.shape == (2, t.cfg.num_moe)
    torch.testing.assert_close(mixed, t.score_candidates(batch, batch["cans_name"], batch["prompts"]))
    assert torch.allclose(gate.sum(1), torch.ones(2))
    assert not torch.allclose(experts[:, 0], experts[:, 1])       # the experts really differ
    assert "gate" not in t.__dict__                                 # the override is gone
    with forced_gate(t, 0):
        torch.testing.assert_close(t.score_candidates(batch, batch["cans_name"], batch["prompts"]), experts[:, 0])
    rows = [0, 1, 2]
    f1 = export_teacher(t, data, prompts, tmp_path / "a", "lastfm", rows, k=3, cans_num=5, batch_size=2)
    f2 = export_teacher_with_uncertainty(t, data, prompts, tmp_path / "b", "lastfm", rows, k=3, cans_num=5,
                                         batch_size=2, with_embeddings=False)
    a, b = read_tocf(f1, 4606), read_tocf(f2, 4606)
    assert np.array_equal(a.rank, b.rank)
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-6)
    u = read_uncertainty(f2, 3)
    assert (u > 0).all()
