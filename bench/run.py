"""``make bench``: measure the bundled model, both search stages, the storage, the search
against standard spacings and Optuna's samplers, multi-fidelity pruning and a trial's profile;
update BENCHMARKS.md.

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

from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.fid import fid_from_features, to_uint8
from autodiff_optuna.metrics.flops import layer_costs
from autodiff_optuna.metrics.scoring import score_schedule
from autodiff_optuna.models import load_model
from autodiff_optuna.models.digits_data import load_digits_uint8, split_halves
from autodiff_optuna.sampling import HELDOUT, SEARCH, draw, sample, standard_spacings
from autodiff_optuna.search.config import SearchConfig, load_preset
from autodiff_optuna.search.context import alphas_cumprod as _alphas_cumprod
from bench.search import HELDOUT_SEEDS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
DEEP = "digits-deep"  # the deeper bundled digits model, measured by the part deep_study


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


def model_quality(name: str = "digits") -> dict:
    """A digits model at 100 uniform DDIM steps against the data's own floor, like for like:
    898 images each, scored against the statistics of the same held-out half of the real digits."""
    model, scorer = load_model(name), load_scorer(name)
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
    spacings = standard_spacings(steps, model.num_train_timesteps, _alphas_cumprod(model))
    schedule = spacings["uniform"]
    score_schedule(model, scorer, schedule, batch, "ddim")  # warm-up
    times = []
    for _ in range(5):
        started = time.perf_counter()
        score_schedule(model, scorer, schedule, batch, "ddim")
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def default_study(steps: int = 4, name: str = "digits") -> dict:
    """`make study` as a user runs it (preset defaults, both stages), timed end to end, then
    every result re-scored on held-out noise."""
    from bench.search import cheapest_within, heldout_fids, heldout_front, study_both_stages

    run = study_both_stages(steps, 0, model=name)
    best, samples = run["best"], run["best"]["samples"]
    best_mean, best_std = heldout_fids(best["timesteps"], samples, model_name=name)
    base_mean, base_std = heldout_fids(best["baseline_timesteps"], samples, model_name=name)
    front = heldout_front(best, name)
    cheapest_good = cheapest_within(front, best_mean)
    return {"steps": steps, "trials": run["trials"], "complete": best["n_complete"],
            "stage2_trials": best["stage2_n_complete"], "wall_s": run["wall_s"],
            "images": run["images"],
            "best_timesteps": best["timesteps"], "best_fid_search": best["fid"],
            "uniform_timesteps": best["baseline_timesteps"],
            "uniform_fid_search": best["baseline_fid"],
            "best_fid_heldout": best_mean, "best_fid_heldout_std": best_std,
            "uniform_fid_heldout": base_mean, "uniform_fid_heldout_std": base_std,
            "full_gflops": best["full_gflops"], "pareto": front,
            "cheapest_within_10pct": cheapest_good,
            "preset": load_preset(name, steps)}


def masked_speed(front: list[dict], repeats: int = 7, name: str = "digits") -> dict:
    """Wall-clock saving of masked sampling against its GFLOPs saving, for every point of a
    stage-2 front: each point sampled with its masks and with the full network, same steps and
    noise, the two timed alternately (so drifts of the machine hit both alike)."""
    model = load_model(name)
    costs = layer_costs(model)
    k = len(front[0]["timesteps"])
    batch = draw(model, SearchConfig(name, k).samples, 0, HELDOUT)

    def seconds(timesteps, mask):
        started = time.perf_counter()
        sample(model, timesteps, batch, "ddim", skip=mask)
        return time.perf_counter() - started

    points = []
    for point in front:
        timesteps, skip = tuple(point["timesteps"]), point["skip"]
        seconds(timesteps, skip)  # warm-up
        runs = [(seconds(timesteps, None), seconds(timesteps, skip)) for _ in range(repeats)]
        full_s, masked_s = (float(np.median(r)) for r in zip(*runs))
        time_saving = 1 - masked_s / full_s
        flop_saving = 1 - costs.gflops(skip) / costs.gflops([()] * k)
        points.append({"timesteps": list(timesteps), "skip": skip, "full_s": full_s,
                       "masked_s": masked_s, "gflops_saving": flop_saving,
                       "time_saving": time_saving,
                       "time_over_gflops_saving": time_saving / flop_saving if flop_saving
                       else None})
    return {"repeats": repeats, "points": points,
            "layer_shares": layer_shares(model, costs, batch)}


def skip_sensitivity(timesteps) -> dict:
    """Held-out FID (noise seed 0) of the stage-1 best schedule with one layer skipped at its
    first or at its last step, and with every layer skipped at one step: how much room the
    network leaves for skipping at all."""
    model, scorer = load_model("digits"), load_scorer("digits")
    costs = layer_costs(model)
    k, full = len(timesteps), costs.gflops([()] * len(timesteps))
    batch = draw(model, SearchConfig("digits", k).samples, HELDOUT_SEEDS[0], HELDOUT)

    def scored(position: int, layers) -> dict:
        skip = [()] * k
        skip[position] = tuple(layers)
        return {"fid": score_schedule(model, scorer, tuple(timesteps), batch, "ddim", skip=skip),
                "saving": 1 - costs.gflops(skip) / full}

    return {"timesteps": list(timesteps),
            "full_fid": score_schedule(model, scorer, tuple(timesteps), batch, "ddim"),
            "one_layer": {name: {"first": scored(0, [name]), "last": scored(k - 1, [name])}
                          for name in costs.layers},
            "whole_step": [scored(i, costs.layers) for i in range(k)]}


def layer_shares(model, costs, batch, repeats: int = 5) -> dict:
    """Each skippable layer's share of one full forward's wall time and of its FLOPs: where
    they differ, skipping saves time out of proportion to the GFLOPs it saves."""
    spent = dict.fromkeys(costs.layers, 0.0)
    modules = dict(model.network.named_modules())
    hooks = []
    for name in costs.layers:
        started = {}
        hooks.append(modules[name].register_forward_pre_hook(
            lambda _m, _a, s=started: s.__setitem__("t", time.perf_counter())))
        hooks.append(modules[name].register_forward_hook(
            lambda _m, _a, _o, s=started, n=name: spent.__setitem__(
                n, spent[n] + time.perf_counter() - s["t"])))
    x, t = batch.noise, torch.full((len(batch.noise),), model.num_train_timesteps // 2)
    try:
        with torch.no_grad():
            model.predict_noise(x, t, batch.labels)  # warm-up
            spent.update(dict.fromkeys(spent, 0.0))
            started = time.perf_counter()
            for _ in range(repeats):
                model.predict_noise(x, t, batch.labels)
            total = time.perf_counter() - started
    finally:
        for hook in hooks:
            hook.remove()
    full = costs.gflops([()]) * 1e9
    return {name: {"time": spent[name] / total, "flops": costs.saving[name] / full}
            for name in costs.layers}


def write_sampler_plot(samplers: dict, path: Path = ROOT / "bench" / "samplers.png") -> None:
    """Best search FID against evaluated trials, mean over seeds, one line per sampler (a PNG
    through kaleido, which needs Chrome or Chromium)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    seeds = len(next(iter(samplers.values()))["runs"])
    for name, r in samplers.items():
        curves = [run["best_so_far"] for run in r["runs"]]
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length] for c in curves], axis=0)
        fig.add_trace(go.Scatter(x=list(range(1, length + 1)), y=mean, name=name))
    fig.update_layout(title=f"Best FID (search noise) against trials, mean of {seeds} seeds",
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


def deep_study(steps: int = 4) -> dict:
    """The deeper LayerDrop-trained digits model: its quality, a default study on it (front
    re-scored on held-out noise), and the masked wall clock of that front."""
    study = default_study(steps, DEEP)
    return {"model_quality": model_quality(DEEP), "study": study,
            "masked_speed": masked_speed(study["pareto"], name=DEEP)}


def storage_overhead(runs: int = 3) -> dict:
    """Each storage ``runs`` times, each in a fresh interpreter (in this process, after the other
    parts, the same bookkeeping measured up to 40% slower: the harness's own models and studies
    in memory); the run-to-run spread on this shared machine is reported with the median."""
    def measured(url: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "bench.storage", url, "--json"], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def repeated(url_for_run) -> dict:
        results = [measured(url_for_run()) for _ in range(runs)]
        return {"runs": results, **{key: float(np.median([r[key] for r in results]))
                                    for key in ("median_ms_first", "median_ms_last")}}

    out = {"sqlite": repeated(lambda: f"sqlite:///{tempfile.mkdtemp()}/overhead.db")}
    postgres = os.environ.get("AUTODIFF_BENCH_POSTGRES_URL")
    if postgres:
        out["postgresql"] = repeated(lambda: postgres)
    return out


def _head(results: dict, part: str) -> list[str]:
    """A section's machine line: the part's own where it was measured alone, else the run's."""
    return [f"Machine: {results[part].get('machine') or results['machine']}.", ""]


def render(results: dict) -> dict[str, str]:
    q, s = results["model_quality"], results["default_study"]
    head = [f"Machine: {results['machine']}.", ""]
    quality = "\n".join(head + [
        f"| what ({q['n']} images, against the statistics of one held-out half of the real "
        "digits) | FID |",
        "|---|---|",
        "| the data's own floor: the other half of the real digits | "
        f"{q['floor_half_vs_half']:.3f} |",
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
        "| schedule | time steps | FID on search noise | held-out FID (mean ± std, "
        f"{len(HELDOUT_SEEDS)} held-out seeds) |",
        "|---|---|---|---|",
        f"| uniform DDIM | {s['uniform_timesteps']} | {s['uniform_fid_search']:.2f} | "
        f"{s['uniform_fid_heldout']:.2f} ± {s['uniform_fid_heldout_std']:.2f} |",
        f"| stage-1 search | {s['best_timesteps']} | {s['best_fid_search']:.2f} | "
        f"{s['best_fid_heldout']:.2f} ± {s['best_fid_heldout_std']:.2f} |",
        "",
        "Held-out ratio searched / uniform: "
        f"**{s['best_fid_heldout'] / s['uniform_fid_heldout']:.3f}** "
        "(target <= 0.5).",
    ])
    stage2 = "\n".join(head + render_front(s, results["masked_speed"]) + [
        *render_layer_shares(results["masked_speed"].get("layer_shares")),
        *render_skip_sensitivity(results.get("skip_sensitivity")),
    ])
    st = results["storage_overhead"]
    storage = "\n".join(head + [
        "Per-trial overhead of everything but sampling and FID (sampler, objective bookkeeping, "
        "Optuna RDB storage with heartbeat, callbacks), median over the first 50 trials and "
        "over the 50 trials before the study holds 1,000 (`bench/storage.py`); each storage "
        "measured in separate runs, each in a fresh process: the median run, and every run.",
        "",
        "| storage | first 50 trials | trials 950-1000 | trials 950-1000, each run |",
        "|---|---|---|---|",
        *[f"| {name} | {r['median_ms_first']:.1f} ms | **{r['median_ms_last']:.1f} ms** | "
          + ", ".join(f"{run['median_ms_last']:.1f}" for run in r.get("runs", [])) + " |"
          for name, r in st.items()],
    ])
    sections = {"digits-model": quality, "stage1": stage1, "stage2": stage2, "storage": storage}
    for key, part in (("spacings_table", render_spacings), ("samplers", render_samplers),
                      ("multifidelity", render_multifidelity), ("profile", render_profile)):
        if key in results:
            sections[key.replace("_", "-")] = "\n".join(head + part(results[key]))
    if "workers" in results:
        from bench.workers import render as render_workers

        workers = results["workers"]
        sections["workers"] = "\n".join(_head(results, "workers") + render_workers(workers))
    if "teacher_reference" in results:
        sections["teacher-reference"] = "\n".join(
            _head(results, "teacher_reference")
            + render_teacher(results["teacher_reference"], results["default_study"]))
    if "deep_study" in results:
        sections["stage2-deep"] = "\n".join(head + render_deep(results["deep_study"]))
    if "stage2_budgets" in results:
        budgets = results["stage2_budgets"]
        # a run split over processes (one seed each) names its own machine and threads
        own = [f"Machine: {budgets['machine']}.", ""] if budgets.get("machine") else head
        sections["stage2-budgets"] = "\n".join(own + render_budgets(budgets))
    from bench.solvers import MODELS as SOLVER_MODELS
    from bench.solvers import render as render_solvers

    for key, section, _ in SOLVER_MODELS.values():
        if key in results:
            sections[section] = "\n".join(render_solvers(results[key]))
    if "protocol" in results:
        from bench.protocol import KEY, markdown

        sections[KEY] = markdown(results["protocol"])
    if "reuse" in results:
        from bench import reuse

        sections[reuse.KEY] = reuse.markdown(results["reuse"])
    from bench import kernel

    if kernel.KEY in results:
        sections[kernel.SECTION] = "\n".join(kernel.render(results[kernel.KEY]))
    from bench import budget, confirm_depth, margins, rungs

    if confirm_depth.KEY in results:
        sections[confirm_depth.SECTION] = confirm_depth.markdown(results[confirm_depth.KEY])
    if budget.KEY in results:
        sections[budget.SECTION] = budget.markdown(results[budget.KEY])
    if rungs.KEY in results:
        sections[rungs.SECTION] = rungs.markdown(results[rungs.KEY])
    if margins.KEY in results:
        sections[margins.SECTION] = "\n".join(margins.render(results[margins.KEY]))
    if "end_to_end" in results:
        sections["end-to-end"] = "\n".join(head + render_end_to_end(
            results["end_to_end"], results.get("spacings_table", {})))
    return sections


def render_teacher(t: dict, real: dict) -> list[str]:
    """The search scored against the model's own samples beside the one scored against the
    real digits, both judged on held-out noise against the real digits."""
    return [
        f"Stage 1 of the default digits study (seed {t['seed']}, {t['samples']} images a "
        "candidate), each best schedule scored on held-out noise against the real digits "
        f"(mean ± std over {len(HELDOUT_SEEDS)} streams).",
        "",
        "| reference the search scored against | best schedule | held-out FID against the "
        "real digits |",
        "|---|---|---|",
        f"| the real digits (default study, stage 1) | {real['best_timesteps']} | "
        f"{real['best_fid_heldout']:.2f} ± {real['best_fid_heldout_std']:.2f} |",
        f"| the model's own {t['teacher_steps']}-step samples (`--ref-teacher "
        f"{t['teacher_steps']}`) | {t['timesteps']} | "
        f"**{t['fid_heldout']:.2f} ± {t['fid_heldout_std']:.2f}** |",
        f"| uniform | {real['uniform_timesteps']} | {real['uniform_fid_heldout']:.2f} ± "
        f"{real['uniform_fid_heldout_std']:.2f} |",
        "",
        f"The teacher-scored search took {t['wall_s']:.0f} s (teacher statistics included).",
    ]


def render_front(s: dict, speed: dict) -> list[str]:
    """A default study's stage-2 front (``default_study``) with its masked wall clock."""
    timed = {(tuple(p["timesteps"]), str(p["skip"])): p for p in speed.get("points", [])}

    def wall(point) -> str:
        t = timed.get((tuple(point["timesteps"]), str(point["skip"])))
        if t is None or not t["time_over_gflops_saving"]:
            return "| | |"
        return f"| {t['time_saving']:.1%} | {t['time_over_gflops_saving']:.0%} |"

    rows = [f"| {p['gflops']:.4f} | {1 - p['gflops'] / s['full_gflops']:.1%} | "
            f"{sum(len(m) for m in p['skip'])} | {p['timesteps']} | {p['fid']:.2f} | "
            f"{p['fid_heldout']:.2f} ± {p['fid_heldout_std']:.2f} {wall(p)}" for p in s["pareto"]]
    ratios = [t["time_over_gflops_saving"] for t in timed.values()
              if t["time_over_gflops_saving"]]
    pick = s["cheapest_within_10pct"]
    return [
        f"Stage-2 Pareto front of the same `make study` run (full network at "
        f"{len(s['best_timesteps'])} steps: {s['full_gflops']:.4f} GFLOPs per image). Wall clock: "
        f"each point's masked sampling of 1000 images against the full network's on the same "
        f"steps and noise, median of {speed.get('repeats', 7)} alternating runs on this CPU.",
        "",
        "| GFLOPs/image | GFLOPs saved | layer-steps skipped | time steps | FID (search noise) "
        "| held-out FID | wall clock saved | wall clock / GFLOPs saving |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        ("No front point is within 10% of the stage-1 best's held-out FID." if pick is None else
         f"Cheapest point within 10% of the stage-1 best's held-out FID "
         f"({s['best_fid_heldout']:.2f}): **{1 - pick['gflops'] / s['full_gflops']:.1%} fewer "
         f"GFLOPs**, held-out FID {pick['fid_heldout']:.2f} (target: >= 25% fewer)."),
        "",
        (f"Wall-clock saving over GFLOPs saving across the front's masked points: median "
         f"**{np.median(ratios):.0%}**, from {min(ratios):.0%} to {max(ratios):.0%} "
         f"(target >= 80%)." if ratios else ""),
    ]


def render_deep(deep: dict) -> list[str]:
    """The deeper digits model: its quality, then its default study and stage-2 front."""
    q, s = deep["model_quality"], deep["study"]
    return [
        f"| {DEEP} (FID, {q['n']} images against one held-out half of the real digits) | DDIM "
        "100 steps | DDIM 20 steps | K=4 uniform, held-out | K=4 stage-1 best, held-out |",
        "|---|---|---|---|---|",
        f"| this model | {q['ddim100_vs_half']:.3f} | {q['ddim20_vs_half']:.3f} | "
        f"{s['uniform_fid_heldout']:.2f} ± {s['uniform_fid_heldout_std']:.2f} | "
        f"{s['best_fid_heldout']:.2f} ± {s['best_fid_heldout_std']:.2f} "
        f"{s['best_timesteps']} |",
        "",
        f"`make study MODEL={DEEP} STEPS={len(s['best_timesteps'])}` (preset defaults: "
        f"{s['trials']} stage-1 candidates, {s['stage2_trials']} stage-2 trials): "
        f"**{s['wall_s']:.0f} s** wall for both stages.",
        "",
        *render_front(s, deep["masked_speed"]),
    ]


def render_budgets(b: dict) -> list[str]:
    """Stage 2's reach by budget: per seed, the cheapest front point within 10% of the stage-1
    best's held-out FID, and the front's cheapest point whatever its FID."""
    budgets = [str(n) for n in b["budgets"]]

    def saved(run, budget) -> float:
        pick = run["budgets"][budget]["cheapest_within_10pct"]
        return pick["saved"] if pick else 0.0

    def cell(run, budget) -> str:
        r = run["budgets"][budget]
        pick = r["cheapest_within_10pct"]
        fid = f" ({pick['fid_heldout']:.2f})" if pick else ""
        return f"{saved(run, budget):.1%}{fid}; {max(p['saved'] for p in r['front']):.1%}"

    rows = [f"| {run['seed']} | {run['stage1_heldout']:.2f} {run['stage1']} | "
            + " | ".join(cell(run, n) for n in budgets) + " |" for run in b["runs"]]
    means = [np.mean([saved(run, n) for run in b["runs"]]) for n in budgets]
    seconds = [np.mean([run["budgets"][n]["stage2_s"] for run in b["runs"]]) for n in budgets]
    return [
        f"`{b['model']}`, K={b['steps']}: one stage-1 study per seed (preset defaults), then stage "
        "2 resumed to each budget of complete trials. Each cell: the cheapest front point within "
        "10% of the stage-1 best's held-out FID (its held-out FID); the front's cheapest point.",
        "",
        "| seed | stage-1 best, held-out | " + " | ".join(f"{n} stage-2 trials" for n in budgets)
        + " |",
        "|---|---|" + "---|" * len(budgets),
        *rows,
        "| mean within 10% | | " + " | ".join(f"**{m:.1%}**" for m in means) + " |",
        "| stage-2 wall clock added, mean | | "
        + " | ".join(f"{s:.0f} s" for s in seconds) + " |",
    ]


def render_skip_sensitivity(sens: dict | None) -> list[str]:
    if not sens:
        return []
    rows = [f"| {name} | {v['first']['saving']:.1%} | {v['first']['fid']:.2f} | "
            f"{v['last']['fid']:.2f} |" for name, v in sens["one_layer"].items()]
    whole = ", ".join(f"step {i}: {w['fid']:.1f}" for i, w in enumerate(sens["whole_step"]))
    return ["", f"How much room the network leaves: the stage-1 best schedule "
            f"{sens['timesteps']} (held-out FID {sens['full_fid']:.2f} on held-out noise seed 0, "
            f"1000 images) with one layer skipped at its first or at its last step. Every layer "
            f"skipped at one step (saves {sens['whole_step'][0]['saving']:.1%}): {whole}.", "",
            "| layer skipped at one step | GFLOPs saved | FID, first step | FID, last step |",
            "|---|---|---|---|", *rows]


def render_layer_shares(shares: dict | None) -> list[str]:
    if not shares:
        return []
    return ["", "Why the time saved is not the GFLOPs saved: each skippable layer's share of a "
            "full forward pass (batch of 1000, t = T/2), in wall time on this CPU and in FLOPs. "
            "The layers outside the table (the upsampler's convolution, conv_in and conv_out) "
            "are never skipped.", "",
            "| layer | share of time | share of FLOPs |", "|---|---|---|",
            *[f"| {name} | {v['time']:.1%} | {v['flops']:.1%} |" for name, v in shares.items()]]


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


def render_end_to_end(rows: dict, spacings: dict) -> list[str]:
    """Both stages after each stage-1 sampler; the default's row is the spacings table's."""
    steps = next(iter(rows.values()))["steps"]
    default = spacings.get(str(steps), {})
    if "seed" in next(iter(default.get("searches", [])), {}):  # per-seed FIDs kept since then
        rows = {"evolutionary (default; the spacings table's row)": default, **rows}

    def cell(row, stage):
        values = ", ".join(f"{s[stage]:.2f}" for s in sorted(row["searches"],
                                                             key=lambda s: s["seed"]))
        return f"{_pm(row[stage])} ({values})"

    return [
        f"`make study` at K={steps}, both stages with preset defaults (multi-fidelity on), "
        f"seeds {', '.join(str(s['seed']) for s in next(iter(rows.values()))['searches'])}, "
        "scored on held-out noise as in the spacings table; `--sampler` drives stage 1 only.",
        "",
        "| stage-1 sampler | stage-1 best | stage-2 best-FID point | CPU s per study |",
        "|---|---|---|---|",
        *[f"| {name} | {cell(row, 'stage1_heldout')} | {cell(row, 'stage2_heldout')} | "
          f"{np.mean([s['cpu_s'] for s in row['searches']]):.0f} |"
          for name, row in rows.items()],
    ]


def render_samplers(samplers: dict) -> list[str]:
    first = next(iter(samplers.values()))
    ours = {run["seed"]: run["best_fid_heldout"] for run in samplers["evolutionary"]["runs"]}
    rows = [f"| {name} | {r['budget_trials']} | "
            f"{np.mean([run['best_fid_search'] for run in r['runs']]):.2f} | "
            f"{r['best_fid_heldout_mean']:.2f} ± {r['best_fid_heldout_std']:.2f} | "
            f"{_paired(r['runs'], ours)} | "
            + ", ".join(f"{run['best_fid_heldout']:.2f}" for run in r["runs"]) + " | "
            f"{np.mean([run['cpu_s'] for run in r['runs']]):.0f} |"
            for name, r in samplers.items()]
    return [
        f"Stage 1 on digits, K={first['steps']}, the same encoding, the same first trials (the "
        f"standard spacings) and the same budget of {first['budget_trials']} evaluated "
        "candidates for every sampler; the best candidate (by search FID) re-scored on "
        f"held-out noise. {len(first['runs'])} search seeds each; a seed fixes the search noise, "
        "so seeds pair up across samplers. Best FID against trials: `bench/samplers.png`.",
        "",
        "| sampler | budget (trials) | best search FID (mean) | best held-out FID (mean ± std) "
        "| minus evolutionary, paired (mean ± s.e.) | per seed | CPU s per search |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _paired(runs: list[dict], ours: dict[int, float]) -> str:
    """Mean and standard error of this sampler's held-out best minus ours, seed by seed."""
    diffs = [run["best_fid_heldout"] - ours[run["seed"]] for run in runs if run["seed"] in ours]
    if len(diffs) < 2 or not any(diffs):
        return "—"
    return f"{np.mean(diffs):+.2f} ± {np.std(diffs, ddof=1) / np.sqrt(len(diffs)):.2f}"


def render_multifidelity(mf: dict) -> list[str]:
    full, pruned = mf["heldout_fid_full"], mf["heldout_fid_pruned"]
    return [
        f"Stage 1 on digits, K={mf['steps']}, {mf['budget_trials']} evaluated candidates per "
        f"search, 3 seeds; multi-fidelity reports FID at {mf['min_samples']}, "
        f"{2 * mf['min_samples']}, ... images and prunes with Optuna's "
        f"{mf.get('pruner', 'MedianPruner')} "
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


def save_part(key: str, entry: dict, section: str, text: str) -> None:
    """One part's entry, kept in results.json under ``key``, and its BENCHMARKS.md section
    ``section`` (``text``), leaving every other entry and section as it is."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[key] = entry
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections({section: text})


def part_main(argv: list[str], key: str, section: str, default_dir: Path, run_jobs, measure,
              markdown_of) -> None:
    """``python -m bench.<part> [DIR]`` (run the part's missing jobs into DIR, then measure
    them) or ``--render`` (its section again from results.json): results.json[``key``] and the
    BENCHMARKS.md section ``section``, ``markdown_of(entry, results)``."""
    results = json.loads(RESULTS.read_text())
    if argv[:1] == ["--render"]:
        entry = results[key]
    else:
        folder = Path(argv[0]) if argv else default_dir
        run_jobs(folder)
        entry = measure(folder)
    save_part(key, entry, section, markdown_of(entry, results))
    print(f"updated bench/results.json ({key}) and BENCHMARKS.md ({section})")


def save(results: dict) -> None:
    """bench/results.json, the sections of BENCHMARKS.md and the sampler plot, from ``results``."""
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections(render(results))
    if "samplers" in results:
        write_sampler_plot(results["samplers"])


def main() -> None:
    """``python -m bench.run [PART ...]``: all parts, or re-measure only the named ones
    (model_quality, trial_time_s, default_study, storage_overhead, masked_speed,
    skip_sensitivity, spacings_table, samplers, multifidelity, end_to_end, deep_study,
    stage2_budgets, workers, teacher_reference, profile, solver_search: issue 27's solver
    benchmark, resumable, its jobs kept under /tmp/bench27/jobs; see bench/solvers.py;
    solver_search_deep: the same on digits-deep, under /tmp/bench27-deep/jobs;
    protocol: whole studies, preset against a cheaper budget, see bench/protocol.py;
    reuse: DeepCache's reuse against the bypass, see bench/reuse.py; stage1_budget: what stage
    1's candidates and images buy, see bench/budget.py; preset_rungs: the K = 3, 6 and 8
    presets' first pruning rung, see bench/rungs.py; confirm_depth: how many of stage 1's
    best to confirm, see bench/confirm_depth.py; heldout_margins: the grids' margins against
    the held-out batch's noise, see bench/margins.py)
    and keep the other numbers of bench/results.json."""
    from bench import budget, confirm_depth, margins, protocol, reuse, rungs, search, solvers
    from bench.profile import profile_trials
    from bench.workers import measure as workers

    parts = {"model_quality": model_quality, "trial_time_s": trial_time,
             "default_study": default_study, "storage_overhead": storage_overhead,
             "masked_speed": None, "skip_sensitivity": None,
             "spacings_table": search.spacings_table,
             "samplers": search.sampler_comparison, "multifidelity": search.multifidelity,
             "end_to_end": search.end_to_end, "deep_study": deep_study,
             "stage2_budgets": search.stage2_budgets, "workers": workers,
             "teacher_reference": search.teacher_reference,
             "profile": profile_trials, "solver_search": solvers.measure,
             "solver_search_deep": lambda: solvers.measure(model="digits-deep"),
             "protocol": protocol.measure, "reuse": reuse.measure,
             "stage1_budget": budget.measure, "preset_rungs": rungs.measure,
             "confirm_depth": confirm_depth.measure,
             # after the grids: their schedules, sampled again (in a full run not yet stored)
             "heldout_margins": lambda: margins.measure(results)}
    wanted = sys.argv[1:] or list(parts)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and sys.argv[1:] else {}
    if not sys.argv[1:]:  # the machine of every part; one re-measured alone names its own
        results["machine"] = machine()
    for key in wanted:
        print(f"{key} ...", flush=True)
        if key == "multifidelity" and "samplers" in results:
            # its unpruned searches are the sampler comparison's EvolutionarySampler runs
            unpruned = results["samplers"]["evolutionary"]["runs"]
            results[key] = search.multifidelity(unpruned=unpruned)
        elif key == "masked_speed":
            results[key] = masked_speed(results["default_study"]["pareto"])
        elif key == "skip_sensitivity":
            results[key] = skip_sensitivity(results["default_study"]["best_timesteps"])
        else:
            results[key] = parts[key]()
        if sys.argv[1:] and isinstance(results[key], dict):
            results[key]["machine"] = machine()
    save(results)
    print(f"updated {RESULTS.relative_to(ROOT)} and BENCHMARKS.md ({', '.join(wanted)})")


if __name__ == "__main__":
    main()
