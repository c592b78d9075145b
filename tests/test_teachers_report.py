"""reports/teachers.md renders from result JSON alone, and the committed one is current."""

import json

import pytest

from reimpl.paths import DATA, REPORTS, SHARED
from reimpl.teachers import report, run


def test_committed_report_is_current():
    if not (REPORTS / "teachers.md").is_file():
        pytest.skip("reports/teachers.md not rendered yet")
    assert (REPORTS / "teachers.md").read_text() == report.render(report.load_results(), report.load_loo())


@pytest.mark.skipif(not (SHARED / "data" / "ilora" / "lastfm" / "train_data.df").is_file(),
                    reason="../shared/data/ilora/lastfm absent")
def test_cli_dense_random_vectors_renders(tmp_path):
    """The CLI end to end on LastFM with random item vectors, a few steps, 64 held-out rows (the report's input)."""
    out = run.main(["dense", "--llm", "random", "--epochs", "1", "--batch_size", "64", "--max_train_rows", "256",
                    "--eval_rows", "64",
                    "--threads", "1", "--results_dir", str(tmp_path), "--name", "t"])
    assert out == 0
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["eval"]["heldout"]["candidates"]["rows"] == 64 and rec["sasrec_bar"]["val"]["candidates"]["rows"] == 122
    (tmp_path / "sasrec.json").write_text(json.dumps({**rec, "teacher": "sasrec", "method": "sasrec",
                                                      "eval": rec["sasrec_bar"]}))
    text = report.render(report.load_results(tmp_path, root=tmp_path))
    assert "| t | val | 122 |" in text and "SASRec checkpoint (the bar)" in text


@pytest.mark.skipif(not (DATA / "ml-100k" / "u.item").is_file(), reason="needs ../shared/data/ml-100k")
def test_cli_dense_on_a_leave_one_out_split(tmp_path, monkeypatch):
    """--dataset ml100k-loo: LOO rows and u.item titles, every user's val/test row, an export of every LOO train row
    in order (the SASRec bar is stubbed here: training it takes minutes; reimpl.teachers.bar)."""
    import torch

    from reimpl.dllm2rec.config import DLLM2RecConfig
    from reimpl.dllm2rec.student import build_student
    from reimpl.teachers import bar
    from reimpl.teachers import export as ex

    d = run.common.load_dataset("ml100k-loo", run.RunOptions().data_dir)
    assert d.loo and d.domain == "ml-100k" and len(d.titles) == d.item_num == 1682
    assert (len(d.train), len(d.val), len(d.test)) == (97171, 943, 943)
    torch.manual_seed(0)
    stub = bar.StudentScorer(build_student(DLLM2RecConfig(model_name="SASRec", mode="fixed"), 1682, 10))
    monkeypatch.setattr(run, "load_bar", lambda d, opts: (stub, {"stub": True}))
    assert run.main(["dense", "--llm", "random", "--dataset", "ml100k-loo", "--epochs", "1", "--batch_size", "64",
                     "--max_train_rows", "256", "--eval_rows", "64", "--threads", "1", "--export", "true",
                     "--results_dir", str(tmp_path), "--name", "t"]) == 0
    rec = json.loads((tmp_path / "ml100k-loo" / "t.json").read_text())
    assert set(rec["eval"]) == {"val", "test"} and rec["eval"]["val"]["candidates"]["rows"] == 64
    assert rec["data"]["rows"]["train"] == 97171 and rec["export"]["rows"] == 97171
    files, _ = ex.read_compact(tmp_path / "ml100k-loo" / "t.safetensors", 1682, n_train=97171)
    assert files.rank.shape == (97171, 10)
