"""Which small-count metric ranks candidates as the full-count FID does: FID or KID, on digits.

Multi-fidelity pruning (``search/fidelity.py``) compares candidates by their FID on the first 125,
250, ... of their images. FID is biased upward at small counts (the bias shrinks as 1/n and
depends on the candidate), while clean-fid's KID is unbiased at any count. This measures which of
the two, at 125 and 250 images, orders candidates more like their FID at 1000 images.

Candidates: the bundled ``digits`` model at K=4 with ``dpmpp2m``, the standard spacings plus
random schedules (distinct time steps drawn uniformly from [0, 999], seeded), each sampled on the
search noise (``draw(model, 1000, seed, SEARCH)``, as a study samples). Each candidate's 1000
images give the reference ranking (FID at 1000); the small-count metrics are computed on the
first n of the same images (the prefix the pruner sees) and, to average out which images, on
each disjoint block of n. FID: the scorer's own (``fid_from_features``); KID: clean-fid's
``kernel_distance`` of the candidate's features against the features of all 1,797 real digits
(the images the scorer's reference statistics are made of), seeded. Reported: Spearman's rank
correlation of each with the FID at 1000, over all candidates and over the better half. The
reference ranking shares its images, and its statistic, with the small-count FID, which favours
FID; a reference on other noise would be the stricter test.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.kid_ranking            # 30 candidates
    .venv/bin/python -m bench.kid_ranking --candidates 20 --json       # one JSON object

About 11 s a candidate on one thread of a loaded 2-core CPU (30: 5.5 min). Not part of
``make bench``: a one-off measurement.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from cleanfid.fid import kernel_distance
from scipy.stats import spearmanr

from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.fid import fid_from_features, to_uint8
from autodiff_optuna.models import load_model
from autodiff_optuna.models.digits_data import load_digits_uint8
from autodiff_optuna.sampling import SEARCH, draw, sample, standard_spacings, validate
from autodiff_optuna.search.context import alphas_cumprod

STEPS = 4
SOLVER = "dpmpp2m"
FULL = 1000  # the reference ranking's image count
COUNTS = (125, 250)  # the pruner's first rungs at the digits preset
KID_SUBSETS = 100  # clean-fid's default


def candidates(model, n: int, seed: int) -> dict[str, tuple[int, ...]]:
    """The standard spacings, then random schedules up to ``n`` in all."""
    T = model.num_train_timesteps
    out = {f"spacing {name}": s
           for name, s in standard_spacings(STEPS, T, alphas_cumprod(model)).items()}
    rng = np.random.default_rng(seed)
    while len(out) < n:
        steps = validate(rng.choice(T, STEPS, replace=False).tolist(), T)
        out.setdefault(f"random {steps}", steps)
    return out


def small_count_metrics(features: np.ndarray, real: np.ndarray, scorer, n: int,
                        seed: int) -> dict[str, tuple[float, float]]:
    """FID and KID at ``n`` images: on the first ``n`` (the pruner's prefix), and the mean over
    every disjoint block of ``n``."""
    blocks = [features[i:i + n] for i in range(0, len(features) - n + 1, n)]
    fids = [fid_from_features(b, scorer.ref_mu, scorer.ref_sigma) for b in blocks]
    kids = []
    for b in blocks:
        np.random.seed(seed)  # kernel_distance draws its subsets from numpy's global generator
        kids.append(kernel_distance(b, real, num_subsets=KID_SUBSETS))
    return {"fid": (fids[0], float(np.mean(fids))), "kid": (kids[0], float(np.mean(kids)))}


def measure(n_candidates: int = 30, seed: int = 0, progress: bool = True) -> dict:
    model, scorer = load_model("digits", "cpu"), load_scorer("digits")
    real = scorer.features(torch.from_numpy(load_digits_uint8()[0]))
    noise = draw(model, FULL, seed, SEARCH)
    rows = []
    started = time.perf_counter()
    for name, steps in candidates(model, n_candidates, seed).items():
        images = sample(model, steps, noise, SOLVER)
        if not torch.isfinite(images).all():
            print(f"{name}: samples not finite, left out", file=sys.stderr)
            continue
        features = scorer.features(to_uint8(images))
        row = {"name": name, "timesteps": list(steps),
               "fid_full": fid_from_features(features, scorer.ref_mu, scorer.ref_sigma)}
        for n in COUNTS:
            for metric, (prefix, mean) in small_count_metrics(features, real, scorer, n,
                                                              seed).items():
                row[f"{metric}_{n}"], row[f"{metric}_{n}_blocks"] = prefix, mean
        rows.append(row)
        if progress:
            print(f"{len(rows):>3} {name:<40} FID@{FULL} {row['fid_full']:9.3f}  "
                  + "  ".join(f"FID@{n} {row[f'fid_{n}']:8.3f} KID@{n} {row[f'kid_{n}']:.4f}"
                              for n in COUNTS)
                  + f"  ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    return {"model": "digits", "steps": STEPS, "solver": SOLVER, "full": FULL, "seed": seed,
            "threads": torch.get_num_threads(), "candidates": len(rows),
            "spearman": {"all": correlations(rows), "better half": correlations(
                sorted(rows, key=lambda r: r["fid_full"])[: len(rows) // 2])},
            "seconds": round(time.perf_counter() - started, 1), "rows": rows}


def correlations(rows: list[dict]) -> dict[str, float]:
    """Spearman's rho of each small-count metric with the FID at ``FULL`` images."""
    full = [r["fid_full"] for r in rows]
    return {key: float(spearmanr([r[key] for r in rows], full).statistic)
            for key in rows[0] if key.startswith(("fid_", "kid_")) and key != "fid_full"}


def table(result: dict) -> str:
    lines = [f"Spearman rank correlation with FID at {result['full']} images, digits K="
             f"{result['steps']} {result['solver']}, {result['candidates']} candidates "
             f"({result['seconds']:.0f}s, {result['threads']} thread(s)):",
             "| candidates | metric | " + " | ".join(
                 f"{n} images, prefix | {n} images, block mean" for n in COUNTS) + " |",
             "|---|---|" + "---|---|" * len(COUNTS)]
    for group, rhos in result["spearman"].items():
        for metric in ("fid", "kid"):
            lines.append(f"| {group} | {metric.upper()} | " + " | ".join(
                f"{rhos[f'{metric}_{n}']:.3f} | {rhos[f'{metric}_{n}_blocks']:.3f}"
                for n in COUNTS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="noise and random schedules")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    outcome = measure(args.candidates, args.seed)
    print(json.dumps(outcome, indent=1) if args.json else table(outcome))
