"""The lock of the pinned reference repositories (``ref_repositories/refs.lock``): read it, verify a checkout.

reimpl needs this to record which reference commit a run compared against (``reimpl.baselines.runner``);
fetching and extracting the checkouts is the harness's job (``parity/materialize.py``, ``make refs``),
which builds on the reader here. Lock format (TOML), one table per repository::

    [[ref]]
    name = "DLLM2Rec"                 # folder under ref_repositories/
    url = "https://github.com/..."    # clone source of last resort
    commit = "<40 hex>"               # pinned commit
    archive = "DLLM2Rec.tar.gz"       # tarball name under ../shared/refs or REF_SOURCE
    archive_sha256 = "<64 hex>"
    manifest = "manifests/DLLM2Rec.sha256"   # '<sha256>  <path>' per file, relative to the lock's folder
    absent_in_snapshot = ["..."]      # optional: files a checkout may hold that the snapshot lacks (LFS)
"""

from __future__ import annotations

import hashlib
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from reimpl.paths import REFS_LOCK

REQUIRED = ("name", "url", "commit", "archive", "archive_sha256", "manifest")


class RefError(RuntimeError):
    """A reference checkout is missing, or differs from the lock."""


@dataclass(frozen=True)
class RefSpec:
    """One ``[[ref]]`` entry; ``ref_dir`` is the folder holding the lock (checkouts and manifests live there)."""
    name: str
    url: str
    commit: str
    archive: str
    archive_sha256: str
    manifest: str
    absent_in_snapshot: tuple[str, ...] = field(default_factory=tuple)
    ref_dir: Path = REFS_LOCK.parent

    @property
    def path(self) -> Path:
        return self.ref_dir / self.name

    def manifest_entries(self) -> dict[str, str]:
        out: dict[str, str] = {}
        mpath = self.ref_dir / self.manifest
        for n, line in enumerate(mpath.read_text().splitlines(), 1):
            if not line.strip():
                continue
            digest, _, rel = line.partition("  ")
            if len(digest) != 64 or not rel:
                raise RefError(f"{mpath}:{n}: expected '<sha256>  <path>', got {line!r}")
            out[rel] = digest
        return out


def load_lock(path: Path | None = None) -> dict[str, RefSpec]:
    """``{name: RefSpec}`` from the lock at ``path`` (default ``ref_repositories/refs.lock``)."""
    path = Path(path or REFS_LOCK)
    data = tomllib.loads(path.read_text())
    specs = {}
    for i, entry in enumerate(data.get("ref", [])):
        missing = set(REQUIRED) - set(entry)
        if missing:
            raise RefError(f"{path}: [[ref]] entry {i} lacks field(s) {sorted(missing)}")
        entry = dict(entry)
        entry["absent_in_snapshot"] = tuple(entry.get("absent_in_snapshot", ()))
        specs[entry["name"]] = RefSpec(**entry, ref_dir=path.parent)
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
    """Raise RefError unless ``path`` (default: the checkout) holds exactly the pinned snapshot."""
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

