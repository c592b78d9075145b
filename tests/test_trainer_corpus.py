"""Bad input through the real trainer CLIs (tests/trainer_corpus/): each case is refused before any training
with a message naming the file and field (or the flag), and leaves no output, checkpoint or temp file behind.
Checkpoints: corrupt / foreign files refused by path, resume refused on any difference of config, data, threads;
a kill inside the checkpoint write leaves the previous checkpoint, from which the run resumes exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reimpl.dllm2rec.train import main

CORPUS = Path(__file__).parent / "trainer_corpus"
I, L, N = 20, 10, 4
TRAIN = {"seq": [[1, 2, 3] + [I] * 7, [5, 6] + [I] * 8, [I] * 10, [9, 10, 11, 12] + [I] * 6],
         "len_seq": [3, 2, 1, 4], "next": [4, 7, 8, 13]}
ARGS = ["--data", "toy", "--batch_size", "2", "--epoch", "2", "--candidate_topk", "3", "--d_llm", "8",
        "--model_name", "GRU", "--no-progress"]


def make_export(root: Path, train: dict | None = None, emb: torch.Tensor | None = None) -> Path:
    """The valid export of tests/trainer_corpus/README.md under ``root``."""
    ddir, tdir = root / "data" / "toy", root / "tocf" / "toy"
    ddir.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"seq_size": [L], "item_num": [I]}).to_pickle(ddir / "data_statis.df")
    pd.DataFrame(train or TRAIN).to_pickle(ddir / "train_data.df")
    for split in ("val", "test"):
        shutil.copyfile(CORPUS / f"valid_{split}_data.csv", ddir / f"{split}_data.csv")
    for f in ("myrank_train.txt", "confidence_train.txt"):
        shutil.copyfile(CORPUS / f"valid_{f}", tdir / f)
    torch.save(torch.randn(I, 8, generator=torch.Generator().manual_seed(0)) if emb is None else emb,
               tdir / "all_embeddings.pt")
    return root


def run_cli(root: Path, *extra: str, capsys) -> tuple[int, str]:
    out, ck = root / "out" / "m.json", root / "out" / "ck.pt"
    try:
        rc = main(["--data-dir", str(root), *ARGS, "--out", str(out), "--checkpoint", str(ck), "--resume", *extra])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_refused(root: Path, rc: int, err: str, path: str | Path, field: str, fragment: str = "") -> None:
    assert rc == 2, err
    assert str(path) in err, err
    assert field in err, err
    assert fragment in err, err
    assert "Traceback" not in err
    left = [p for p in (root / "out").rglob("*")] if (root / "out").exists() else []
    assert not left, f"files left behind: {left}"


FILE_CASES = [  # (corpus file, replaces, field, expectation fragment)
    ("rank_nan.txt", "tocf/toy/myrank_train.txt", "row 1: field 'rank'", "finite, integral"),
    ("rank_fractional.txt", "tocf/toy/myrank_train.txt", "row 2: field 'rank'", "finite, integral"),
    ("rank_padding.txt", "tocf/toy/myrank_train.txt", "row 3: field 'rank'", "20 is the padding id"),
    ("rank_out_of_range.txt", "tocf/toy/myrank_train.txt", "row 1: field 'rank'", "[0, 20)"),
    ("rank_duplicate.txt", "tocf/toy/myrank_train.txt", "row 1: field 'rank'", "distinct item ids"),
    ("rank_ragged.txt", "tocf/toy/myrank_train.txt", "row 2: field 'rank'", "3 whitespace-separated values"),
    ("rank_text.txt", "tocf/toy/myrank_train.txt", "row 1: field 'rank'", "numbers only"),
    ("rank_rows.txt", "tocf/toy/myrank_train.txt", "field 'rank'", "N_train = 4 rows"),
    ("rank_columns.txt", "tocf/toy/myrank_train.txt", "field 'rank'", ">= candidate_topk = 3"),
    ("conf_nan.txt", "tocf/toy/confidence_train.txt", "row 2: field 'confidence'", "finite values >= 0"),
    ("conf_neg_inf.txt", "tocf/toy/confidence_train.txt", "row 1: field 'confidence'", "finite values >= 0"),
    ("conf_negative.txt", "tocf/toy/confidence_train.txt", "row 3: field 'confidence'", "finite values >= 0"),
    ("conf_shape.txt", "tocf/toy/confidence_train.txt", "field 'confidence'", "the shape of myrank_train.txt"),
    ("val_negative_next.csv", "data/toy/val_data.csv", "row 1: field 'next'", "[0, 20)"),
    ("test_zero_len.csv", "data/toy/test_data.csv", "row 1: field 'len_seq'", "max(1, #non-padding items) = 1"),
]


def test_valid_export_trains(tmp_path, capsys):
    root = make_export(tmp_path)
    rc, err = run_cli(root, capsys=capsys)
    assert rc == 0, err
    m = json.loads((root / "out" / "m.json").read_text())
    assert m["epochs_run"] == 2 and m["environment"]["threads"] == torch.get_num_threads()
    assert {p.name for p in (root / "out").iterdir()} == {"m.json", "ck.pt"}   # no temp file left


@pytest.mark.parametrize("fname,target,field,fragment", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_corpus_file_refused(tmp_path, capsys, fname, target, field, fragment):
    root = make_export(tmp_path)
    shutil.copyfile(CORPUS / fname, root / target)
    rc, err = run_cli(root, *(["--mode", "fixed"] if "val" in fname else []), capsys=capsys)
    assert_refused(root, rc, err, root / target, field, fragment)


def _train(change: dict | None = None) -> dict:
    t = {k: [list(v) if isinstance(v, list) else v for v in col] for k, col in TRAIN.items()}
    for (col, row), v in (change or {}).items():
        t[col][row] = v
    return t


TRAIN_CASES = {  # the train frame (built here: pickles)
    "left_padded": (_train({("seq", 1): [I] * 8 + [5, 6]}), "row 1: field 'seq'", "right-padded"),
    # padding 0 instead of 20: the zeros are items (0 is an id), so len_seq 2 contradicts the row
    "padding_0": (_train({("seq", 1): [5, 6] + [0] * 8}), "row 1: field 'len_seq'", "= 10"),
    "len_seq_0": (_train({("len_seq", 2): 0}), "row 2: field 'len_seq'", "= 1"),
    "fractional_id": (_train({("seq", 0): [1, 2.5, 3] + [I] * 7}), "row 0: field 'seq'", "finite, integral"),
    "nan_next": (_train({("next", 3): float("nan")}), "row 3: field 'next'", "finite, integral"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_frame_refused(tmp_path, capsys, case):
    train, field, fragment = TRAIN_CASES[case]
    root = make_export(tmp_path, train=train)
    rc, err = run_cli(root, capsys=capsys)
    assert_refused(root, rc, err, root / "data/toy/train_data.df", field, fragment)


EMB_CASES = {
    "nan_row": (torch.randn(I, 8).index_fill_(0, torch.tensor([5]), float("nan")), "row 5: field 'embeddings'"),
    "inf_row": (torch.randn(I, 8).index_fill_(0, torch.tensor([7]), float("inf")), "row 7: field 'embeddings'"),
    "int64": (torch.zeros(I, 8, dtype=torch.int64), "float32"),
    "bool": (torch.zeros(I, 8, dtype=torch.bool), "float32"),
    "shape": (torch.zeros(I - 1, 8), "[item_num=20, d_llm=8]"),
    "not_a_tensor": ({"emb": torch.zeros(I, 8)}, "a tensor"),
}


@pytest.mark.parametrize("case", sorted(EMB_CASES))
def test_embeddings_refused(tmp_path, capsys, case):
    emb, fragment = EMB_CASES[case]
    root = make_export(tmp_path, emb=emb)
    rc, err = run_cli(root, capsys=capsys)
    assert_refused(root, rc, err, root / "tocf/toy/all_embeddings.pt", "field 'embeddings'", fragment)


OPTION_CASES = [
    (["--epoch", "0"], "--epoch: expected an integer >= 1, got 0"),
    (["--epoch", "-3"], "--epoch: expected an integer >= 1, got -3"),
    (["--max_batches_per_epoch", "0"], "--max_batches_per_epoch: expected an integer >= 1"),
    (["--topk", "[]"], "--topk: expected a non-empty list"),
    (["--eval_batch_size", "0"], "--eval_batch_size: expected an integer >= 1"),
    (["--batch_size", "0"], "--batch_size: expected an integer >= 1"),
    (["--batch_size", "5"], "--batch_size: expected at most the train split's 4 rows"),
    (["--model_name", "BERT"], "--model_name: expected one of"),
    (["--topk", "five"], "argument --topk: expected a list of int"),
]


@pytest.mark.parametrize("extra,fragment", OPTION_CASES, ids=[" ".join(c[0]) for c in OPTION_CASES])
def test_option_refused(tmp_path, capsys, extra, fragment):
    root = make_export(tmp_path)
    rc, err = run_cli(root, *extra, capsys=capsys)
    assert_refused(root, rc, err, "", fragment)


def test_unwritable_out_and_resume_without_checkpoint(tmp_path, capsys):
    root = make_export(tmp_path)
    (tmp_path / "a_file").write_text("x")
    for args, fragment in ((["--out", str(tmp_path / "a_file" / "m.json")], "--out"),
                           (["--out", str(tmp_path)], "--out"),
                           (["--checkpoint", str(tmp_path / "a_file" / "ck.pt")], "--checkpoint")):
        try:
            rc = main(["--data-dir", str(root), *ARGS, *args])
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and fragment in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):
        main(["--data-dir", str(root), *ARGS, "--resume"])
    assert "--resume: needs --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "a_file").is_dir()


def test_corrupt_and_foreign_checkpoints_refused(tmp_path, capsys):
    root = make_export(tmp_path)
    ck = root / "out" / "ck.pt"
    ck.parent.mkdir()
    for blob, fragment in ((b"\x00" * 3, "not a readable checkpoint"), (b"garbage" * 10, "not a readable checkpoint")):
        ck.write_bytes(blob)
        rc, err = run_cli(root, capsys=capsys)
        assert rc == 2 and str(ck) in err and fragment in err, err
    torch.save({"config": {}}, ck)     # the previous torch.save format
    rc, err = run_cli(root, capsys=capsys)
    assert rc == 2 and str(ck) in err and "torch.save archive" in err, err
    assert not (root / "out" / "m.json").exists()


def test_resume_refuses_other_data_config_threads(tmp_path, capsys):
    root = make_export(tmp_path)
    rc, err = run_cli(root, "--epoch", "1", capsys=capsys)
    assert rc == 0, err
    (root / "out" / "m.json").unlink()
    ck = root / "out" / "ck.pt"
    before = ck.read_bytes()
    # same data set name and item count, one train target changed
    pd.DataFrame(_train({("next", 0): 5})).to_pickle(root / "data/toy/train_data.df")
    rc, err = run_cli(root, capsys=capsys)
    assert rc == 2 and str(ck) in err and "root['data']['train_next']" in err, err
    make_export(root)
    rc, err = run_cli(root, "--seed", "7", "--lr", "0.5", capsys=capsys)
    assert rc == 2 and "root['config']['seed'] changed from 2024 to 7" in err and "root['config']['lr']" in err, err
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        rc, err = run_cli(root, capsys=capsys)
    finally:
        torch.set_num_threads(threads)
    assert rc == 2 and f"root['threads'] changed from {threads} to {threads + 1}" in err, err
    assert ck.read_bytes() == before and not (root / "out" / "m.json").exists()
    rc, err = run_cli(root, capsys=capsys)          # --epoch may grow: resumes
    assert rc == 0 and "resumed from" in err, err


KILLER = textwrap.dedent("""
    import builtins, os, signal, sys
    import reimpl.checkpoint as C
    calls = {"n": 0}

    class Half:   # writes half of the checkpoint, then the process is killed inside the save
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *a):
            return self.f.__exit__(*a)
        def write(self, b):
            self.f.write(b[: len(b) // 2])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        def __getattr__(self, k):
            return getattr(self.f, k)

    def fake_open(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        if "b" in mode and ".tmp-" in str(path):
            calls["n"] += 1
            if calls["n"] == int(os.environ["KILL_AT_SAVE"]):
                return Half(f)
        return f

    C.open = fake_open
    from reimpl.dllm2rec.train import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_inside_checkpoint_write_then_resume(tmp_path):
    root = make_export(tmp_path)
    ck, out = root / "out" / "ck.pt", root / "out" / "m.json"
    argv = ["--data-dir", str(root), *ARGS, "--epoch", "3", "--out", str(out), "--checkpoint", str(ck), "--resume"]
    env = dict(os.environ, OMP_NUM_THREADS="1", KILL_AT_SAVE="2")
    p = subprocess.run([sys.executable, "-c", KILLER, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    from reimpl.checkpoint import load

    assert load(ck, kind="dllm2rec-student")["state"]["epoch"] == 1   # the previous checkpoint, intact
    assert [f.name for f in ck.parent.iterdir() if ".tmp-" in f.name] and not out.exists()
    # the same command again (in this process: same thread count, same code) resumes from epoch 1
    assert torch.get_num_threads() == 1   # as OMP_NUM_THREADS=1 above (tests/conftest.py)
    assert main(argv) == 0
    resumed = json.loads(out.read_text())
    assert not [f.name for f in ck.parent.iterdir() if ".tmp-" in f.name]   # the stale temp file is gone
    full = make_export(tmp_path / "full")
    assert main(["--data-dir", str(full), *ARGS, "--epoch", "3", "--out", str(full / "m.json")]) == 0
    uninterrupted = json.loads((full / "m.json").read_text())
    strip = lambda m: [{k: v for k, v in h.items() if k != "train_s"} for h in m["history"]]  # noqa: E731
    assert resumed["epochs_run"] == 3 and strip(resumed) == strip(uninterrupted)


# ----------------------------------------------------------------------------------------------- teacher CLI
def _ilora_dir(root: Path, missing_titles: int = 0) -> Path:
    from reimpl.data import write_ilora
    from reimpl.data.synthetic import synthetic_dataset

    ds = synthetic_dataset(n_train=8, n_val=3, n_test=3, item_num=I, seq_len=L)
    d = write_ilora(ds, root / "lastfm")
    lines = (d / "id2name.txt").read_text().splitlines(keepends=True)
    (d / "id2name.txt").write_text("".join(lines[: len(lines) - missing_titles]))
    (root / "prompt.txt").write_text("[HistoryHere] [CansHere]\n")
    return d


def _teacher_cli(root: Path, d: Path, *extra: str, capsys) -> tuple[int, str]:
    from reimpl.ilora.train import main as teacher_main

    argv = ["--llm", "tiny", "--data_dir", str(d), "--rec_model_path", str(root / "prompt.txt"),
            "--prompt_path", str(root / "prompt.txt"), "--padding_item_id", str(I), "--max_epochs", "1",
            "--batch_size", "2", "--ckpt_dir", str(root / "out" / "ckpt"), "--out", str(root / "out" / "r.json"),
            "--no_progress", *extra]
    try:
        rc = teacher_main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_teacher_refuses_missing_titles_before_loading_the_llm(tmp_path, capsys):
    d = _ilora_dir(tmp_path, missing_titles=10)
    rc, err = _teacher_cli(tmp_path, d, capsys=capsys)   # rec_model_path is not a model: never reached
    assert_refused(tmp_path, rc, err, d / "id2name.txt", "field 'id'", "titles for exactly ids 0..19")


def test_teacher_refuses_bad_train_frame_and_options(tmp_path, capsys):
    d = _ilora_dir(tmp_path)
    df = pd.read_pickle(d / "train_data.df")
    seqs = list(df["seq"])
    seqs[2] = [I] * 9 + [3]
    df["seq"] = seqs
    df.to_pickle(d / "train_data.df")
    rc, err = _teacher_cli(tmp_path, d, capsys=capsys)
    assert_refused(tmp_path, rc, err, d / "train_data.df", "row 2: field 'seq'", "right-padded")
    for extra, fragment in ((["--max_epochs", "-1"], "--max_epochs: expected an integer >= 0"),
                            (["--batch_size", "0"], "--batch_size: expected an integer >= 1"),
                            (["--topk", "30"], "--topk: expected an integer in [1, --cans_num=20]"),
                            (["--resume", str(tmp_path / "nope.ckpt")], "--resume"),
                            (["--out", str(tmp_path / "prompt.txt" / "r.json")], "--out")):
        rc, err = _teacher_cli(tmp_path, d, *extra, capsys=capsys)
        assert_refused(tmp_path, rc, err, "", fragment)


def test_teacher_resume_checks_config(shared_dir, refs, tmp_path, capsys):
    from reimpl.ilora.train import main as teacher_main

    base = ["--llm", "tiny", "--data_dir", str(shared_dir / "data/ilora/lastfm"),
            "--rec_model_path", str(shared_dir / "data/ilora/rec_model/lastfm.pt"),
            "--prompt_path", str(refs["iLoRA"] / "prompt/artist.txt"), "--max_epochs", "1", "--limit_rows", "4",
            "--batch_size", "2", "--accumulate_grad_batches", "1", "--ckpt_dir", str(tmp_path / "ck"),
            "--no_progress", "--threads", str(torch.get_num_threads())]
    assert teacher_main(base) == 0
    ck = tmp_path / "ck" / "last.ckpt"
    capsys.readouterr()
    rc = teacher_main(base + ["--resume", str(ck), "--seed", "7", "--lr", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and str(ck) in err and "root['config']['train']['seed'] changed from 1234 to 7" in err, err
    assert "root['config']['train']['optim']['lr']" in err
    assert teacher_main(base + ["--resume", str(ck)]) == 0   # same run: resumes (nothing left to train)


# ------------------------------------------------------------------------------------------- checkpoint format
def test_checkpoint_round_trip_is_exact(tmp_path):
    import random

    from reimpl import checkpoint as C

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    rs = np.random.RandomState(3)
    rs.rand(5)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "np": rs.get_state(),
             "py": random.Random(1).getstate(),
             "torch": torch.get_rng_state(), "hist": [{"loss": 0.1 + 0.2, "ranks": np.arange(4, dtype=np.int32)}],
             "k": {1: (2.5, None, "x")}}
    C.save(tmp_path / "c.ckpt", state, kind="toy")
    back = C.load(tmp_path / "c.ckpt", kind="toy")
    assert back["hist"][0]["loss"] == 0.1 + 0.2 and back["k"] == {1: (2.5, None, "x")}
    assert back["hist"][0]["ranks"].dtype == np.int32 and back["py"] == random.Random(1).getstate()
    r2 = np.random.RandomState()
    r2.set_state(back["np"])
    assert r2.rand() == rs.rand()
    assert all(torch.equal(back["model"][k], v) for k, v in model.state_dict().items())
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(back["opt"])   # optimizer state (int keys, tensors, tuples) loads back
    with pytest.raises(C.CheckpointError, match="a 'toy' checkpoint, expected 'other'"):
        C.load(tmp_path / "c.ckpt", kind="other")
    with pytest.raises(C.CheckpointError, match=re.escape(str(tmp_path / "none.ckpt"))):
        C.load(tmp_path / "none.ckpt", kind="toy")
