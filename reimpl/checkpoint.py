"""Training checkpoints: one safetensors file (tensors) whose metadata holds the JSON state, written atomically.

Not in either reference (DLLM2Rec saves nothing; iLoRA relies on Lightning's ``torch.save``). Format:

* tensors: every ``torch.Tensor`` / ``numpy.ndarray`` found in the state (model, optimizer moments, RNG state),
  stored under generated keys ``t0, t1, ...``;
* ``__metadata__``: ``format`` (:data:`FORMAT`), ``kind`` (who wrote it, e.g. ``dllm2rec-student``), ``state``: the
  state as JSON with ``{"__tensor__": key}`` in place of each tensor (tuples, non-string dict keys and numpy
  arrays are tagged so that they come back as they went in; floats round-trip exactly through ``repr``).

Writing goes to ``.<name>.tmp-<pid>`` in the same folder, is fsynced, then ``os.replace``d over ``path`` and the
folder fsynced: a kill at any moment leaves either the previous complete checkpoint or the new one, never a mix
(a stale temp file is never read, and removed by the next complete save). No pickle is involved, so loading
runs no code.

Resume safety: the trainers store :func:`run_identity` (config, a digest of every array read from the data and
teacher files, the code version, the thread count) and :func:`check_resume` refuses a checkpoint whose identity
differs, listing every difference.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from reimpl.paths import ROOT

FORMAT = "recparity-checkpoint/1"
PACKAGE = ROOT / "reimpl"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, foreign, or written by a different run."""


# ------------------------------------------------------------------------------------------ (un)packing
def pack(obj, tensors: dict[str, torch.Tensor]):
    """Nested state -> JSON-able value; tensors are moved into ``tensors`` (cloned, contiguous, CPU)."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        # int64/float64 hold every numpy dtype used here exactly (e.g. the uint32 Mersenne-Twister state)
        wide = obj.astype(np.float64 if obj.dtype.kind == "f" else np.int64)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(wide))
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [pack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[pack(k, tensors), pack(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state: cannot store a {type(obj).__name__}")


def unpack(obj, tensors: dict[str, torch.Tensor]):
    """Inverse of :func:`pack`."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(unpack(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {unpack(k, tensors): unpack(v, tensors) for k, v in obj["__items__"]}
    return {k: unpack(v, tensors) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------ save / load
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:   # platforms without directory fds: the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: str | Path, state: dict, *, kind: str) -> Path:
    """Write ``state`` (nested dicts/lists/tuples of tensors, arrays and JSON values) to ``path`` atomically."""
    from safetensors.torch import save as st_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "kind": kind, "state": json.dumps(pack(state, tensors))}
    return write_bytes_atomic(path, st_save(tensors, metadata=meta))


def write_bytes_atomic(path: str | Path, blob: bytes) -> Path:
    """``blob`` -> ``.<name>.tmp-<pid>`` (fsynced) -> ``os.replace`` onto ``path`` -> fsync of the folder. Until the
    rename the previous file at ``path`` is untouched; a killed writer leaves at most the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):   # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    return path


def load(path: str | Path, *, kind: str) -> dict:
    """Read a checkpoint written by :func:`save` with the same ``kind``; anything else raises CheckpointError
    naming the path."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        raise CheckpointError(f"{path}: a torch.save archive, not a {FORMAT} checkpoint (written by an older "
                              "version?); delete it to start over")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); delete it to start "
                              "over") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format {meta.get('format')!r})")
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    try:
        return unpack(json.loads(meta["state"]), tensors)
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint state unreadable ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------- run identity
def digest(value) -> str:
    """sha256 of an array's dtype, shape and bytes (tensor or numpy), or of a JSON value."""
    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous().numpy()
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


def code_version(*subtrees: str) -> dict:
    """sha256 over the package sources that shape a run (``subtrees``: folders or files under reimpl/), and the
    torch version (kernels differ between releases)."""
    h = hashlib.sha256()
    for sub in sorted(subtrees):
        p = PACKAGE / sub
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(PACKAGE)).encode() + b"\0" + f.read_bytes())
    return {"reimpl_sha256": h.hexdigest(), "torch": torch.__version__}


def environment() -> dict:
    """What a run records about where it ran: torch intra-op threads and the platform."""
    return {"threads": torch.get_num_threads(), "platform": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}


def run_identity(config: dict, data: dict, code: dict) -> dict:
    """What must be equal for a resume to continue the same run (see :func:`check_resume`)."""
    return json.loads(json.dumps({"config": config, "data": data, "code": code,
                                  "threads": torch.get_num_threads()}, default=str))


def check_resume(path: str | Path, saved: dict | None, now: dict) -> None:
    """Raise CheckpointError listing every difference between the checkpoint's identity and this run's."""
    from deepdiff import DeepDiff

    if saved is None:
        raise CheckpointError(f"{path}: the checkpoint records no run identity; refusing to resume")
    diff = DeepDiff(saved, now, verbose_level=2)
    if diff:
        lines = "\n  ".join(diff.pretty().splitlines())
        raise CheckpointError(f"{path}: written by a different run; refusing to resume. From the checkpoint to "
                              f"this run:\n  {lines}\n(start over with another checkpoint path, or rerun with the "
                              "checkpoint's settings)")



def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text (metrics JSON, reports)."""
    return write_bytes_atomic(path, text.encode("utf-8"))
