"""Configuration of a DLLM2Rec student run, with the reference's defaults (``main.py:13-40``).

Field names follow the reference's ``parse_args`` options (``num_negtive_items`` spelled as there),
so a reference command line maps one to one. Added fields (not in the reference) are marked.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass

from reimpl.cliconf import add_dataclass_arguments, require
from reimpl.cliconf import from_namespace as cli_from_namespace
from reimpl.deviations import check_mode

MODELS = ("SASRec", "GRU", "Caser")


@dataclass
class DLLM2RecConfig:
    model_name: str = "SASRec"
    data: str = "game"
    dropout_rate: float = 0.1
    batch_size: int = 256
    epoch: int = 1000
    hidden_factor: int = 64
    num_negtive_items: int = 1
    lr: float = 0.001
    l2_decay: float = 0.0
    num_filters: int = 16
    filter_sizes: tuple[int, ...] = (2, 3, 4)  # the reference takes the string "[2,3,4]" and eval()s it
    alpha: float = 1.0          # weight of the DRO loss (0 disables it)
    beta: float = 1.0           # DRO radius
    ed_weight: float = 0.2      # collaborative embedding injection (0 disables it)
    lam: float = 0.8            # ranking distillation (0 disables it)
    candidate_topk: int = 10
    gamma_position: float = 0.3
    gamma_confidence: float = 0.5
    gamma_consistency: float = 0.1
    beta2: float = 1.0          # parsed by the reference and never used (kept for CLI parity)
    # --- added: values the reference hard-codes ---
    seed: int = 2024            # set_seed(2024), main.py:286
    rank_temperature: float = 1.0  # `_lambda = 1`, main.py:437
    d_llm: int = 4096           # fc_4096_64 input / lookup width, main.py:62, :396
    patience: int = 10          # main.py:519
    num_heads: int = 1          # SASRec(..., num_heads=1)
    gru_layers: int = 1         # GRU(..., gru_layers=1)
    topk: tuple[int, ...] = (1, 5, 10, 20)  # main.py:301
    # --- added: run control ---
    eval_batch_size: int = 4096  # rows per evaluation forward (the reference runs a split at once)
    max_batches_per_epoch: int | None = None  # cap for smoke runs (None: int(N / batch_size))
    mode: str = "faithful"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.model_name not in MODELS:
            raise ValueError(f"--model_name: expected one of {MODELS}, got {self.model_name!r}")
        if isinstance(self.filter_sizes, str):
            self.filter_sizes = tuple(ast.literal_eval(self.filter_sizes))
        self.filter_sizes = tuple(int(x) for x in self.filter_sizes)
        self.topk = tuple(int(x) for x in self.topk)
        # options are checked before any work; each message names the flag (the reference checks none)
        for name in ("epoch", "batch_size", "eval_batch_size", "candidate_topk", "hidden_factor",
                     "num_negtive_items", "patience", "num_heads", "gru_layers", "num_filters", "d_llm"):
            require(getattr(self, name) >= 1, f"--{name}", "an integer >= 1", getattr(self, name))
        require(self.max_batches_per_epoch is None or self.max_batches_per_epoch >= 1, "--max_batches_per_epoch",
                "an integer >= 1 (or none)", self.max_batches_per_epoch)
        require(len(self.topk) > 0 and min(self.topk) >= 1, "--topk", "a non-empty list of cut-offs >= 1",
                list(self.topk))
        require(len(self.filter_sizes) > 0 and min(self.filter_sizes) >= 1, "--filter_sizes",
                "a non-empty list of sizes >= 1", list(self.filter_sizes))
        require(0 <= self.dropout_rate <= 1, "--dropout_rate", "a probability in [0, 1]", self.dropout_rate)

    @property
    def d_proj(self) -> int:
        """Output width of fc_4096_64: 64 hard-coded (faithful) or hidden_factor (fixed)."""
        return 64 if self.mode == "faithful" else self.hidden_factor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per config field (``--model_name`` and ``--model-name`` both accepted)."""
    add_dataclass_arguments(parser, DLLM2RecConfig, dashes=True)


def from_namespace(ns: argparse.Namespace) -> DLLM2RecConfig:
    return cli_from_namespace(DLLM2RecConfig, ns)
