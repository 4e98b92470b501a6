"""Stage 1's stretch move (``--step-moves stretch``, ``search.variation.STRETCH_PROB``): the
digits presets' stage 1 with it and with the moves in noise levels alone (``--step-moves
noise``), at K = 3 (twenty search seeds) and 4 (eleven), each study's best scored on the five
held-out streams of ``bench/streams.py``.

    python -m bench.stretch [DIR]   # each missing job (DIR/jobs/k<K>-<variant>-s<seed>.json,
                                    # its study DIR/k<K>-<variant>/s<seed>.db: an interrupted run
                                    # resumes), every held-out FID kept in DIR/heldout.json; then
                                    # results.json["stretch"] and the BENCHMARKS.md section
                                    # "stretch"
    python -m bench.stretch --render   # the section again from results.json
"""

import json
import statistics
import sys
from pathlib import Path

from bench import three_steps
from bench.generations import _mean, _over_seeds, _row
from bench.noise_moves import _point as _steps
from bench.solvers import _commit
from bench.streams import KEY as STREAMS_KEY
from bench.streams import _Streams, paired

KEY, SECTION = "stretch", "stretch"
DEFAULT_DIR = Path("/tmp/bench-stretch")
MODEL, PRESET_STEPS, SEEDS = "digits", (3, 4), tuple(range(20))
# K=4's lanes were stopped once ten seeds had shown the move does not help there (seed 11's two
# jobs had finished; seed 10's had not)
SEEDS_OF = {4: (*range(10), 11)}
# variant -> (label, its flags after ``study --stage 1``; the rest is the preset's)
VARIANTS = {"off": ("moves in noise levels alone", ("--step-moves", "noise")),
            "on": ("with the stretch move", ("--step-moves", "stretch"))}


def run_jobs(folder: Path) -> None:
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    for seed in SEEDS:  # seed by seed, so that the variants pair up early
        for steps in PRESET_STEPS:
            if seed not in SEEDS_OF.get(steps, SEEDS):
                continue
            for variant, (_, flags) in VARIANTS.items():
                path = folder / "jobs" / f"k{steps}-{variant}-s{seed}.json"
                if not path.exists():
                    (folder / f"k{steps}-{variant}").mkdir(exist_ok=True)
                    db = folder / f"k{steps}-{variant}" / f"s{seed}.db"
                    path.write_text(json.dumps(_job(db, steps, seed, flags)))


def _job(db: Path, steps: int, seed: int, flags) -> dict:
    return {**three_steps._job(db, seed, flags, steps), "steps": steps}


def measure(folder: Path) -> dict:
    """Every kept job's best, scored on the held-out streams (kept in DIR/heldout.json)."""
    import optuna

    from autodiff_optuna.search.config import study_name
    from autodiff_optuna.search.results import check_config, study_result, study_solver

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    streams = _Streams(MODEL, folder / "heldout.json")
    from bench.run import machine

    entry = {"commits": [], "scored_at": _commit(), "machine": machine(), "studies": {}}
    for path in sorted((folder / "jobs").glob("k*-s*.json")):
        run = json.loads(path.read_text())
        if run["seed"] not in SEEDS_OF.get(run["steps"], SEEDS):
            continue
        variant = path.stem.split("-")[1]
        db = folder / f"k{run['steps']}-{variant}" / f"s{run['seed']}.db"
        study = optuna.load_study(study_name=study_name(MODEL, run["steps"]),
                                  storage=f"sqlite:///{db}")
        result = study_result(study)
        best, config = result.best, check_config(result.stage1)
        fids = streams.fids(best.timesteps, study_solver(config, best.rules))
        entry["studies"].setdefault(f"k{run['steps']}-{variant}", {})[str(run["seed"])] = {
            "timesteps": best.timesteps, "rules": best.rules, "gflops_share": 1.0,
            "search_fid": best.searched, "confirmed_fid": best.confirmed_fid, "fids": fids,
            "images": run["images"], "cpu_s": run["cpu_s"]}
        if run["commit"] not in entry["commits"]:
            entry["commits"].append(run["commit"])
    return entry


def markdown(entry: dict, streams: dict) -> str:
    ceiling = statistics.mean(streams["models"][MODEL]["ceiling"])
    lines = [f"Machine: {entry.get('machine', 'this CPU')} (the scoring); the studies ran one "
             "torch thread each, two at a time on its 2 cores.", "",
             f"Each FID is the mean over the {len(streams['streams'])} held-out streams of "
             f"`bench/streams.py` (1797 images each, against all 1797 real digits; the "
             f"100-step DDIM ceiling {ceiling:.2f}); a seed's difference is paired stream by "
             f"stream, ± its standard error over the streams; over seeds, the mean of the "
             f"seeds' differences ± its standard error over the seeds. Code "
             f"{', '.join(f'`{c}`' for c in entry['commits'])}. `python -m bench.stretch`.", ""]
    for steps in PRESET_STEPS:
        off, on = (entry["studies"].get(f"k{steps}-{v}", {}) for v in VARIANTS)
        common = [str(s) for s in SEEDS if str(s) in off and str(s) in on]
        if not common:
            continue
        lines += [f"**`digits-k{steps}`, stage 1 alone** (`study --stage 1`, the preset's 100 "
                  f"candidates at 1000 images)", "",
                  _row(["seed", "without: result", "held out", "with: result", "held out",
                        "with − without", "images (without → with)"]),
                  _row(["---"] * 7)]
        for seed in common:
            a, b = on[seed], off[seed]
            diff, se = paired(a["fids"], b["fids"])
            lines.append(_row([seed, _steps(b), f"{_mean(b):.2f}", _steps(a), f"{_mean(a):.2f}",
                               f"{diff:+.2f} ± {se:.2f}", f"{b['images']:,} → {a['images']:,}"]))
        was = statistics.mean(_mean(off[s]) for s in common)
        now = statistics.mean(_mean(on[s]) for s in common)
        worst = [max(_mean(v[s]) for s in common) for v in (off, on)]
        lines.append(_row(["mean", "", f"{was:.2f} ({was / ceiling:.2f}x)", "",
                           f"{now:.2f} ({now / ceiling:.2f}x)", "", ""]))
        m, se, n = _over_seeds({s: on[s] for s in common}, off)
        wins = sum(paired(on[s]["fids"], off[s]["fids"])[0] < 0 for s in common)
        cpu = [statistics.mean(v[s]["cpu_s"] for s in common) for v in (off, on)]
        lines += ["", f"- with − without: {m:+.2f} ± {se:.2f} over {n} search seeds (lower on "
                  f"{wins} of {n}); the worst seed {worst[0]:.2f} → {worst[1]:.2f}",
                  f"- CPU seconds a study: {cpu[0]:.0f} → {cpu[1]:.0f}", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from bench.run import part_main

    part_main(argv, KEY, SECTION, DEFAULT_DIR, run_jobs, measure,
              lambda entry, results: markdown(entry, results[STREAMS_KEY]))


if __name__ == "__main__":
    main(sys.argv[1:])
