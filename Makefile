# Every target that needs Python creates .venv from requirements.txt first, so `make study`
# and `make test` are the only commands a new user needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

MODEL ?= digits
STEPS ?= 4
TRIALS ?=
STORAGE ?=
NAME ?=

STAGE ?=
SAMPLER ?=
# QUICK=1: a first look in a minute or two (both stages, small): a study of its own,
# <model>-k<steps>-quick, which best/export/report/list then name with the same QUICK=1
QUICK ?=
QUICK_ARGS := --trials 32 --stage2-trials 24 --samples 300 --population 8 --min-samples 0
STUDY_NAME = $(or $(NAME),$(MODEL)-k$(STEPS)$(if $(QUICK),-quick))
STORAGE_ARG = $(if $(STORAGE),--storage $(STORAGE))

STUDY_ARGS := --model $(MODEL) --steps $(STEPS) --name $(STUDY_NAME) $(if $(QUICK),$(QUICK_ARGS)) \
	$(if $(STAGE),--stage $(STAGE)) $(if $(SAMPLER),--sampler $(SAMPLER)) \
	$(if $(TRIALS),--trials $(TRIALS)) $(STORAGE_ARG) $(ARGS)
# SAMPLER: stage 1's (evolutionary, tpe, cmaes, nsgaii, random; see BENCHMARKS.md)
# ARGS: any other study flags, e.g. ARGS="--checkpoint ~/64x64_diffusion.pt --compile"

.PHONY: study demo worker best export sample evaluate report dashboard list test test-readme test-fast lint bench bench-jobs train-digits train-digits-deep clean-venv

$(VENV)/.installed: requirements.txt requirements-adm.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

study: $(VENV)/.installed
	$(PY) -m autodiff_optuna study $(STUDY_ARGS)

# the whole flow in a minute or two: a QUICK=1 study of both stages, then its report
demo: $(VENV)/.installed
	$(MAKE) --no-print-directory study QUICK=1
	$(MAKE) --no-print-directory report QUICK=1

# One more worker on the same study: run it once per GPU or machine, against a shared
# PostgreSQL STORAGE (e.g. postgresql+psycopg://user:pass@host/db). Each stops at the total.
worker: $(VENV)/.installed
	$(PY) -m autodiff_optuna study $(STUDY_ARGS) --quiet

best: $(VENV)/.installed
	$(PY) -m autodiff_optuna best --name $(STUDY_NAME) $(STORAGE_ARG)

OUT ?=
export: $(VENV)/.installed
	$(PY) -m autodiff_optuna export --name $(STUDY_NAME) --out $(or $(OUT),schedule.json) $(STORAGE_ARG)

SCHEDULE ?= schedule.json
N ?= 64
sample: $(VENV)/.installed
	$(PY) -m autodiff_optuna sample --schedule $(SCHEDULE) --n $(N) --out $(or $(OUT),samples.png)

# the exported schedule on held-out noise no study searched, beside uniform and every fixed
# sampler a user could pick instead, each margin with its spread
evaluate: $(VENV)/.installed
	$(PY) -m autodiff_optuna evaluate --schedule $(SCHEDULE) --against-fixed

# reports/<NAME>/index.html: Optuna's plots, the schedules, masks, sample grids, top candidates
report: $(VENV)/.installed
	$(PY) -m autodiff_optuna report --name $(STUDY_NAME) $(STORAGE_ARG) \
		$(if $(ARTIFACTS),--artifacts $(ARTIFACTS))

# optuna-dashboard on 127.0.0.1:$(PORT), showing the report's sample grids under their trials
PORT ?= 8080
dashboard: $(VENV)/.installed
	$(PY) -m autodiff_optuna dashboard --port $(PORT) $(STORAGE_ARG) \
		$(if $(ARTIFACTS),--artifacts $(ARTIFACTS))

# the studies in STORAGE: model, steps, stages, trials, best and uniform FID
list: $(VENV)/.installed
	$(PY) -m autodiff_optuna list $(STORAGE_ARG)

# the suite over every core (pytest-xdist, at most 4 workers), one module a worker (module
# fixtures are made once) and one torch thread a worker (so workers do not oversubscribe the
# cores): within 5 minutes on an idle 2-core machine (BENCHMARKS.md, 'The test suite')
PYTEST_PARALLEL = -n auto --maxprocesses 4 --dist loadfile
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not readme"

# the tests not marked slow (no worker processes, browser, notebook kernel or test of ~1.2 s+):
# every module, within 90 s on an idle 2-core machine (BENCHMARKS.md, 'The test suite')
test-fast: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not slow and not readme"

# README's shell commands, run in a scratch folder at a small size (tests/test_readme.py);
# CI runs it after `make test`
test-readme: $(VENV)/.installed
	$(PY) -m pytest -q -m readme

# ruff's lint and import order (configured in pyproject.toml); CI runs it before the tests
lint: $(VENV)/.installed
	$(PY) -m ruff check autodiff_optuna bench tests

# PARTS re-measures only the named parts (see bench/run.py), e.g. PARTS="samplers multifidelity"
PARTS ?=
bench: $(VENV)/.installed
	$(PY) -m bench.run $(PARTS)

# The searches of PARTS (samplers, spacings_table, multifidelity, end_to_end; default all) as jobs,
# JOBS at a time, one torch thread each, then merged into bench/results.json and BENCHMARKS.md.
# Finished jobs are kept under BENCH_JOBS (one folder per commit): rerun to continue.
JOBS ?= 2
BENCH_JOBS ?= .bench-jobs/$(shell git rev-parse --short HEAD 2>/dev/null || echo local)
bench-jobs: $(VENV)/.installed
	$(PY) -m bench.jobs list $(PARTS) > /dev/null  # a bad PARTS stops here, not in the pipe
	$(PY) -m bench.jobs list $(PARTS) | OMP_NUM_THREADS=1 xargs -P $(JOBS) -L1 \
		$(PY) -m bench.jobs run $(BENCH_JOBS)
	$(PY) -m bench.jobs merge $(BENCH_JOBS)

train-digits: $(VENV)/.installed
	$(PY) -m autodiff_optuna.training.train_digits --part all

train-digits-deep: $(VENV)/.installed
	$(PY) -m autodiff_optuna.training.train_digits --model digits-deep --part ddpm

clean-venv:
	rm -rf $(VENV)
