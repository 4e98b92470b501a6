"""Issues 28 and 29's benchmark: what a whole study (both stages, as ``make study`` runs it)
costs and what its answer is worth on noise no study saw, today's preset protocol against a
cheaper one, on both bundled models and three search seeds.

    python -m bench.protocol [JOB_DIR]    # every job below, each kept as JOB_DIR/<job>.json
                                          # (default /tmp/bench-protocol/jobs), so an
                                          # interrupted run resumes; after each job
                                          # bench/results.json["protocol"] and the BENCHMARKS.md
                                          # section "protocol" are rewritten
    python -m bench.run protocol          # the same, as a part of ``make bench``

Each job is one ``study`` through the CLI on its own SQLite file. Measured per study:

- cost: candidates and images of each stage (a pruned candidate's ``pruned_at_samples``), the
  images confirmation sampled (one candidate's count per confirmed trial), the skip-cost
  prior's, CPU seconds and wall seconds of the study process, and ``study --estimate``'s
  projected time on this machine beside the measured one;
- the answer: ``best``'s best, exported point and front, each with its search FID, its
  confirmed FID and its held-out FID (``HELDOUT_SAMPLES`` images of the held-out noise stream
  of seed 0, the stream ``evaluate`` scores on by default: no study searches or confirms on it);
- stage 2: the share of its own trials (stage 1's carried elites aside) whose search FID is
  worse than the uniform schedule's, and the cheapest front point whose held-out FID is within
  10% of the best's held-out FID.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from bench.solvers import _cli, _commit, measure_jobs

ROOT = Path(__file__).resolve().parents[1]
KEY = "protocol"  # results.json's key and the BENCHMARKS.md section
HELDOUT_SAMPLES = 1797  # all of the digits reference's images, as in bench.solvers
HELDOUT_SEED = 0
MODELS = ("digits", "digits-deep")
STEPS = 4
SEEDS = (0, 1, 2)
# protocol -> extra study flags (the model's preset gives everything else)
PROTOCOLS = {
    "preset": (),
    "cheap": ("--trials", "48", "--population", "12", "--samples", "500",
              "--stage2-trials", "24"),
}
PROTOCOL_NAMES = {"preset": "the preset (100 + 80 trials, population 20, 1000 images)",
                  "cheap": "cheap (48 + 24 trials, population 12, 500 images)"}
DEFAULT_DIR = Path("/tmp/bench-protocol")
WITHIN = 1.10  # the issues' tolerance on held-out FID


def jobs() -> list[str]:
    """Seed by seed, so that the protocols pair up early; digits first (faster)."""
    return [f"{model}:{protocol}:{seed}" for model in MODELS for seed in SEEDS
            for protocol in PROTOCOLS]


class _HeldOut:
    """One model's scorer and held-out noise, loaded once: ``evaluate``'s scoring."""

    def __init__(self, model_name: str):
        from autodiff_optuna.metrics import load_scorer
        from autodiff_optuna.models import load_model
        from autodiff_optuna.sampling import HELDOUT, draw

        self.model, self.scorer = load_model(model_name), load_scorer(model_name)
        self.batch = draw(self.model, HELDOUT_SAMPLES, HELDOUT_SEED, HELDOUT)
        self.cache: dict = {}

    def fid(self, point: dict, solver: str) -> float:
        from autodiff_optuna.metrics.scoring import score_schedule
        from autodiff_optuna.sampling.rules import StepRule

        rules = [StepRule(o, c) for o, c in point.get("rules") or []] or solver
        key = json.dumps([point["timesteps"], point["skip"], point.get("rules"), solver])
        if key not in self.cache:
            self.cache[key] = float(score_schedule(
                self.model, self.scorer, tuple(point["timesteps"]), self.batch, rules,
                skip=[tuple(s) for s in point["skip"]]))
        return self.cache[key]


def _stage_costs(url: str, name: str, samples: int) -> dict:
    """Candidates and images of each stage, confirmation's and the prior's images, and the
    share of stage 2's own trials worse than the uniform schedule (search FIDs)."""
    import optuna
    from optuna.trial import TrialState

    from autodiff_optuna.search import objectives
    from autodiff_optuna.search.fidelity import PRUNED_AT, is_carried, is_evaluated
    from autodiff_optuna.search.results import uniform_trial
    from autodiff_optuna.search.skip_cost import prior_images
    from autodiff_optuna.storage.record import CONFIRMED_ATTR, SKIP_COST_ATTR

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stage1 = optuna.load_study(study_name=name, storage=url)
    stage2 = optuna.load_study(study_name=f"{name}-stage2", storage=url)

    def images(trial) -> int:
        return samples if trial.state == TrialState.COMPLETE else int(
            trial.user_attrs.get(PRUNED_AT, 0))

    evaluated1 = [t for t in stage1.get_trials(deepcopy=False) if is_evaluated(t)]
    own2 = [t for t in stage2.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and not is_carried(t)]
    confirmed = sum(key.startswith(f"{CONFIRMED_ATTR}:")
                    for study in (stage1, stage2) for key in study.user_attrs)
    uniform = objectives.fid(uniform_trial(stage1))
    costs = stage2.user_attrs.get(SKIP_COST_ATTR) or {}
    cells = sum(len(row) for row in costs.get("cost", []))
    return {"stage1_candidates": len(evaluated1), "stage1_images": sum(map(images, evaluated1)),
            "stage2_candidates": len(own2), "stage2_images": len(own2) * samples,
            "confirmed_trials": confirmed, "confirmation_images": confirmed * samples,
            "prior_images": (cells + 1) * prior_images(samples) if cells else 0,
            "stage2_worse_than_uniform": sum(objectives.fid(t) > uniform for t in own2),
            "uniform_search_fid": uniform}


def study_job(model: str, protocol: str, seed: int, folder: Path) -> dict:
    from autodiff_optuna.search.config import study_name

    tag = f"{model}-{protocol}-s{seed}"
    db = folder / f"{tag}.db"
    db.unlink(missing_ok=True)
    url, name = f"sqlite:///{db}", study_name(model, STEPS)
    common = ("--model", model, "--steps", str(STEPS), "--seed", str(seed), "--storage", url,
              *PROTOCOLS[protocol])
    estimate = json.loads(_cli("study", *common, "--estimate", "--json"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    _cli("study", *common, "--quiet")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    best = json.loads(_cli("best", "--name", name, "--storage", url, "--json"))
    cost = _stage_costs(url, name, best["samples"])
    held = _HeldOut(model)
    points = {"best": best["best"], "export": best["export"], "uniform": best["uniform"]}
    for point in [*points.values(), *best["front"]]:
        if point is not None:
            point["heldout_fid"] = held.fid(point, best["solver"])
    limit = points["best"]["heldout_fid"] * WITHIN
    within = [p for p in best["front"] if p["heldout_fid"] <= limit]
    cheapest = min(within, key=lambda p: p["gflops"], default=None)
    images = sum(cost[k] for k in ("stage1_images", "stage2_images", "confirmation_images",
                                   "prior_images"))
    run = {"model": model, "protocol": protocol, "seed": seed, "flags": list(PROTOCOLS[protocol]),
           "wall_s": wall, "cpu_s": cpu, "estimate_cpu_s": estimate["total_hours"]["cpu"] * 3600,
           "estimate_images": sum(s["images"] for s in estimate["stages"]),
           "images": images, **cost, "full_gflops": best["full_gflops"], **points,
           "front": best["front"], "cheapest_within_10pct": cheapest, "commit": _commit()}
    export = points["export"] or points["best"]
    print(f"  {model} {protocol} seed {seed}: best held-out {points['best']['heldout_fid']:.3f}, "
          f"export held-out {export['heldout_fid']:.3f} at {export['gflops_share']:.1%}; "
          f"{images:,} images, {wall:.0f} s (estimated {run['estimate_cpu_s']:.0f} s)",
          flush=True)
    return run


def collect(done: dict, machine: str) -> dict:
    return {"machine": machine, "heldout_samples": HELDOUT_SAMPLES, "heldout_seed": HELDOUT_SEED,
            "steps": STEPS, "protocols": {k: list(v) for k, v in PROTOCOLS.items()},
            "runs": sorted(done.values(), key=lambda r: (MODELS.index(r["model"]),
                                                         list(PROTOCOLS).index(r["protocol"]),
                                                         r["seed"]))}


def measure(folder: Path = DEFAULT_DIR, on_job=None) -> dict:
    """Every job not yet in ``folder``; ``on_job(entry)`` after each."""
    return measure_jobs(Path(folder), jobs(), _run_job, collect, on_job)


def _run_job(job: str, folder: Path) -> dict:
    model, protocol, seed = job.split(":")
    return study_job(model, protocol, int(seed), folder)


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if len(values) > 1 else \
        f"{values[0]:.2f}"


def markdown(entry: dict) -> str:
    """The BENCHMARKS.md section from results.json's entry."""
    runs = entry["runs"]
    lines = [f"Machine: {entry['machine']}.", "",
             f"Both stages as `make study` runs them (K={entry['steps']}), one SQLite file per "
             f"study; every held-out FID on {entry['heldout_samples']} images of the held-out "
             f"noise stream of seed {entry['heldout_seed']} (no study searches or confirms on "
             "it). Images: both stages, confirmation and the skip-cost prior.", "",
             "| model | protocol | seed | images | wall s (estimated) | best: search / "
             "confirmed / held-out | export: GFLOPs share, held-out (x best) | cheapest within "
             "10% held out | stage 2 worse than uniform | confirmation images |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        b, e = r["best"], r["export"] or r["best"]
        c = r["cheapest_within_10pct"]
        lines.append(
            f"| {r['model']} | {r['protocol']} | {r['seed']} | {r['images']:,} | "
            f"{r['wall_s']:.0f} ({r['estimate_cpu_s']:.0f}) | {b['search_fid']:.2f} / "
            f"{(b['confirmed_fid'] or b['fid']):.2f} / {b['heldout_fid']:.2f} | "
            f"{e['gflops_share']:.1%}, {e['heldout_fid']:.2f} "
            f"({e['heldout_fid'] / b['heldout_fid']:.2f}x) | "
            f"{'-' if c is None else format(c['gflops_share'], '.1%')} | "
            f"{r['stage2_worse_than_uniform']}/{r['stage2_candidates']} | "
            f"{r['confirmation_images']:,} ({r['confirmation_images'] / r['images']:.1%}) |")
    lines += ["", "Per model and protocol, over the seeds:", "",
              "| model | protocol | images per study | best held-out | export held-out / best's |",
              "|---|---|---|---|---|"]
    for model in MODELS:
        for protocol in PROTOCOLS:
            group = [r for r in runs if r["model"] == model and r["protocol"] == protocol]
            if group:
                ratios = [(r["export"] or r["best"])["heldout_fid"] / r["best"]["heldout_fid"]
                          for r in group]
                lines.append(f"| {model} | {PROTOCOL_NAMES[protocol]} | "
                             f"{np.mean([r['images'] for r in group]):,.0f} | "
                             f"{_mean([r['best']['heldout_fid'] for r in group])} | "
                             f"{_mean(ratios)} (worst {max(ratios):.2f}) |")
    return "\n".join(lines)


def save(entry: dict) -> None:
    """results.json's ``KEY`` and BENCHMARKS.md's section, leaving every other entry as it is."""
    from bench.run import RESULTS, write_sections

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[KEY] = entry
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections({KEY: markdown(entry)})


def main() -> None:
    """``python -m bench.protocol [DIR]``: measure what is not yet in DIR."""
    os.environ.setdefault("OMP_NUM_THREADS", "2")  # a study as a user runs it: every core
    folder = Path(sys.argv[1]) if sys.argv[1:] else DEFAULT_DIR
    save(measure(folder, on_job=save))
    print(f"updated bench/results.json ({KEY}) and BENCHMARKS.md ({KEY})")


if __name__ == "__main__":
    main()
