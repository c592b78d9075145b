"""Where everything lives: the one place that knows the repository layout and its environment overrides.

Every module (reimpl, parity, benchmarks, tests) imports its paths from here; none derives them from its
own ``__file__``. Layout, and the environment variable that moves each one:

=================  =============================================  =====================
name               default                                        override
=================  =============================================  =====================
``ROOT``           the checkout (the folder holding ``reimpl/``)   -
``SHARED``         ``ROOT/../shared`` (data, reference archives)  ``RECPARITY_SHARED``
``DATA``           ``SHARED/data`` (published data sets)          via ``SHARED``
``REF_DIR``        ``ROOT/ref_repositories`` (``make refs``)      -
``REFS_LOCK``      ``REF_DIR/refs.lock`` (pinned commits)         -
``RUNS``           ``ROOT/runs`` (run directories, resumable)     -
``REPORTS``        ``ROOT/reports`` (committed reports)           -
``cache_dir()``    ``ROOT/cache`` (derived models, read at call)  ``RECPARITY_CACHE``
=================  =============================================  =====================

Elsewhere: ``REF_SOURCE`` (folder of reference archives for ``make refs``, default ``SHARED/refs``;
``parity/materialize.py``) and ``FORCE=1`` (re-extract them).

``SHARED`` is read once, at import; ``cache_dir()`` reads ``RECPARITY_CACHE`` each call (tests point it at a
temporary folder). The reference checkout's own location is fixed: ``make refs`` verifies it file by file
against ``REFS_LOCK`` (``reimpl/refs_lock.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECPARITY_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
REF_DIR = ROOT / "ref_repositories"
REFS_LOCK = REF_DIR / "refs.lock"
RUNS = ROOT / "runs"
REPORTS = ROOT / "reports"


def cache_dir() -> Path:
    """Cache for derived artefacts (tiny models, converted checkpoints); ``RECPARITY_CACHE`` moves it."""
    return Path(os.environ.get("RECPARITY_CACHE", ROOT / "cache"))
