"""iLoRA layout: ``{train_data,Val_data,Test_data}.df`` + ``id2name.txt`` (LastFM, Steam) or ``u.item`` (MovieLens).

Mirrors what the reference data modules read: file names per stage (iLoRA/data/lastfm_data.py:53-60),
hard-coded padding ids (lastfm_data.py:19 = 4606, movielens_data.py:18 = 1682, steam_data.py:18 = 3581),
``id2name.txt`` lines ``<id>::<name>`` (lastfm_data.py:64-70) and MovieLens titles from ``u.item`` with
1-based ids turned 0-based (movielens_data.py:73-80).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..deviations import Deviation, check_mode, declare
from .frames import frame_to_split, read_pickle_frame, select_splits, split_to_frame
from .id2name import read_id2name  # the one reader (re-exported by reimpl.data)
from .types import DataError, SeqDataset, SeqSplit, fail

FILES = {"train": "train_data.df", "val": "Val_data.df", "test": "Test_data.df"}
ITEM_NUM = {"lastfm": 4606, "movielens": 1682, "steam": 3581}  # = the reference's padding_item_id
SEQ_LEN = 10

declare(Deviation(
    id="ILORA-ID2NAME-SPLIT",
    system="iLoRA",
    ref="data/lastfm_data.py:68; data/steam_data.py:73",
    what="id2name.txt lines are split on every '::' and only field 1 kept, so a name containing '::' is cut "
         "(Steam id 354 'Depths of Fear :: Knossos' becomes 'Depths of Fear'; no LastFM name has '::')",
    why="the prompt shows a truncated artist name",
    fixed="split on the first '::' only; the whole name is kept",
    effect_note="titles only; tests/test_data_real.py::test_id2name_titles finds the affected ids (Steam: 1)",
))
declare(Deviation(
    id="ILORA-MOVIE-TITLE",
    system="iLoRA",
    ref="data/movielens_data.py:66-71,79",
    what="u.item titles lose their last 7 characters (meant to drop ' (1995)') and the first of ', The'/', A'/"
         "', An' found anywhere in the title is moved to the front; titles without a year are cut "
         "('unknown' -> '', 'Land Before Time III: ... (1995) (V)' -> '... Giving (19', three titles with a "
         "trailing space keep it: 'Two Friends (1986) ' -> 'Two Friends ')",
    why="5 of 1,682 titles are cut wrongly; an article is moved even when it is not the suffix",
    fixed="the raw u.item title field, unchanged",
    effect_note="titles only; tests/test_data_real.py::test_movielens_titles",
))


def _lines(path: Path, encoding: str) -> list[str]:
    """Lines without their newline; one trailing newline at the end of the file is allowed."""
    try:
        lines = path.read_text(encoding=encoding).split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e})") from e
    return lines[:-1] if lines and lines[-1] == "" else lines


def ilora_movie_title(raw: str) -> str:
    """The title transform iLoRA applies to a u.item name field (faithful; see ILORA-MOVIE-TITLE)."""
    s = raw[:-7]
    for art in (", The", ", A", ", An"):
        if art in s:
            return art[2:] + " " + s.replace(art, "")
    return s


def read_u_item(path: str | Path, mode: str = "faithful") -> dict[int, str]:
    """u.item (latin-1, ``id|title|...``) -> {id - 1: title}; faithful applies iLoRA's title transform."""
    check_mode(mode)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: title file missing")
    out: dict[int, str] = {}
    for i, line in enumerate(_lines(path, "latin-1")):
        parts = line.split("|")
        if len(parts) < 2:
            raise fail(path, "u.item", "'<id>|<title>|...'", line, row=i)
        try:
            k = int(parts[0]) - 1
        except ValueError:
            raise fail(path, "id", "an integer movie id (1-based)", parts[0], row=i) from None
        if k < 0 or k in out:
            raise fail(path, "id", "unique movie ids >= 1", parts[0], row=i)
        out[k] = ilora_movie_title(parts[1]) if mode == "faithful" else parts[1]
    return out


def read_titles(data_dir: Path, mode: str = "faithful") -> dict[int, str] | None:
    if (data_dir / "id2name.txt").is_file():
        return read_id2name(data_dir / "id2name.txt", mode)
    if (data_dir / "u.item").is_file():
        return read_u_item(data_dir / "u.item", mode)
    return None


def read_ilora_split(path: str | Path, name: str, item_num: int, seq_len: int = SEQ_LEN) -> SeqSplit:
    """One iLoRA ``*.df`` frame -> SeqSplit (ids, or ids + ratings for MovieLens tuples)."""
    path = Path(path)
    return frame_to_split(read_pickle_frame(path), path, name, item_num, seq_len)


def load_ilora(data_dir: str | Path, name: str | None = None, splits: tuple[str, ...] | None = None,
               item_num: int | None = None, seq_len: int = SEQ_LEN, mode: str = "faithful") -> SeqDataset:
    """An iLoRA data directory -> SeqDataset.

    name defaults to the directory name; item_num to the reference's hard-coded padding id for that name.
    splits None: every split file present (at least one); a named split whose file is absent raises.
    Titles (id2name.txt or u.item) must cover exactly ids 0..item_num-1: the reference draws negatives
    from the title keys (lastfm_data.py:47), so they are the item universe.
    """
    data_dir = Path(data_dir)
    name = name or data_dir.name
    if item_num is None:
        if name not in ITEM_NUM:
            raise DataError(f"{data_dir}: unknown iLoRA data set {name!r}; pass item_num (known: {sorted(ITEM_NUM)})")
        item_num = ITEM_NUM[name]
    out = {k: read_ilora_split(path, k, item_num, seq_len)
           for k, path in select_splits(data_dir, FILES, splits).items()}
    if any(s.seq_ratings is not None for s in out.values()):  # MovieLens: every split carries ratings
        for k, s in out.items():
            if s.seq_ratings is None:
                if s.n:
                    raise fail(s.source, "seq", "(item_id, rating) tuples like the other splits", s.seqs[0].tolist(),
                               row=0)
                out[k] = SeqSplit(s.name, s.seqs, s.lens, s.next, s.padding_id, s.item_num, s.source,
                                  s.seqs.copy(), s.next.copy())  # empty: no rows to tell
    titles = read_titles(data_dir, mode)
    if titles is not None and set(titles) != set(range(item_num)):
        missing = sorted(set(range(item_num)) - set(titles))[:5]
        extra = sorted(set(titles) - set(range(item_num)))[:5]
        raise fail(data_dir / ("id2name.txt" if (data_dir / "id2name.txt").is_file() else "u.item"), "id",
                   f"titles for exactly ids 0..{item_num - 1}", f"missing {missing}, extra {extra}")
    return SeqDataset(name=name, item_num=item_num, padding_id=item_num, seq_len=seq_len, splits=out,
                      titles=titles)


def write_id2name(titles: dict[int, str], path: str | Path) -> None:
    """{id: name} -> ``<id>::<name>`` lines in id order, UTF-8, newline-terminated (as shipped)."""
    for k, v in titles.items():
        if "\n" in v:
            raise fail(path, "title", "a title without newlines", v, row=k)
    Path(path).write_text("".join(f"{k}::{titles[k]}\n" for k in sorted(titles)), encoding="utf-8")


def write_ilora(ds: SeqDataset, out_dir: str | Path, u_item: str | Path | None = None) -> Path:
    """SeqDataset -> iLoRA layout in ``out_dir``: one ``*.df`` per split present, plus titles.

    Rated data sets (MovieLens) need the raw ``u.item`` (``u_item``), copied verbatim: the reference parses
    titles out of it; the titles dict cannot reproduce that file. Other data sets get ``id2name.txt`` from
    ``ds.titles`` (fixed-mode titles round-trip; faithful ones are already cut).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, s in ds.splits.items():
        if k not in FILES:
            raise DataError(f"{out_dir}: cannot write split {k!r} in the iLoRA layout (expected {list(FILES)})")
        split_to_frame(s).to_pickle(out_dir / FILES[k])
    rated = any(s.seq_ratings is not None for s in ds.splits.values())
    if u_item is not None:
        shutil.copyfile(u_item, out_dir / "u.item")
    elif rated:
        raise DataError(f"{out_dir}: a rated (MovieLens) data set needs u_item= (the raw u.item file)")
    elif ds.titles is not None:
        write_id2name(ds.titles, out_dir / "id2name.txt")
    return out_dir
