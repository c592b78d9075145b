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
