"""``make bench``: measure the bundled model, both search stages, the storage, the search
against standard spacings and Optuna's samplers, multi-fidelity pruning and a trial's profile;
update BENCHMARKS.md.

Sections between ``<!-- bench:NAME -->`` markers in BENCHMARKS.md are rewritten; the raw numbers
go to ``bench/results.json``. Every FID here is on held-out noise unless it says otherwise.
"""

import json
import os
import platform
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
from bench.search import HELDOUT_SEEDS
from autodiff_optuna.search.study import alphas_cumprod as _alphas_cumprod

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"


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


def default_study(steps: int = 4) -> dict:
    """`make study` as a user runs it (preset defaults, both stages), timed end to end, then
    every result re-scored on held-out noise."""
    from bench.search import heldout_fids, study_both_stages

    run = study_both_stages(steps, seed=0)
    best, samples = run["best"], run["best"]["samples"]
    best_mean, best_std = heldout_fids(best["timesteps"], samples)
    base_mean, base_std = heldout_fids(best["baseline_timesteps"], samples)
    front = []
    for point in best["pareto"]:
        mean, std = heldout_fids(point["timesteps"], samples, skip=point["skip"])
        front.append({**point, "fid_heldout": mean, "fid_heldout_std": std})
    cheapest_good = min((p for p in front if p["fid_heldout"] <= 1.10 * best_mean),
                        key=lambda p: p["gflops"], default=None)
    return {"steps": steps, "trials": run["trials"], "complete": best["n_complete"],
            "stage2_trials": best["stage2_n_complete"], "wall_s": run["wall_s"],
            "images": run["images"],
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


def write_sampler_plot(samplers: dict, path: Path = ROOT / "bench" / "samplers.png") -> None:
    """Best search FID against evaluated trials, mean over seeds, one line per sampler (a PNG
    through kaleido, which needs Chrome or Chromium)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, r in samplers.items():
        curves = [run["best_so_far"] for run in r["runs"]]
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length] for c in curves], axis=0)
        fig.add_trace(go.Scatter(x=list(range(1, length + 1)), y=mean, name=name))
    fig.update_layout(title="Best FID (search noise) against trials, mean of 3 seeds",
                      xaxis_title="evaluated trials", yaxis_title="best FID", yaxis_type="log",
                      width=900, height=500)
    try:
        fig.write_image(path)
    except Exception as err:  # no browser for kaleido: the table still has the numbers
        print(f"no {path.name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")


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
        f"`make study` (MODEL=digits STEPS=4, preset defaults: {s['trials']} stage-1 candidates, "
        f"{s.get('complete', s['trials'])} of them complete and the rest stopped early by "
        f"multi-fidelity pruning, then {s['stage2_trials']} stage-2 trials): "
        f"**{s['wall_s']:.0f} s** wall for both stages, start-up included.",
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
    sections = {"digits-model": quality, "stage1": stage1, "stage2": stage2, "storage": storage}
    for key, part in (("spacings_table", render_spacings), ("samplers", render_samplers),
                      ("multifidelity", render_multifidelity), ("profile", render_profile)):
        if key in results:
            extra = ([results.get("samplers_evolutionary_before")] if key == "samplers" else [])
            sections[key.replace("_", "-")] = "\n".join(head + part(results[key], *extra))
    return sections


def _pm(mean_std) -> str:
    return f"{mean_std[0]:.2f} ± {mean_std[1]:.2f}"


def render_spacings(table: dict) -> list[str]:
    rows = []
    for k, row in sorted(table.items(), key=lambda item: int(item[0])):
        fixed = row["fixed"]
        cells = " | ".join(f"{fixed[label]['fid_heldout']:.2f}" for label in fixed)
        runs = row.get("searches")
        if not runs:  # searches not run (they take the longest)
            rows.append(f"| {k} | {cells} | not run | not run | | | |")
            continue
        saving = np.mean([r["stage2_point"]["saving"] for r in runs])
        rows.append(
            f"| {k} | {cells} | {_pm(row['stage1_heldout'])} | {_pm(row['stage2_heldout'])} "
            f"({saving:.0%}) | "
            f"{np.mean([r['trials'] + r['stage2_trials'] for r in runs]):.0f} | "
            f"{np.mean([r['images'] for r in runs]):,.0f} | "
            f"{np.mean([r['cpu_s'] for r in runs]):.0f} |")
    labels = list(next(iter(table.values()))["fixed"])
    samples = next(iter(table.values()))["samples"]
    return [
        f"Held-out FID ({len(HELDOUT_SEEDS)} held-out noise seeds, {samples} images each; "
        "searched rows: mean ± std over 3 search seeds, each a full `make study` with preset "
        "defaults). Stage 2 is its front's best-FID point, at no more GFLOPs than the full "
        "network (its mean GFLOPs saving in brackets). Cost: evaluated candidates of both "
        "stages, images sampled, CPU seconds (all threads), per search.",
        "",
        "| K | " + " | ".join(labels) + " | stage-1 search | stage-2 search | candidates | "
        "images | CPU s |",
        "|---" * (len(labels) + 6) + "|",
        *rows,
    ] + (["", "*not run*: the searches at that K were not part of the last run (`python -m "
          "bench.run spacings_table` runs them all; each K takes 3 full `make study` runs)."]
         if any("searches" not in row for row in table.values()) else [])


def render_samplers(samplers: dict, before: dict | None = None) -> list[str]:
    first = next(iter(samplers.values()))
    rows = [f"| {name} | {r['budget_trials']} | {r['best_fid_heldout_mean']:.2f} ± "
            f"{r['best_fid_heldout_std']:.2f} | "
            + ", ".join(f"{run['best_fid_heldout']:.2f}" for run in r["runs"]) + " | "
            f"{np.mean([run['cpu_s'] for run in r['runs']]):.0f} |"
            for name, r in samplers.items()]
    return [
        f"Stage 1 on digits, K={first['steps']}, the same encoding, the same first trials (the "
        f"standard spacings) and the same budget of {first['budget_trials']} evaluated "
        "candidates for every sampler; the best candidate (by search FID) re-scored on "
        "held-out noise. 3 search seeds each. Best FID against trials: `bench/samplers.png`.",
        "",
        "| sampler | budget (trials) | best held-out FID (mean ± std) | per seed | CPU s per search |",
        "|---|---|---|---|---|",
        *rows,
    ] + _sampler_change(before)


def _sampler_change(before: dict | None) -> list[str]:
    if not before:
        return []
    return ["", f"EvolutionarySampler change in this round: {before['change']}; before it, "
                f"{before['best_fid_heldout_mean']:.2f} ± {before['best_fid_heldout_std']:.2f} "
                f"(per seed " + ", ".join(f"{v:.2f}" for v in before["per_seed"]) + "). "
                f"Also tried: {before['also_tried']}."]


def render_multifidelity(mf: dict) -> list[str]:
    full, pruned = mf["heldout_fid_full"], mf["heldout_fid_pruned"]
    return [
        f"Stage 1 on digits, K={mf['steps']}, {mf['budget_trials']} evaluated candidates per "
        f"search, 3 seeds; multi-fidelity reports FID at {mf['min_samples']}, "
        f"{2 * mf['min_samples']}, ... images and prunes with Optuna's MedianPruner "
        f"(values compared at equal image counts only); complete trials use all "
        f"{mf['samples']}.",
        "",
        "| search | images sampled (3 seeds) | CPU s (3 seeds) | final best, held-out FID |",
        "|---|---|---|---|",
        f"| without pruning | {sum(r['images'] for r in mf['runs']['full']):,} | "
        f"{mf['cpu_s_full']:.0f} | {_pm(full)} |",
        f"| multi-fidelity | {sum(r['images'] for r in mf['runs']['pruned']):,} | "
        f"{mf['cpu_s_pruned']:.0f} | {_pm(pruned)} |",
        "",
        f"Images saved: **{mf['image_reduction']:.0%}** (target >= 40%); held-out FID of the final "
        f"best, pruned over unpruned: **{mf['heldout_fid_ratio']:.3f}**.",
        *(["", "Pruners tried before this one (same budget, K=4):", "",
            *[f"- {line}" for line in mf["pruners_tried"]]] if mf.get("pruners_tried") else []),
    ]


def render_profile(p: dict) -> list[str]:
    rows = [f"| {group} | {seconds * 1e3:.0f} ms | {seconds / p['trial_s']:.0%} |"
            for group, seconds in p["groups_s"].items()]
    return [
        f"cProfile of {p['trials']} stage-1 trials (K={p['steps']}, {p['samples']} images, SQLite "
        f"study; `bench/profile.py`): {p['trial_s']:.2f} s per trial.",
        "",
        "| where | per trial | share |",
        "|---|---|---|",
        *rows,
    ]


def main() -> None:
    """``python -m bench.run [PART ...]``: all parts, or re-measure only the named ones
    (model_quality, trial_time_s, default_study, storage_overhead, masked_speed,
    spacings_table, samplers, multifidelity, profile) and keep the other numbers of
    bench/results.json."""
    from bench import search
    from bench.profile import profile_trials

    parts = {"model_quality": model_quality, "trial_time_s": trial_time,
             "default_study": default_study, "storage_overhead": storage_overhead,
             "masked_speed": None, "spacings_table": search.spacings_table,
             "samplers": search.sampler_comparison, "multifidelity": search.multifidelity,
             "profile": profile_trials}
    wanted = sys.argv[1:] or list(parts)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and sys.argv[1:] else {}
    results["machine"] = machine()
    for key in wanted:
        print(f"{key} ...", flush=True)
        if key == "samplers":
            results.pop("samplers_evolutionary_before", None)  # a note about an older run
        if key == "multifidelity" and "samplers" in results:
            # its unpruned searches are the sampler comparison's EvolutionarySampler runs
            results[key] = search.multifidelity(unpruned=results["samplers"]["evolutionary"]["runs"])
        elif key == "masked_speed":
            # wall clock is checked on the front point that skips the most compute
            pick = min(results["default_study"]["pareto"], key=lambda p: p["gflops"])
            results[key] = masked_speed(tuple(pick["timesteps"]), pick["skip"])
        else:
            results[key] = parts[key]()
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections(render(results))
    if "samplers" in results:
        write_sampler_plot(results["samplers"])
    print(f"updated {RESULTS.relative_to(ROOT)} and BENCHMARKS.md ({', '.join(wanted)})")


if __name__ == "__main__":
    main()
