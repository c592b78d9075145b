"""DLLM2Rec reimplementation: students (``reimpl.models``), losses, weights, evaluation, training.

Importing this package declares its deviations (``reimpl.dllm2rec.deviations``).
"""

from reimpl.dllm2rec import deviations  # noqa: F401  (registers the DLLM2Rec deviations)
