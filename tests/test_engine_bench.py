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


def test_products_are_recorded_forward_and_backward_and_replayed():
    import torch

    from benchmarks.epochs import _Products

    w = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(4, 3)
    with _Products() as pr:
        torch.nn.functional.linear(x, w, torch.zeros(5)).sum().backward()  # addmm forward, mm for w's gradient
    names = [f.overloadpacket.__name__ for f, _, _ in pr.calls]
    assert names[0] == "addmm" and "mm" in names[1:], names
    assert pr.replay_ms(reps=2) > 0


def test_verdict_names_what_the_rest_of_the_step_must_fit_in(tmp_path):
    def row(m, v, products_ms):
        return {"model": m, "variant": v,
                "ref": {"epoch_s": 20.0, "epoch_cpu_s": 19.8, "load_before": "1/1/1", "load_after": "1/1/1"},
                "eng": {"epoch_s": 4.0, "epoch_cpu_s": 3.96, "flops_per_step": 1e8, "steps": 198,
                        "products_ms": products_ms, "load_before": "1/1/1", "load_after": "1/1/1"}}

    # budget 19.8 s / 198 / 10 = 10 ms per step; the engine takes 20 ms
    out = tmp_path / "b.md"
    render([row("SASRec", "plain", 4.0), row("GRU", "plain", 12.0)], out, "", peak=100.0)
    text = out.read_text()
    assert ("| 10.0 | 1.0 | 4.0 | 16.0 | 20.0 | not met: the rest of the step would have to fit in 6.0 ms "
            "(38 % of") in text
    assert "| 12.0 | 8.0 | 20.0 | unreachable in exact fp32 on one thread" in text
