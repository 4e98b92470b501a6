"""The headline margins of issue 27's grid (``bench/solvers.py``) against the noise of the
held-out measurement itself: per model, K and search seed, the schedule a search exported and
the sampler it is compared with, both scored again on the grid's held-out batch (1797 images of
the held-out stream, seed 0), each FID with its bootstrap spread and their difference with the
paired spread (``fid.paired_spreads``: the same noises resampled for both, as
``evaluate`` reports it). Three comparisons: the preset's search (``make study STEPS=K
STAGE=1``) against the best fixed sampler at K; ours (steps + solver) against TPE over the same
space; and, from ``bench/protocol.py``'s studies, the cheaper protocol's export against the
preset study's (issue 29's "within 5%").

A margin within twice its paired spread is one the held-out batch cannot tell from the luck of
its draw; the spread between search seeds (the grid's paired SE) is another noise, on top.

``python -m bench.margins`` (or ``make bench PARTS=heldout_margins``, after the grids): reads
both grids from results.json (``solver_search`` and ``solver_search_deep``), samples each
schedule once, writes results.json's ``heldout_margins`` and the BENCHMARKS section
``heldout-margins``.
"""

import json
import os

import numpy as np

from bench.solvers import MODELS, SEARCH_KS, _preset_variant, _runs, _scorer, best_fixed

KEY, SECTION = "heldout_margins", "heldout-margins"
NAMES = {"cheap": "the cheaper protocol (issue 29)", "preset": "the preset's study",
         "ours": "ours, steps + solver", "steps_only_dpmpp2m": "ours, steps only, 2M",
         "steps_only_unipc": "ours, steps only, UniPC", "tpe": "TPE, steps + solver"}


class _Features:
    """Each schedule's features on the grid's held-out batch, sampled once."""

    def __init__(self, model: str):
        from autodiff_optuna.metrics.fid import resamples_for

        self.scored = _scorer(model)  # exactly the grid's model, reference and batch
        self.cache: dict[str, np.ndarray] = {}
        self.resamples = resamples_for(self.scored.scorer.feature_dim)  # as evaluate's

    def of(self, timesteps, solver, skip=None) -> np.ndarray:
        from autodiff_optuna.metrics.scoring import sample_features

        key = json.dumps([list(timesteps), solver, skip])
        if key not in self.cache:
            s = self.scored
            self.cache[key] = sample_features(
                s.model, s.scorer, tuple(timesteps), s.batch, solver,
                skip=[tuple(m) for m in skip] if skip else None)
        return self.cache[key]

    def compare(self, a, b) -> dict:
        """FIDs, spreads and the paired difference of two (timesteps, solver[, skip])
        schedules."""
        from autodiff_optuna.metrics.fid import fid_from_features, paired_spreads

        mu, sigma = self.scored.scorer.ref_mu, self.scored.scorer.ref_sigma
        fa, fb = self.of(*a), self.of(*b)
        (spread_a, spread_b), (difference_spread,) = paired_spreads(
            [fa, fb], mu, sigma, self.resamples)
        fid_a, fid_b = fid_from_features(fa, mu, sigma), fid_from_features(fb, mu, sigma)
        return {"fid_a": fid_a, "fid_b": fid_b, "spread_a": spread_a, "spread_b": spread_b,
                "difference_spread": difference_spread, "difference": fid_a - fid_b}


def _fixed_schedule(entry: dict, k: int) -> tuple[str, str, list]:
    """The best fixed sampler at K (the DP spacing among them): (spacing, solver, time steps)."""
    spacing, solver, _ = best_fixed(entry, k)
    cell = (entry["dp"][str(k)] if spacing == "DP" else entry["fixed"][str(k)][spacing])[solver]
    return spacing, solver, cell["timesteps"]


def measure(results: dict | None = None) -> dict:
    """The rows, from the grids in ``results`` (default: results.json as stored)."""
    from bench.run import RESULTS, machine

    results = results if results is not None else json.loads(RESULTS.read_text())
    rows = []
    for model, (key, _, _) in MODELS.items():
        entry = results.get(key)
        if not entry:
            continue
        features = _Features(model)
        for k in SEARCH_KS:
            if best_fixed(entry, k) is None:
                continue
            spacing, solver, fixed = _fixed_schedule(entry, k)
            preset = _preset_variant(k, model)
            pairs = [(preset, _runs(entry, k, preset), f"{spacing} {solver}", None)]
            pairs.append(("ours", _runs(entry, k, "ours"), "tpe", _runs(entry, k, "tpe")))
            for variant, runs, against, others in pairs:
                for seed, run in sorted(runs.items()):
                    other = (fixed, solver) if others is None else (
                        (others[seed]["timesteps"], others[seed]["solver"])
                        if seed in others else None)
                    if other is None:
                        continue
                    row = {"model": model, "k": k, "seed": seed, "a": variant, "b": against,
                           **features.compare((run["timesteps"], run["solver"]), other),
                           "grid_fid_a": run["fid_heldout"]}
                    rows.append(row)
                    print(f"  {model} K={k} seed {seed} {variant} - {against}: "
                          f"{row['difference']:+.3f} ± {row['difference_spread']:.3f}",
                          flush=True)
    rows += _protocol_rows(results.get("protocol", {}))
    mismatched = [r for r in rows if abs(r["fid_a"] - r["grid_fid_a"]) > 1e-6
                  or abs(r["fid_b"] - r.get("grid_fid_b", r["fid_b"])) > 1e-6]
    if mismatched:  # the same schedule on the same batch must score as the grid scored it
        raise RuntimeError(f"{len(mismatched)} schedules scored apart from their stored "
                           "held-out FIDs")
    return {"machine": machine(), "resamples": _Features("digits").resamples, "rows": rows}


def _protocol_rows(protocol: dict) -> list[dict]:
    """Issue 29's comparison: per model and seed, the cheaper protocol's export against the
    preset's (``bench/protocol.py``; both searched with DPM-Solver++(2M), the digits presets'
    solver then), on the same held-out batch (1797 images, seed 0)."""
    runs = {(r["model"], r["protocol"], r["seed"]): r for r in protocol.get("runs", [])}
    rows, features = [], {}  # model -> its _Features
    for (model, name, seed), cheap in sorted(runs.items()):
        preset = runs.get((model, "preset", seed))
        if name != "cheap" or preset is None:
            continue
        a, b = (r.get("export_beyond_noise") or r["export"] for r in (cheap, preset))
        row = {"model": model, "k": protocol.get("steps", 4), "seed": seed, "a": "cheap",
               "b": "preset", **features.setdefault(model, _Features(model)).compare(
                   (a["timesteps"], "dpmpp2m", a["skip"]), (b["timesteps"], "dpmpp2m", b["skip"])),
               "grid_fid_a": a["heldout_fid"], "grid_fid_b": b["heldout_fid"]}
        rows.append(row)
        print(f"  {model} seed {seed} cheap - preset: {row['difference']:+.3f} ± "
              f"{row['difference_spread']:.3f}", flush=True)
    return rows


def render(entry: dict) -> list[str]:
    lines = [f"Machine: {entry['machine']}.", "",
             "Per search seed: the exported schedule (a) and what it is compared with (b), both "
             "sampled again on the grid's held-out batch (1797 images of the held-out stream, seed "
             "0), each FID ± its bootstrap standard deviation over the images, and a - b ± the "
             f"paired spread (the same noises resampled for both; {entry['resamples']} "
             "resamples). 'beyond' where |a - b| is more than twice its paired spread.", "",
             "| model | K | seed | a | b | FID a | FID b | a - b | beyond the noise |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in entry["rows"]:
        beyond = abs(r["difference"]) > 2 * r["difference_spread"]
        lines.append(f"| {r['model']} | {r['k']} | {r['seed']} | {NAMES.get(r['a'], r['a'])} | "
                     f"{NAMES.get(r['b'], r['b'])} | {r['fid_a']:.2f} ± {r['spread_a']:.2f} | "
                     f"{r['fid_b']:.2f} ± {r['spread_b']:.2f} | {r['difference']:+.2f} ± "
                     f"{r['difference_spread']:.2f} | {'yes' if beyond else 'no'} |")
    lines.append("")
    kinds = {"the preset's search against the best fixed sampler":
             lambda r: r["b"] not in ("tpe", "preset"),
             "ours against TPE": lambda r: r["b"] == "tpe",
             "the cheaper protocol against the preset's study": lambda r: r["b"] == "preset"}
    for label, kind in kinds.items():
        rows = [r for r in entry["rows"] if kind(r)]
        if not rows:
            continue
        beyond = [r for r in rows if abs(r["difference"]) > 2 * r["difference_spread"]]
        better = [r for r in beyond if r["difference"] < 0]
        spreads = [r["difference_spread"] for r in rows]
        lines.append(f"- {label}: {len(beyond)} of {len(rows)} seed margins beyond twice their "
                     f"paired spread ({len(better)} of them lower, {len(beyond) - len(better)} "
                     f"higher); paired spread median {np.median(spreads):.2f} (range "
                     f"{min(spreads):.2f} to {max(spreads):.2f}).")
    return lines


def save(entry: dict) -> None:
    from bench.run import save_part

    save_part(KEY, entry, SECTION, "\n".join(render(entry)))


def main() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    save(measure())
    print(f"updated bench/results.json ({KEY}) and BENCHMARKS.md ({SECTION})")


if __name__ == "__main__":
    main()
