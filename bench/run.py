"""``make bench``: measure the bundled model and the stage-1 search; update BENCHMARKS.md.

Sections between ``<!-- bench:NAME -->`` markers in BENCHMARKS.md are rewritten; the raw numbers
go to ``bench/results.json``. Every FID here is on held-out noise unless it says otherwise.
"""

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autodiff_optuna.metrics.fid import fid_from_features, to_uint8
from autodiff_optuna.models import load_model, load_scorer
from autodiff_optuna.models.digits_data import load_digits_uint8, split_halves
from autodiff_optuna.sampling import HELDOUT, SEARCH, draw, sample, standard_spacings
from autodiff_optuna.search.config import SearchConfig, load_preset
from autodiff_optuna.search.objective import score_schedule
from autodiff_optuna.search.study import alphas_cumprod as _alphas_cumprod

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
HELDOUT_SEEDS = (0, 1, 2)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU only"


def model_quality() -> dict:
    """The digits model at 100 uniform DDIM steps against the data's own floor, like for like:
    898 images each, scored against the statistics of the same held-out half of the real digits."""
    model, scorer = load_model("digits"), load_scorer("digits")
    images, _ = load_digits_uint8()
    half_a, half_b = split_halves(len(images))
    feats_b = scorer.features(torch.from_numpy(images[half_b]))
    mu_b, sigma_b = feats_b.mean(0), np.cov(feats_b, rowvar=False)
    floor = fid_from_features(scorer.features(torch.from_numpy(images[half_a])), mu_b, sigma_b)
    out = {"floor_half_vs_half": floor, "n": len(half_a)}
    alphas = _alphas_cumprod(model)
    for k in (100, 20):
        steps = standard_spacings(k, model.num_train_timesteps, alphas)["uniform"]
        batch = draw(model, len(half_a), seed=0, purpose=HELDOUT)
        x = sample(model, steps, batch, "ddim")
        out[f"ddim{k}_vs_half"] = fid_from_features(scorer.features(to_uint8(x)), mu_b, sigma_b)
    return out


def trial_time(steps: int = 4) -> float:
    """Wall time of one digits trial (sampling + FID) at the default sample count."""
    model, scorer = load_model("digits"), load_scorer("digits")
    config = SearchConfig("digits", steps)
    batch = draw(model, config.samples, config.seed, SEARCH)
    schedule = standard_spacings(steps, model.num_train_timesteps, _alphas_cumprod(model))["uniform"]
    score_schedule(model, scorer, schedule, batch, "ddim")  # warm-up
    times = []
    for _ in range(5):
        started = time.perf_counter()
        score_schedule(model, scorer, schedule, batch, "ddim")
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def heldout_fid(schedule, samples: int) -> tuple[float, float]:
    model, scorer = load_model("digits"), load_scorer("digits")
    fids = [score_schedule(model, scorer, tuple(schedule), draw(model, samples, s, HELDOUT), "ddim")
            for s in HELDOUT_SEEDS]
    return float(np.mean(fids)), float(np.std(fids))


def default_study(steps: int = 4) -> dict:
    """`make study` as a user runs it (the preset's defaults), timed end to end."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autodiff_optuna", "study", "--model", "digits",
                        "--steps", str(steps), "--storage", url, "--quiet"], check=True)
        wall = time.perf_counter() - started
        best = json.loads(subprocess.run(
            [sys.executable, "-m", "autodiff_optuna", "best", "--name", f"digits-k{steps}",
             "--storage", url, "--json"], check=True, capture_output=True, text=True).stdout)
    samples = SearchConfig("digits", steps).samples
    best_mean, best_std = heldout_fid(best["timesteps"], samples)
    base_mean, base_std = heldout_fid(best["baseline_timesteps"], samples)
    return {"steps": steps, "trials": best["n_complete"], "wall_s": wall,
            "best_timesteps": best["timesteps"], "best_fid_search": best["fid"],
            "uniform_timesteps": best["baseline_timesteps"], "uniform_fid_search": best["baseline_fid"],
            "best_fid_heldout": best_mean, "best_fid_heldout_std": best_std,
            "uniform_fid_heldout": base_mean, "uniform_fid_heldout_std": base_std,
            "preset": load_preset("digits", steps)}


def render(results: dict) -> dict[str, str]:
    q, s = results["model_quality"], results["default_study"]
    quality = "\n".join([
        f"Machine: {results['machine']}.",
        "",
        f"| what ({q['n']} images, against the statistics of one held-out half of the real digits) | FID |",
        "|---|---|",
        f"| the data's own floor: the other half of the real digits | {q['floor_half_vs_half']:.3f} |",
        f"| bundled model, uniform DDIM, 100 steps | {q['ddim100_vs_half']:.3f} |",
        f"| bundled model, uniform DDIM, 20 steps | {q['ddim20_vs_half']:.3f} |",
    ])
    study = "\n".join([
        f"Machine: {results['machine']}.",
        "",
        f"One digits trial (4 steps, {SearchConfig('digits', 4).samples} samples, sampling + FID): "
        f"**{results['trial_time_s']:.2f} s** (median of 5).",
        "",
        f"`make study` (MODEL=digits STEPS=4, preset defaults: {s['trials']} trials): "
        f"**{s['wall_s']:.0f} s** wall, start-up included.",
        "",
        f"| schedule | time steps | FID on search noise | held-out FID (mean ± std over {len(HELDOUT_SEEDS)} held-out seeds) |",
        "|---|---|---|---|",
        f"| uniform DDIM | {s['uniform_timesteps']} | {s['uniform_fid_search']:.2f} | "
        f"{s['uniform_fid_heldout']:.2f} ± {s['uniform_fid_heldout_std']:.2f} |",
        f"| searched | {s['best_timesteps']} | {s['best_fid_search']:.2f} | "
        f"{s['best_fid_heldout']:.2f} ± {s['best_fid_heldout_std']:.2f} |",
        "",
        f"Held-out ratio searched / uniform: **{s['best_fid_heldout'] / s['uniform_fid_heldout']:.3f}** "
        "(target <= 0.5).",
    ])
    return {"digits-model": quality, "stage1": study}


def write_sections(sections: dict[str, str], path: Path = ROOT / "BENCHMARKS.md") -> None:
    text = path.read_text()
    for name, body in sections.items():
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        block = f"{start}\n{body}\n{end}"
        if start in text:
            head, rest = text.split(start, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text += f"\n{block}\n"
    path.write_text(text)


def main() -> None:
    results = {"machine": machine()}
    print("model quality ...", flush=True)
    results["model_quality"] = model_quality()
    print("trial time ...", flush=True)
    results["trial_time_s"] = trial_time()
    print("default study ...", flush=True)
    results["default_study"] = default_study()
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections(render(results))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
