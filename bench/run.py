"""``make bench``: measure the bundled model and the stage-1 search; update BENCHMARKS.md.

Sections between ``<!-- bench:NAME -->`` markers in BENCHMARKS.md are rewritten; the raw numbers
go to ``bench/results.json``. Every FID here is on held-out noise unless it says otherwise.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autodiff_optuna.metrics.fid import fid_from_features, to_uint8
from autodiff_optuna.metrics.flops import layer_costs
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


def heldout_fid(schedule, samples: int, skip=None) -> tuple[float, float]:
    model, scorer = load_model("digits"), load_scorer("digits")
    fids = [score_schedule(model, scorer, tuple(schedule), draw(model, samples, s, HELDOUT), "ddim",
                           skip=skip) for s in HELDOUT_SEEDS]
    return float(np.mean(fids)), float(np.std(fids))


def default_study(steps: int = 4) -> dict:
    """`make study` as a user runs it (preset defaults, both stages), timed end to end, then
    every result re-scored on held-out noise."""
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
    front = []
    for point in best["pareto"]:
        mean, std = heldout_fid(point["timesteps"], samples, point["skip"])
        front.append({**point, "fid_heldout": mean, "fid_heldout_std": std})
    cheapest_good = min((p for p in front if p["fid_heldout"] <= 1.10 * best_mean),
                        key=lambda p: p["gflops"], default=None)
    return {"steps": steps, "trials": best["n_complete"],
            "stage2_trials": best["stage2_n_complete"], "wall_s": wall,
            "best_timesteps": best["timesteps"], "best_fid_search": best["fid"],
            "uniform_timesteps": best["baseline_timesteps"], "uniform_fid_search": best["baseline_fid"],
            "best_fid_heldout": best_mean, "best_fid_heldout_std": best_std,
            "uniform_fid_heldout": base_mean, "uniform_fid_heldout_std": base_std,
            "full_gflops": best["full_gflops"], "pareto": front,
            "cheapest_within_10pct": cheapest_good,
            "preset": load_preset("digits", steps)}


def masked_speed(timesteps, skip, repeats: int = 7) -> dict:
    """Wall-clock saving of masked sampling against its GFLOPs saving, same steps and noise."""
    model = load_model("digits")
    costs = layer_costs(model)
    batch = draw(model, SearchConfig("digits", len(timesteps)).samples, 0, HELDOUT)

    def timed(mask):
        sample(model, timesteps, batch, "ddim", skip=mask)  # warm-up
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            sample(model, timesteps, batch, "ddim", skip=mask)
            runs.append(time.perf_counter() - started)
        return float(np.median(runs))

    full_s, masked_s = timed(None), timed(skip)
    full_g, masked_g = costs.gflops([()] * len(timesteps)), costs.gflops(skip)
    time_saving, flop_saving = 1 - masked_s / full_s, 1 - masked_g / full_g
    return {"timesteps": list(timesteps), "skip": skip, "full_s": full_s, "masked_s": masked_s,
            "gflops_saving": flop_saving, "time_saving": time_saving,
            "time_over_gflops_saving": time_saving / flop_saving if flop_saving else None}


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


def storage_overhead() -> dict:
    from bench.storage import per_trial_overhead

    out = {"sqlite": per_trial_overhead(f"sqlite:///{tempfile.mkdtemp()}/overhead.db")}
    postgres = os.environ.get("AUTODIFF_BENCH_POSTGRES_URL")
    if postgres:
        out["postgresql"] = per_trial_overhead(postgres)
    return out


def render(results: dict) -> dict[str, str]:
    q, s = results["model_quality"], results["default_study"]
    head = [f"Machine: {results['machine']}.", ""]
    quality = "\n".join(head + [
        f"| what ({q['n']} images, against the statistics of one held-out half of the real digits) | FID |",
        "|---|---|",
        f"| the data's own floor: the other half of the real digits | {q['floor_half_vs_half']:.3f} |",
        f"| bundled model, uniform DDIM, 100 steps | {q['ddim100_vs_half']:.3f} |",
        f"| bundled model, uniform DDIM, 20 steps | {q['ddim20_vs_half']:.3f} |",
    ])
    stage1 = "\n".join(head + [
        f"One digits trial (4 steps, {SearchConfig('digits', 4).samples} samples, sampling + FID): "
        f"**{results['trial_time_s']:.2f} s** (median of 5).",
        "",
        f"`make study` (MODEL=digits STEPS=4, preset defaults: {s['trials']} stage-1 and "
        f"{s['stage2_trials']} stage-2 trials): **{s['wall_s']:.0f} s** wall for both stages, "
        "start-up included.",
        "",
        f"| schedule | time steps | FID on search noise | held-out FID (mean ± std, {len(HELDOUT_SEEDS)} held-out seeds) |",
        "|---|---|---|---|",
        f"| uniform DDIM | {s['uniform_timesteps']} | {s['uniform_fid_search']:.2f} | "
        f"{s['uniform_fid_heldout']:.2f} ± {s['uniform_fid_heldout_std']:.2f} |",
        f"| stage-1 search | {s['best_timesteps']} | {s['best_fid_search']:.2f} | "
        f"{s['best_fid_heldout']:.2f} ± {s['best_fid_heldout_std']:.2f} |",
        "",
        f"Held-out ratio searched / uniform: **{s['best_fid_heldout'] / s['uniform_fid_heldout']:.3f}** "
        "(target <= 0.5).",
    ])
    rows = [f"| {p['gflops']:.4f} | {1 - p['gflops'] / s['full_gflops']:.1%} | "
            f"{sum(len(m) for m in p['skip'])} | {p['timesteps']} | {p['fid']:.2f} | "
            f"{p['fid_heldout']:.2f} ± {p['fid_heldout_std']:.2f} |" for p in s["pareto"]]
    pick, speed = s["cheapest_within_10pct"], results["masked_speed"]
    stage2 = "\n".join(head + [
        f"Stage-2 Pareto front of the same `make study` run (full network at 4 steps: "
        f"{s['full_gflops']:.4f} GFLOPs per image):",
        "",
        "| GFLOPs/image | saved | layer-steps skipped | time steps | FID (search noise) | held-out FID |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        ("No front point is within 10% of the stage-1 best's held-out FID." if pick is None else
         f"Cheapest point within 10% of the stage-1 best's held-out FID "
         f"({s['best_fid_heldout']:.2f}): **{1 - pick['gflops'] / s['full_gflops']:.1%} fewer "
         f"GFLOPs**, held-out FID {pick['fid_heldout']:.2f} (target: >= 25% fewer)."),
        "",
        f"Masked sampling, wall clock on this CPU, on the front point that skips the most "
        f"({speed['timesteps']}, median of 7): full "
        f"{speed['full_s']:.3f} s, masked {speed['masked_s']:.3f} s: time saved "
        f"{speed['time_saving']:.1%} for {speed['gflops_saving']:.1%} of GFLOPs saved, "
        f"**{speed['time_over_gflops_saving']:.0%}** of the GFLOPs saving (target >= 80%).",
    ])
    st = results["storage_overhead"]
    storage = "\n".join(head + [
        "Per-trial overhead of everything but sampling and FID (sampler, objective bookkeeping, "
        "Optuna RDB storage with heartbeat, callbacks), median over the 50 trials before the "
        "study holds 1,000 (`bench/storage.py`):",
        "",
        "| storage | first 50 trials | trials 950-1000 |",
        "|---|---|---|",
        *[f"| {name} | {r['median_ms_first']:.1f} ms | {r['median_ms_last']:.1f} ms |"
          for name, r in st.items()],
    ])
    return {"digits-model": quality, "stage1": stage1, "stage2": stage2, "storage": storage}


def main() -> None:
    """``python -m bench.run [PART ...]``: all parts, or re-measure only the named ones
    (model_quality, trial_time_s, default_study, storage_overhead, masked_speed) and keep the
    other numbers of bench/results.json."""
    parts = {"model_quality": model_quality, "trial_time_s": trial_time,
             "default_study": default_study, "storage_overhead": storage_overhead,
             "masked_speed": None}
    wanted = sys.argv[1:] or list(parts)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and sys.argv[1:] else {}
    results["machine"] = machine()
    for key in wanted:
        print(f"{key} ...", flush=True)
        if key == "masked_speed":
            # wall clock is checked on the front point that skips the most compute
            pick = min(results["default_study"]["pareto"], key=lambda p: p["gflops"])
            results[key] = masked_speed(tuple(pick["timesteps"]), pick["skip"])
        else:
            results[key] = parts[key]()
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections(render(results))
    print(json.dumps({k: v for k, v in results.items() if k != "default_study"}, indent=1))


if __name__ == "__main__":
    main()
