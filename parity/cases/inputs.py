"""Input construction that gives the same bits on every x86-64 machine.

Case inputs are drawn with numpy's ``Generator`` (PCG64) in float64 and cast. Nothing here calls a
transcendental function: numpy dispatches ``exp``/``log``/``tanh`` to SIMD kernels that round
differently under AVX2 and AVX-512 (a softmax of the same draws gave another gate on each), and glibc
picks FMA variants of ``exp`` by CPU. Sums run in a fixed order (``np.add.accumulate``), never through
numpy's vectorized pairwise reduction. ``tests/test_parity_inputs.py`` regenerates every case's inputs
under each kernel set of ``parity/kernels.py`` and compares digests.
"""

from __future__ import annotations

import numpy as np


def simplex(rng: np.random.Generator, shape: tuple[int, ...], low: float = 0.05) -> np.ndarray:
    """``shape`` float64 rows on the probability simplex (last axis sums to 1): positive uniform draws
    in ``[low, 1)`` divided by their sequential sum. A gate/softmax stand-in with IEEE-exact ops only."""
    u = rng.uniform(low, 1.0, shape)
    return u / np.add.accumulate(u, axis=-1)[..., -1:]
