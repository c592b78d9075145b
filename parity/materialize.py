"""Materialize and verify the pinned reference repositories (`make refs`).

Sources, in order of preference:
  1. ``REF_SOURCE=<dir>``: a folder holding ``<archive>`` tarballs (same layout as ../shared/refs).
  2. ``../shared/refs`` beside the checkout.
  3. ``git clone <url>`` + ``git checkout <commit>`` (needs network).

Every checkout is verified file by file against ``ref_repositories/manifests/<name>.sha256``;
a checkout whose commit or contents differ is refused with an error naming the file. Reference
files are never edited: the loader (``parity/refs.py``) reads them in place and never writes
bytecode next to them.

Usage: ``python -m parity.materialize [--force] [--check]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from reimpl import refs_lock
from reimpl.paths import REF_DIR, ROOT, SHARED
from reimpl.paths import REFS_LOCK as LOCK
from reimpl.refs_lock import RefError, RefSpec, sha256_file, verify  # noqa: F401 - the harness's API


def load_lock(path: Path | None = None) -> dict[str, RefSpec]:
    """``reimpl.refs_lock.load_lock`` on this module's ``LOCK`` (tests point it at a synthetic lock)."""
    return refs_lock.load_lock(path or LOCK)


def _extract(spec: RefSpec, archive: Path, dest: Path) -> None:
    got = sha256_file(archive)
    if got != spec.archive_sha256:
        raise RefError(f"{archive}: sha256 {got} differs from lock {spec.archive_sha256}")
    with tempfile.TemporaryDirectory(dir=REF_DIR) as tmp:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if not (m.name == spec.name or m.name.startswith(spec.name + "/")):
                    raise RefError(f"{archive}: member {m.name} is outside top folder {spec.name}/")
            tf.extractall(tmp, filter="data")
        verify(spec, Path(tmp) / spec.name)
        os.replace(Path(tmp) / spec.name, dest)


def _clone(spec: RefSpec, dest: Path) -> None:
    with tempfile.TemporaryDirectory(dir=REF_DIR) as tmp:
        work = Path(tmp) / spec.name
        subprocess.run(["git", "clone", "--quiet", spec.url, str(work)], check=True)
        subprocess.run(["git", "-C", str(work), "checkout", "--quiet", spec.commit], check=True)
        verify(spec, work)
        os.replace(work, dest)


def source_dir() -> Path | None:
    env = os.environ.get("REF_SOURCE")
    if env:
        p = Path(env)
        if not p.is_dir():
            raise RefError(f"REF_SOURCE={env} is not a directory")
        return p
    shared = SHARED / "refs"
    return shared if shared.is_dir() else None


def materialize(force: bool = False, log=print) -> dict[str, Path]:
    specs = load_lock()
    src = source_dir()
    out = {}
    for spec in specs.values():
        dest = spec.path
        if dest.exists() and not force:
            verify(spec, dest)  # idempotent: an existing, verified checkout is kept as is
            log(f"{spec.name}: verified {dest.relative_to(ROOT)} @ {spec.commit[:8]}")
            out[spec.name] = dest
            continue
        if dest.exists():
            shutil.rmtree(dest)
        if src is not None and (src / spec.archive).is_file():
            log(f"{spec.name}: extracting {src / spec.archive}")
            _extract(spec, src / spec.archive, dest)
        else:
            log(f"{spec.name}: no archive found; cloning {spec.url} @ {spec.commit[:8]}")
            _clone(spec, dest)
        log(f"{spec.name}: verified {dest.relative_to(ROOT)} @ {spec.commit[:8]}")
        out[spec.name] = dest
    return out


def available(name: str) -> bool:
    """True when ``ref_repositories/<name>`` exists and verifies against the lock."""
    try:
        verify(load_lock()[name])
        return True
    except RefError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="re-extract even if a checkout exists")
    ap.add_argument("--check", action="store_true", help="only verify existing checkouts")
    a = ap.parse_args(argv)
    try:
        if a.check:
            for spec in load_lock().values():
                verify(spec)
                print(f"{spec.name}: OK @ {spec.commit[:8]}")
        else:
            materialize(force=a.force or os.environ.get("FORCE") == "1")
    except (RefError, subprocess.CalledProcessError) as e:
        print(f"make refs: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
