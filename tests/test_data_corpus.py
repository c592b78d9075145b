"""Broken inputs are rejected with a DataError naming file, row and field (tests/data_corpus/ + built pickles)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reimpl.data import DataError, SeqDataset, SeqSplit, load_dllm2rec, load_ilora, read_id2name
from reimpl.data.dllm2rec import read_eval_csv, read_statis, write_dllm2rec
from reimpl.data.movielens import read_u_data
from reimpl.data.synthetic import synthetic_dataset, synthetic_split

CORPUS = Path(__file__).parent / "data_corpus"

# (file, row, field, a fragment of the expectation) for read_eval_csv(file, item_num=20, seq_len=5)
CSV_CASES = [
    ("csv_bad_literal.csv", 1, "seq", "list literal"),
    ("csv_ragged_seq.csv", 1, "seq", "5 entries"),
    ("csv_wrong_padding.csv", 0, "seq", "padding 20"),
    ("csv_id_out_of_range.csv", 1, "seq", "[0, 20)"),
    ("csv_missing_column.csv", None, "len_seq", "columns ['seq', 'len_seq', 'next']"),
    ("csv_nan_next.csv", 1, "next", "finite, integral"),
    ("csv_fractional_next.csv", 0, "next", "finite, integral"),
    ("csv_next_out_of_range.csv", 1, "next", "[0, 20)"),
    ("csv_len_mismatch.csv", 0, "len_seq", "max(1, #non-padding items) = 3"),
    ("csv_left_padded.csv", 0, "seq", "right-padded"),
    ("csv_short_row.csv", 0, "row", "3 fields"),
    ("csv_zero_len.csv", 0, "len_seq", "= 3"),
]


def _check(msg: str, path: Path | str, row: int | None, field: str, fragment: str) -> None:
    assert str(path) in msg, msg
    if row is not None:
        assert f": row {row}:" in msg, msg
    assert f"field '{field}'" in msg, msg
    assert fragment in msg, msg


@pytest.mark.parametrize("fname,row,field,fragment", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_corpus(fname, row, field, fragment):
    path = CORPUS / fname
    with pytest.raises(DataError) as e:
        read_eval_csv(path, "val", item_num=20, seq_len=5)
    _check(str(e.value), path, row, field, fragment)


@pytest.mark.parametrize("fname,row,field", [("id2name_no_separator.txt", 2, "id2name"),
                                             ("id2name_duplicate_id.txt", 2, "id")])
def test_id2name_corpus(fname, row, field):
    with pytest.raises(DataError) as e:
        read_id2name(CORPUS / fname)
    _check(str(e.value), CORPUS / fname, row, field, "")


@pytest.mark.parametrize("fname,row,field", [("u_data_three_fields.txt", 1, "line"),
                                             ("u_data_non_integer.txt", 1, "item"),
                                             ("u_data_zero_rating.txt", 0, "rating")])
def test_u_data_corpus(fname, row, field):
    with pytest.raises(DataError) as e:
        read_u_data(CORPUS / fname)
    _check(str(e.value), CORPUS / fname, row, field, "")


# ---- pickle-based cases, built here (pickles are tied to the pandas version) ----

def _frame(seqs, lens, nxt) -> pd.DataFrame:
    return pd.DataFrame({"seq": seqs, "len_seq": lens, "next": nxt})


GOOD = [[1, 2, 20, 20, 20], [3, 4, 5, 20, 20]]


def _ilora_dir(tmp_path: Path, df: pd.DataFrame, fname: str = "Val_data.df") -> Path:
    d = tmp_path / "toy"
    d.mkdir(exist_ok=True)
    df.to_pickle(d / fname)
    return d


PICKLE_CASES = {
    "wrong_padding": (_frame([[1, 2, 0, 0, 0], [3, 4, 5, 0, 0]], [2, 3], [7, 8]), 0, "len_seq", "= 5"),
    "ragged_seq": (_frame([GOOD[0], [3, 4, 5, 20]], [2, 3], [7, 8]), 1, "seq", "5 entries"),
    "out_of_range_id": (_frame([GOOD[0], [3, -1, 5, 20, 20]], [2, 3], [7, 8]), 1, "seq", "[0, 20)"),
    "nan_next": (_frame(GOOD, [2, 3], [7.0, np.nan]), 1, "next", "finite, integral"),
    "string_in_seq": (_frame([GOOD[0], [3, "4", 5, 20, 20]], [2, 3], [7, 8]), 1, "seq", "integer item id"),
    "bool_next": (_frame(GOOD, [2, 3], [True, 8]), 0, "next", "integer item id"),
    "next_out_of_range": (_frame(GOOD, [2, 3], [7, 20]), 1, "next", "[0, 20)"),
    "rated_next_not_tuple": (_frame([[(1, 4), (2, 5), (20, 0), (20, 0), (20, 0)]] * 2, [2, 2], [(7, 4), 8]),
                             1, "next", "(item_id, rating) tuple"),
    "rated_padding_rating": (_frame([[(1, 4), (2, 5), (20, 3), (20, 0), (20, 0)]], [2], [(7, 4)]),
                             0, "seq rating", "rating 0 at padding"),
}


@pytest.mark.parametrize("case", sorted(PICKLE_CASES))
def test_ilora_pickle_corpus(tmp_path, case):
    df, row, field, fragment = PICKLE_CASES[case]
    d = _ilora_dir(tmp_path, df)
    with pytest.raises(DataError) as e:
        load_ilora(d, name="toy", item_num=20, seq_len=5)
    _check(str(e.value), d / "Val_data.df", row, field, fragment)


def test_missing_column(tmp_path):
    d = _ilora_dir(tmp_path, pd.DataFrame({"seq": GOOD, "next": [7, 8]}))
    with pytest.raises(DataError) as e:
        load_ilora(d, name="toy", item_num=20, seq_len=5)
    _check(str(e.value), d / "Val_data.df", None, "len_seq", "columns ['seq', 'len_seq', 'next']")


def test_missing_split_file(tmp_path):
    d = _ilora_dir(tmp_path, _frame(GOOD, [2, 3], [7, 8]))
    with pytest.raises(DataError, match=re.escape(f"{d / 'train_data.df'}: split file missing")):
        load_ilora(d, name="toy", splits=("val", "train"), item_num=20, seq_len=5)
    with pytest.raises(DataError, match="no split file"):
        load_ilora(tmp_path / "empty_dir_that_does_not_exist", name="toy", item_num=20)
    with pytest.raises(DataError, match="split 'train' missing"):
        load_ilora(d, name="toy", item_num=20, seq_len=5)["train"]


def test_not_a_frame_and_corrupt_pickle(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    pd.to_pickle({"seq": GOOD}, d / "Val_data.df")
    with pytest.raises(DataError, match="expected a pandas DataFrame, got dict"):
        load_ilora(d, name="toy", item_num=20, seq_len=5)
    (d / "Val_data.df").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=re.escape(str(d / "Val_data.df")) + ".*not a readable pandas pickle"):
        load_ilora(d, name="toy", item_num=20, seq_len=5)


def test_unknown_name_needs_item_num(tmp_path):
    d = _ilora_dir(tmp_path, _frame(GOOD, [2, 3], [7, 8]))
    with pytest.raises(DataError, match="unknown iLoRA data set 'toy'; pass item_num"):
        load_ilora(d)


def test_titles_must_cover_items(tmp_path):
    d = _ilora_dir(tmp_path, _frame(GOOD, [2, 3], [7, 8]))
    (d / "id2name.txt").write_text("".join(f"{i}::t{i}\n" for i in range(19)))
    with pytest.raises(DataError,
                       match=r"id2name.txt: field 'id': expected titles for exactly ids 0..19.*missing \[19\]"):
        load_ilora(d, name="toy", item_num=20, seq_len=5)


def test_dllm2rec_statis_and_train_index(tmp_path):
    ds = synthetic_dataset(n_train=6, n_val=3, n_test=3, item_num=20, seq_len=10)
    d = write_dllm2rec(ds, tmp_path / "data" / "toy")
    pd.DataFrame({"seq_size": [10]}).to_pickle(d / "data_statis.df")
    with pytest.raises(DataError, match=re.escape(str(d / "data_statis.df")) + ": field 'item_num'"):
        load_dllm2rec(d)
    pd.DataFrame({"seq_size": [10], "item_num": [0]}).to_pickle(d / "data_statis.df")
    with pytest.raises(DataError, match="row 0: field 'item_num': expected a positive integer"):
        read_statis(d / "data_statis.df")
    pd.DataFrame({"seq_size": [10], "item_num": [20]}).to_pickle(d / "data_statis.df")
    tr = pd.read_pickle(d / "train_data.df")
    tr.index = tr.index[::-1]
    tr.to_pickle(d / "train_data.df")
    with pytest.raises(DataError, match="train_data.df: field 'index': expected 0..N-1"):
        load_dllm2rec(d)
    (d / "val_data.csv").unlink()
    with pytest.raises(DataError, match=re.escape(str(d / "val_data.csv")) + ": split file missing"):
        load_dllm2rec(d, splits=("val",))


def test_dllm2rec_seq_size_mismatch(tmp_path):
    ds = synthetic_dataset(n_train=4, n_val=2, n_test=2, item_num=20, seq_len=10)
    d = write_dllm2rec(ds, tmp_path / "toy")
    pd.DataFrame({"seq_size": [8], "item_num": [20]}).to_pickle(d / "data_statis.df")
    with pytest.raises(DataError, match=r"train_data.df: row 0: field 'seq': expected 8 entries"):
        load_dllm2rec(d)
    with pytest.raises(DataError, match=r"field 'seq_size': expected 10 .*main.py:384"):
        write_dllm2rec(synthetic_dataset(item_num=20, seq_len=7), tmp_path / "x")


def test_split_invariants_in_memory():
    s = synthetic_split(4, 20, 5, seed=1, min_len=2)
    with pytest.raises(DataError, match="field 'padding_id': expected padding id == item_num == 20"):
        SeqSplit("x", s.seqs, s.lens, s.next, padding_id=19, item_num=20)
    with pytest.raises(DataError, match="field 'seq': expected int64 array"):
        SeqSplit("x", s.seqs.astype(np.float64), s.lens, s.next, 20, 20)
    with pytest.raises(DataError, match=r"field 'next': expected int64 array of shape \(4,\)"):
        SeqSplit("x", s.seqs, s.lens, s.next[:3], 20, 20)
    with pytest.raises(DataError, match="both seq and next ratings, or neither"):
        SeqSplit("x", s.seqs, s.lens, s.next, 20, 20, seq_ratings=np.ones_like(s.seqs))
    with pytest.raises(DataError, match="item_num=30"):
        SeqDataset("d", 30, 30, 5, {"val": s})
    with pytest.raises(ValueError):
        s.seqs[0, 0] = 1  # arrays are read-only


def test_messages_say_expected_and_got():
    with pytest.raises(DataError) as e:
        read_eval_csv(CORPUS / "csv_id_out_of_range.csv", "val", item_num=20, seq_len=5)
    assert str(e.value) == (f"{CORPUS / 'csv_id_out_of_range.csv'}: row 1: field 'seq': expected item ids in "
                            "[0, 20) or padding 20 (position 1), got 25")
