"""`make refs`: archives are sha256-checked, checkouts verified file by file, edits/extra files refused,
REF_SOURCE honoured, re-running is idempotent. Uses small synthetic archives (no ../shared needed) plus
one check of the real pinned archives where ../shared/refs exists."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from parity import materialize as M


def _make_archive(root: Path, name: str, files: dict[str, bytes]) -> tuple[Path, str, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    archive = root / f"{name}.tar.gz"
    archive.write_bytes(buf.getvalue())
    manifest = "".join(f"{hashlib.sha256(d).hexdigest()}  {r}\n" for r, d in sorted(files.items()))
    return archive, hashlib.sha256(buf.getvalue()).hexdigest(), manifest


@pytest.fixture
def fake_lock(tmp_path, monkeypatch):
    ref_dir = tmp_path / "ref_repositories"
    (ref_dir / "manifests").mkdir(parents=True)
    src = tmp_path / "src"
    src.mkdir()
    files = {"main.py": b"print('ref')\n", "pkg/mod.py": b"x = 1\n"}
    archive, sha, manifest = _make_archive(src, "Toy", files)
    (ref_dir / "manifests" / "Toy.sha256").write_text(manifest)
    (ref_dir / "refs.lock").write_text(
        '[[ref]]\nname = "Toy"\nurl = "https://example.invalid/toy"\ncommit = "' + "a" * 40 + '"\n'
        f'archive = "Toy.tar.gz"\narchive_sha256 = "{sha}"\nmanifest = "manifests/Toy.sha256"\n'
        'absent_in_snapshot = ["big.df"]\n')
    monkeypatch.setattr(M, "REF_DIR", ref_dir)
    monkeypatch.setattr(M, "LOCK", ref_dir / "refs.lock")
    monkeypatch.setattr(M, "ROOT", tmp_path)
    monkeypatch.setenv("REF_SOURCE", str(src))
    return ref_dir, src, archive


def test_extract_verify_idempotent(fake_lock):
    ref_dir, _, _ = fake_lock
    out = M.materialize(log=lambda m: None)
    assert (out["Toy"] / "pkg" / "mod.py").read_bytes() == b"x = 1\n"
    M.materialize(log=lambda m: None)  # second run: verifies, keeps the checkout
    (ref_dir / "Toy" / "big.df").write_bytes(b"lfs content")  # listed as absent_in_snapshot: accepted
    M.verify(M.load_lock(M.LOCK)["Toy"])


def test_edited_missing_and_extra_files_are_refused(fake_lock):
    ref_dir, _, _ = fake_lock
    M.materialize(log=lambda m: None)
    spec = M.load_lock(M.LOCK)["Toy"]
    (ref_dir / "Toy" / "main.py").write_text("print('edited')\n")
    with pytest.raises(M.RefError, match="main.py has sha256"):
        M.verify(spec)
    M.materialize(force=True, log=lambda m: None)  # FORCE=1 re-extracts
    (ref_dir / "Toy" / "pkg" / "__pycache__").mkdir()
    (ref_dir / "Toy" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    with pytest.raises(M.RefError, match="unexpected file pkg/__pycache__/mod.cpython-311.pyc"):
        M.verify(spec)
    M.materialize(force=True, log=lambda m: None)
    (ref_dir / "Toy" / "pkg" / "mod.py").unlink()
    with pytest.raises(M.RefError, match="pkg/mod.py listed in manifests/Toy.sha256 is missing"):
        M.materialize(log=lambda m: None)


def test_archive_with_wrong_sha_is_refused(fake_lock):
    _, _, archive = fake_lock
    archive.write_bytes(archive.read_bytes() + b"\0")
    with pytest.raises(M.RefError, match="differs from lock"):
        M.materialize(log=lambda m: None)


def test_missing_ref_source_dir_is_an_error(fake_lock, monkeypatch, tmp_path):
    monkeypatch.setenv("REF_SOURCE", str(tmp_path / "nope"))
    with pytest.raises(M.RefError, match="REF_SOURCE"):
        M.materialize(log=lambda m: None)


def test_pinned_archives_match_the_lock(shared_dir):
    for spec in M.load_lock().values():
        archive = shared_dir / "refs" / spec.archive
        assert M.sha256_file(archive) == spec.archive_sha256, archive
