"""Popularity buckets and per-bucket metrics (reimpl/extensions/buckets.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.extensions.buckets import bucket_metrics, popularity_buckets
from reimpl.metrics import rank_metrics


def test_fixed_case():
    # item 3 most popular, then 1, then 0/2/4 (ties by id)
    b = popularity_buckets(np.array([3, 3, 3, 1, 1, 0, 2, 4, 3]), 10, shares=(0.1, 0.2))
    assert b.tolist() == [1, 1, 2, 0, 2, 2, 2, 2, 2, 2]
    m = bucket_metrics(np.array([1, 11, 3]), np.array([3, 0, 9]), b)
    assert m["head"] == {"ndcg": 1.0, "hr": 1.0, "n": 1}
    assert m["torso"]["hr"] == 0.0 and m["tail"]["ndcg"] == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 60), st.integers(1, 80), st.data())
def test_buckets_partition_and_pooled_metrics(item_num, n, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    b = popularity_buckets(rng.integers(0, item_num, 3 * n), item_num)
    assert set(np.unique(b)) <= {0, 1, 2} and (b == 0).sum() == round(0.2 * item_num)
    targets, ranks = rng.integers(0, item_num, n), rng.integers(1, item_num + 1, n)
    m = bucket_metrics(ranks, targets, b)
    assert sum(v["n"] for v in m.values()) == n
    pooled = sum(v["ndcg"] * v["n"] for v in m.values() if v["n"]) / n   # the buckets re-weigh to the whole
    assert pooled == pytest.approx(rank_metrics(ranks, (10,))["ndcg"][0])


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        popularity_buckets(np.array([0, 5]), 5)
    with pytest.raises(ValueError, match="must both be"):
        bucket_metrics(np.array([1, 2]), np.array([0]), np.zeros(3, dtype=int))


def test_pooled_reliability_pools_seeds_and_skips_incomplete_arms():
    from reimpl.extensions.buckets import pooled_reliability
    from reimpl.metrics import equal_mass_bins

    a = {"conf": [0.01, 0.5, 0.9], "correct": [0, 1, 1], "ranks": [3, 1, 1], "ece": 0.1}
    b = {"conf": [0.02, 0.7], "correct": [1, 0], "ranks": [1, 2], "ece": 0.2}
    per_arm = {"full": {1: {"selected": a}, 2: {"selected": b}},
               "old": {1: {"selected": {"ranks": [1], "ece": 0.0}}},   # ranks only: left out
               "resumed": {1: {"selected": a}, 2: {"selected": None}}}
    out = pooled_reliability(per_arm, n_bins=2)
    assert list(out) == ["full"] and out["full"]["seeds"] == 2 and out["full"]["rows"] == 5
    ref = equal_mass_bins(a["conf"] + b["conf"], a["correct"] + b["correct"], 2)
    np.testing.assert_array_equal(out["full"]["count"], [3, 2])   # sorted: .01 .02 .5 | .7 .9
    np.testing.assert_allclose(out["full"]["conf"], [0.53 / 3, 0.8])
    np.testing.assert_allclose(out["full"]["acc"], [2 / 3, 0.5])
    np.testing.assert_array_equal(out["full"]["acc"], ref["acc"])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 20), st.data())
def test_equal_mass_bins_cover_every_row_once(n, n_bins, data):
    from reimpl.metrics import equal_mass_bins

    c = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    y = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=float)
    b = equal_mass_bins(c, y, n_bins)
    assert b["count"].sum() == n and len(b["count"]) == min(n, n_bins) and np.ptp(b["count"]) <= 1
    assert np.all(np.diff(b["conf"]) >= -1e-12)                        # bins in confidence order
    np.testing.assert_allclose((b["count"] * b["acc"]).sum(), y.sum())


def test_reliability_figure_from_records(tmp_path):
    from reimpl.extensions.buckets import pooled_reliability
    from reimpl.extensions.engine_trial import plot_reliability

    sel = {"conf": [0.001, 0.01, 0.3], "correct": [0, 0, 1], "ranks": [5, 2, 1], "ece": 0.1}
    sections = [{"model": "SASRec", "reliability": pooled_reliability({"plain": {1: {"selected": sel}}})},
                {"model": "GRU", "reliability": {}}]
    name = plot_reliability("toy", sections, tmp_path)
    assert name == "ext_engine_reliability_toy.png" and (tmp_path / name).stat().st_size > 0
    assert plot_reliability("toy", sections[1:], tmp_path / "none") is None
