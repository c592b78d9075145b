"""``id2name.txt`` (iLoRA's LastFM and Steam titles): the project's one reader.

Format: one ``<id>::<name>`` line per item (``data/lastfm_data.py:64-70``, ``data/steam_data.py:69-75``); one
trailing newline at the end of the file is allowed, nothing else blank. ``faithful``: the name is the text
between the first and second ``::``, stripped, the reference's ``split('::')[1]`` (ILORA-ID2NAME-SPLIT, declared
in ``reimpl/data/ilora.py``); ``fixed``: everything after the first ``::``, stripped. No LastFM title holds
``::``, so both modes read LastFM alike (Steam: one title differs).
"""

from __future__ import annotations

from pathlib import Path

from ..deviations import check_mode
from .types import DataError, fail


def read_id2name(path: str | Path, mode: str = "faithful") -> dict[int, str]:
    """``{id: name}`` in file order; a DataError naming the file, row and field for a missing file, a line
    without ``::``, a non-integer id or a repeated id."""
    check_mode(mode)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: title file missing")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not utf-8 text ({e})") from e
    if lines and lines[-1] == "":
        lines = lines[:-1]
    out: dict[int, str] = {}
    for i, line in enumerate(lines):
        parts = line.split("::") if mode == "faithful" else line.split("::", 1)
        if len(parts) < 2:
            raise fail(path, "id2name", "'<id>::<name>'", line, row=i)
        try:
            k = int(parts[0])
        except ValueError:
            raise fail(path, "id", "an integer item id before '::'", parts[0], row=i) from None
        if k in out:
            raise fail(path, "id", "unique item ids", k, row=i)
        out[k] = parts[1].strip()
    return out
