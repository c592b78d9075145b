"""Leave-one-out protocol: rows per user, padding, equal-timestamp order, bad input, the real data sets."""

from __future__ import annotations

import numpy as np
import pytest

from reimpl.data.protocols import LOOConfig, build, leave_one_out, ml100k_sequences, to_student_data
from reimpl.data.types import DataError

I = 9


def _loo(seqs, **kw):
    return leave_one_out([np.asarray(s, dtype=np.int64) for s in seqs], list(range(len(seqs))), I,
                         LOOConfig(max_len=kw.pop("max_len", 3), **kw), "toy", "toy.txt")


def test_rows_of_one_user():
    d = _loo([[0, 1, 2, 3, 4]]).dataset
    pad = I
    assert d["test"].seqs.tolist() == [[1, 2, 3]] and d["test"].next.tolist() == [4]
    assert d["val"].seqs.tolist() == [[0, 1, 2]] and d["val"].next.tolist() == [3]
    assert d["train"].seqs.tolist() == [[0, pad, pad], [0, 1, pad]] and d["train"].next.tolist() == [1, 2]
    assert d["train"].lens.tolist() == [1, 2]


def test_short_users_dropped_and_named_or_refused():
    with pytest.warns(UserWarning, match=r"toy.txt: field 'user': 2 user\(s\) with fewer than 3"):
        d = _loo([[0, 1], [1, 2, 3], [4]])
    assert d.users == 1 and d.dropped["count"] == 2 and d.dropped["users"] == ["0", "2"]
    assert d.dataset["test"].n == 1
    with pytest.raises(DataError, match="fewer than 3 interactions"):
        _loo([[0, 1], [1, 2, 3]], short_users="raise")


def test_ids_outside_the_item_range():
    with pytest.raises(DataError, match=r"toy.txt: row 1: field 'item': expected item ids in \[0, 9\), got 9"):
        _loo([[0, 1, 2], [3, 9, 4]])


def test_equal_timestamps_keep_file_order(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("2\t5\t4\t100\n1\t3\t4\t50\n1\t7\t2\t50\n1\t1\t5\t10\n2\t2\t3\t90\n1\t4\t1\t60\n")
    seqs, users, item_num = ml100k_sequences(p)
    assert users == [1, 2] and item_num == 1682
    assert seqs[0].tolist() == [0, 2, 6, 3]  # t=10, then the two t=50 ratings in file order, then t=60
    assert ml100k_sequences(p, min_rating=3)[0][0].tolist() == [0, 2]
    bad = tmp_path / "bad.data"
    bad.write_text("1\t1700\t4\t1\n")
    with pytest.raises(DataError, match="field 'item'"):
        ml100k_sequences(bad)


def test_real_ml100k_and_lastfm(shared_dir):
    ml = build(LOOConfig("ml-100k", max_len=50), shared_dir)
    assert ml.users == 943 and ml.dataset["val"].n == ml.dataset["test"].n == 943
    assert ml.dataset["train"].n == 100_000 - 3 * 943 and ml.dataset.seq_len == 50
    fm = build(LOOConfig("lastfm"), shared_dir)
    assert fm.users == 1220 and fm.dataset["test"].n == 1220  # 976 train users + 122 val + 122 test
    data = to_student_data(fm.dataset)
    assert data.item_num == 4606 and data.train_seq.shape[1] == 10 and len(data.val.targets) == 1220
    assert build(LOOConfig("lastfm"), shared_dir).digest == fm.digest
