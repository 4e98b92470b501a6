"""Stage 1's local moves in noise levels: the digits preset's jobs of ``bench/generations.py``
(stage 1 alone over ten search seeds, and the preset as it ships over five) run again with
today's step mutation (``search.variation.LOCAL_MOVE_SCALE``: four mutated steps in five moved
near where they were, not jumping), each answer scored on the five held-out streams of
``bench/streams.py`` and paired, seed by seed, with the same jobs before (and with TPE over the
same space) as ``bench.generations`` last measured them.

    python -m bench.local_moves [DIR]   # each job through ``bench.protocol.study_job`` into
                                        # DIR/<variant>/ (default /tmp/bench-local-moves; kept
                                        # as DIR/jobs/<variant>-s<seed>.json, so an interrupted
                                        # run resumes), then results.json["local_moves"] and
                                        # the BENCHMARKS.md section "local-moves"
    python -m bench.local_moves --render   # the section again from results.json
"""

import json
import statistics
import sys
from pathlib import Path

from bench.generations import (
    BEST_FIXED,
    MODEL,
    SHIPPED_SEEDS,
    STAGE1_SEEDS,
    _mean,
    _over_seeds,
    _row,
    measure_jobs,
)
from bench.generations import KEY as GENERATIONS_KEY
from bench.noise_moves import _point as _steps
from bench.protocol import STEPS, study_job
from bench.streams import KEY as STREAMS_KEY
from bench.streams import paired

KEY, SECTION = "local_moves", "local-moves"
DEFAULT_DIR = Path("/tmp/bench-local-moves")
# variant -> (flags after the preset's, seeds, the generations variant it is paired with)
VARIANTS = {"stage1": (("--stage", "1", "--population", "10"), STAGE1_SEEDS, "ours10"),
            "shipped": ((), SHIPPED_SEEDS, "shipped")}


def run_jobs(folder: Path) -> None:
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    for seed in sorted(set(STAGE1_SEEDS) | set(SHIPPED_SEEDS)):
        for variant, (flags, seeds, _) in VARIANTS.items():
            path = folder / "jobs" / f"{variant}-s{seed}.json"
            if seed in seeds and not path.exists():
                (folder / variant).mkdir(exist_ok=True)
                path.write_text(json.dumps(study_job(MODEL, "shipped", seed, folder / variant,
                                                     flags)))


def measure(folder: Path) -> dict:
    return measure_jobs(folder, {variant: seeds for variant, (_, seeds, _) in VARIANTS.items()})


def _versus(now: dict, before: dict, label: str) -> list[str]:
    """The line pairing ``now`` with ``before`` over the seeds both hold (none under two)."""
    m, se, n = _over_seeds(now, before)
    if n < 2:
        return []
    wins = sum(paired(now[s]["fids"], before[s]["fids"])[0] < 0 for s in now if s in before)
    return [f"- local moves − {label}: {m:+.2f} ± {se:.2f} over {n} search seeds (lower on "
            f"{wins} of {n})"]


def markdown(entry: dict, streams: dict, generations: dict) -> str:
    old = streams["models"][MODEL]
    ceiling = statistics.mean(old["ceiling"])
    fixed = old["fixed"][BEST_FIXED]
    before = generations["variants"]
    lines = [f"Each FID is the mean over the {len(streams['streams'])} held-out streams of "
             f"`bench/streams.py` (1797 images each, against all 1797 real digits); a "
             f"difference of one seed is paired stream by stream, ± its standard error over the "
             f"streams; over seeds, the mean of the seeds' differences ± its standard error "
             f"over the seeds. Code {', '.join(f'`{c}`' for c in entry['commits'])}; the jobs "
             f"before: `bench.generations`' as last scored (at "
             f"`{generations['scored_at']}`). `python -m bench.local_moves`.", ""]
    for variant, (_, seeds, paired_with) in VARIANTS.items():
        now, was = entry["variants"].get(variant, {}), before.get(paired_with, {})
        common = [str(s) for s in seeds if str(s) in now and str(s) in was]
        if not common:
            continue
        tpe = before.get("tpe", {}) if variant == "stage1" else {}
        title = ("Stage 1 alone (the preset's 100 candidates in 10 generations of 10)"
                 if variant == "stage1" else "The preset as it ships (both stages)")
        lines += [f"**{title}, digits, K={STEPS}** (ceiling, 100-step DDIM: {ceiling:.2f}; "
                  f"{BEST_FIXED}: {statistics.mean(fixed):.2f}).", "",
                  _row(["seed", "jumps: result", "mean", "local moves: result", "mean",
                        "local − jumps", *(["local − TPE"] if tpe else []), "local − best fixed",
                        "images (jumps → local)"]),
                  _row(["---"] * (8 + bool(tpe)))]
        for seed in common:
            a, b = now[seed], was[seed]
            diff, se = paired(a["fids"], b["fids"])
            versus_tpe = ([f"{d:+.2f} ± {e:.2f}" for d, e in [paired(a["fids"],
                                                                    tpe[seed]["fids"])]]
                          if tpe and seed in tpe else ["-"] * bool(tpe))
            vs_fixed, se_fixed = paired(a["fids"], fixed)
            lines.append(_row([seed, _steps(b), f"{_mean(b):.2f}", _steps(a), f"{_mean(a):.2f}",
                               f"{diff:+.2f} ± {se:.2f}", *versus_tpe,
                               f"{vs_fixed:+.2f} ± {se_fixed:.2f}",
                               f"{b['images']:,} → {a['images']:,}"]))
        new = statistics.mean(_mean(now[s]) for s in common)
        old_mean = statistics.mean(_mean(was[s]) for s in common)
        lines += [_row(["mean", "", f"{old_mean:.2f} ({old_mean / ceiling:.2f}x)", "",
                        f"{new:.2f} ({new / ceiling:.2f}x)", "", *([""] * bool(tpe)), "", ""]),
                  "", *_versus({s: now[s] for s in common}, was, "jumps")]
        if tpe:
            lines += _versus({s: now[s] for s in common if s in tpe}, tpe,
                             "TPE over the same space")
        cpu = statistics.mean(now[s]["cpu_s"] for s in common)
        cpu_was = statistics.mean(was[s]["cpu_s"] for s in common)
        lines += [f"- CPU seconds a study: {cpu_was:.0f} → {cpu:.0f}", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from bench.run import part_main

    part_main(argv, KEY, SECTION, DEFAULT_DIR, run_jobs, measure,
              lambda entry, results: markdown(entry, results[STREAMS_KEY],
                                              results[GENERATIONS_KEY]))


if __name__ == "__main__":
    main(sys.argv[1:])
