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

- ``top N``: the lowest confirmed FID among the N best by search FID (N = 3: the rule);
- ``race``: every one of the ``TOP`` on the first ``RACE_IMAGES`` of the confirmation's images
  (a quarter of them), the ``STAGE1_TOP`` lowest there on all of them, the lowest named.

Two ways of running the race inside a study (screening) were then measured as product code, each
preset's stage 1 run again with it (the search is the same for a seed; only what it confirms and
names can differ), its best scored held out: screening on the first quarter of the
confirmation's images (commit 0828a98), and on as many images of a noise stream of its own
(commit ae4d3ee), so that what chose a candidate does not also confirm it. Neither was kept (the
second did worse than the rule), so their rows (``VARIANTS``) are kept from results.json: the
checkout cannot run them again.

    python -m bench.confirm_depth [--shard I/N | --collect] [DIR]   # default /tmp/bench-confirm

About 9 minutes a job on one thread of the 2-core machine; six jobs.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

from bench.budget import _load, stage1_run
from bench.protocol import HELDOUT_SAMPLES, HELDOUT_SEED, MODELS, SEEDS, STEPS, _HeldOut
from bench.solvers import kept_jobs_cli, measure_jobs

KEY = "confirm_depth"  # results.json's key
SECTION = "confirm-depth"  # BENCHMARKS.md's section
DEFAULT_DIR = Path("/tmp/bench-confirm")
TOP = 12  # the best complete candidates of each stage 1 scored both ways
DEPTHS = (1, 3, 5, 8, 12)  # the "top N" rules compared
RACE_IMAGES = 250  # the race's first round: images per candidate


def jobs() -> list[str]:
    return [f"{model}:{seed}" for model in MODELS for seed in SEEDS]


# screening as product code once ran it (stage 1 run again; code since reverted): kind -> what
# the row is. Its kept jobs say "kind"; a collect without them keeps results.json's rows.
VARIANTS = {"screened-prefix": "screening, as a study ran it: the race on the confirmation's "
                               "first quarter (commit 0828a98)",
            "screened-own": "screening on as many images of a stream of its own (commit "
                            "ae4d3ee)"}


def _run_job(job: str, folder: Path) -> dict:
    from optuna.trial import TrialState

    from autodiff_optuna.metrics.fid import fid_from_features
    from autodiff_optuna.metrics.scoring import sample_features
    from autodiff_optuna.sampling.noise import CONFIRM, draw
    from autodiff_optuna.search.results import stored_config

    model, seed = job.split(":")
    db = folder / f"{model}-s{seed}.db"
    run = stage1_run(model, STEPS, int(seed), (), db)  # the preset as it ships, whatever it is now
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
            **_variants(done, order)}


def _variants(done: dict, order) -> dict:
    """The ``VARIANTS`` rows: from kept jobs, else as results.json has them."""
    variants = {kind: sorted((r for r in done.values() if r.get("kind") == kind), key=order)
                for kind in VARIANTS}
    if any(variants.values()):
        return variants
    from bench.run import RESULTS

    stored = json.loads(RESULTS.read_text()).get(KEY, {}) if RESULTS.exists() else {}
    return {kind: stored.get(kind, []) for kind in VARIANTS}


def markdown(entry: dict) -> str:
    runs = entry["runs"]
    rules = list(picks(runs[0])) if runs else []
    lines = [f"Machine: {entry['machine']}.", "",
             f"Stage 1 of each K={entry['steps']} preset (`study --stage 1`), its "
             f"{entry['top']} best complete candidates by search FID, each scored on the "
             "study's confirmation stream (as `confirm` scores it) and on "
             f"{entry['heldout_samples']} images of the held-out stream of seed "
             f"{entry['heldout_seed']}. Each cell: the held-out FID of what the rule names. "
             "top N: the lowest confirmed FID among the N best by search FID (top 3: the "
             f"rule); race: all {entry['top']} on the first "
             f"{entry['race_images']} confirmation images, the 3 lowest there on all of them "
             "(the column counts the race's images once); oracle: the lowest "
             "held-out FID among the candidates (no rule can know it). Two processes shared "
             "the 2 cores, one torch thread each.", "",
             "| rule | confirmation images a study | " + " | ".join(
                 f"{r['model']} s{r['seed']}" for r in runs) + " | mean digits | mean "
             "digits-deep | mean |",
             "|---|---|" + "---|" * (len(runs) + 3)]
    for rule in rules:
        lines.append(_row(rule, f"{rule_images(rule, runs[0]['samples']):,}",
                          [picks(r)[rule]["heldout_fid"] for r in runs], runs))
    commits = set()
    for kind, what in VARIANTS.items():
        by = {(r["model"], r["seed"]): r for r in entry.get(kind, [])}
        screened = [by.get((r["model"], r["seed"])) for r in runs]
        if not any(screened):
            continue
        images = np.mean([r["screening_images"] + r["confirmation_images"]
                          for r in screened if r])
        lines.append(_row(what, f"{images:,.0f} (mean)",
                          [np.nan if r is None else r["best"]["heldout_fid"] for r in screened],
                          runs))
        commits |= {r["commit"] for r in screened if r}
    if commits:
        lines += ["", f"The last two rows ran product code since reverted (commits "
                  f"{', '.join(sorted(commits))}); their images: screening's and "
                  "confirmation's, the uniform schedule's included (the rule's: 4,000)."]
    return "\n".join(lines)


def _row(label: str, images: str, held: list[float], runs: list[dict]) -> str:
    """A table row: each run's held-out FID (nan: not measured), then the means by model and
    over all."""
    by_model = [np.nanmean([h for h, r in zip(held, runs) if r["model"] == m] or [np.nan])
                for m in MODELS]
    return (f"| {label} | {images} | " + " | ".join("-" if np.isnan(h) else f"{h:.2f}"
                                                     for h in held)
            + f" | {by_model[0]:.2f} | {by_model[1]:.2f} | {np.nanmean(held):.2f} |")


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
