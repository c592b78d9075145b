"""The teacher export contract (reimpl/teachers/export.py): round trips and refusals naming file and row."""

import numpy as np
import pytest
import torch

from reimpl.data import DataError
from reimpl.teachers import export as ex

ITEMS = 30


def _files(n=6, k=4, d=5, seed=0, unc=True):
    g = np.random.default_rng(seed)
    rank = np.stack([g.permutation(ITEMS)[:k] for _ in range(n)])
    conf = g.random((n, k)) * 3
    emb = torch.from_numpy(g.standard_normal((ITEMS, d)).astype(np.float32))
    return ex.TeacherFiles(np.arange(n), rank, conf, emb, g.random(n) if unc else None)


def test_tocf_round_trip_exact(tmp_path):
    f = _files()
    folder = ex.write_tocf(tmp_path / "tocf" / "lastfm", f, ITEMS, n_train=6)
    back = ex.read_tocf(folder, ITEMS, n_train=6)
    assert np.array_equal(back.rank, f.rank) and np.array_equal(back.confidence, f.confidence)
    assert back.embeddings.shape == (ITEMS, 4096)
    assert torch.equal(back.embeddings[:, :5], f.embeddings) and not back.embeddings[:, 5:].any()
    assert np.array_equal(back.uncertainty, f.uncertainty) and np.array_equal(back.rows, np.arange(6))
    assert not list(tmp_path.glob("tocf/.*tmp*"))


def test_compact_round_trip_dtypes_and_padding(tmp_path):
    f = _files()
    p = ex.write_compact(tmp_path / "t.safetensors", f, ITEMS, n_train=6, meta={"teacher": "x"})
    back, meta = ex.read_compact(p, ITEMS, n_train=6)
    assert meta == {"teacher": "x"}
    assert back.rank.dtype == np.int64 and np.array_equal(back.rank, f.rank)
    np.testing.assert_allclose(back.confidence, f.confidence, rtol=1e-3, atol=1e-3)
    assert back.embeddings.dtype == torch.float32 and back.embeddings.shape == (ITEMS, 4096)
    folder = ex.compact_to_tocf(p, tmp_path / "tocf", ITEMS, n_train=6)
    again = ex.read_tocf(folder, ITEMS, n_train=6)
    assert np.array_equal(again.rank, f.rank)


@pytest.mark.parametrize("break_it, needle", [
    (lambda f: setattr(f, "rows", np.array([0, 1, 2, 4, 3, 5])), "rows.txt: row 3: field 'rows'"),
    (lambda f: f.rank.__setitem__((2, 1), ITEMS), "myrank_train.txt: row 2: field 'rank'"),
    (lambda f: f.rank.__setitem__((4, 0), -1), "myrank_train.txt: row 4: field 'rank'"),
    (lambda f: f.confidence.__setitem__((5, 2), np.nan), "confidence_train.txt: row 5: field 'confidence'"),
    (lambda f: f.confidence.__setitem__((1, 2), np.inf), "confidence_train.txt: row 1: field 'confidence'"),
    (lambda f: f.embeddings.__setitem__((7, 0), float("inf")), "all_embeddings.pt: row 7: field 'embeddings'"),
    (lambda f: f.uncertainty.__setitem__(3, -1.0), "uncertainty_train.txt: row 3: field 'uncertainty'"),
])
def test_refused_at_write(tmp_path, break_it, needle):
    f = _files()
    break_it(f)
    with pytest.raises(DataError, match=needle.replace(".", r"\.")):
        ex.write_tocf(tmp_path / "a", f, ITEMS, n_train=6)
    with pytest.raises(DataError, match=r"a\.safetensors: row \d: field '" + needle.split("'")[1]):
        ex.write_compact(tmp_path / "a.safetensors", f, ITEMS, n_train=6)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.safetensors").exists()


def test_refused_at_read(tmp_path):
    f = _files()
    folder = ex.write_tocf(tmp_path / "a", f, ITEMS, n_train=6)
    with pytest.raises(DataError, match=r"rows\.txt: field 'rows': expected 7 rows aligned"):
        ex.read_tocf(folder, ITEMS, n_train=7)
    lines = (folder / "confidence_train.txt").read_text().splitlines()
    lines[3] = " ".join(["nan"] * 4)
    (folder / "confidence_train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"confidence_train\.txt: row 3"):
        ex.read_tocf(folder, ITEMS, n_train=6)
    p = ex.write_compact(tmp_path / "c.safetensors", f, ITEMS, n_train=6)
    with pytest.raises(DataError, match="item_num"):
        ex.read_compact(p, ITEMS - 25, n_train=6)
    with pytest.raises(DataError, match=r"c\.safetensors: row 0: field 'rows': expected train row 1 here"):
        ex.read_compact(p, ITEMS, expect_rows=np.arange(1, 7))


def test_float16_overflow_refused(tmp_path):
    f = _files()
    f.confidence[2, 0] = 1e6
    with pytest.raises(DataError, match="row 2: field 'confidence': expected values representable in float16"):
        ex.write_compact(tmp_path / "c.safetensors", f, ITEMS)


def test_ranking_from_scores():
    s = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0]])
    r, c = ex.ranking_from_scores(s, 2)
    assert r.tolist() == [[1, 2], [0, 2]]
    np.testing.assert_allclose(np.exp(-c).sum(1) < 1, True)
    r2, _ = ex.ranking_from_scores(s, 2, item_ids=torch.tensor([[7, 8, 9], [4, 5, 6]]))
    assert r2.tolist() == [[8, 9], [4, 6]]


def test_cli_materialises_tocf(tmp_path):
    p = ex.write_compact(tmp_path / "c.safetensors", _files(), ITEMS, n_train=6)
    assert ex.main([str(p), str(tmp_path / "tocf"), "--item_num", str(ITEMS), "--n_train", "6"]) == 0
    assert ex.read_tocf(tmp_path / "tocf", ITEMS, n_train=6).embeddings.shape == (ITEMS, 4096)


def test_committed_exports_read_back():
    """Every compact export in the results store reads back whole: 50,800 aligned LastFM train rows, ids in range."""
    from reimpl.paths import ROOT

    found = sorted(p for p in (ROOT / "results" / "teachers").glob("*.safetensors")
                   if not p.name.endswith((".ckpt.safetensors", ".adapter.safetensors", ".uncertainty.safetensors")))
    if not found:
        pytest.skip("no committed teacher export")
    for p in found:
        files, meta = ex.read_compact(p, 4606, n_train=50800)
        assert files.rank.shape[0] == 50800 and files.embeddings.shape == (4606, 4096), p
        assert p.stat().st_size < 20e6 and meta["teacher"], p


def test_committed_loo_exports_read_back():
    """Leave-one-out exports (results/teachers/<dataset>/) align with their split's train rows, in order."""
    from reimpl.data.protocols import LOOConfig, build
    from reimpl.paths import DATA, ROOT
    from reimpl.teachers import ensemble

    every = sorted((ROOT / "results" / "teachers").glob("*-loo/*.safetensors"))
    found = [p for p in every if not p.name.endswith((ensemble.SUFFIX, ".adapter.safetensors"))]
    if not found:
        pytest.skip("no committed leave-one-out teacher export")
    if not DATA.is_dir():
        pytest.skip("needs ../shared/data")
    for p in found:
        ds = build(LOOConfig("ml-100k" if p.parent.name == "ml100k-loo" else "lastfm")).dataset
        files, meta = ex.read_compact(p, ds.item_num, n_train=ds["train"].n)
        assert p.stat().st_size < 20e6 and meta["teacher"], p
        side = ensemble.path_for(p)
        if side.is_file():   # an ensemble uncertainty beside the export (UAMD)
            assert ensemble.read(side, ds["train"].n).shape == (ds["train"].n,)
