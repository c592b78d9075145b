"""DLLM2Rec student models (GRU4Rec, Caser, SASRec) with collaborative embedding injection.

State-dict names, shapes and parameter-initialization order equal the reference's
(DLLM2Rec ``main.py:43-195``, ``SASRecModules_ori.py``), so a reference state dict loads into these
models and vice versa, and the same ``torch.manual_seed`` gives the same initial weights.
"""

from reimpl.models.caser import Caser
from reimpl.models.gru import GRU
from reimpl.models.sasrec import SASRec

__all__ = ["GRU", "Caser", "SASRec"]
