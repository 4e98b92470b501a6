"""Issue 29's "fewer, better candidates": what stage 1's candidates and images buy.

Stage 1 decides a study's answer on the bundled models (its best is the export, or a stage-2
point no better held out). So this sweeps stage 1 alone (``study --stage 1``, one SQLite file
each) over how many candidates it evaluates and how many images each is scored on, on both
bundled models at K=4 and three search seeds, and scores the best (by confirmed FID, as ``best``
names it) on ``HELDOUT_SAMPLES`` images of the held-out noise stream, which no study searches
or confirms on. Stage 1 is deterministic for a seed, so the ``rung-125`` row is the preset
studies' own stage 1 until this round (BENCHMARKS.md's protocol table, code 4: "stage 1's
best").

    python -m bench.budget [JOB_DIR]           # every job not yet kept in JOB_DIR/jobs
                                               # (default /tmp/bench-budget); then results.json
                                               # ["stage1_budget"] and BENCHMARKS.md's section
    python -m bench.budget --shard I/N [DIR]   # only every N-th job from the I-th (0-based):
                                               # N processes share the machine; then
    python -m bench.budget --collect [DIR]     # the entry and the section from DIR's jobs
    python -m bench.budget --near-misses DB MODEL [N]   # a study's N pruned candidates with
                                               # the lowest FID at the first rung, held out

Measured per study: candidates evaluated, images sampled (a pruned candidate's prefix), images
confirmation sampled, CPU seconds of the study process, the best's schedule, its confirmed FID
and its held-out FID. One torch thread per process (``OMP_NUM_THREADS=1``) where two share
the cores.
"""

import json
import os
import resource
import sys
from pathlib import Path

import numpy as np

from bench.protocol import (
    HELDOUT_SAMPLES,
    HELDOUT_SEED,
    MODELS,
    SEEDS,
    STEPS,
    _HeldOut,
    confirmed_trials,
    evaluated_images,
)
from bench.solvers import _cli, _commit, kept_jobs_cli, measure_jobs

KEY = "stage1_budget"  # results.json's key
SECTION = "stage1-budget"  # BENCHMARKS.md's section
DEFAULT_DIR = Path("/tmp/bench-budget")
# name -> (stage-1 flags over the model's K=4 preset, what the row is). Every row names its
# first rung, so that it measures the same search whatever the preset prunes from.
R125 = ("--min-samples", "125")
CONFIGS = {
    "rung-125": (R125, "100 candidates x 1000 images, population 20, pruning from 125 images "
                       "(the preset until this round)"),
    "rung-250": (("--min-samples", "250"), "the same, pruning from 250 images (the preset now)"),
    "unpruned": (("--min-samples", "0"), "the same, no pruning"),
    "half-images": (("--samples", "500", *R125), "100 x 500, pruning from 125"),
    "quarter-images": (("--samples", "250", *R125), "100 x 250, pruning from 125"),
    "quarter-unpruned": (("--samples", "250", "--min-samples", "0"), "100 x 250, no pruning"),
    "half-candidates": (("--trials", "50", "--population", "10", *R125),
                        "50 x 1000, population 10, pruning from 125"),
    "more-images": (("--trials", "50", "--population", "10", "--samples", "2000", *R125),
                    "50 x 2000, population 10, pruning from 125 (the preset's images: fewer "
                    "candidates, each measured twice as finely)"),
    "cheap": (("--trials", "40", "--population", "10", "--samples", "500", *R125),
              "40 x 500, population 10, pruning from 125 (the cheaper protocol's stage 1)"),
    "tpe": (("--sampler", "tpe", *R125), "100 x 1000 driven by Optuna's TPESampler, pruning "
                                         "from 125"),
    "tpe-250": (("--sampler", "tpe", "--min-samples", "250"),
                "100 x 1000 driven by Optuna's TPESampler, pruning from 250 (as the preset now)"),
}
BASELINE = "rung-125"  # the preset when this was measured: each row's ratio is to it
MIN_POINTS = 5  # complete trials a rank correlation needs to be reported


def jobs() -> list[str]:
    """Seed by seed, so that the rows pair up early; digits first (faster)."""
    return [f"{model}:{config}:{seed}" for model in MODELS for seed in SEEDS
            for config in CONFIGS]


def _load(db: Path, model: str, steps: int = STEPS):
    """The stage-1 study of ``model`` at K=``steps`` in the SQLite file ``db``."""
    import optuna

    from autodiff_optuna.search.config import study_name

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=study_name(model, steps), storage=f"sqlite:///{db}")


def _stage1_costs(study, samples: int) -> dict:
    """Candidates evaluated, their images (a pruned one's prefix) and confirmation's images."""
    from autodiff_optuna.search.fidelity import is_evaluated

    evaluated = [t for t in study.get_trials(deepcopy=False) if is_evaluated(t)]
    confirmed = confirmed_trials(study)
    return {"candidates": len(evaluated), "search_images": evaluated_images(evaluated, samples),
            "confirmed_trials": confirmed, "confirmation_images": confirmed * samples}


def rung_agreement(study) -> dict | None:
    """How well the pruner's first rung ranks what it lets through: Spearman's correlation of
    the complete trials' FID at the first rung with their FID on all images, over all of them
    and over the better 60% (by the full FID), the ones the search breeds from. None without
    pruning. The complete trials are the rung's survivors, so this flatters the rung."""
    from optuna.trial import TrialState
    from scipy.stats import spearmanr

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.intermediate_values]
    if not complete:
        return None
    first = min(step for t in complete for step in t.intermediate_values)
    pairs = [(t.intermediate_values[first], t.values[0]) for t in complete
             if first in t.intermediate_values]
    cut = np.percentile([full for _, full in pairs], 60)
    better = [(rung, full) for rung, full in pairs if full <= cut]

    def spearman(points: list) -> float | None:  # too few points say nothing
        return float(spearmanr(*zip(*points)).statistic) if len(points) >= MIN_POINTS else None

    return {"rung": first, "trials": len(pairs), "better_trials": len(better),
            "spearman_all": spearman(pairs), "spearman_better": spearman(better)}


def stage1_run(model: str, steps: int, seed: int, flags, db: Path) -> dict:
    """``study --stage 1`` of the model's K=``steps`` preset with ``flags``, in a new SQLite
    file ``db``, measured: its CPU seconds, candidates and images, its best (by confirmed FID)
    with its held-out FID, and its first rung's rank agreement."""
    from autodiff_optuna.search.config import study_name

    db.unlink(missing_ok=True)
    url, name = f"sqlite:///{db}", study_name(model, steps)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _cli("study", "--model", model, "--steps", str(steps), "--seed", str(seed), "--storage", url,
         "--stage", "1", *flags, "--quiet")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    best = json.loads(_cli("best", "--name", name, "--storage", url, "--json"))
    point = best["best"]
    point["heldout_fid"] = _HeldOut(model).fid(point, best["solver"])
    study = _load(db, model, steps)
    cost = _stage1_costs(study, best["samples"])
    return {"cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            **cost, "images": cost["search_images"] + cost["confirmation_images"], "best": point,
            "first_rung": rung_agreement(study), "commit": _commit()}


# every row bred in generations of 20, as both K=4 presets did then (digits-k4: 10 since)
POPULATION = ("--population", "20")


def study_job(model: str, config: str, seed: int, folder: Path) -> dict:
    flags = (*POPULATION, *CONFIGS[config][0])  # a config's own population comes last: it wins
    run = {"model": model, "config": config, "seed": seed, "flags": list(flags),
           **stage1_run(model, STEPS, seed, flags, folder / f"{model}-{config}-s{seed}.db")}
    print(f"  {model} {config} seed {seed}: {run['images']:,} images, best "
          f"{run['best']['timesteps']} held out {run['best']['heldout_fid']:.3f}", flush=True)
    return run


def collect(done: dict, machine: str) -> dict:
    return {"machine": machine, "heldout_samples": HELDOUT_SAMPLES, "heldout_seed": HELDOUT_SEED,
            "steps": STEPS, "configs": {k: [list(f), d] for k, (f, d) in CONFIGS.items()},
            "runs": sorted(done.values(), key=lambda r: (MODELS.index(r["model"]),
                                                         list(CONFIGS).index(r["config"]),
                                                         r["seed"]))}


def _run_job(job: str, folder: Path) -> dict:
    model, config, seed = job.split(":")
    return study_job(model, config, int(seed), folder)


def markdown(entry: dict) -> str:
    """The BENCHMARKS.md section from results.json's entry: per model and budget, the images a
    stage 1 spends and its best's held-out FID, seed by seed, against the baseline's (the
    preset when it was measured)."""
    lines = [f"Machine: {entry['machine']}.", "",
             f"Stage 1 alone (`study --stage 1`, K={entry['steps']}, the model's preset but for "
             "the flags named), three search seeds; the best by confirmed FID scored on "
             f"{entry['heldout_samples']} images of the held-out noise stream of seed "
             f"{entry['heldout_seed']}. Images: the candidates' (a pruned one's prefix) and "
             "confirmation's. x fewer and ratio: against the first row (the preset when this was "
             "measured), the ratio of held-out FIDs on the same seed. "
             "Measured as two processes (`--shard 0/2` and `1/2`) sharing the 2 cores, one torch "
             "thread each.", "",
             "| model | stage 1 | flags | images (mean) | x fewer | best held-out, seed by seed "
             "| mean | worst ratio | first rung: rank agreement, all / better 60% "
             "(mean over the studies with 5 such trials or more) | CPU s (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["config"], r["seed"]): r for r in entry["runs"]}
    for model in MODELS:
        preset = {s: by.get((model, BASELINE, s)) for s in SEEDS}
        preset_images = np.mean([r["images"] for r in preset.values() if r] or [np.nan])
        for config, (flags, what) in entry["configs"].items():
            runs = [by.get((model, config, s)) for s in SEEDS]
            if not any(runs):
                continue
            done = [r for r in runs if r]
            images = np.mean([r["images"] for r in done])
            held = ", ".join("-" if r is None else f"{r['best']['heldout_fid']:.2f}" for r in runs)
            ratios = [r["best"]["heldout_fid"] / preset[r["seed"]]["best"]["heldout_fid"]
                      for r in done if preset[r["seed"]]]
            lines.append(
                f"| {model} | {what} | {' '.join(flags) or '-'} | {images:,.0f} | "
                f"{preset_images / images:.1f} | {held} | "
                f"{np.mean([r['best']['heldout_fid'] for r in done]):.2f} | "
                f"{f'{max(ratios):.2f}x' if ratios else '-'} | {agreement_cell(done)} | "
                f"{np.mean([r['cpu_s'] for r in done]):.0f} |")
    return "\n".join(lines)


def agreement_cell(runs: list[dict]) -> str:
    """A table cell: the runs' mean first-rung rank agreement, all and better 60%, each with
    how many studies had enough trials for it."""
    rungs = [r["first_rung"] for r in runs if r.get("first_rung")]
    if not rungs:
        return "no pruning"

    def mean(key: str) -> str:
        values = [g[key] for g in rungs if g[key] is not None]
        return f"{np.mean(values):.2f} ({len(values)})" if values else "-"

    return f"{mean('spearman_all')} / {mean('spearman_better')} at {rungs[0]['rung']} images"


def save(entry: dict) -> None:
    from bench.run import save_part

    save_part(KEY, entry, SECTION, markdown(entry))


def measure(folder: Path = DEFAULT_DIR, names: list[str] | None = None) -> dict:
    return measure_jobs(Path(folder), jobs() if names is None else names, _run_job, collect)


def near_misses(db: Path, model: str, n: int = 15) -> None:
    """What the pruner stopped: the ``n`` pruned candidates of the study in ``db`` with the
    lowest FID at the first rung, each with its reports and its held-out FID, after the
    complete trials' first-rung FIDs (the values the pruner's percentile is taken over)."""
    from optuna.trial import TrialState

    from autodiff_optuna.search.results import stored_config

    study = _load(db, model)
    trials = study.get_trials(deepcopy=False)
    first = min((step for t in trials for step in t.intermediate_values), default=None)
    if first is None:
        print(f"{db}: no candidate reported at a rung (a study without pruning)")
        return
    complete = sorted(t.intermediate_values[first] for t in trials
                      if t.state == TrialState.COMPLETE and first in t.intermediate_values)
    print(f"complete trials' FID at {first} images: " + ", ".join(f"{v:.1f}" for v in complete))
    pruned = sorted((t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values),
                    key=lambda t: t.intermediate_values.get(first, np.inf))
    held, solver = _HeldOut(model), stored_config(study)["solver"]
    for trial in pruned[:n]:
        steps = [trial.params[f"t{i}"] for i in range(STEPS)]
        reports = ", ".join(f"{v:.1f} at {k}" for k, v in sorted(trial.intermediate_values.items()))
        fid = held.fid({"timesteps": steps, "skip": [[] for _ in steps]}, solver)
        print(f"  trial {trial.number} {steps}: {reports}; held out {fid:.2f}", flush=True)


def _usage() -> None:
    print("usage: python -m bench.budget [--shard I/N | --collect] [DIR], or --near-misses DB "
          "MODEL [N]", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as measured: two processes, a thread each
    args = sys.argv[1:]
    if args[:1] == ["--near-misses"]:
        if len(args) not in (3, 4) or not Path(args[1]).is_file() or not (
                args[3:] == [] or args[3].isdigit()):
            _usage()
        near_misses(Path(args[1]), args[2], int(args[3]) if args[3:] else 15)
        return
    kept_jobs_cli(args, jobs(), DEFAULT_DIR, measure, collect, save, _usage,
                  f"bench/results.json ({KEY}) and BENCHMARKS.md ({SECTION})")


if __name__ == "__main__":
    main()
