"""TPE's kernel inside the evolution, tried and not adopted: the searches of issue 27's grid
(``bench/solvers.py``) run again with the Parzen children of commit 50d4d5e (reverted by
019a382), paired by seed with the sampler as committed, and TPE over the same space beside them.
That commit's children move each step by a Gaussian at least TPE's T / (1 + n) wide for a better
half of n members (TPE's "magic clip"), truncated to [0, T), and in a solver search draw each
position's rule from a random member of the better half (any rule with TPE's prior weight
1 / (n + 1)).

``python -m bench.kernel BEFORE AFTER [BEFORE_DEEP AFTER_DEEP]``: grid folders of
``python -m bench.solvers [--model digits-deep] DIR`` (jobs/search-K-VARIANT-SEED.json with their
study databases), digits then digits-deep, BEFORE's run at today's sampler and AFTER's at
50d4d5e (only its searches are compared); writes results.json's ``parzen_kernel`` entry and the
BENCHMARKS section.
"""

import json
import sys
from pathlib import Path

import numpy as np

from bench.solvers import SEARCH_KS, SEEDS, _runs, finished, search_tag

KEY, SECTION = "parzen_kernel", "parzen-kernel"
VARIANTS = {"ours": "steps + solver", "steps_only_dpmpp2m": "steps only, 2M"}


def _study_best(db: Path) -> float | None:
    """The lowest search FID of a kept study's stage 1 (complete trials), or None."""
    import optuna

    if not db.exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{db}"
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    study = optuna.load_study(study_name=next(n for n in names if not n.endswith("stage2")),
                              storage=url)
    values = [t.value for t in study.get_trials(deepcopy=False,
                                                states=(optuna.trial.TrialState.COMPLETE,))]
    return min(values) if values else None


def _summary(folder: Path, run: dict | None) -> dict | None:
    """What the comparison keeps of a grid search: its held-out FID, its study's lowest search
    FID, its cost and its commit."""
    if run is None:
        return None
    db = folder / f"{search_tag(run['k'], run['variant'], run['seed'])}.db"
    return {"heldout": run["fid_heldout"], "search_best": _study_best(db),
            "images": run["images"], "cpu_s": run["cpu_s"], "commit": run.get("commit")}


def collect(pairs: dict[str, tuple[Path, Path]]) -> dict:
    """Per model, K, variant and seed: before, after, and TPE's run (from the 'before' folder);
    the machine, as the grid's entry names it (the same machine and job setup)."""
    from bench.run import RESULTS

    grid = json.loads(RESULTS.read_text()).get("solver_search", {}) if RESULTS.exists() else {}
    entry = {"machine": grid.get("machine", "unknown")}
    for model, (before, after) in pairs.items():
        grids = {folder: finished(folder, model) for folder in (before, after)}
        for k in SEARCH_KS:
            for seed in SEEDS:
                tpe = _summary(before, _runs(grids[before], k, "tpe").get(seed))
                for variant in VARIANTS:
                    old, new = (_summary(folder, _runs(grids[folder], k, variant).get(seed))
                                for folder in (before, after))
                    if old and new and old["commit"] != new["commit"]:
                        entry[f"{model}|{k}|{variant}|{seed}"] = {"before": old, "after": new,
                                                                   "tpe": tpe}
    return entry


def _paired(rows: list[dict], a: str, b: str, field: str) -> tuple[float, float, int, int]:
    """Mean and standard error of a - b over the rows that have both; how many; a lower."""
    d = [r[a][field] - r[b][field] for r in rows
         if r.get(a) and r.get(b) and r[a][field] is not None and r[b][field] is not None]
    if not d:
        return float("nan"), float("nan"), 0, 0
    se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(np.mean(d)), se, len(d), sum(x < 0 for x in d)


def _cell(run: dict | None) -> str:
    """Held-out FID, and the study's lowest search FID in brackets where its database is kept."""
    if not run:
        return ""
    best = run["search_best"]
    return f"{run['heldout']:.2f}" + ("" if best is None else f" ({best:.2f})")


def render(entry: dict) -> list[str]:
    lines = [f"Machine: {entry['machine']}; four searches shared the 2 cores.", "",
             "Each row one search seed, paired: the same stage-1 study (preset population, images "
             "and pruning) with the sampler as committed ('before') and with TPE's kernel "
             "('after', commit 50d4d5e), and TPE over the same space (`--sampler tpe --solver "
             "search`, the grid's run). Held-out FID (1797 images of the held-out stream), and "
             "in brackets the study's lowest search FID (what the sampler optimises, on the "
             "search's own noise) where its database is kept.", "",
             "| model | K | search | seed | before | after | TPE |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for key, r in entry.items():
        if key == "machine":
            continue
        model, k, variant, seed = key.split("|")
        rows.append((model, int(k), variant, int(seed), r))
    rows.sort(key=lambda x: (x[0], x[2] != "ours", x[1], x[3]))
    for model, k, variant, seed, r in rows:
        cells = [_cell(r.get(s)) for s in ("before", "after", "tpe")]
        lines.append(f"| {model} | {k} | {VARIANTS[variant]} | {seed} | " + " | ".join(cells)
                     + " |")
    lines.append("")
    for variant, label in VARIANTS.items():
        group = [r for (_, _, v, _, r) in rows if v == variant]
        if not group:
            continue
        for field, what in (("heldout", "held-out FID"), ("search_best", "lowest search FID")):
            for a, b, name in (("after", "before", "after - before"),
                               ("after", "tpe", "after - TPE"), ("before", "tpe", "before - TPE")):
                if variant != "ours" and "tpe" in (a, b):
                    continue  # TPE searched the solver too: no like-for-like pair
                mean, se, n, lower = _paired(group, a, b, field)
                if n:
                    lines.append(f"- {label}, {what}, {name}: {mean:+.2f} ± {se:.2f} "
                                 f"({n} pairs, lower in {lower})")
        images = _paired(group, "after", "before", "images")
        lines.append(f"- {label}, images per study, after - before: {images[0]:+,.0f} "
                     f"({images[2]} pairs)")
    commits = sorted({r[s]["commit"] for (*_, r) in rows for s in ("before", "after")
                      if r.get(s) and r[s]["commit"]})
    lines += ["", f"Code of the searches: {', '.join(f'`{c}`' for c in commits)}."]
    return lines


def save(entry: dict) -> None:
    from bench.run import save_part

    save_part(KEY, entry, SECTION, "\n".join(render(entry)))


def main() -> None:
    folders = [Path(a) for a in sys.argv[1:]]
    if len(folders) not in (2, 4):
        sys.exit("usage: python -m bench.kernel BEFORE AFTER [BEFORE_DEEP AFTER_DEEP]")
    pairs = {"digits": (folders[0], folders[1])}
    if len(folders) == 4:
        pairs["digits-deep"] = (folders[2], folders[3])
    save(collect(pairs))


if __name__ == "__main__":
    main()
