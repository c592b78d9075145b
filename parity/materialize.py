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
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF_DIR = ROOT / "ref_repositories"
LOCK = REF_DIR / "refs.lock"


class RefError(RuntimeError):
    """A reference checkout is missing, or differs from the lock."""


@dataclass(frozen=True)
class RefSpec:
    name: str
    url: str
    commit: str
    archive: str
    archive_sha256: str
    manifest: str
    absent_in_snapshot: tuple[str, ...] = field(default_factory=tuple)

    @property
    def path(self) -> Path:
        return REF_DIR / self.name

    def manifest_entries(self) -> dict[str, str]:
        out: dict[str, str] = {}
        mpath = REF_DIR / self.manifest
        for n, line in enumerate(mpath.read_text().splitlines(), 1):
            if not line.strip():
                continue
            digest, _, rel = line.partition("  ")
            if len(digest) != 64 or not rel:
                raise RefError(f"{mpath}:{n}: expected '<sha256>  <path>', got {line!r}")
            out[rel] = digest
        return out


def load_lock(path: Path | None = None) -> dict[str, RefSpec]:
    path = path or LOCK
    data = tomllib.loads(path.read_text())
    specs = {}
    for i, entry in enumerate(data.get("ref", [])):
        missing = {"name", "url", "commit", "archive", "archive_sha256", "manifest"} - set(entry)
        if missing:
            raise RefError(f"{path}: [[ref]] entry {i} lacks field(s) {sorted(missing)}")
        entry = dict(entry)
        entry["absent_in_snapshot"] = tuple(entry.get("absent_in_snapshot", ()))
        specs[entry["name"]] = RefSpec(**entry)
    if not specs:
        raise RefError(f"{path}: no [[ref]] entries")
    return specs


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(spec: RefSpec, path: Path | None = None) -> None:
    """Raise RefError unless ``path`` holds exactly the pinned snapshot."""
    path = path or spec.path
    if not path.is_dir():
        raise RefError(f"{path}: reference checkout missing; run `make refs`")
    git_dir = path / ".git"
    if git_dir.exists():
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        if head != spec.commit:
            raise RefError(f"{path}: git HEAD is {head or '?'}, lock pins {spec.commit}")
    expected = spec.manifest_entries()
    for rel, digest in expected.items():
        f = path / rel
        if not f.is_file():
            raise RefError(f"{path}: file {rel} listed in {spec.manifest} is missing")
        got = sha256_file(f)
        if got != digest:
            raise RefError(f"{path}: file {rel} has sha256 {got}, lock expects {digest} "
                           "(edited reference file? run `make refs FORCE=1`)")
    allowed = set(expected) | set(spec.absent_in_snapshot)
    for f in path.rglob("*"):
        if f.is_dir():
            continue
        rel = f.relative_to(path).as_posix()
        if rel.startswith(".git/") or rel == ".git":
            continue
        if rel not in allowed:
            raise RefError(f"{path}: unexpected file {rel} not in {spec.manifest} "
                           "(written into the reference checkout?); run `make refs FORCE=1`")


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
    shared = ROOT.parent / "shared" / "refs"
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
