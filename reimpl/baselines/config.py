"""Baseline plans as data: which data sets, students, sides, seeds and epoch cap a run matrix covers.

Every run trains a student *without* distillation: the reference's options ``--lam 0 --ed_weight 0
--alpha 0`` (DLLM2Rec ``main.py:30-34`` defaults are 1.0 / 0.2 / 0.8) turn off DRO, collaborative
embedding injection and ranking distillation, leaving the BCE loss with one sampled negative
(``main.py:407-417``). Everything else keeps the reference's defaults (``main.py:13-40``: batch 256,
hidden 64, lr 1e-3, dropout 0.1, patience 10 on TEST NDCG@20 in the reference).

Teacher hooks (issue 7 parts 2-3, not run here): a plan's ``student_args`` is the only place the
distillation options enter; a teacher-distilled plan sets ``lam``/``ed_weight``/``alpha`` and gives the
data set a ``tocf`` folder (``DatasetSpec.tocf_dir``), which ``data.prepare`` links next to ``data/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from reimpl.deviations import check_mode

SIDES = ("reference", "faithful", "fixed")
MODELS = ("SASRec", "GRU", "Caser")
NO_DISTILLATION = (("lam", 0.0), ("ed_weight", 0.0), ("alpha", 0.0))


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as both sides read it: ``<workdir>/data/<name>/`` (DLLM2Rec layout).

    source: ``ilora-lastfm`` (iLoRA's published LastFM train/val/test, re-laid out),
    ``ml-100k`` (built from raw ``u.data`` by ``reimpl.data``, val/test users = the published iLoRA ones),
    ``dllm2rec-game`` (DLLM2Rec's published Amazon Games val/test; no train split is published).
    train_rows: a seeded random slice of the train split (None: all rows); eval_rows likewise for
    val/test (None: all).
    """

    name: str
    label: str
    source: str
    train_rows: int | None = None
    eval_rows: int | None = None
    slice_seed: int = 0
    models: tuple[str, ...] | None = None   # None: the plan's models
    seeds: tuple[int, ...] | None = None    # None: the plan's seeds
    tocf_dir: str | None = None             # teacher files (tocf/<name>/); set by the runner from ``teacher``
    min_history: int = 0                    # train slice drawn from rows with >= this many history items
    teacher: str | None = None              # reimpl.baselines.teacher.TEACHERS key: export for this slice
    student_args: tuple[tuple[str, float], ...] | None = None   # None: the plan's (no distillation)
    variant: str = ""                       # key suffix, e.g. "kd" for the distilled twin of a slice

    def __post_init__(self) -> None:
        if self.source not in ("ilora-lastfm", "ml-100k", "dllm2rec-game"):
            raise ValueError(f"DatasetSpec.source: expected ilora-lastfm | ml-100k | dllm2rec-game, "
                             f"got {self.source!r}")

    @property
    def key(self) -> str:
        """Folder / run-id key: the name, plus the slice when sliced."""
        key = self.name
        if self.train_rows is not None or self.eval_rows is not None:
            key += f"-slice{self.train_rows or 'all'}x{self.eval_rows or 'all'}"
            if self.min_history:
                key += f"h{self.min_history}"
        return key + (f"+{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class RunSpec:
    """One training run: (data set, student, side, seed) under a plan's epoch cap."""

    dataset: DatasetSpec
    model: str
    side: str
    seed: int
    epochs: int
    student_args: tuple[tuple[str, float], ...] = NO_DISTILLATION

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"RunSpec.side: expected one of {SIDES}, got {self.side!r}")
        if self.side != "reference":
            check_mode(self.side)
        if self.model not in MODELS:
            raise ValueError(f"RunSpec.model: expected one of {MODELS}, got {self.model!r}")

    @property
    def run_id(self) -> str:
        return f"{self.dataset.key}__{self.model}__{self.side}__s{self.seed}__e{self.epochs}"


@dataclass(frozen=True)
class Plan:
    """A run matrix. Order of ``runs()``: data set, student, seed, side (complete rows appear early)."""

    name: str
    datasets: tuple[DatasetSpec, ...]
    models: tuple[str, ...] = MODELS
    sides: tuple[str, ...] = SIDES
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int = 10                 # cap, identical on every side (`--epoch` of main.py)
    threads: int = 1                 # OMP/MKL/torch threads per run, identical on every side
    jobs: int = 1                    # runs at once (1 for timed plans; quick uses 2 to fit CI)
    student_args: tuple[tuple[str, float], ...] = NO_DISTILLATION
    notes: tuple[str, ...] = field(default_factory=tuple)

    def undistilled_twin(self, ds: DatasetSpec) -> DatasetSpec:
        """The plan's data set that ``ds`` distils into (same slice, no teacher, no distillation arguments), or
        that spec itself when the plan does not list it."""
        base = dataclasses.replace(ds, teacher=None, student_args=None, variant="", tocf_dir=None)
        return next((d for d in self.datasets if d.key == base.key), base)

    def runs(self) -> list[RunSpec]:
        out = []
        for ds in self.datasets:
            if ds.source == "dllm2rec-game":
                continue  # no train split published: nothing to train (see report)
            for model in ds.models or self.models:
                for seed in ds.seeds or self.seeds:
                    for side in self.sides:
                        out.append(RunSpec(ds, model, side, seed, self.epochs,
                                           ds.student_args if ds.student_args is not None else self.student_args))
        return out


LASTFM = DatasetSpec("lastfm", "LastFM (iLoRA split)", "ilora-lastfm")
MOVIELENS = DatasetSpec("movielens", "ml-100k (built, iLoRA val/test users)", "ml-100k")
GAME = DatasetSpec("game", "Amazon Games (DLLM2Rec val/test)", "dllm2rec-game")

# DLLM2Rec's own defaults (main.py:30-39): DRO alpha 1.0, embedding injection 0.2, ranking distillation 0.8
DISTILLATION = (("lam", 0.8), ("ed_weight", 0.2), ("alpha", 1.0))


def distill_pair(ds: DatasetSpec, teacher: str, models: tuple[str, ...] | None = None,
                 seeds: tuple[int, ...] | None = None) -> tuple[DatasetSpec, DatasetSpec]:
    """(undistilled, distilled) twins of a slice: same rows, same seeds; the second reads the teacher."""
    plain = dataclasses.replace(ds, models=models, seeds=seeds)
    kd = dataclasses.replace(plain, teacher=teacher, student_args=DISTILLATION, variant="kd",
                             label=ds.label + ", distilled from the iLoRA teacher")
    return plain, kd


# make baseline-quick: small slices, proves the pipeline (data -> both sides -> stats -> report) in CI.
QUICK = Plan(
    name="quick",
    datasets=(DatasetSpec("lastfm", "LastFM slice", "ilora-lastfm", train_rows=768, eval_rows=64),
              *distill_pair(DatasetSpec("lastfm", "LastFM teacher slice", "ilora-lastfm", train_rows=256,
                                        eval_rows=64, min_history=1), "tiny", models=("SASRec",), seeds=(1,)),
              DatasetSpec("movielens", "ml-100k slice", "ml-100k", train_rows=768, eval_rows=64,
                          models=("GRU",), seeds=(1,)),
              GAME),
    seeds=(1, 2), epochs=2, jobs=2,
    notes=("slices: 768 train rows (3 batches of 256 per epoch), 64 val / 64 test rows, 2 epochs; LastFM: "
           "3 students x 2 seeds, ml-100k: GRU x 1 seed; a pipeline check, not a baseline",))

# make baseline: the full set, sized to about an hour on 2 shared CPU cores (see reports/baselines_agreement.md).
FULL = Plan(
    name="full",
    datasets=(LASTFM, MOVIELENS, GAME),
    seeds=(1, 2, 3), epochs=3,
    notes=("3 seeds: the minimum for a per-row std and a Welch test. 3 epochs: one epoch took 13-90 s per run "
           "(load-dependent) on 2 CPU cores shared with other jobs, and 54 runs had to fit in about an hour; "
           "`python -m reimpl.baselines run --plan full --epochs N` runs a longer cap (new run ids, cached beside "
           "these)",))

# make baseline-distill (issue 7 parts 2-3): the real SmolLM2 iLoRA teacher, trained on 320 rows, exports
# rankings for a 256-row student slice (rows with >= 1 history item: the teacher cannot place an empty
# history, see reimpl.baselines.teacher); students with and without distillation on that slice.
DISTILL = Plan(
    name="distill",
    datasets=distill_pair(DatasetSpec("lastfm", "LastFM 256-row train slice", "ilora-lastfm", train_rows=256,
                                      min_history=1), "smollm2-fixed"),
    seeds=(1, 2, 3), epochs=40, jobs=2,
    notes=("256 train rows: the teacher export (1 gated + 4 one-expert passes over 20 candidates per row, prompt "
           "KV-cached) measured 2-4 s per pass per row on this shared 2-core CPU, so 256 rows are about the most "
           "that fit the session; one epoch is int(256/256) = 1 batch, hence a 40-epoch cap; val/test: all 122 rows",))


# make baseline, part 1b: the 3-epoch full plan shows run-for-run agreement but not converged students; this plan
# trains the one student/data pair that fits the CPU budget much longer (each side's own early stopping applies).
LONG = Plan(
    name="long",
    datasets=(MOVIELENS,), models=("SASRec",), sides=("reference", "fixed"), seeds=(1, 2, 3), epochs=30, jobs=2,
    notes=("30-epoch cap with patience 10 (each side's own rule): about 14 s per reference epoch on ml-100k on an "
           "idle core, so 6 runs were planned at about 45 minutes; next to the teacher and the extension trial each "
           "run took 12-20 min; faithful is omitted because the full plan shows it identical to the reference run "
           "for run",))

PLANS = {"quick": QUICK, "full": FULL, "distill": DISTILL, "long": LONG}
