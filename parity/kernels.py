"""Kernel sets and the platform fingerprint stamped into golden files.

The same reference code gives different float bits on different x86-64 CPUs because every numeric
library picks its SIMD kernels at run time: torch's ATen (``ATEN_CPU_CAPABILITY``), oneDNN's
convolutions (``ONEDNN_MAX_CPU_ISA``), MKL's BLAS (``MKL_ENABLE_INSTRUCTIONS``) and numpy's ufuncs
(``NPY_DISABLE_CPU_FEATURES``). A *kernel set* caps all of them at once, so one machine can run the
code paths another CPU would take. ``make test`` runs the parity suite under every set in
:data:`KERNEL_SETS` (``tests/test_parity_main.py``); ``python -m parity.drift`` measures, per case, how
far the reference's own outputs move between sets (``parity/drift.json``), which is what a case's
cross-platform tolerance is derived from.

Adding a kernel set: one entry below, ``{name: {ENV_VAR: value}}`` (capping only what the CPU has is
harmless: a library never runs above the machine's own capability), then ``python -m parity.drift``
and re-derive any case tolerance the new measurement exceeds (``docs/notes.md``, "Kernel sets").
"""

from __future__ import annotations

import json
import os
import platform
from functools import lru_cache

# name -> environment that selects it (read by each library at start-up: set it before the process starts)
KERNEL_SETS: dict[str, dict[str, str]] = {
    "default": {},
    "avx2": {
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
}
# further sets used only to measure drift (slower; not run by `make test`)
DRIFT_ONLY_SETS: dict[str, dict[str, str]] = {
    "no-vector": {
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ATEN_CPU_CAPABILITY": "default",
    },
}
CAP_VARS = ("NPY_DISABLE_CPU_FEATURES", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def env_for(name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without any cap variable, plus set ``name``'s."""
    sets = {**KERNEL_SETS, **DRIFT_ONLY_SETS}
    if name not in sets:
        raise KeyError(f"unknown kernel set {name!r}; known: {sorted(sets)}")
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CAP_VARS}
    env.update(sets[name])
    return env


def _cpu_model() -> tuple[str, str]:
    vendor = model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = val.strip()
                elif key == "model name" and not model:
                    model = val.strip()
                if vendor and model:
                    break
    except OSError:
        pass
    return vendor or platform.processor() or "unknown", model or platform.machine()


def _onednn_version() -> str:
    import torch

    for line in torch.__config__.show().splitlines():
        if "MKL-DNN" in line or "oneDNN" in line:
            return line.strip(" -")
    return "unknown"


def _mkl_version() -> str:
    import torch

    for line in torch.__config__.show().splitlines():
        if "Math Kernel Library" in line:
            return line.strip(" -")
    return "none"


def _numpy_features() -> dict[str, list[str]]:
    try:
        from numpy._core import _multiarray_umath as m
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as m  # type: ignore[no-redef]
    on = {k for k, v in m.__cpu_features__.items() if v}
    return {"baseline": list(m.__cpu_baseline__), "dispatch_used": [t for t in m.__cpu_dispatch__ if t in on]}


@lru_cache(maxsize=1)
def fingerprint() -> dict:
    """Where this process computes: CPU, the SIMD level each library runs at, library builds, threads
    and the cap variables in force. Stamped into every golden file (metadata ``platform``)."""
    import numpy as np
    import torch

    vendor, model = _cpu_model()
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})"
                         for i in threadpool_info() if i.get("user_api") == "blas") or "none"
    except ImportError:
        pass
    return {
        "cpu_vendor": vendor,
        "cpu_model": model,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy_simd": _numpy_features(),
        "numpy_blas": blas,
        "mkl": _mkl_version(),
        "onednn": _onednn_version(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "caps": {k: os.environ[k] for k in CAP_VARS if k in os.environ},
    }


def kernel_key(fp: dict) -> str:
    """What decides the float bits: two processes with the same key compute the same numbers. The CPU model
    is part of it (MKL and oneDNN choose kernels by model, not by instruction set alone)."""
    keep = ("cpu_vendor", "cpu_model", "torch_cpu_capability", "numpy_simd", "mkl", "onednn", "torch_threads",
            "torch", "numpy", "caps")
    return json.dumps({k: fp.get(k) for k in keep}, sort_keys=True)


def describe(fp: dict) -> str:
    """One line for a message: ``AMD EPYC, torch AVX512, numpy X86_V4+..., caps {...}``."""
    caps = fp.get("caps") or {}
    simd = "+".join((fp.get("numpy_simd") or {}).get("dispatch_used", [])) or "baseline"
    return (f"{fp.get('cpu_model', '?')} ({fp.get('cpu_vendor', '?')}), torch {fp.get('torch_cpu_capability', '?')}, "
            f"numpy {simd}, {fp.get('torch_threads', '?')} thread(s)"
            + (f", caps {' '.join(f'{k}={v}' for k, v in sorted(caps.items()))}" if caps else ""))
