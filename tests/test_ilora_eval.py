"""HR@1 / ValidRatio of generated answers (reimpl/ilora/evaluate.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reimpl.ilora.evaluate import first_line, hr1_valid_ratio


def test_fixed_case_faithful():
    gen = ["Radiohead", "I pick muse", "Muse and Queen", "nothing", "  QUEEN  "]
    real = ["Radiohead", "Muse", "Muse", "Blur", "Queen"]
    cans = [["Radiohead", "Blur"], ["Muse", "Blur"], ["Muse", "Queen"], ["Blur"], ["Queen", "Muse"]]
    r = hr1_valid_ratio(gen, real, cans, mode="faithful")
    assert r.valid == [True, True, False, False, True]
    assert r.correct == [True, True, False, False, True]
    assert r.valid_ratio == 3 / 5 and r.hr1 == 1.0 and r.metric == pytest.approx(3 / 5)


def test_substring_quirk_and_fix():
    # "Queen" is a substring of "Queens of the Stone Age" and "Muse" of "Museum": the reference
    # counts two matches -> invalid; fixed keeps only the whole-word, maximal match.
    gen = ["Queens of the Stone Age", "Museum of Love"]
    real = ["Queens of the Stone Age", "Museum of Love"]
    cans = [["Queen", "Queens of the Stone Age"], ["Muse", "Museum of Love"]]
    f = hr1_valid_ratio(gen, real, cans, mode="faithful")
    x = hr1_valid_ratio(gen, real, cans, mode="fixed")
    assert f.n_valid == 0 and f.hr1 == 0 and f.valid_ratio == 0
    assert x.n_valid == 2 and x.hr1 == 1.0
    # a standalone "Queen" next to the longer title still counts as a second match in fixed
    y = hr1_valid_ratio(["Queen, or Queens of the Stone Age"], ["Queen"], [cans[0]], mode="fixed")
    assert y.n_valid == 0


def test_first_line():
    assert first_line("  Muse\nBlur\n") == "Muse"
    assert first_line("\n\nMuse") == "Muse"


def test_errors():
    with pytest.raises(ValueError, match="same number of rows"):
        hr1_valid_ratio(["a"], ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no rows"):
        hr1_valid_ratio([], [], [])
    with pytest.raises(ValueError, match="list of titles"):
        hr1_valid_ratio(["a"], ["a"], ["abc"])
    with pytest.raises(ValueError, match="mode"):
        hr1_valid_ratio(["a"], ["a"], [["a"]], mode="other")


def test_matches_reference(refs):
    from parity.refs import ilora

    ref = ilora()
    gen = ["Radiohead", "Queens of the Stone Age", "muse", "", "Blur Muse"]
    real = ["Radiohead", "Queens of the Stone Age", "Muse", "Blur", "Blur"]
    cans = [["Radiohead", "Blur"], ["Queen", "Queens of the Stone Age"], ["Muse"], ["Blur"], ["Blur", "Muse"]]
    vr, hr = ref.MInterface.calculate_hr1(None, {"generate": gen, "real": real, "cans": cans})
    r = hr1_valid_ratio(gen, real, cans, "faithful")
    assert (r.valid_ratio, r.hr1) == (vr, hr)


titles = st.text(alphabet="abc ", min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(titles, st.lists(titles, min_size=1, max_size=4), st.integers(0, 3)),
                     min_size=1, max_size=6))
def test_properties(rows):
    gen = [g for g, _, _ in rows]
    cans = [c for _, c, _ in rows]
    real = [c[i % len(c)] for _, c, i in rows]
    for mode in ("faithful", "fixed"):
        r = hr1_valid_ratio(gen, real, cans, mode)
        assert 0 <= r.valid_ratio <= 1 and 0 <= r.hr1 <= 1
        assert r.n_correct <= r.n_valid <= r.n_rows == len(rows)
        assert all(v or not c for v, c in zip(r.valid, r.correct))
    # a generation equal to exactly one candidate (and containing no other) is valid and correct
    r = hr1_valid_ratio(["xyz"], ["xyz"], [["xyz", "qqq"]], "faithful")
    assert r.hr1 == 1 and r.valid_ratio == 1
