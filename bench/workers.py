"""Workers sharing one machine: trials per minute of 1 and 2 ``study`` workers on its cores.

Each arrangement runs stage 1 of a fresh study (digits, 4 steps, 1000 images a candidate, no
pruning, so every trial costs the same) with its workers started together on one SQLite file.
Throughput counts from the first trial's start to the last trial's end as the database records
them, so the workers' start-up is left out. The CLI gives torch as many threads as the process
may use (``OMP_NUM_THREADS``, else its CPU affinity); the arrangements set each worker's share.

    python -m bench.workers [--trials N]    # prints JSON; `python -m bench.run workers` stores it
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
NAME = "workers"
# (label, workers, OMP_NUM_THREADS of each; None: the CLI's own choice, the cores it may use)
ARRANGEMENTS = [
    ("1 worker, threads = cores", 1, None),
    ("2 workers, 1 thread each (OMP_NUM_THREADS=1)", 2, "1"),
    ("2 workers, threads = cores each (oversubscribed)", 2, None),
]


def run_arrangement(workers: int, threads: str | None, trials: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/workers.db"
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = threads
        argv = [sys.executable, "-m", "autodiff_optuna", "study", "--model", "digits", "--steps",
                "4", "--stage", "1", "--trials", str(trials), "--samples", "1000",
                "--min-samples", "0", "--population", "20", "--storage", url, "--name", NAME,
                "--quiet"]
        procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(workers)]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"a worker failed: {err.strip()[-500:]}")
        done = optuna.load_study(study_name=NAME, storage=url).get_trials(
            states=(TrialState.COMPLETE,))
        start = min(t.datetime_start for t in done)
        end = max(t.datetime_complete for t in done)
        seconds = (end - start).total_seconds()
        return {"trials": len(done), "seconds": seconds,
                "trials_per_minute": 60.0 * len(done) / seconds}


def measure(trials: int = 40) -> dict:
    return {"cores": len(os.sched_getaffinity(0)), "trials": trials,
            "arrangements": [{"label": label, "workers": workers, "omp_num_threads": threads,
                              **run_arrangement(workers, threads, trials)}
                             for label, workers, threads in ARRANGEMENTS]}


def render(result: dict) -> list[str]:
    base = result["arrangements"][0]["trials_per_minute"]
    return [
        f"{result['trials']} stage-1 trials of `digits`, 4 steps, 1000 images each, no pruning, "
        f"on {result['cores']} cores; each arrangement's workers share one SQLite study "
        "(`python -m bench.workers`).",
        "",
        "| workers | trials per minute | against one worker |",
        "|---|---|---|",
        *[f"| {a['label']} | {a['trials_per_minute']:.1f} | "
          f"{a['trials_per_minute'] / base:.2f}x |" for a in result["arrangements"]],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    print(json.dumps(measure(parser.parse_args().trials)))


if __name__ == "__main__":
    main()
