"""A stage-2 point ahead of stage 1's best on one noise only (``results.offered``): whole preset
studies of the digits model (``digits-k3`` and ``digits-k4``, both stages, as they ship), each
result read twice, by today's rule and with every point offered as before; the best, the
exported point and stage 1's best of each, scored on the five held-out streams of
``bench/streams.py``.

Both readings come from the same studies. A study confirms what the code it ran with could name,
so the rule's reading is taken from a copy of each study resumed by the code measured (a
finished study's resume only confirms what its result now names: with the rule, a point the
set-aside one hid from the front); the reading before, from the study as it ran. (Jobs run by
code with the rule would make the reading before the one after the fact: a point only it names
may be unconfirmed, and is then ranked by its expected FID, as the table would say.)

    python -m bench.agreement [DIR]   # each missing job (DIR/jobs/k<K>-s<seed>.json, its study
                                      # DIR/k<K>/s<seed>.db: an interrupted run resumes), every
                                      # held-out FID kept in DIR/heldout.json; then
                                      # results.json["agreement"] and the BENCHMARKS.md section
                                      # "agreement"
    python -m bench.agreement --render   # the section again from results.json
"""

import json
import math
import resource
import statistics
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

from bench.generations import _mean, _row
from bench.solvers import _cli, _commit
from bench.streams import _Streams, paired

KEY, SECTION = "agreement", "agreement"
DEFAULT_DIR = Path("/tmp/bench-agreement")
MODEL, PRESET_STEPS, SEEDS = "digits", (3, 4), tuple(range(20))
ROLES = ("best", "export", "stage1_best")


def run_jobs(folder: Path) -> None:
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    for seed in SEEDS:
        for steps in PRESET_STEPS:
            path = folder / "jobs" / f"k{steps}-s{seed}.json"
            if not path.exists():
                (folder / f"k{steps}").mkdir(exist_ok=True)
                path.write_text(json.dumps(_job(folder / f"k{steps}" / f"s{seed}.db", steps,
                                                seed)))


def _job(db: Path, steps: int, seed: int) -> dict:
    db.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    _cli("study", "--model", MODEL, "--steps", str(steps), "--seed", str(seed), "--storage",
         f"sqlite:///{db}", "--quiet")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"  k{steps} seed {seed}: {wall:.0f} s", flush=True)
    return {"steps": steps, "seed": seed, "wall_s": wall,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "commit": _commit()}


@contextmanager
def _every_point_offered():
    """The result as it was read before ``results.offered``: no point set aside."""
    from autodiff_optuna.search import results

    rule = results.offered
    results.offered = lambda points: points
    try:
        yield
    finally:
        results.offered = rule


def measure(folder: Path) -> dict:
    """Each kept job's picks under both readings, scored held out (kept in DIR/heldout.json)."""
    fids = _Streams(MODEL, folder / "heldout.json").fids
    entry = {"commits": [], "scored_at": _commit(), "studies": {}}
    for steps in PRESET_STEPS:
        for seed in SEEDS:
            path = folder / "jobs" / f"k{steps}-s{seed}.json"
            if not path.exists():
                continue
            run = json.loads(path.read_text())
            db = folder / f"k{steps}" / f"s{seed}.db"
            with _every_point_offered():
                before = _picks(db, steps, fids)
            now = _resumed(db, steps, seed)
            entry["studies"][f"k{steps}:{seed}"] = {
                "before": before, "now": _picks(now, steps, fids), "wall_s": run["wall_s"],
                "confirmed": {"before": _confirmed(db), "now": _confirmed(now)}}
            if run["commit"] not in entry["commits"]:
                entry["commits"].append(run["commit"])
    return entry


def _resumed(db: Path, steps: int, seed: int) -> Path:
    """A copy of the study ``db``, resumed by the code measured (kept beside it as
    ``s<seed>-now.db``): what the result names now is confirmed."""
    import sqlite3

    copy = db.with_name(f"{db.stem}-now.db")
    if not copy.exists():
        partial = copy.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(partial)) as target:
            source.backup(target)
        _cli("study", "--model", MODEL, "--steps", str(steps), "--seed", str(seed), "--storage",
             f"sqlite:///{partial}", "--quiet")
        partial.rename(copy)
    return copy


def _confirmed(db: Path) -> int:
    """How many points the study ``db`` confirmed, both stages."""
    import optuna

    from autodiff_optuna.search.results import confirmed_fids

    url = f"sqlite:///{db}"
    return sum(len(confirmed_fids(optuna.load_study(study_name=name, storage=url)))
               for name in optuna.get_all_study_names(url))


def _picks(db: Path, steps: int, fids) -> dict:
    """The study's best, exported point and stage 1's best, each with its scores and held-out
    FIDs."""
    import optuna

    from autodiff_optuna.search.config import study_name
    from autodiff_optuna.search.results import (
        check_config,
        ranked,
        scored_points,
        study_result,
        study_solver,
    )

    result = study_result(optuna.load_study(study_name=study_name(MODEL, steps),
                                            storage=f"sqlite:///{db}"))
    config = check_config(result.stage1)
    stage1 = [p for p in scored_points(result.stage1, result.stage2, config["steps"],
                                       result.full_gflops) if p.stage == 1]
    points = {"best": result.best, "export": result.exported()[0] or result.best,
              "stage1_best": min(stage1, key=ranked)}
    return {role: {"stage": p.stage, "trial": p.trial, "timesteps": p.timesteps,
                   "skipped": p.skipped, "gflops_share": p.share(result.full_gflops),
                   "search_fid": p.searched, "confirmed_fid": p.confirmed_fid,
                   "fids": fids(p.timesteps, study_solver(config, p.rules), p.skip)}
            for role, p in points.items()}


def _same(a: dict, b: dict) -> bool:
    return (a["stage"], a["trial"]) == (b["stage"], b["trial"])


def markdown(entry: dict) -> str:
    studies = entry["studies"]
    lines = ["Each FID is the mean over the five held-out streams of `bench/streams.py` (1797 "
             "images each, against all 1797 real digits); a difference is paired stream by "
             "stream. The preset studies as they ship, both stages, 20 search seeds each; code "
             f"{', '.join(f'`{c}`' for c in entry['commits'])}, read at `{entry['scored_at']}`. "
             "`python -m bench.agreement`.", "",
             "**Every study whose best was a stage-2 point as read before** (search and "
             "confirmed FIDs against stage 1's best's; held out: the point, stage 1's best, and "
             "the export before and now):", "",
             _row(["study", "stage-2 best: search", "confirmed", "stage 1's best: search",
                   "confirmed", "noises agree", "held out: stage-2 best", "stage 1's best",
                   "export before", "export now"]),
             _row(["---"] * 10)]
    for name, study in studies.items():
        before, now = study["before"], study["now"]
        best, first = before["best"], before["stage1_best"]
        if best["stage"] != 2:
            continue
        agree = best["search_fid"] < first["search_fid"]
        lines.append(_row([name.replace(":", " seed "), f"{best['search_fid']:.2f}",
                           _confirmed_fid(best), f"{first['search_fid']:.2f}",
                           _confirmed_fid(first), "yes" if agree else "**no**",
                           f"{_mean(best):.2f}", f"{_mean(first):.2f}",
                           _export(before["export"]), _export(now["export"])]))
    lines += [""] + _summary(studies)
    return "\n".join(lines) + "\n"


def _confirmed_fid(pick: dict) -> str:
    """A pick's confirmed FID (a study's best is confirmed where it finished; one interrupted
    may name a best that is not yet)."""
    return "not confirmed" if pick["confirmed_fid"] is None else f"{pick['confirmed_fid']:.2f}"


def _export(pick: dict) -> str:
    unconfirmed = ", not confirmed" if pick["confirmed_fid"] is None else ""
    return f"{_mean(pick):.2f} (stage {pick['stage']}, {pick['gflops_share']:.1%}{unconfirmed})"


def _summary(studies: dict) -> list[str]:
    lines = []
    for steps in PRESET_STEPS:
        mine = {n: s for n, s in studies.items() if n.startswith(f"k{steps}:")}
        if not mine:
            continue
        changed = [s for s in mine.values() if not _same(s["before"]["export"], s["now"]["export"])]
        diffs = [paired(s["now"]["export"]["fids"], s["before"]["export"]["fids"])[0]
                 for s in changed]
        stage2 = sum(s["before"]["best"]["stage"] == 2 for s in mine.values())
        text = (f"- **K={steps}**, {len(mine)} studies: {stage2} name a stage-2 point the best "
                f"as read before; the rule changes {len(changed)} export"
                f"{'s' * (len(changed) != 1)}")
        if changed:
            text += (" (" + ", ".join(f"{_mean(s['before']['export']):.2f} → "
                                      f"{_mean(s['now']['export']):.2f}" for s in changed)
                     + f"; {sum(d < 0 for d in diffs)} lower held out)")
        more = sum(s["confirmed"]["now"] - s["confirmed"]["before"] for s in mine.values())
        lines.append(text + f"; the resumes confirmed {more} more point{'s' * (more != 1)} in "
                     f"all, {1000 * more:,} images.")
        for reading in ("before", "now"):
            exports = [_mean(s[reading]["export"]) for s in mine.values()]
            ratios = [e / _mean(s[reading]["stage1_best"]) for e, s in zip(exports, mine.values())]
            lines.append(f"  - {reading}: the export held out {statistics.mean(exports):.3f} on "
                         f"average, at most {max(ratios):.2f}x stage 1's best, beyond 1.10x on "
                         f"{sum(r > 1.10 for r in ratios)} of {len(ratios)}")
    diffs = [paired(s["now"]["export"]["fids"], s["before"]["export"]["fids"])[0]
             for s in studies.values()]
    if len(diffs) >= 2:
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        lines.append(f"- Over all {len(diffs)} studies, export now − before: "
                     f"{statistics.mean(diffs):+.3f} ± {se:.3f} held out.")
    return lines


def main(argv: list[str]) -> None:
    from bench.run import part_main

    part_main(argv, KEY, SECTION, DEFAULT_DIR, run_jobs, measure,
              lambda entry, results: markdown(entry))


if __name__ == "__main__":
    main(sys.argv[1:])
