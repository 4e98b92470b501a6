"""What the search buys and what it costs, on digits.

- ``spacings_table``: for each K, the standard spacings and both searched stages, every FID on
  held-out noise, the searches repeated over 3 seeds (mean and std), with their cost.
- ``sampler_comparison``: the EvolutionarySampler against Optuna's Random, TPE, NSGA-II and
  CMA-ES samplers (``--sampler``) on the same encoding, the same first trials (the standard
  spacings) and the same budget of evaluated candidates, 6 seeds each.
- ``multifidelity``: the stage-1 search with and without multi-fidelity pruning, same budget of
  evaluated candidates: images sampled and held-out FID of the final best.
- ``stage2_budgets``: how far stage 2's front reaches (within 10% of the stage-1 best's held-out
  FID) as its budget of trials grows, on ``digits-deep``, 3 seeds.

Each search runs on a fresh SQLite study, in this process through the library's ``open_stage1``
/ ``run``, or as a user runs it through the CLI (``study_both_stages``, ``stage2_budgets``); CPU
seconds are this process's (all threads) or its children's.
"""

import resource
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import optuna
from optuna.trial import TrialState

from autodiff_optuna import search
from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.scoring import score_schedule
from autodiff_optuna.models import load_model
from autodiff_optuna.sampling import HELDOUT, draw, standard_spacings
from autodiff_optuna.search.config import SearchConfig, load_preset, study_name
from autodiff_optuna.search.context import alphas_cumprod
from autodiff_optuna.search.fidelity import PRUNE_PERCENTILE, PRUNED_AT, is_evaluated
from autodiff_optuna.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)

SEEDS = (0, 1, 2)
PRUNER = f"PercentilePruner at the {PRUNE_PERCENTILE:.0f}th percentile"  # as results.json names it
# The sampler comparison needs more: the spread of one sampler's best FID between seeds is as
# large as the gaps between samplers (with 3 seeds, one unlucky search decided the ranking).
SAMPLER_SEEDS = (0, 1, 2, 3, 4, 5)
HELDOUT_SEEDS = (0, 1, 2)  # held-out noise streams: no study ever searches on them
SAMPLERS = ("evolutionary", "random", "tpe", "nsgaii", "cmaes")  # the table's order
SPACINGS_KS = (4, 3, 6, 8)  # the spacings table's step counts (K=4 first: the headline)
END_TO_END_SAMPLERS = ("tpe",)  # Optuna samplers also run through both stages, at K=4


def heldout_fids(timesteps, samples: int, solver: str = "ddim", skip=None, model_name="digits"
                 ) -> tuple[float, float]:
    """Mean and std of FID over the held-out noise streams (each ``samples`` images)."""
    model, scorer = load_model(model_name), load_scorer(model_name)
    return _mean_std([score_schedule(model, scorer, tuple(timesteps),
                                     draw(model, samples, s, HELDOUT), solver, skip=skip)
                      for s in HELDOUT_SEEDS])


def heldout_fid(timesteps, samples: int, solver: str = "ddim", skip=None) -> float:
    return heldout_fids(timesteps, samples, solver, skip)[0]


def heldout_front(best: dict, model_name: str) -> list[dict]:
    """The stage-2 front of a ``best --json`` summary, each point with its held-out FID."""
    front = []
    for point in best["pareto"]:
        mean, std = heldout_fids(point["timesteps"], best["samples"], skip=point["skip"],
                                 model_name=model_name)
        front.append({**point, "fid_heldout": mean, "fid_heldout_std": std})
    return front


def cheapest_within(front: list[dict], stage1_heldout: float) -> dict | None:
    """The issue's measure: the cheapest front point whose held-out FID is within 10% of the
    stage-1 best's; None if there is none."""
    return min((p for p in front if p["fid_heldout"] <= 1.10 * stage1_heldout),
               key=lambda p: p["gflops"], default=None)


def run_search(config: SearchConfig, trials: int) -> dict:
    """One stage-1 search (with ``config.sampler``); its best-so-far FID after each evaluated
    candidate, its cost."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = search.SearchContext.build(config)
        storage = open_storage(f"sqlite:///{tmp}/bench.db")
        study = search.open_stage1(ctx, f"bench-{uuid.uuid4().hex[:8]}", storage)
        cpu, wall = time.process_time(), time.perf_counter()
        search.run(ctx, study, trials, progress=False)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        evaluated = [t for t in study.get_trials(deepcopy=False) if is_evaluated(t)]
        complete = [t for t in evaluated if t.state == TrialState.COMPLETE]
        best = min(complete, key=lambda t: t.value)
        history, so_far = [], float("inf")
        for t in evaluated:
            so_far = min(so_far, t.value if t.state == TrialState.COMPLETE else so_far)
            history.append(so_far)
        images = sum(_images(t, config.samples) for t in evaluated)
        return {"sampler": config.sampler, "seed": config.seed, "trials": len(evaluated),
                "complete": len(complete), "images": images, "cpu_s": cpu, "wall_s": wall,
                "best_timesteps": best.user_attrs["timesteps"], "best_fid_search": best.value,
                "best_so_far": history}


def _images(trial, samples: int) -> int:
    """Images a trial sampled: all of them, or those before the pruner stopped it."""
    return samples if trial.state == TrialState.COMPLETE else trial.user_attrs.get(PRUNED_AT, 0)


def _mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def sampler_comparison(steps: int = 4, trials: int = 100) -> dict:
    return summarise_samplers([sampler_run(name, seed, steps, trials)
                               for name in SAMPLERS for seed in SAMPLER_SEEDS])


def sampler_run(name: str, seed: int, steps: int = 4, trials: int = 100) -> dict:
    """One search of the sampler comparison, and the held-out FID of its best schedule."""
    run = preset_search(seed, steps, trials, sampler=name)
    print(f"  {name} seed {seed}: search {run['best_fid_search']:.2f} held-out "
          f"{run['best_fid_heldout']:.2f} {run['best_timesteps']}", flush=True)
    return run


def preset_search(seed: int, steps: int, trials: int, **fields) -> dict:
    """One stage-1 search with the digits preset's samples, in generations of 20 as every digits
    preset bred when these rows were measured (``fields``: other SearchConfig fields, else
    their defaults), and the held-out FID of its best schedule."""
    base = load_preset("digits", steps)
    config = SearchConfig("digits", steps, samples=base.get("samples", 1000), seed=seed,
                          population=20, **fields)
    run = run_search(config, trials)
    run["best_fid_heldout"] = heldout_fid(run["best_timesteps"], config.samples)
    return run


def summarise_samplers(runs: list[dict]) -> dict:
    """Per sampler: its budget, the mean and std of its held-out best FID, its runs by seed."""
    out = {}
    for name in SAMPLERS:
        mine = sorted((r for r in runs if r["sampler"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        mean, std = _mean_std([r["best_fid_heldout"] for r in mine])
        out[name] = {"budget_trials": mine[0]["trials"],
                     "steps": len(mine[0]["best_timesteps"]), "best_fid_heldout_mean": mean,
                     "best_fid_heldout_std": std, "runs": mine}
    return out


def multifidelity(steps: int = 4, trials: int = 100, unpruned: list[dict] | None = None,
                  pruned: list[dict] | None = None) -> dict:
    """The preset's multi-fidelity search against the same search without pruning, over SEEDS.
    ``unpruned``, ``pruned``: those searches where they were run already (the sampler
    comparison's EvolutionarySampler runs are exactly the unpruned ones)."""
    base = load_preset("digits", steps)
    # like for like: the unpruned searches on the same seeds as the pruned ones
    full = ([r for r in unpruned or [] if r["seed"] in SEEDS]
            or [fidelity_run(seed, False, steps, trials) for seed in SEEDS])
    pruned = pruned or [fidelity_run(seed, True, steps, trials) for seed in SEEDS]
    return compare_fidelity(full, pruned, steps, trials, base["min_samples"],
                            base.get("samples", 1000))


def fidelity_run(seed: int, pruned: bool, steps: int = 4, trials: int = 100) -> dict:
    """One search of the multi-fidelity comparison: the preset's, with its pruning or without."""
    min_samples = load_preset("digits", steps)["min_samples"] if pruned else None
    run = preset_search(seed, steps, trials, min_samples=min_samples)
    print(f"  {'pruned' if pruned else 'full'} seed {seed}: {run['images']} images, held-out "
          f"{run['best_fid_heldout']:.2f} {run['best_timesteps']}", flush=True)
    return run


def compare_fidelity(full: list[dict], pruned: list[dict], steps: int, trials: int,
                     min_samples: int, samples: int) -> dict:
    images = {"full": sum(r["images"] for r in full), "pruned": sum(r["images"] for r in pruned)}
    heldout = {"full": _mean_std([r["best_fid_heldout"] for r in full]),
               "pruned": _mean_std([r["best_fid_heldout"] for r in pruned])}
    return {"steps": steps, "budget_trials": trials, "min_samples": min_samples,
            "samples": samples, "pruner": PRUNER,
            "image_reduction": 1 - images["pruned"] / images["full"],
            "heldout_fid_ratio": heldout["pruned"][0] / heldout["full"][0],
            "heldout_fid_full": heldout["full"], "heldout_fid_pruned": heldout["pruned"],
            "cpu_s_full": sum(r["cpu_s"] for r in full),
            "cpu_s_pruned": sum(r["cpu_s"] for r in pruned),
            "runs": {"full": [_without_history(r) for r in full],
                     "pruned": [_without_history(r) for r in pruned]}}


def _without_history(run: dict) -> dict:
    return {key: value for key, value in run.items() if key != "best_so_far"}


def _cli(*args: str) -> str:
    """The command line, as a user runs it; its stdout, or its stderr in the error."""
    proc = subprocess.run([sys.executable, "-m", "autodiff_optuna", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"autodiff_optuna {args[0]} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def search_summary(url: str, name: str) -> dict:
    """The benchmark's view of a search (as its results.json records it since its first
    rounds): stage 1's own best and the uniform baseline, and stage 2's front as Optuna keeps
    it (every non-dominated feasible trial, unthinned), so rounds stay comparable. The
    product's result (``best``: both stages, thinned front) is ``results.study_result``."""
    from autodiff_optuna.search import objectives
    from autodiff_optuna.search.results import complete_trials, stored_config, uniform_trial

    stage1 = optuna.load_study(study_name=name, storage=url)
    config = stored_config(stage1)
    complete = complete_trials(stage1)
    best, baseline = min(complete, key=objectives.fid), uniform_trial(stage1)
    summary = {"samples": config["samples"], "steps": config["steps"],
               "timesteps": best.user_attrs["timesteps"], "fid": objectives.fid(best),
               "baseline_timesteps": stage1.user_attrs["spacings"]["uniform"],
               "baseline_fid": None if baseline is None else objectives.fid(baseline),
               "n_complete": len(complete)}
    stage2_name = stage1.user_attrs.get("stage2_study")
    if stage2_name and stage2_name in optuna.get_all_study_names(url):
        stage2 = optuna.load_study(study_name=stage2_name, storage=url)
        front = sorted(stage2.best_trials, key=lambda t: (objectives.gflops(t), objectives.fid(t)))
        summary.update({
            "full_gflops": stage2.user_attrs["full_gflops"],
            "stage2_n_complete": len(complete_trials(stage2)),
            "pareto": [{"timesteps": t.user_attrs["timesteps"], "skip": t.user_attrs["skip"],
                        "fid": objectives.fid(t), "gflops": objectives.gflops(t),
                        "trial": t.number} for t in front]})
    return summary


def study_both_stages(steps: int, seed: int, *flags: str, model: str = "digits") -> dict:
    """``make study`` for one K and seed (preset defaults, both stages, any other ``flags``),
    as a user runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        _cli("study", "--model", model, "--steps", str(steps), "--seed", str(seed),
             "--storage", url, "--quiet", *flags)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        best = search_summary(url, study_name(model, steps))
        stage1 = optuna.load_study(study_name=study_name(model, steps), storage=url).trials
        images = sum(_images(t, best["samples"]) for t in stage1 if is_evaluated(t))
        images += best["stage2_n_complete"] * best["samples"]
    return {"best": best, "wall_s": wall, "cpu_s": cpu, "images": images,
            "trials": sum(map(is_evaluated, stage1))}


def stage2_budgets(model: str = "digits-deep", budgets=(80, 160, 240), steps: int = 4) -> dict:
    """How far stage 2's front reaches with its budget: per seed, one stage-1 study, then stage 2
    resumed to each budget in turn (as a user raising ``--stage2-trials`` does), each front
    re-scored on held-out noise."""
    return {"model": model, "steps": steps, "budgets": list(budgets),
            "runs": [stage2_budget_run(model, seed, budgets, steps) for seed in SEEDS]}


def stage2_budget_run(model: str, seed: int, budgets, steps: int = 4) -> dict:
    """One seed of ``stage2_budgets``; the cheapest front point within 10% of the stage-1 best's
    held-out FID at each budget."""
    with tempfile.TemporaryDirectory() as tmp:
        url, name = f"sqlite:///{tmp}/bench.db", study_name(model, steps)
        common = ["--model", model, "--steps", str(steps), "--seed", str(seed), "--storage", url,
                  "--quiet"]
        _cli("study", *common, "--stage", "1")
        best = search_summary(url, name)
        limit, _ = heldout_fids(best["timesteps"], best["samples"], model_name=model)
        run = {"seed": seed, "stage1": best["timesteps"], "stage1_heldout": limit, "budgets": {}}
        for budget in budgets:
            started = time.perf_counter()
            _cli("study", *common, "--stage", "2", "--stage2-trials", str(budget))
            wall = time.perf_counter() - started
            best = search_summary(url, name)
            front = [{**p, "saved": 1 - p["gflops"] / best["full_gflops"]}
                     for p in heldout_front(best, model)]
            pick = cheapest_within(front, limit)
            run["budgets"][str(budget)] = {"front": front, "cheapest_within_10pct": pick,
                                           "stage2_s": wall}
            print(f"  {model} seed {seed}, {budget} stage-2 trials: "
                  f"{pick['saved'] if pick else 0.0:.1%} fewer GFLOPs within 10%", flush=True)
    return run


def spacings_table(ks=SPACINGS_KS, on_row=None) -> dict:
    """One row per K; ``on_row(table)`` after each, so a long run keeps what it measured."""
    out = {}
    for k in ks:
        out[str(k)] = spacings_row(k)
        if on_row:
            on_row(out)
    return out


def fixed_spacings_row(k: int) -> dict:
    """The standard spacings at K steps, on held-out noise (no search)."""
    model = load_model("digits")
    samples = load_preset("digits", k).get("samples", 1000)
    spacings = standard_spacings(k, model.num_train_timesteps, alphas_cumprod(model))
    row = {"samples": samples, "fixed": {}}
    for label, spacing, solver in (("uniform DDIM", "uniform", "ddim"),
                                   ("uniform DPM-Solver++(2M)", "uniform", "dpmpp2m"),
                                   ("quadratic DDIM", "quadratic", "ddim"),
                                   ("trailing DDIM", "trailing", "ddim")):
        row["fixed"][label] = {"timesteps": list(spacings[spacing]),
                               "fid_heldout": heldout_fid(spacings[spacing], samples, solver)}
    return row


def spacings_row(k: int, searches: list[dict] | None = None) -> dict:
    """The standard spacings at K and the searches over SEEDS (``searches``: those already run,
    as ``spacings_search`` returns them)."""
    row = fixed_spacings_row(k)
    searches = searches or [spacings_search(k, seed) for seed in SEEDS]
    return {**row, **both_stages_summary(searches)}


def both_stages_summary(searches: list[dict]) -> dict:
    """Held-out FID of both stages over the searches (mean, std), each search's own and cost."""
    return {"stage1_heldout": _mean_std([s["stage1_heldout"] for s in searches]),
            "stage2_heldout": _mean_std([s["stage2_heldout"] for s in searches]),
            "searches": [{**s["cost"], "seed": s["seed"], "stage1_heldout": s["stage1_heldout"],
                          "stage2_heldout": s["stage2_heldout"]} for s in searches]}


def end_to_end(steps: int = 4, searches: list[dict] | None = None) -> dict:
    """``make study --sampler NAME`` (both stages) over SEEDS, for each of END_TO_END_SAMPLERS;
    the default sampler's runs are the spacings table's (``searches``: those already run)."""
    searches = searches or [spacings_search(steps, seed, name)
                            for name in END_TO_END_SAMPLERS for seed in SEEDS]
    return {name: {"steps": steps,
                   **both_stages_summary([s for s in searches if s["sampler"] == name])}
            for name in END_TO_END_SAMPLERS}


def spacings_search(k: int, seed: int, sampler: str | None = None) -> dict:
    """One search of the spacings table: ``make study`` at K (``--sampler`` where given), both
    stages on held-out noise (stage 2 at no more GFLOPs than the full network: its best-FID
    front point), its cost."""
    run = study_both_stages(k, seed, *(["--sampler", sampler] if sampler else []))
    best, samples = run["best"], run["best"]["samples"]
    point = min(best["pareto"], key=lambda p: p["fid"])
    out = {"k": k, "seed": seed, "sampler": sampler or "evolutionary",
           "stage1_heldout": heldout_fid(best["timesteps"], samples),
           "stage2_heldout": heldout_fid(point["timesteps"], samples, skip=point["skip"]),
           "cost": {"trials": run["trials"], "stage2_trials": best["stage2_n_complete"],
                    "images": run["images"], "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                    "stage1_timesteps": best["timesteps"],
                    "stage2_point": {**point,
                                     "saving": 1 - point["gflops"] / best["full_gflops"]}}}
    print(f"  K={k} seed {seed} {out['sampler']}: stage 1 {out['stage1_heldout']:.2f}, stage 2 "
          f"{out['stage2_heldout']:.2f}, {run['wall_s']:.0f} s", flush=True)
    return out


TEACHER_STEPS = 100  # the teacher: the model's own samples over 100 uniform steps


def teacher_reference(steps: int = 4, seed: int = 0) -> dict:
    """Stage 1 of the default digits study scored against the model's own ``TEACHER_STEPS``-step
    samples (``--ref-teacher``: no dataset), its best schedule then scored on held-out noise
    against the real digits, beside the same search scored against the real digits."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        started = time.perf_counter()
        _cli("study", "--model", "digits", "--steps", str(steps), "--seed", str(seed),
             "--stage", "1", "--ref-teacher", str(TEACHER_STEPS), "--storage", url, "--quiet")
        wall = time.perf_counter() - started
        best = search_summary(url, study_name("digits", steps))
    mean, std = heldout_fids(best["timesteps"], best["samples"])
    return {"teacher_steps": TEACHER_STEPS, "seed": seed, "timesteps": best["timesteps"],
            "fid_search_vs_teacher": best["fid"], "fid_heldout": mean, "fid_heldout_std": std,
            "samples": best["samples"], "wall_s": wall}
