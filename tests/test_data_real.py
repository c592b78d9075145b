"""The published data sets (../shared/data): measured facts, exact round trips, the MovieLens split rule."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reimpl.data import SeqDataset, load_dllm2rec, load_ilora, read_u_item, write_dllm2rec, write_ilora
from reimpl.data.convert import check_movielens, ilora_to_dllm2rec, main
from reimpl.data.movielens import build_movielens, read_u_data, row_match, users_of_split

pytestmark = pytest.mark.shared

# name -> (loader dir, {split: N}, item_num, seq_len)
FACTS = {
    "lastfm": ("ilora/lastfm", {"train": 50800, "val": 122, "test": 122}, 4606, 10),
    "movielens": ("ilora/movielens", {"val": 94, "test": 95}, 1682, 10),
    "steam": ("ilora/steam", {"test": 1194}, 3581, 10),
    "game": ("dllm2rec/game", {"val": 14980, "test": 14980}, 17408, 10),
}


def _load(shared: Path, name: str, mode: str = "faithful"):
    sub = FACTS[name][0]
    return load_dllm2rec(shared / "data" / sub) if sub.startswith("dllm2rec") else load_ilora(
        shared / "data" / sub, mode=mode)


@pytest.fixture(scope="module")
def datasets(shared_dir):
    return {n: _load(shared_dir, n) for n in FACTS}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_facts(datasets, name):
    _, sizes, item_num, seq_len = FACTS[name]
    ds = datasets[name]
    assert {k: s.n for k, s in ds.splits.items()} == sizes
    assert ds.item_num == ds.padding_id == item_num and ds.seq_len == seq_len
    for s in ds.splits.values():  # len_seq rule (also enforced by validation): max(1, #non-padding)
        nonpad = (s.seqs != s.padding_id).sum(1)
        assert (s.lens == np.maximum(1, nonpad)).all()


def test_len_seq_rule_details(datasets):
    tr = datasets["lastfm"]["train"]
    empty = (tr.seqs == 4606).all(1)
    assert empty.sum() == 976 and (tr.lens[empty] == 1).all()  # one all-padding row per train user
    assert (datasets["steam"]["test"].seqs == 3581).all(1).sum() == 1
    for name in ("lastfm", "movielens", "game"):
        for k in ("val", "test"):
            assert not (datasets[name][k].seqs == datasets[name].padding_id).all(1).any()
    ml = datasets["movielens"]
    assert set(np.unique(ml["val"].seq_ratings[ml["val"].seqs != 1682])) <= {3, 4, 5}


def test_dllm2rec_csv_byte_exact(shared_dir, datasets, tmp_path):
    write_dllm2rec(datasets["game"], tmp_path)
    src = shared_dir / "data" / "dllm2rec" / "game"
    for f in ("val_data.csv", "test_data.csv"):
        assert filecmp.cmp(tmp_path / f, src / f, shallow=False), f
    assert pd.read_pickle(tmp_path / "data_statis.df").equals(pd.read_pickle(src / "data_statis.df"))


@pytest.mark.parametrize("name", ["lastfm", "movielens", "steam"])
def test_ilora_frames_roundtrip_exact(shared_dir, name, tmp_path):
    src = shared_dir / "data" / FACTS[name][0]
    ds = load_ilora(src, mode="fixed")
    write_ilora(ds, tmp_path, u_item=src / "u.item" if name == "movielens" else None)
    for f in ("train_data.df", "Val_data.df", "Test_data.df"):
        if not (src / f).exists():
            continue
        a, b = pd.read_pickle(tmp_path / f), pd.read_pickle(src / f)
        assert a.equals(b[list(a.columns)]), f
        for x, y in zip(a["seq"], b["seq"]):  # element types too (np.int64 tuples, Python-int padding)
            assert [type(e) if not isinstance(e, tuple) else tuple(map(type, e)) for e in x] == \
                   [type(e) if not isinstance(e, tuple) else tuple(map(type, e)) for e in y]
    titles = "u.item" if name == "movielens" else "id2name.txt"
    assert filecmp.cmp(tmp_path / titles, src / titles, shallow=False)
    assert load_ilora(tmp_path, name=name, mode="fixed") == ds


def test_id2name_titles(shared_dir):
    diffs = {}
    for name in ("lastfm", "steam"):
        faithful = _load(shared_dir, name).titles
        fixed = _load(shared_dir, name, mode="fixed").titles
        diffs[name] = {k for k in fixed if fixed[k] != faithful[k]}
    assert diffs == {"lastfm": set(), "steam": {354}}  # deviation ILORA-ID2NAME-SPLIT
    assert _load(shared_dir, "steam").titles[354] == "Depths of Fear"


def test_movielens_titles(shared_dir):
    faithful = read_u_item(shared_dir / "data" / "ml-100k" / "u.item")
    raw = read_u_item(shared_dir / "data" / "ml-100k" / "u.item", mode="fixed")
    assert len(faithful) == 1682 and faithful[0] == "Toy Story" and raw[0] == "Toy Story (1995)"
    assert faithful[266] == "" and raw[266] == "unknown"  # deviation ILORA-MOVIE-TITLE
    assert faithful[1634] == "Two Friends " and faithful[1411].endswith("Giving (19")


def test_lastfm_to_dllm2rec(shared_dir, datasets, tmp_path):
    ilora_to_dllm2rec(shared_dir / "data" / "ilora" / "lastfm", tmp_path / "data" / "lastfm")
    back = load_dllm2rec(tmp_path / "data" / "lastfm")
    assert back.splits.keys() == {"train", "val", "test"} and back.item_num == 4606
    assert all(back[k] == datasets["lastfm"][k] for k in back.splits)
    tr = pd.read_pickle(tmp_path / "data" / "lastfm" / "train_data.df")
    assert tr.index.equals(pd.RangeIndex(50800))
    assert main(["ilora-to-dllm2rec", "--src", str(shared_dir / "data" / "ilora" / "lastfm"),
                 "--out", str(tmp_path / "cli")]) == 0
    assert filecmp.cmp(tmp_path / "cli" / "data" / "lastfm" / "val_data.csv",
                       tmp_path / "data" / "lastfm" / "val_data.csv", shallow=False)


def test_movielens_builder_reproduces_shipped_rows(shared_dir):
    """With the shipped frames' users, the introsort tie-break reproduces all 189 rows (order, ratings, len_seq)."""
    res = check_movielens(shared_dir / "data" / "ml-100k" / "u.data", shared_dir / "data" / "ilora" / "movielens")
    assert res["introsort"] == {"val": (94, 94), "test": (95, 95)}
    assert res["stable"]["val"][0] < 94 and res["stable"]["test"][0] < 95  # file-order ties do not


def test_movielens_builder_full(shared_dir, tmp_path):
    r = read_u_data(shared_dir / "data" / "ml-100k" / "u.data")
    assert len(r) == 100000 and len(np.unique(r.user)) == 943
    ds = build_movielens(r, seed=0)
    assert (ds["val"].n, ds["test"].n) == (94, 95)
    assert ds["train"].n + ds["val"].n + ds["test"].n <= int((r.rating >= 3).sum())
    shipped = load_ilora(shared_dir / "data" / "ilora" / "movielens")
    assert row_match(ds["val"], shipped["val"]) < 94  # a different (seeded) user draw
    # CLI, DLLM2Rec layout (the iLoRA writer pickles 68k rows of np.int64 tuples: ~8 s, exercised below on val/test)
    rc = main(["build-movielens", "--u-data", str(shared_dir / "data" / "ml-100k" / "u.data"), "--out", str(tmp_path),
               "--users-from", str(shared_dir / "data" / "ilora" / "movielens"), "--layout", "dllm2rec"])
    assert rc == 0
    dl = load_dllm2rec(tmp_path / "dllm2rec" / "data" / "movielens")
    assert (dl["test"].seqs == shipped["test"].seqs).all() and dl["test"].seq_ratings is None
    assert dl["train"].n == 68389
    # iLoRA layout: the frames written for the shipped users equal the shipped frames (pandas equals)
    vu, tu = users_of_split(shipped["val"], r), users_of_split(shipped["test"], r)
    built = build_movielens(r, val_users=vu, test_users=tu)
    sub = SeqDataset("movielens", 1682, 1682, 10, {k: built[k] for k in ("val", "test")})
    write_ilora(sub, tmp_path / "il", u_item=shared_dir / "data" / "ml-100k" / "u.item")
    for f in ("Val_data.df", "Test_data.df"):
        a = pd.read_pickle(tmp_path / "il" / f)
        b = pd.read_pickle(shared_dir / "data" / "ilora" / "movielens" / f)
        assert a.equals(b), f
