"""reimpl/extensions/rdr_view.py: rationale clusters, silhouette / 10-NN agreement, the stored view."""

from __future__ import annotations

import numpy as np
import pytest

from reimpl.extensions.rdr_view import knn_agreement, rationale_labels, rationale_view


def _blobs(n_per: int = 30, k: int = 3, d: int = 6, spread: float = 0.05, seed: int = 0):
    g = np.random.default_rng(seed)
    centers = np.eye(d)[:k]
    x = np.concatenate([c + spread * g.standard_normal((n_per, d)) for c in centers])
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(k), n_per)


def test_labels_recover_clusters_and_knn_agreement():
    v, truth = _blobs()
    lab = rationale_labels(v, k=3)
    # the same partition up to renaming
    assert len({(a, b) for a, b in zip(lab, truth)}) == 3
    assert knn_agreement(v, truth) == pytest.approx(1.0)
    g = np.random.default_rng(1)
    assert knn_agreement(g.standard_normal((90, 6)), truth) < 0.6
    with pytest.raises(ValueError, match="M >= k"):
        rationale_labels(v[:2], k=3)


def test_view_separates_grouped_from_random_representations():
    v, _ = _blobs()
    grouped = rationale_view(v @ np.random.default_rng(2).standard_normal((6, 8)), v, k=3, max_points=60)
    rand = rationale_view(np.random.default_rng(3).standard_normal((90, 8)), v, k=3, max_points=60)
    assert grouped["silhouette"] > 0.5 > abs(rand["silhouette"])
    assert grouped["knn_agree"] > 0.9 and rand["knn_agree"] < 0.6
    assert grouped["knn_chance"] == pytest.approx(1 / 3)
    assert len(grouped["points"]["xy"]) == 60 == len(grouped["points"]["label"]) and grouped["rows"] == 90
    assert sum(grouped["cluster_sizes"]) == 90
    with pytest.raises(ValueError, match="representations"):
        rationale_view(v[:10], v, k=3)


def test_report_views_read_records_and_view_files(tmp_path):
    import json

    from reimpl.extensions import engine_trial as et

    v, _ = _blobs()
    view = rationale_view(v, v, k=3, max_points=30)
    per_arm = {"rdr": {1: {"run_id": "a1", "rdr_view": view}, 2: {"run_id": "a2", "rdr_view": view}},
               "plain": {1: {"run_id": "p1"}}, "dllm2rec": {1: {"run_id": "d1"}}}
    p = et.view_path("p1", str(tmp_path))
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"rdr_view": view}))
    out = {x["arm"]: x for x in et.rationale_views(per_arm, str(tmp_path))}
    assert set(out) == {"rdr", "plain"} and out["rdr"]["n"] == 2 and out["plain"]["seeds"] == [1]
    assert out["rdr"]["silhouette"][0] == pytest.approx(view["silhouette"])
    name = et.plot_views("x", [{"model": "SASRec", "views": list(out.values())}], tmp_path / "fig")
    assert (tmp_path / "fig" / name).is_file()
    assert et.plot_views("x", [{"model": "SASRec", "views": []}], tmp_path / "fig") is None
    with pytest.raises(ValueError, match="arm must be plain or dllm2rec"):
        et.view_baseline("lastfm-loo", "rdr", 1)
