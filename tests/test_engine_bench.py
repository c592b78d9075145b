"""The whole-epoch benchmark report renders from measured rows (the measurement itself is `make bench`)."""

from __future__ import annotations

from benchmarks.epochs import render


def test_render(tmp_path):
    rows = [{"model": m, "variant": v,
             "ref": {"epoch_s": 90.0, "epoch_cpu_s": 80.0, "load_before": "(1, 1, 1)", "load_after": "(1, 1, 1)"},
             "eng": {"epoch_s": 9.0, "epoch_cpu_s": 4.0, "flops_per_step": 2e9, "steps": 198,
                     "load_before": "(2, 2, 2)", "load_after": "(2, 2, 2)"}}
            for m in ("SASRec", "GRU") for v in ("kd", "kd-e4srec", "plain")]
    out = tmp_path / "b.md"
    render(rows, out, "a note")
    text = out.read_text()
    assert ("| SASRec | default (lam 0.8, ed_weight 0.2, alpha 1), synthetic dense 4,096-d teacher table | 90.0 / 80.0 "
            "| 9.00 / 4.00 | 10.0x / 20.0x | 20x: met") in text
    assert "| SASRec | default, the real teacher export `e4srec-smollm2-l6-8000`" in text
    assert "| GRU | none |" in text and "10x: met" in text and text.rstrip().endswith("a note")


def test_teacher_cost_table_from_records(tmp_path):
    import json

    from benchmarks import teachers

    rec = {"teacher": "t", "method": "e4srec", "env": {"threads": 1}, "command": "/x/reimpl/teachers/run.py e4srec",
           "config": {"llm_layers": 6}, "train": {"rows": 100, "rows_per_s": 2.0, "train_tokens_per_s": 50.0},
           "export": {"rows": 1000, "export_s": 10.0}}
    (tmp_path / "t.json").write_text(json.dumps(rec))
    rows = teachers.rows(tmp_path)
    assert [r["phase"].split()[0] for r in rows] == ["train", "export"]
    # 6 SmolLM2 layers: 2 x 3,538,944 x 6 FLOP per token forward; training ~2x that; export 25 tok/row x 100 rows/s
    assert abs(rows[0]["gflops"] - 50.0 * 2 * 2 * 3538944 * 6 / 1e9) < 1e-9
    assert rows[1]["tokens_per_s"] == 2500.0
    assert "python -m reimpl.teachers.run e4srec" in teachers.render(rows)
