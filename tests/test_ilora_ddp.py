"""Multi-process teacher training goes through torchrun + accelerate (issue 7 part 5), not a home-made launcher.

Two CPU processes (gloo) on the tiny random Llama: each takes every 2nd row of the shared permutation, DDP
averages the gradients, only the main process writes the checkpoint and the report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reimpl.paths import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(shared_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed next to this python")
    if not (ROOT / "ref_repositories" / "iLoRA" / "prompt" / "artist.txt").is_file():
        pytest.skip("iLoRA checkout missing (make refs): the prompt file comes from it")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [str(torchrun if torchrun.is_file() else shutil.which("torchrun")), "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "reimpl.ilora.train", "--llm", "tiny", "--mode", "fixed",
           "--limit_rows", "32", "--batch_size", "4", "--accumulate_grad_batches", "2", "--max_epochs", "1",
           "--ckpt_dir", str(tmp_path / "ckpt"), "--eval_rows", "0", "--out", str(tmp_path / "report.json"),
           "--no_progress"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    # 32 rows over 2 processes = 16 each = 4 micro-batches of 4, accumulation 2 -> 2 optimizer steps
    assert rep["train"]["batches"] == 4 and rep["train"]["global_step"] == 2
    from reimpl.checkpoint import load

    ck = load(tmp_path / "ckpt" / "last.ckpt", kind="ilora-teacher")
    assert ck["identity"]["config"]["world"] == 2
    assert ck["global_step"] == 2 and ck["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ck["trainable"].values())
