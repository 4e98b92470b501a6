"""How many of stage 1's best should confirmation re-score? Measured on the K=4 presets.

Stage 1 confirms its ``confirm.STAGE1_TOP`` best candidates (by search FID) on the
confirmation stream and names the lowest confirmed FID. The search's own FID ranks what it
selected poorly: it chose them for their luck on its noise (the winner's curse). Confirming
more of them gives the truly best more chances to be among those re-scored, and gives as many
more chances of a lucky draw on the confirmation's noise. This measures the trade on the
presets' own stage 1s (``study --stage 1``, digits and digits-deep, three seeds): the
``TOP`` best complete candidates of each, every one scored on the study's confirmation stream
(exactly as ``confirm`` scores it, ``samples`` images) and on ``HELDOUT_SAMPLES`` images of the
held-out stream, which no study searches or confirms on. Then, offline, the held-out FID of
what each rule would name:

- ``top N``: the lowest confirmed FID among the N best by search FID (N = 3: the rule before
  screening);
- ``race``: every one of the ``TOP`` on the first ``RACE_IMAGES`` of the confirmation's images
  (a quarter of them), the ``STAGE1_TOP`` lowest there on all of them, the lowest named.

Then the rule as the product now runs it (``confirm.screen``: the race, but on a quarter as many
images of a stream of its own, so that what chose a candidate does not also confirm it): each
preset's stage 1 run again by the checkout's code (the search is the same for a seed, only what
it confirms and names can differ), its best scored held out;
and the same stage 1 driven by Optuna's TPESampler (``--sampler tpe``), confirmed the same way,
so that the two samplers are compared with what the product now names.

    python -m bench.confirm_depth [--shard I/N | --collect] [DIR]   # default /tmp/bench-confirm

About 9 minutes a job on one thread of the 2-core machine (3 for a ``screened`` one); 18
jobs.
"""

import os
import sys
from pathlib import Path

import numpy as np

from bench.budget import _load, stage1_run
from bench.protocol import (
    HELDOUT_SAMPLES,
    HELDOUT_SEED,
    MODELS,
    SEEDS,
    STEPS,
    _HeldOut,
    screening_images,
)
from bench.solvers import kept_jobs_cli, measure_jobs

KEY = "confirm_depth"  # results.json's key
SECTION = "confirm-depth"  # BENCHMARKS.md's section
DEFAULT_DIR = Path("/tmp/bench-confirm")
TOP = 12  # the best complete candidates of each stage 1 scored both ways
DEPTHS = (1, 3, 5, 8, 12)  # the "top N" rules compared
RACE_IMAGES = 250  # the race's first round: images per candidate


def jobs() -> list[str]:
    return ([f"{model}:{seed}" for model in MODELS for seed in SEEDS]
            + [f"{kind}:{model}:{seed}" for kind in SCREENED for model in MODELS
               for seed in SEEDS])


# kind -> (stage-1 flags over the preset, what the row is)
SCREENED = {"screened": ((), "**the product now** (`confirm.screen`: stage 1 run again, its "
                             "own choice)"),
            "screened-tpe": (("--sampler", "tpe"), "the same stage 1 driven by Optuna's "
                                                   "TPESampler, confirmed the same way")}


def _screened_job(kind: str, model: str, seed: int, folder: Path) -> dict:
    """The preset's stage 1 (with ``kind``'s flags) as the checkout's code runs it: what it
    names, held out, and the images its search, screening and confirmation took."""
    from autodiff_optuna.search.results import screenings, stored_config

    db = folder / f"{model}-s{seed}-{kind}.db"
    run = stage1_run(model, STEPS, seed, SCREENED[kind][0], db)
    study = _load(db, model)
    screening = screening_images(study, stored_config(study)["samples"])
    return {"kind": kind, "model": model, "seed": seed, "best": run["best"],
            "screened": len(screenings(study)), "screening_images": screening,
            "confirmation_images": run["confirmation_images"] - screening,
            "images": run["images"], "commit": run["commit"]}


def _run_job(job: str, folder: Path) -> dict:
    from optuna.trial import TrialState

    from autodiff_optuna.metrics.fid import fid_from_features
    from autodiff_optuna.metrics.scoring import sample_features
    from autodiff_optuna.sampling.noise import CONFIRM, draw
    from autodiff_optuna.search.results import stored_config

    if job.split(":")[0] in SCREENED:
        kind, model, seed = job.split(":")
        return _screened_job(kind, model, int(seed), folder)
    model, seed = job.split(":")
    db = folder / f"{model}-s{seed}.db"
    run = stage1_run(model, STEPS, int(seed), (), db)
    study = _load(db, model)
    config = stored_config(study)
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                      key=lambda t: t.values[0])[:TOP]
    held = _HeldOut(model)
    batch = draw(held.model, config["samples"], int(seed), CONFIRM)
    candidates = []
    for trial in complete:
        steps = list(trial.user_attrs["timesteps"])
        features = sample_features(held.model, held.scorer, tuple(steps), batch,
                                   config["solver"])
        ref = (held.scorer.ref_mu, held.scorer.ref_sigma)
        candidates.append({
            "trial": trial.number, "timesteps": steps, "search_fid": trial.values[0],
            "race_fid": fid_from_features(features[:RACE_IMAGES], *ref),
            "confirmed_fid": fid_from_features(features, *ref),
            "heldout_fid": held.fid({"timesteps": steps, "skip": [[] for _ in steps]},
                                    config["solver"])})
        print(f"  {job} trial {trial.number} {steps}: search {trial.values[0]:.2f}, confirmed "
              f"{candidates[-1]['confirmed_fid']:.2f}, held out "
              f"{candidates[-1]['heldout_fid']:.2f}", flush=True)
    return {"model": model, "seed": int(seed), "samples": config["samples"],
            "product_best": run["best"], "commit": run["commit"], "candidates": candidates}


def picks(run: dict) -> dict[str, dict]:
    """What each rule names among the run's candidates (best search FID first)."""
    candidates = run["candidates"]
    out = {f"top {n}": min(candidates[:n], key=lambda c: c["confirmed_fid"]) for n in DEPTHS
           if n <= len(candidates)}
    from autodiff_optuna.search.confirm import STAGE1_TOP

    raced = sorted(candidates, key=lambda c: c["race_fid"])[:STAGE1_TOP]
    out["race"] = min(raced, key=lambda c: c["confirmed_fid"])
    out["oracle"] = min(candidates, key=lambda c: c["heldout_fid"])
    return out


def rule_images(rule: str, samples: int) -> int:
    """Confirmation images a rule spends on stage 1's candidates."""
    from autodiff_optuna.search.confirm import STAGE1_TOP

    if rule == "race":
        return TOP * RACE_IMAGES + STAGE1_TOP * (samples - RACE_IMAGES)
    if rule == "oracle":
        return 0
    return int(rule.split()[1]) * samples


def collect(done: dict, machine: str) -> dict:
    def order(run: dict) -> tuple:
        return MODELS.index(run["model"]), run["seed"]

    return {"machine": machine, "heldout_samples": HELDOUT_SAMPLES, "heldout_seed": HELDOUT_SEED,
            "steps": STEPS, "top": TOP, "race_images": RACE_IMAGES,
            "runs": sorted((r for r in done.values() if "candidates" in r), key=order),
            **{kind: sorted((r for r in done.values() if r.get("kind") == kind), key=order)
               for kind in SCREENED}}


def markdown(entry: dict) -> str:
    runs = entry["runs"]
    rules = list(picks(runs[0])) if runs else []
    lines = [f"Machine: {entry['machine']}.", "",
             f"Stage 1 of each K={entry['steps']} preset (`study --stage 1`), its "
             f"{entry['top']} best complete candidates by search FID, each scored on the "
             "study's confirmation stream (as `confirm` scores it) and on "
             f"{entry['heldout_samples']} images of the held-out stream of seed "
             f"{entry['heldout_seed']}. Each cell: the held-out FID of what the rule names. "
             "top N: the lowest confirmed FID among the N best by search FID (top 3: the rule "
             f"before screening); race: all {entry['top']} on the first "
             f"{entry['race_images']} confirmation images, the 3 lowest there on all of them "
             "(the column counts the race's images once); oracle: the lowest "
             "held-out FID among the candidates (no rule can know it). Two processes shared "
             "the 2 cores, one torch thread each.", "",
             "| rule | confirmation images a study | " + " | ".join(
                 f"{r['model']} s{r['seed']}" for r in runs) + " | mean digits | mean "
             "digits-deep | mean |",
             "|---|---|" + "---|" * (len(runs) + 3)]
    for rule in rules:
        held = [picks(r)[rule]["heldout_fid"] for r in runs]
        by_model = [np.mean([h for h, r in zip(held, runs) if r["model"] == m]) for m in MODELS]
        lines.append(f"| {rule} | {rule_images(rule, runs[0]['samples']):,} | "
                     + " | ".join(f"{h:.2f}" for h in held)
                     + f" | {by_model[0]:.2f} | {by_model[1]:.2f} | {np.mean(held):.2f} |")
    commits = set()
    for kind, (_, what) in SCREENED.items():
        by = {(r["model"], r["seed"]): r for r in entry.get(kind, [])}
        screened = [by.get((r["model"], r["seed"])) for r in runs]
        if not any(screened):
            continue
        held = [np.nan if r is None else r["best"]["heldout_fid"] for r in screened]
        by_model = [np.nanmean([h for h, r in zip(held, runs) if r["model"] == m] or [np.nan])
                    for m in MODELS]
        images = np.mean([r["screening_images"] + r["confirmation_images"]
                          for r in screened if r])
        lines.append(f"| {what} | {images:,.0f} (mean) | "
                     + " | ".join("-" if np.isnan(h) else f"{h:.2f}" for h in held)
                     + f" | {by_model[0]:.2f} | {by_model[1]:.2f} | {np.nanmean(held):.2f} |")
        commits |= {r["commit"] for r in screened if r}
    if commits:
        lines += ["", f"The last rows ran at commit {', '.join(sorted(commits))}; their "
                  "confirmation images: screening's and confirmation's, uniform included."]
    return "\n".join(lines)


def save(entry: dict) -> None:
    from bench.run import save_part

    save_part(KEY, entry, SECTION, markdown(entry))


def measure(folder: Path = DEFAULT_DIR, names: list[str] | None = None) -> dict:
    return measure_jobs(Path(folder), jobs() if names is None else names, _run_job, collect)


def _usage() -> None:
    print("usage: python -m bench.confirm_depth [--shard I/N | --collect] [DIR]",
          file=sys.stderr)
    sys.exit(2)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as measured: two processes, a thread each
    kept_jobs_cli(sys.argv[1:], jobs(), DEFAULT_DIR, measure, collect, save, _usage,
                  f"bench/results.json ({KEY}) and BENCHMARKS.md ({SECTION})")


if __name__ == "__main__":
    main()
