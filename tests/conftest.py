"""Shared fixtures: locate ../shared and the reference checkouts, skip with a message where absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from reimpl.paths import SHARED

sys.dont_write_bytecode = True  # never write bytecode next to reference files

try:  # small kernels on 2 shared cores: one intra-op thread avoids oversubscription (and is deterministic)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (real data, refs, notes); skips the test where it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"needs ../shared/data beside the checkout (looked in {SHARED}); not present here")
    return SHARED


@pytest.fixture(scope="session")
def refs() -> dict[str, Path]:
    """Verified reference checkouts {name: path}; skips where `make refs` has not run."""
    from parity.materialize import RefError, load_lock, verify

    out = {}
    for name, spec in load_lock().items():
        try:
            verify(spec)
        except RefError as e:
            pytest.skip(f"needs reference checkout {name} (run `make refs`): {e}")
        out[name] = spec.path
    return out
