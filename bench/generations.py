"""Stage 1's generations: the digits preset's 100 candidates bred in 10 generations of 10
against 5 of 20, and against TPE over the same space, each answer scored on the five held-out
streams of ``bench/streams.py``; then the preset as it ships (both stages), against the same
preset at population 20 (``bench/noise_moves.py``'s studies).

    python -m bench.generations [DIR]   # each job through ``bench.protocol.study_job`` into
                                        # DIR/<variant>/ (default /tmp/bench-generations; kept
                                        # as DIR/jobs/<variant>-s<seed>.json, so an interrupted
                                        # run resumes), then results.json["generations"] and the
                                        # BENCHMARKS.md section "generations"
    python -m bench.generations --render   # the section again from results.json
"""

import json
import statistics
import sys
from pathlib import Path

from bench.noise_moves import _point as _steps
from bench.protocol import STEPS, study_job
from bench.solvers import _commit
from bench.streams import KEY as STREAMS_KEY
from bench.streams import _Streams, _study, paired

KEY, SECTION = "generations", "generations"
MODEL = "digits"
DEFAULT_DIR = Path("/tmp/bench-generations")
STAGE1_SEEDS = tuple(range(10))  # stage 1 alone is cheap: ten search seeds
SHIPPED_SEEDS = (0, 1, 2, 3, 4)  # as bench/noise_moves.py's preset studies
# variant -> (label, flags after the preset's); stage 1 alone, where the sampler works
# (TPE with the preset's noise scale, which a preset gives only its own solver and sampler)
STAGE1 = {"ours10": ("ours, 10 generations of 10", ("--stage", "1", "--population", "10")),
          "ours20": ("ours, 5 generations of 20", ("--stage", "1", "--population", "20")),
          "tpe": ("TPE", ("--stage", "1", "--sampler", "tpe", "--noise-scale", "1.015"))}
SHIPPED = ("the preset as it ships (both stages)", ())
BEST_FIXED = "uniform iPNDM, noise / 1.015"  # the strongest fixed sampler on digits


def variants() -> dict[str, tuple[str, tuple]]:
    return {**STAGE1, "shipped": SHIPPED}


def seeds(variant: str) -> tuple[int, ...]:
    return SHIPPED_SEEDS if variant == "shipped" else STAGE1_SEEDS


def run_jobs(folder: Path) -> None:
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    every = sorted(set().union(*map(seeds, variants())))
    for seed in every:  # seed by seed, so that the variants pair up early
        for variant, (_, flags) in variants().items():
            path = folder / "jobs" / f"{variant}-s{seed}.json"
            if seed not in seeds(variant):
                continue
            if not path.exists():
                (folder / variant).mkdir(exist_ok=True)
                path.write_text(json.dumps(study_job(MODEL, "shipped", seed, folder / variant,
                                                     flags)))


def measure(folder: Path) -> dict:
    return measure_jobs(folder, {variant: seeds(variant) for variant in variants()})


def measure_jobs(folder: Path, seeds_of: dict[str, tuple[int, ...]]) -> dict:
    """Each kept job's study (DIR/<variant>/, per ``seeds_of`` variant) scored on every
    held-out stream, with its images and CPU seconds; the commits the jobs ran at."""
    streams = _Streams(MODEL)
    entry = {"commits": [], "scored_at": _commit(), "variants": {}}
    for variant, variant_seeds in seeds_of.items():
        studies = {}
        for seed in variant_seeds:
            path = folder / "jobs" / f"{variant}-s{seed}.json"
            if not path.exists():
                continue
            run = json.loads(path.read_text())
            db = folder / variant / f"{MODEL}-shipped-s{seed}.db"
            studies[str(seed)] = {**_study(streams, db, MODEL), "images": run["images"],
                                  "cpu_s": run["cpu_s"]}
            if run["commit"] not in entry["commits"]:
                entry["commits"].append(run["commit"])
        entry["variants"][variant] = studies
    return entry


def _mean(study: dict) -> float:
    return statistics.mean(study["fids"])


def _over_seeds(a: dict, b: dict) -> tuple[float, float, int]:
    """The mean over the search seeds both hold of ``a`` − ``b`` (each seed's difference the
    mean of its streams'), ± its standard error over the seeds, and the seed count: the search
    seed is what varies between two samplers' runs, so it is the unit here."""
    diffs = [paired(a[seed]["fids"], b[seed]["fids"])[0] for seed in a if seed in b]
    if len(diffs) < 2:
        return float("nan"), float("nan"), len(diffs)
    return statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5, len(diffs)


def markdown(entry: dict, before: dict, noise_moves: dict) -> str:
    old = before["models"][MODEL]
    ceiling = statistics.mean(old["ceiling"])
    fixed = old["fixed"][BEST_FIXED]
    runs = entry["variants"]
    # only the seeds every variant holds, in the rows and in every mean (an interrupted run)
    common = [s for s in map(str, STAGE1_SEEDS) if all(s in runs.get(v, {}) for v in STAGE1)]
    lines = [f"Each FID is the mean over the {len(before['streams'])} held-out streams of "
             f"`bench/streams.py` (1797 images each, against all 1797 real digits); a "
             f"difference of one seed is paired stream by stream, ± its standard error over the "
             f"streams; a difference over seeds is the mean of theirs, ± its standard error over "
             f"the seeds. Code {', '.join(f'`{c}`' for c in entry['commits'])}. "
             f"`python -m bench.generations`.", "",
             f"**Stage 1 alone, digits, K={STEPS}** (the preset's 100 candidates at 1000 "
             f"images, iPNDM with noise / 1.015, moves in noise levels; ceiling, 100-step DDIM: "
             f"{ceiling:.2f}; {BEST_FIXED}: {statistics.mean(fixed):.2f}).", "",
             _row(["seed", *(c for v in STAGE1 for c in (f"{STAGE1[v][0]}: result", "mean")),
                   "10 of 10 − 5 of 20", "10 of 10 − TPE"]),
             _row(["---"] * (3 + 2 * len(STAGE1)))]
    for seed in common:
        gens = paired(runs["ours10"][seed]["fids"], runs["ours20"][seed]["fids"])
        tpe = paired(runs["ours10"][seed]["fids"], runs["tpe"][seed]["fids"])
        lines.append(_row([seed, *(c for v in STAGE1 for c in (_steps(runs[v][seed]),
                                                               f"{_mean(runs[v][seed]):.2f}")),
                           f"{gens[0]:+.2f} ± {gens[1]:.2f}", f"{tpe[0]:+.2f} ± {tpe[1]:.2f}"]))
    if common:
        means = [statistics.mean(_mean(runs[v][s]) for s in common) for v in STAGE1]
        lines.append(_row(["mean", *(c for m in means
                                     for c in ("", f"{m:.2f} ({m / ceiling:.2f}x)")), "", ""]))
    lines.append("")
    for other, label in (("ours20", "5 generations of 20"), ("tpe", "TPE")):
        pairs = {s: (runs["ours10"][s], runs[other][s]) for s in common}
        m, se, n = _over_seeds({s: a for s, (a, _) in pairs.items()},
                               {s: b for s, (_, b) in pairs.items()})
        if n < 2:
            continue
        wins = sum(paired(a["fids"], b["fids"])[0] < 0 for a, b in pairs.values())
        lines.append(f"- 10 generations of 10 − {label}: {m:+.2f} ± {se:.2f} over {n} search "
                     f"seeds (lower on {wins} of them)")
    for variant in STAGE1:
        studies = [runs[variant][s] for s in common]
        if studies:
            images = statistics.mean(s["images"] for s in studies)
            cpu = statistics.mean(s["cpu_s"] for s in studies)
            lines.append(f"- {STAGE1[variant][0]}: {images:,.0f} images a study (confirmation's "
                         f"included), {cpu:.0f} CPU seconds")
    at20 = noise_moves["models"][MODEL]["studies"]
    shipped = {s: study for s, study in runs.get("shipped", {}).items()
               if f"shipped:{s}" in at20}
    if shipped:
        lines += ["", "**The preset as it ships** (both stages; stage 2 at the same population) "
                  "against the same preset at population 20 (\"Since: stage 1's moves in noise "
                  "levels\"):", "",
                  _row(["seed", "population 20: export", "mean", "images",
                        "population 10: export", "mean", "images", "10 − 20",
                        "10 − best fixed"]), _row(["---"] * 9)]
        for seed, study in shipped.items():
            was = at20[f"shipped:{seed}"]
            diff, se = paired(study["fids"], was["fids"])
            vs_fixed, se_fixed = paired(study["fids"], fixed)
            lines.append(_row([seed, _steps(was), f"{_mean(was):.2f}", f"{was['images']:,}",
                               _steps(study), f"{_mean(study):.2f}", f"{study['images']:,}",
                               f"{diff:+.2f} ± {se:.2f}", f"{vs_fixed:+.2f} ± {se_fixed:.2f}"]))
        new = statistics.mean(_mean(s) for s in shipped.values())
        was = statistics.mean(_mean(at20[f"shipped:{s}"]) for s in shipped)
        lines.append(_row(["mean", "", f"{was:.2f} ({was / ceiling:.2f}x)", "", "",
                           f"{new:.2f} ({new / ceiling:.2f}x)", "", "", ""]))
    lines.append("")
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> None:
    from bench.run import part_main

    part_main(argv, KEY, SECTION, DEFAULT_DIR, run_jobs, measure,
              lambda entry, results: markdown(entry, results[STREAMS_KEY], results["noise_moves"]))


if __name__ == "__main__":
    main(sys.argv[1:])
