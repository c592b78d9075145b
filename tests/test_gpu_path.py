"""The teachers' GPU path (reimpl/device.py, ``--device``, ``--llm hf``): what can be checked without a GPU here,
and on a machine with CUDA the same scores on both devices."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from reimpl.device import cuda_rng_state, module_device, on_module_device, require_device, set_cuda_rng_state
from reimpl.teachers import run

CUDA = torch.cuda.is_available()


class _Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    @on_module_device
    def where(self, batch: dict, extra: torch.Tensor):
        return batch["x"].device, extra.device, torch.zeros(1).device, batch["name"]


def test_a_method_runs_on_its_modules_device():
    """Inputs move to the module's device and the tensors the method creates are made there ('meta' stands in
    for CUDA); on CPU nothing is moved."""
    x = {"x": torch.ones(3), "name": "row"}
    cpu = torch.device("cpu")
    assert _Probe().where(x, torch.ones(1)) == (cpu, cpu, cpu, "row")
    meta = torch.device("meta")
    m = _Probe().to(meta)
    assert module_device(m) == meta and m.where(x, torch.ones(1)) == (meta, meta, meta, "row")
    assert x["x"].device == cpu   # the caller's batch is not modified


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_is_refused_without_a_gpu():
    with pytest.raises(RuntimeError, match="--device cuda: torch sees no CUDA device"):
        require_device("cuda")
    with pytest.raises(ValueError, match="--device: expected one of"):
        require_device("tpu")
    assert cuda_rng_state() == {}
    set_cuda_rng_state({"cuda": [torch.zeros(8, dtype=torch.uint8)]})   # nothing draws from it here: ignored


@pytest.mark.parametrize("argv, msg", [
    (["e4srec", "--device", "cuda"], "--device: expected cpu for the e4srec command"),
    (["dense", "--llm", "hf", "--llm_path", "/x"], "--llm: expected not hf for the dense command"),
    (["ilora", "--llm", "hf"], "--llm_path: expected given exactly when --llm hf"),
    (["ilora", "--llm_path", "/x"], "--llm_path: expected given exactly when --llm hf"),
])
def test_the_flags_are_checked(argv, msg, capsys):
    with pytest.raises((ValueError, SystemExit)) as e:
        run.main(argv)
    assert msg in (str(e.value) if e.type is ValueError else capsys.readouterr().err)


def test_a_local_llm_folder_builds_the_teacher(shared_dir, refs, tmp_path):
    """``--llm hf --llm_path DIR`` reads a save_pretrained folder offline: on the tiny Llama's folder the teacher
    scores as the built-in ``--llm tiny`` does; a folder without config.json is refused by name."""
    from reimpl.ilora.data import collate
    from reimpl.ilora.prompt import load_prompts
    from reimpl.ilora.sasrec import load_checkpoint
    from reimpl.llm.real import ModelNotInstalled, load_local_llm
    from reimpl.llm.tiny import tiny_llm_dir
    from reimpl.teachers import common
    from reimpl.teachers import ilora as ti

    with pytest.raises(ModelNotInstalled, match="expected a save_pretrained folder with config.json"):
        load_local_llm(tmp_path)
    d = common.load_lastfm(shared_dir / "data/ilora/lastfm")
    prompts = load_prompts(refs["iLoRA"] / "prompt/artist.txt")
    sas = load_checkpoint(shared_dir / "data/ilora/rec_model/lastfm.pt", mode="fixed")
    cfg = ti.ILoRAConfig(bf16=False)
    rows = d.train.take(np.array([5, 17]))
    data = ti.RowsData(rows, d.titles, d.item_num)
    cands = common.candidates(rows, 20, 0)
    scores = []
    for llm, path in (("tiny", None), ("hf", str(tiny_llm_dir(seed=0)))):
        torch.manual_seed(0)
        t = ti.build(cfg, sas, llm, path)
        t.eval()
        py = random.Random(0)
        b = collate([data.sample(i, py, cans=cands[i].tolist()) for i in range(2)], t.tokenizer, prompts, py,
                    train=False)
        scores.append(t.score_candidates(b, b["cans_name"], b["prompts"]))
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=0)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (none here)")
def test_cuda_scores_equal_cpu_scores(shared_dir, refs):
    from reimpl.ilora.prompt import load_prompts
    from reimpl.teachers import common
    from tests.test_ilora_teacher import _teacher
    from tests.test_teachers_ilora import _batch

    d = common.load_lastfm(shared_dir / "data/ilora/lastfm")
    prompts = load_prompts(refs["iLoRA"] / "prompt/artist.txt")
    t = _teacher("fixed", dropout=0.0).eval()
    b = _batch(t, d, prompts, [5, 17])
    cpu = t.score_candidates(b, b["cans_name"], b["prompts"])
    gpu = t.to("cuda").score_candidates(b, b["cans_name"], b["prompts"])
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
