"""The whole-epoch benchmark report renders from measured rows (the measurement itself is `make bench`)."""

from __future__ import annotations

from benchmarks.epochs import render


def _store(rows, peak=93.0, tag="cpu-x-avx2", note=""):
    return {"schema": 1, "machines": {tag: {
        "machine": {"cpu_vendor": "V", "cpu_model": "CPU X", "cpu_family": "25", "cpu_model_number": "1",
                    "torch_cpu_capability": "AVX2", "torch": "t", "mkl": "m", "tag": tag},
        "peak": {"sgemm_gflops": peak}, "note": note,
        "rows": {f"{r['model']}/{r['variant']}": {**r, "measured": "2026-12-06 10:00 UTC"} for r in rows}}}}


def test_render(tmp_path):
    rows = [{"model": m, "variant": v,
             "ref": {"epoch_s": 90.0, "epoch_cpu_s": 80.0, "load_before": "1/1/1", "load_after": "1/1/1"},
             "eng": {"epoch_s": 9.0, "epoch_cpu_s": 4.0, "flops_per_step": 2e9, "steps": 198,
                     "load_before": "2/2/2", "load_after": "2/2/2"}}
            for m in ("SASRec", "GRU") for v in ("kd", "kd-e4srec", "plain")]
    out = tmp_path / "b.md"
    render(_store(rows, note="a note"), out)
    text = out.read_text()
    assert "## CPU X (V, family 25 model 1), torch AVX2 kernels" in text
    assert ("| SASRec | default (lam 0.8, ed_weight 0.2, alpha 1), synthetic dense 4,096-d teacher table | 90.0 / 80.0 "
            "| 9.00 / 4.00 | 10.0x / 20.0x (1 round) | 20x: met") in text
    assert "| SASRec | default, the real teacher export `e4srec-smollm2-l6-8000`" in text
    assert "| GRU | none |" in text and "10x: met" in text and "\na note\n" in text


def test_store_rejects_bad_records_naming_the_field(tmp_path):
    import json

    import pytest

    from benchmarks.epochs import load_store

    row = {"model": "GRU", "variant": "plain", "ref": {"epoch_s": 1, "epoch_cpu_s": 1, "load_before": "",
                                                       "load_after": ""},
           "eng": {"epoch_s": 1, "epoch_cpu_s": 1, "steps": 1, "load_before": "", "load_after": ""}}
    p = tmp_path / "e.json"
    p.write_text(json.dumps(_store([row])))
    with pytest.raises(ValueError, match=r"e.json: machines\['cpu-x-avx2'\].rows\['GRU/plain'\].eng: missing "
                                         r"\['flops_per_step'\]"):
        load_store(p)
    p.write_text("{")
    with pytest.raises(ValueError, match="e.json: not valid JSON"):
        load_store(p)


def test_rounds_pair_the_sides_and_reuse_only_this_machines_reference(tmp_path, monkeypatch):
    from benchmarks import epochs as be

    calls, lite = [], []
    eng = {"epoch_s": 1.0, "epoch_cpu_s": 1.0, "flops_per_step": 1e8, "steps": 198, "load_before": "0/0/0",
           "load_after": "0/0/0"}
    monkeypatch.setattr(be, "prepare", lambda *a, **k: tmp_path)
    monkeypatch.setattr(be, "prepare_e4srec", lambda *a, **k: tmp_path)
    monkeypatch.setattr(be, "measure_peak", lambda: 50.0)
    monkeypatch.setattr(be, "engine_epochs", lambda m, v, w, lite=False: lite_calls(lite))
    cpu = iter([9.0, 12.0, 6.0, 9.0, 9.0, 9.0, 9.0])

    def lite_calls(flag):
        lite.append(flag)
        return dict(eng)

    monkeypatch.setattr(be, "reference_epoch", lambda m, v, w: calls.append((m, v)) or
                        {"epoch_s": 9.0, "epoch_cpu_s": next(cpu), "load_before": "0/0/0", "load_after": "0/0/0"})
    store, out = tmp_path / "s.json", tmp_path / "r.md"
    args = ["--models", "GRU", "--variants", "plain", "--store", str(store), "--out", str(out)]

    def on(tag):
        monkeypatch.setattr(be, "machine", lambda: {"cpu_vendor": "V", "cpu_model": tag, "cpu_family": "",
                                                    "cpu_model_number": "", "torch_cpu_capability": "X",
                                                    "torch": "t", "mkl": "m", "tag": tag})

    on("cpu-a-avx512")
    be.main(args)  # 3 paired rounds: main.py timed in each, the engine's FLOPs and products only in the first
    assert len(calls) == 3 and lite == [False, True, True]
    row = be.load_store(store)["machines"]["cpu-a-avx512"]["rows"]["GRU/plain"]
    assert row["ratios"] == [9.0, 12.0, 6.0] and row["ref"]["epoch_cpu_s"] == 9.0 and row["paired"]
    on("cpu-b-avx2")
    be.main(args + ["--reuse-reference", "--rounds", "1"])  # nothing stored for b: measured, a's not reused
    assert len(calls) == 4
    be.main(args + ["--reuse-reference", "--rounds", "2"])  # b's own reference reused: only the engine runs
    assert len(calls) == 4
    st = be.load_store(store)
    assert sorted(st["machines"]) == ["cpu-a-avx512", "cpu-b-avx2"]
    assert not st["machines"]["cpu-b-avx2"]["rows"]["GRU/plain"]["paired"]
    be.main(["--render-only", "--store", str(store), "--out", str(out)])
    text = out.read_text()
    assert text.count("| GRU | none |") == 2
    assert ("9.0x (rounds 9.0x, 12.0x, 6.0x; fastest epochs 6.0x) | 10x: not met (CPU), rounds on both sides |"
            in text)
    assert "(rounds 9.0x, 9.0x, unpaired; fastest epochs 9.0x)" in text
    with __import__("pytest").raises(SystemExit, match="--rounds must be >= 1"):
        be.main(args + ["--rounds", "0"])


def test_store_rejects_rounds_without_their_ratios(tmp_path):
    import json

    import pytest

    from benchmarks.epochs import combine_rounds, load_store

    side = {"epoch_s": 2.0, "epoch_cpu_s": 2.0, "load_before": "", "load_after": ""}
    row = combine_rounds("GRU", "plain", [{"ref": dict(side), "eng": {**side, "flops_per_step": 1, "steps": 1}}] * 2)
    assert row["ratios"] == [1.0, 1.0]
    row["ratios"] = [1.0]
    p = tmp_path / "e.json"
    p.write_text(json.dumps(_store([row])))
    with pytest.raises(ValueError, match=r"rows\['GRU/plain'\]: 1 ratios for 2 rounds"):
        load_store(p)


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
    render(_store([row("SASRec", "plain", 4.0), row("GRU", "plain", 12.0)], peak=100.0), out)
    text = out.read_text()
    assert ("| 10.0 | 1.0 | 4.0 | 16.0 | 20.0 | not met: the rest of the step would have to fit in 6.0 ms "
            "(38 % of") in text
    assert "| 12.0 | 8.0 | 20.0 | unreachable in exact fp32 on one thread" in text
