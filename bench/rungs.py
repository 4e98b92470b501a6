"""Which first rung the presets at K = 3, 6 and 8 prune from: 125 images or 250.

The K=4 digits presets prune from 250 images since ``bench/budget.py`` measured that at 125 FID
hardly ranks the better candidates (and the pruner stopped good ones). This runs the other
digits presets' stage 1 (``study --stage 1``, one SQLite file each) with each first rung, three
search seeds, and scores each best (by confirmed FID) on the held-out noise, as
``bench/budget.py`` does: the evidence a preset's ``min_samples`` rests on (``digits-k3`` and
``digits-deep-k8`` prune from 250 since).

    python -m bench.rungs [DIR]             # every job not yet kept in DIR/jobs (default
                                            # /tmp/bench-rungs); then results.json
                                            # ["preset_rungs"] and BENCHMARKS.md's section
    python -m bench.rungs --shard I/N [DIR] # only every N-th job from the I-th (0-based)
    python -m bench.rungs --collect [DIR]   # the entry and the section from DIR's jobs

One torch thread per process (``OMP_NUM_THREADS=1``) where two share the cores.
"""

import os
import sys
from pathlib import Path

import numpy as np

from bench.budget import agreement_cell, stage1_run
from bench.protocol import HELDOUT_SAMPLES, HELDOUT_SEED, SEEDS
from bench.solvers import kept_jobs_cli, measure_jobs

KEY = "preset_rungs"  # results.json's key
SECTION = "preset-rungs"  # BENCHMARKS.md's section
DEFAULT_DIR = Path("/tmp/bench-rungs")
PRESETS = (("digits", 3), ("digits", 6), ("digits", 8), ("digits-deep", 8))
RUNGS = (125, 250)  # first rungs compared; the first is what these presets pruned from


def jobs() -> list[str]:
    """Preset by preset and seed by seed, so that the rungs pair up early; the slowest
    (digits-deep, K=8) last."""
    return [f"{model}:{steps}:{rung}:{seed}" for model, steps in PRESETS for seed in SEEDS
            for rung in RUNGS]


def _run_job(job: str, folder: Path) -> dict:
    """One job, ``model:steps:rung:seed``: that preset's stage 1 pruning from ``rung``."""
    model, steps, rung, seed = job.split(":")
    flags = ("--min-samples", rung)
    run = {"model": model, "steps": int(steps), "rung": int(rung), "seed": int(seed),
           **stage1_run(model, int(steps), int(seed), flags,
                        folder / f"{model}-k{steps}-r{rung}-s{seed}.db")}
    print(f"  {model} K={steps} rung {rung} seed {seed}: {run['images']:,} images, best "
          f"{run['best']['timesteps']} held out {run['best']['heldout_fid']:.3f}", flush=True)
    return run


def collect(done: dict, machine: str) -> dict:
    """results.json's entry from the finished jobs (``done``: job name to run)."""
    return {"machine": machine, "heldout_samples": HELDOUT_SAMPLES, "heldout_seed": HELDOUT_SEED,
            "rungs": list(RUNGS),
            "runs": sorted(done.values(), key=lambda r: (
                PRESETS.index((r["model"], r["steps"])), r["rung"], r["seed"]))}


def markdown(entry: dict) -> str:
    """The BENCHMARKS.md section: per preset and first rung, the images stage 1 spends and its
    best's held-out FID seed by seed, with the ratio to the first rung's on the same seed."""
    base = entry["rungs"][0]
    lines = [f"Machine: {entry['machine']}.", "",
             "Stage 1 alone (`study --stage 1` of the preset, `--min-samples` the first rung), "
             "three search seeds; the best by confirmed FID scored on "
             f"{entry['heldout_samples']} images of the held-out noise stream of seed "
             f"{entry['heldout_seed']}. Images: the candidates' (a pruned one's prefix) and "
             f"confirmation's. Ratio: held-out FID against the same seed's from {base} images. "
             "Measured as two processes sharing the 2 cores, one torch thread each.", "",
             "| preset | first rung | images (mean) | best held-out, seed by seed | mean | ratio "
             f"to {base}, seed by seed | first rung: rank agreement, all / better 60% (mean over "
             "the studies with 5 such trials or more) | CPU s (mean) |",
             "|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["steps"], r["rung"], r["seed"]): r for r in entry["runs"]}
    for model, steps in dict.fromkeys((r["model"], r["steps"]) for r in entry["runs"]):
        for rung in entry["rungs"]:
            runs = [by.get((model, steps, rung, s)) for s in SEEDS]
            done = [r for r in runs if r]
            if not done:
                continue
            held = [None if r is None else r["best"]["heldout_fid"] for r in runs]
            ratios = []
            for s, fid in zip(SEEDS, held):
                first = by.get((model, steps, base, s))
                ratios.append("-" if fid is None or first is None
                              else f"{fid / first['best']['heldout_fid']:.2f}")
            lines.append(
                f"| {model}-k{steps} | {rung} | "
                f"{np.mean([r['images'] for r in done]):,.0f} | "
                + ", ".join("-" if f is None else f"{f:.2f}" for f in held) + " | "
                f"{np.mean([f for f in held if f is not None]):.2f} | {', '.join(ratios)} | "
                f"{agreement_cell(done)} | {np.mean([r['cpu_s'] for r in done]):.0f} |")
    return "\n".join(lines)


def save(entry: dict) -> None:
    from bench.run import save_part

    save_part(KEY, entry, SECTION, markdown(entry))


def measure(folder: Path = DEFAULT_DIR, names: list[str] | None = None) -> dict:
    return measure_jobs(Path(folder), jobs() if names is None else names, _run_job, collect)


def _usage() -> None:
    print("usage: python -m bench.rungs [--shard I/N | --collect] [DIR]", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as measured: two processes, a thread each
    kept_jobs_cli(sys.argv[1:], jobs(), DEFAULT_DIR, measure, collect, save, _usage,
                  f"bench/results.json ({KEY}) and BENCHMARKS.md ({SECTION})")


if __name__ == "__main__":
    main()
