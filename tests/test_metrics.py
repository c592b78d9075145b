"""reimpl/metrics.py: the one HR/NDCG/MRR implementation, its convention for a missed target, and its two
accumulation orders (numpy mean; row order = DLLM2Rec's calculate_hit, used by the faithful trainer)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.metrics import NO_RANK, rank_metrics, ranking_metrics


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=40))
def test_accumulation_orders_agree_to_rounding(ranks):
    a = rank_metrics(ranks)
    b = rank_metrics(np.asarray(ranks, dtype=np.int64), sequential=True)
    assert a["hr"] == b["hr"]  # integer counts: exact either way
    np.testing.assert_allclose(a["ndcg"], b["ndcg"], rtol=0, atol=1e-12)
    assert abs(a["mrr"] - b["mrr"]) < 1e-12


@pytest.mark.parametrize("sequential", [False, True])
def test_missed_and_unrankable_targets(sequential):
    for unrankable in (-1, 0, NO_RANK):  # the capture's -1, a 0, the trainer's NO_RANK: one convention
        m = rank_metrics(np.array([1, 3, 30, unrankable], dtype=np.int64), sequential=sequential)
        assert m["hr"] == [0.25, 0.5, 0.5, 0.5] and m["n"] == 4   # stays in N, never a hit
        assert m["ndcg"][0] == pytest.approx(0.25)
        assert m["ndcg"][1] == pytest.approx((1 + 1 / math.log2(4)) / 4)
        assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 30) / 4)    # beyond k: 1/rank; unrankable: 0


def test_one_cutoff_view_and_bad_input():
    m = rank_metrics([2, 11], (10,))
    assert ranking_metrics([2, 11], 10) == {"ndcg@10": m["ndcg"][0], "hr@10": m["hr"][0], "mrr": m["mrr"]}
    with pytest.raises(ValueError, match="non-empty"):
        rank_metrics([])
