"""reports/teachers.md renders from result JSON alone, and the committed one is current."""

import json

import pytest

from reimpl.paths import REPORTS, SHARED
from reimpl.teachers import report, run


def test_committed_report_is_current():
    if not (REPORTS / "teachers.md").is_file():
        pytest.skip("reports/teachers.md not rendered yet")
    assert (REPORTS / "teachers.md").read_text() == report.render(report.load_results())


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
