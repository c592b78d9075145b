"""Results store: ``results/<plan>/<run_id>.json``, one compact JSON record per *finished* run, committed to git.

A record holds what is needed to trust and reuse a run without re-training it:

* ``config``: the run's full configuration (engine + protocol), as the plan states it;
* ``data``: the protocol and ``digest`` (sha256 of the split arrays, :func:`reimpl.data.protocols.split_digest`);
* ``code``: git commit of the checkout and whether ``reimpl/`` had uncommitted changes;
* ``history``: per epoch ``loss``, ``train_s`` (wall), ``train_cpu_s`` (process CPU of the epoch's training
  loop; engine runs recorded from e462e88 on) and, at evaluated epochs, VAL/TEST ``hr``/``ndcg`` lists (at
  ``topk``) and ``mrr``; ``best_epoch``, ``stopped_early``, ``epochs_run``;
* ``timing`` (train / eval / wall seconds), ``threads``, ``platform``, ``finished_at``.

Writing is atomic (temporary file + rename), so a killed writer leaves no record a later run would trust; the
checkpoints a killed *run* resumes from live in ``runs/`` (a cache, git-ignored). :meth:`Store.get` refuses a
record whose config or data digest differs from what the plan asks for (:class:`RecordMismatch`), instead of
silently reusing another run's numbers.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

SCHEMA = 1


class RecordMismatch(ValueError):
    """A stored record does not belong to the plan entry asking for it (config or data digest differ)."""


def code_version(root: Path | None = None) -> dict:
    """``{"git": <commit or "unknown">, "dirty": bool}`` (dirty: uncommitted changes under ``reimpl/``)."""
    from reimpl.paths import ROOT

    root = root or ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "reimpl"], cwd=root, capture_output=True,
                               text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git": "unknown", "dirty": True}
    return {"git": head or "unknown", "dirty": bool(dirty)}


def platform_info() -> dict:
    """Where a run computed: the CPU (model name, and family / model number, since virtual machines often show only
    "AMD EPYC" for different generations), the kernel set torch dispatches to, core count, versions."""
    import torch

    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("model name", "cpu family", "model") and k not in cpu:
                cpu[k] = v.strip()
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": cpu.get("model name") or platform.processor(),
            "cpu_family": cpu.get("cpu family", ""), "cpu_model_number": cpu.get("model", ""),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "system": platform.system()}


def platform_text(rec: dict) -> str:
    """``"AMD EPYC (family 25 model 1, torch AVX2), 1 thread(s), torch 2.13.0+cpu"``; records written before the
    stamp had the family / model number and kernel set show the model name only."""
    p = rec["platform"]
    ids = ", ".join(x for x in (f"family {p['cpu_family']} model {p['cpu_model_number']}" if p.get("cpu_family")
                                else "", f"torch {p['torch_cpu_capability']}" if p.get("torch_cpu_capability")
                                else "") if x)
    return f"{p['cpu']}{f' ({ids})' if ids else ''}, {rec['threads']} thread(s), torch {p['torch']}"


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: {'missing in record' if k not in a else 'not in plan'}"
            d = _first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} in record, {len(b)} in plan"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} in record, {b!r} in plan"


def _json_normal(x):
    return json.loads(json.dumps(x))  # tuples -> lists, as a record read back has them


def make_record(*, plan: str, run_id: str, config: dict, data: dict, result: dict, threads: int,
                wall_s: float) -> dict:
    """A store record from an engine result (:func:`reimpl.engine.train.train`)."""
    return {"schema": SCHEMA, "plan": plan, "run_id": run_id, "config": _json_normal(config),
            "data": _json_normal(data), "code": code_version(), "history": _json_normal(result["history"]),
            "best_epoch": result["best_epoch"], "stopped_early": result["stopped_early"],
            "epochs_run": result["epochs_run"],
            "timing": {"train_s": result["train_s"], "eval_s": result["eval_s"], "wall_s": wall_s},
            "threads": threads, "platform": platform_info(),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


class Store:
    """Records under ``root/<plan>/<run_id>.json`` (default ``<checkout>/results``)."""

    def __init__(self, root: str | Path | None = None):
        from reimpl.paths import ROOT

        self.root = Path(root) if root is not None else ROOT / "results"

    def path(self, plan: str, run_id: str) -> Path:
        return self.root / plan / f"{run_id}.json"

    def get(self, plan: str, run_id: str, config: dict, digest: str) -> dict | None:
        """The finished record of ``run_id``, or None; raises :class:`RecordMismatch` if the stored record was
        made with another config or on other data than ``config`` / ``digest``."""
        p = self.path(plan, run_id)
        if not p.is_file():
            return None
        rec = self.read(p)
        d = _first_difference(rec.get("config"), _json_normal(config), "config")
        if d:
            raise RecordMismatch(f"{p}: field {d}; the record was made with another config than the plan's "
                                 "(move it away or give the run another id)")
        if rec.get("data", {}).get("digest") != digest:
            raise RecordMismatch(f"{p}: field data.digest: {rec.get('data', {}).get('digest')!r} in record, "
                                 f"{digest!r} in plan; the record was made on other data")
        return rec

    @staticmethod
    def read(p: Path) -> dict:
        try:
            rec = json.loads(Path(p).read_text())
        except json.JSONDecodeError as e:
            raise RecordMismatch(f"{p}: not a JSON record ({e})") from None
        for k in ("schema", "run_id", "config", "data", "history", "best_epoch"):
            if k not in rec:
                raise RecordMismatch(f"{p}: field {k!r} missing; expected a results record (schema {SCHEMA})")
        if rec["schema"] != SCHEMA:
            raise RecordMismatch(f"{p}: field schema: {rec['schema']!r}, expected {SCHEMA}")
        return rec

    def put(self, rec: dict) -> Path:
        """Write ``rec`` atomically; refuses to overwrite a different record of the same run id."""
        p = self.path(rec["plan"], rec["run_id"])
        if p.is_file():
            self.get(rec["plan"], rec["run_id"], rec["config"], rec["data"]["digest"])  # raises on mismatch
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n")
        os.replace(tmp, p)
        return p

    def records(self, plan: str) -> list[dict]:
        d = self.root / plan
        return [self.read(p) for p in sorted(d.glob("*.json"))] if d.is_dir() else []
