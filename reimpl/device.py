"""Where a model runs: its parameters' device, and its inputs moved there (the teachers' GPU path, ``--device``).

CPU runs are untouched (no device context, no copies); on CUDA a model method runs with its inputs moved to the
model's device and torch's default device set to it, so the tensors the method creates live there too. Callers
get back what the method returns (scores: they call ``.cpu()``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

DEVICES = ("cpu", "cuda")


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(x, device: torch.device):
    """A tensor, or the tensors of a dict / list / tuple, on ``device``; other values as they are."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def on_module_device(method):
    """Decorate an ``nn.Module`` method: off CPU, run it with its arguments' tensors on the module's device and
    that device as torch's default (for the tensors the method creates)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        dev = module_device(self)
        if dev.type == "cpu":
            return method(self, *args, **kwargs)
        with torch.device(dev):
            return method(self, *to_device(args, dev), **to_device(kwargs, dev))
    return run


def require_device(name: str) -> torch.device:
    """``name`` ('cpu' or 'cuda') as a device; a clear error where it is unknown or CUDA is absent."""
    if name not in DEVICES:
        raise ValueError(f"--device: expected one of {DEVICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False; "
                           f"torch {torch.__version__} built for CUDA {torch.version.cuda})")
    return torch.device(name)


def cuda_rng_state() -> dict:
    """The CUDA generator states where CUDA is in use (a resume that is exact on GPU needs them), else {}."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"cuda": torch.cuda.get_rng_state_all()}
    return {}


def set_cuda_rng_state(rng: dict) -> None:
    """Restore :func:`cuda_rng_state`'s states where CUDA is present (without it no CUDA op draws from them)."""
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
