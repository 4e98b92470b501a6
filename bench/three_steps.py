"""The 3-step preset given what the 4-step one learnt: stage 1 of ``digits-k3`` as it was
(generations of 20, steps drawn and moved in training steps, the noise prediction unscaled)
against the 4-step preset's settings (generations of 10, moves in noise levels, noise / 1.015),
and those without the noise scale, twenty search seeds (the last, five), each answer and every
fixed 3-step sampler a user could pick instead scored on the five held-out streams of
``bench/streams.py``.

    python -m bench.three_steps [DIR]   # each missing job (DIR/jobs/<variant>-s<seed>.json,
                                        # its study DIR/<variant>/s<seed>.db: an interrupted run
                                        # resumes), every held-out FID kept in DIR/heldout.json;
                                        # then results.json["three_steps"] and the BENCHMARKS.md
                                        # section "three-steps"
    python -m bench.three_steps --render   # the section again from results.json
"""

import json
import resource
import statistics
import sys
import time
from pathlib import Path

from bench.generations import _mean, _over_seeds, _row
from bench.noise_moves import _point as _steps
from bench.protocol import _stage_costs
from bench.solvers import SOLVER_NAMES, _cli, _commit
from bench.streams import KEY as STREAMS_KEY
from bench.streams import _Streams, paired

KEY, SECTION = "three_steps", "three-steps"
DEFAULT_DIR = Path("/tmp/bench-three-steps")
MODEL, STEPS, SEEDS = "digits", 3, tuple(range(20))
# variant -> (label, flags after ``study --stage 1``): the same 100 candidates at 1000 images,
# each variant's settings pinned, so that it measures the same whatever the preset says later
VARIANTS = {"before": ("as it was: 5 generations of 20, training steps, unscaled",
                       ("--population", "20", "--step-moves", "steps", "--noise-scale", "1")),
            "now": ("the preset now: 10 of 10, noise levels, noise / 1.015",
                    ("--population", "10", "--step-moves", "noise", "--noise-scale", "1.015")),
            "unscaled": ("the same, unscaled",
                         ("--population", "10", "--step-moves", "noise", "--noise-scale", "1"))}
SEEDS_OF = {"unscaled": SEEDS[:5]}  # an ablation: five seeds
# the fixed samplers: each standard spacing with each solver (noise scale 1, and iPNDM's 1.015)
SOLVERS = (("ddim", 1.0), ("dpmpp2m", 1.0), ("dpmpp3m", 1.0), ("unipc", 1.0), ("ipndm", 1.0),
           ("ipndm", 1.015))


def run_jobs(folder: Path) -> None:
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    for seed in SEEDS:  # seed by seed, so that the variants pair up early
        for variant, (_, flags) in VARIANTS.items():
            path = folder / "jobs" / f"{variant}-s{seed}.json"
            if seed in SEEDS_OF.get(variant, SEEDS) and not path.exists():
                (folder / variant).mkdir(exist_ok=True)
                job = _job(folder / variant / f"s{seed}.db", seed, flags)
                path.write_text(json.dumps(job))


def _job(db: Path, seed: int, flags, steps: int = STEPS) -> dict:
    """``study --stage 1`` of the ``digits-k<steps>`` preset with ``flags`` into ``db``: what it
    cost (wall and CPU seconds, images with confirmation's) and the code that ran it."""
    from autodiff_optuna.search.config import study_name

    db.unlink(missing_ok=True)
    url, name = f"sqlite:///{db}", study_name(MODEL, steps)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    _cli("study", "--model", MODEL, "--steps", str(steps), "--stage", "1", "--seed", str(seed),
         "--storage", url, "--quiet", *flags)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cost = _stage_costs(url, name, 1000)
    print(f"  {db.parent.name} seed {seed}: {wall:.0f} s", flush=True)
    return {"seed": seed, "flags": list(flags), "wall_s": wall,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "images": cost["stage1_images"] + cost["confirmation_images"], "commit": _commit()}


def measure(folder: Path) -> dict:
    """Every kept job's answer (its ``best``) and the DP spacing it queued, every fixed sampler
    at ``STEPS``, each scored on the held-out streams (kept in DIR/heldout.json as scored)."""
    from autodiff_optuna.sampling import standard_spacings
    from autodiff_optuna.search.context import alphas_cumprod
    from autodiff_optuna.search.results import study_solver

    streams = _Streams(MODEL, folder / "heldout.json")
    fids = streams.fids
    entry = {"commits": [], "scored_at": _commit(), "variants": {}, "fixed": {}, "dp": {}}
    spacings = standard_spacings(STEPS, streams.model.num_train_timesteps,
                                 alphas_cumprod(streams.model))
    for spacing, timesteps in spacings.items():
        for solver, scale in SOLVERS:
            rules = study_solver({"model": MODEL, "solver": solver, "noise_scale": scale,
                                  "steps": STEPS})
            entry["fixed"][f"{spacing} {_solver_label(solver, scale)}"] = {
                "timesteps": list(timesteps), "fids": fids(timesteps, rules)}
    for variant in VARIANTS:
        studies = {}
        for seed in SEEDS_OF.get(variant, SEEDS):
            path = folder / "jobs" / f"{variant}-s{seed}.json"
            if not path.exists():
                continue
            run = json.loads(path.read_text())
            answer, dp = _answer(folder / variant / f"s{seed}.db", fids)
            studies[str(seed)] = {**answer, "images": run["images"], "cpu_s": run["cpu_s"]}
            if dp is not None:
                entry["dp"][f"{variant}:{seed}"] = dp
            if run["commit"] not in entry["commits"]:
                entry["commits"].append(run["commit"])
        entry["variants"][variant] = studies
    return entry


def _answer(db: Path, fids) -> tuple[dict, dict | None]:
    """A study's best, and the DP spacing it queued (with its own solver; None: none), each
    scored held out."""
    import optuna

    from autodiff_optuna.search.config import study_name
    from autodiff_optuna.search.results import check_config, study_result, study_solver

    study = optuna.load_study(study_name=study_name(MODEL, STEPS), storage=f"sqlite:///{db}")
    result = study_result(study)
    config = check_config(result.stage1)

    def scored(point) -> dict:  # stage 1's points skip nothing
        return {"timesteps": point.timesteps, "rules": point.rules, "gflops_share": 1.0,
                "fids": fids(point.timesteps, study_solver(config, point.rules))}

    return scored(result.best), None if result.dp is None else scored(result.dp)


def _solver_label(solver: str, scale: float) -> str:
    return SOLVER_NAMES[solver] + (f", noise / {scale:g}" if scale != 1 else "")


def markdown(entry: dict, streams: dict) -> str:
    ceiling = statistics.mean(streams["models"][MODEL]["ceiling"])
    fixed = entry["fixed"]
    best_fixed = min(fixed, key=lambda label: _mean(fixed[label]))
    strongest = fixed[best_fixed]["fids"]
    runs = entry["variants"]
    common = [str(s) for s in SEEDS if all(str(s) in runs.get(v, {}) for v in ("before", "now"))]
    lines = [f"Each FID is the mean over the {len(streams['streams'])} held-out streams of "
             f"`bench/streams.py` (1797 images each, against all 1797 real digits); a "
             f"difference of one seed is paired stream by stream, ± its standard error over the "
             f"streams; over seeds, the mean of the seeds' differences ± its standard error "
             f"over the seeds. Code {', '.join(f'`{c}`' for c in entry['commits'])}. "
             f"`python -m bench.three_steps`.", "",
             f"**Stage 1 alone, digits, K={STEPS}** (100 candidates, 1000 images each; ceiling, "
             f"100-step DDIM: {ceiling:.2f}; the strongest standard spacing with a fixed "
             f"solver, {best_fixed}: {_mean(fixed[best_fixed]):.2f}).", "",
             _row(["seed", "as it was: result", "mean", "now: result", "mean", "now − was",
                   "now − strongest standard", "images (was → now)",
                   "DP spacing (now's study)"]),
             _row(["---"] * 9)]
    for seed in common:
        a, b = runs["now"][seed], runs["before"][seed]
        diff, se = paired(a["fids"], b["fids"])
        vs_fixed, se_fixed = paired(a["fids"], strongest)
        dp = entry["dp"].get(f"now:{seed}")
        lines.append(_row([seed, _steps(b), f"{_mean(b):.2f}", _steps(a), f"{_mean(a):.2f}",
                           f"{diff:+.2f} ± {se:.2f}", f"{vs_fixed:+.2f} ± {se_fixed:.2f}",
                           f"{b['images']:,} → {a['images']:,}",
                           "-" if dp is None else f"{dp['timesteps']} {_mean(dp):.2f}"]))
    if common:
        now = statistics.mean(_mean(runs["now"][s]) for s in common)
        was = statistics.mean(_mean(runs["before"][s]) for s in common)
        lines.append(_row(["mean", "", f"{was:.2f} ({was / ceiling:.2f}x)", "",
                           f"{now:.2f} ({now / ceiling:.2f}x)", "", "", "", ""]))
        m, se, n = _over_seeds({s: runs["now"][s] for s in common}, runs["before"])
        wins = sum(paired(runs["now"][s]["fids"], runs["before"][s]["fids"])[0] < 0
                   for s in common)
        cpu = [statistics.mean(runs[v][s]["cpu_s"] for s in common) for v in ("before", "now")]
        lines += ["", f"- now − as it was: {m:+.2f} ± {se:.2f} over {n} search seeds (lower on "
                  f"{wins} of {n})", f"- CPU seconds a study: {cpu[0]:.0f} → {cpu[1]:.0f}"]
        dps = {s: entry["dp"][f"now:{s}"] for s in common if f"now:{s}" in entry["dp"]}
        m, se, n = _over_seeds({s: runs["now"][s] for s in dps}, dps)
        if n >= 2:
            lines.append(f"- now − its study's DP spacing (a fixed sampler, fitted without "
                         f"reference images): {m:+.2f} ± {se:.2f} over {n} search seeds")
        unscaled = runs.get("unscaled", {})
        m, se, n = _over_seeds({s: runs["now"][s] for s in common}, unscaled)
        if n >= 2:
            mean = statistics.mean(_mean(unscaled[s]) for s in common if s in unscaled)
            lines.append(f"- now − {VARIANTS['unscaled'][0]} ({mean:.2f} over those seeds): "
                         f"{m:+.2f} ± {se:.2f} over {n} search seeds")
    ranked = sorted(fixed, key=lambda label: _mean(fixed[label]))
    shown = dict.fromkeys(ranked[:5] + [x for x in ranked if x.startswith("uniform")])
    lines += ["", f"Standard spacings with a fixed solver at K={STEPS}, held out (the five "
              "lowest, and uniform with each solver): " + "; ".join(
                  f"{label} {fixed[label]['timesteps']} {_mean(fixed[label]):.2f}"
                  for label in shown), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from bench.run import part_main

    part_main(argv, KEY, SECTION, DEFAULT_DIR, run_jobs, measure,
              lambda entry, results: markdown(entry, results[STREAMS_KEY]))


if __name__ == "__main__":
    main(sys.argv[1:])
