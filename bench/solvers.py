"""Issue 27's benchmark: searching each step's solver rule with the time steps, against every
fixed few-step sampler a user could pick, our steps-only search and TPE over the same space.

    python -m bench.solvers [JOB_DIR]     # every measurement below, in order, each kept as
                                          # JOB_DIR/<job>.json (default /tmp/bench27/jobs) so
                                          # an interrupted run resumes; after each job
                                          # bench/results.json["solver_search"] and the
                                          # BENCHMARKS.md section "solver-search" are rewritten
    python -m bench.run solver_search     # the same, as a part of ``make bench``
    python -m bench.solvers --reconfirm DIR  # each kept search confirmed again by the checkout's
                                          # code (kept as the job's ``reconfirmed``; the section
                                          # lists the exports that changed): a confirmation rule
                                          # measured without searching again
    python -m bench.solvers --shard 0/2 DIR  # every second job from the first: two shards run
                                          # side by side on one folder without sharing a job;
                                          # shards write only their jobs; --render DIR after
    python -m bench.solvers --model digits-deep ...  # any of the above on the deeper bundled
                                          # model (its own results.json key and section)

Every FID is held out, as ``evaluate --samples 1797`` computes it: 1797 images of the held-out
noise stream of seed 0 against the digits reference (no study ever searches on that stream).

- fixed samplers: the standard spacings (uniform, trailing, linspace, quadratic, log-SNR) x
  the fixed solvers (DDIM, DPM-Solver++(2M), DPM-Solver++(3M), UniPC) at each K; and the model's
  own 100-step uniform DDIM, the quality ceiling.
- searches (stage 1, digits preset defaults, one SQLite file per run, through the CLI as a
  user runs it): ``--solver search`` (ours, steps and solver), ``--solver dpmpp2m`` (ours,
  steps only), ``--solver unipc`` (steps only, with the best fixed solver at K >= 6),
  ``--sampler tpe --solver search``; each study's lowest-FID schedule exported
  (``export --fid-tolerance 0``) and scored with ``evaluate --schedule FILE --samples 1797``.
  Cost: candidates evaluated, images sampled (a pruned candidate's ``pruned_at_samples``),
  CPU seconds of the study process.
- the trajectory-DP spacing (``trajectory_dp.dp_schedule``) for DDIM and DPM-Solver++(2M).
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEY = "solver_search"  # results.json's key; the BENCHMARKS.md section is "solver-search"
SECTION = "solver-search"
# per bundled model: its results.json key, its BENCHMARKS.md section and its default job folder
MODELS = {"digits": (KEY, SECTION, Path("/tmp/bench27")),
          "digits-deep": ("solver_search_deep", "solver-search-deep", Path("/tmp/bench27-deep"))}
SAMPLES = 1797  # all of the digits reference's images; evaluate --samples 1797
HELDOUT_SEED = 0
FIXED_KS = (3, 4, 6, 8)
SEARCH_KS = (3, 4, 6, 8)
SEEDS = (0, 1, 2)
GRID_POPULATION = 20  # every grid search bred in generations of 20 (``_study_args``)
# where the searches of the presets this grid no longer runs are measured (``_preset_variant``)
PRESET_BENCHES = {("digits", 3): "bench/stretch.py", ("digits", 4): "bench/local_moves.py"}
SPACINGS = ("uniform", "trailing", "linspace", "quadratic", "logsnr")
SOLVERS = ("ddim", "dpmpp2m", "dpmpp3m", "unipc", "ipndm")
DP_SOLVERS = ("ddim", "dpmpp2m", "ipndm")
CEILING_STEPS = 100
# the searches: label -> extra study flags (the preset gives everything else)
VARIANTS = {
    "ours": ("--solver", "search"),
    "steps_only_dpmpp2m": ("--solver", "dpmpp2m"),
    "steps_only_unipc": ("--solver", "unipc"),
    "steps_only_ipndm": ("--solver", "ipndm"),
    "steps_only_ipndm_scaled": ("--solver", "ipndm", "--noise-scale", "1.015"),
    "tpe": ("--sampler", "tpe", "--solver", "search"),
}
# searches measured before their space changed, kept in results.json as they ran and never run
# again: the per-step rules were DPM-Solver++'s and UniPC's corrector alone before iPNDM's
# joined them (``p{i}``)
HISTORICAL = {"ours_dpm": "ours, steps + DPM-Solver++/UniC rules (`--solver search` before "
                          "iPNDM was a searched rule)",
              "tpe_dpm": "TPE, steps + DPM-Solver++/UniC rules (before iPNDM was a searched "
                         "rule)"}
VARIANT_NAMES = {"ours": "ours, steps + solver (`--solver search`)",
                 "steps_only_dpmpp2m": "ours, steps only, DPM-Solver++(2M) (`--solver dpmpp2m`)",
                 "steps_only_unipc": "ours, steps only, UniPC (`--solver unipc`)",
                 "steps_only_ipndm": "ours, steps only, iPNDM (`--solver ipndm`)",
                 "steps_only_ipndm_scaled": "ours, steps only, iPNDM, noise / 1.015 (`--solver "
                                            "ipndm --noise-scale 1.015`)",
                 "tpe": "TPE, steps + solver (`--sampler tpe --solver search`)",
                 **HISTORICAL}

def jobs(model: str = "digits") -> list[str]:
    """Every job, most valuable first: the fixed samplers at the searched K and the ceiling,
    ours and steps-only at each K (seed by seed, so that they pair up; steps-only with UniPC
    first at K >= 6, where UniPC is the best fixed solver), the DP spacing (seconds), TPE, then
    steps-only with UniPC at the smaller K. On digits-deep, no steps-only UniPC: on digits it
    was no better than 2M at any K, and the deeper model's searches cost 1.4x as much."""
    out = [f"fixed-{k}" for k in SEARCH_KS] + ["ceiling"]
    out += [f"search-{k}-steps_only_ipndm-{seed}" for k in SEARCH_KS for seed in SEEDS]
    out += [f"search-{k}-steps_only_ipndm_scaled-{seed}" for k in SEARCH_KS for seed in SEEDS]
    for k in SEARCH_KS:
        variants = ("ours", "steps_only_dpmpp2m") + (("steps_only_unipc",) if k >= 6 else ())
        out += [f"search-{k}-{v}-{seed}" for seed in SEEDS for v in variants]
    out += [f"fixed-{k}" for k in FIXED_KS if k not in SEARCH_KS]
    out += [f"dp-{k}" for k in SEARCH_KS]
    out += [f"search-{k}-tpe-{seed}" for k in SEARCH_KS for seed in SEEDS]
    out += [f"search-{k}-steps_only_unipc-{seed}" for k in SEARCH_KS if k < 6 for seed in SEEDS]
    return out if model == "digits" else [job for job in out if "steps_only_unipc" not in job]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


BROKEN = ("ImportError", "ModuleNotFoundError", "SyntaxError", "IndentationError",
          "AttributeError: module")  # a package mid-edit in a shared checkout: wait, retry


def _cli(*args: str, retries: int = 5) -> str:
    for _ in range(retries):
        proc = subprocess.run([sys.executable, "-m", "autodiff_optuna", *args],
                              capture_output=True, text=True, cwd=ROOT, env=_env())
        if not (proc.returncode and any(word in proc.stderr for word in BROKEN)):
            break
        print(f"  autodiff_optuna {args[0]} could not import; retrying in 60 s", flush=True)
        time.sleep(60)
    if proc.returncode:
        raise RuntimeError(f"autodiff_optuna {' '.join(args)} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout


def unconfirmed_copy(source: Path, copy: Path) -> str:
    """A copy of the study database ``source`` at ``copy`` without its confirmed FIDs (so that
    the next ``study`` run on it confirms from nothing); its storage URL."""
    import shutil
    import sqlite3

    shutil.copyfile(source, copy)
    with sqlite3.connect(copy) as db:
        db.execute("DELETE FROM study_user_attributes WHERE key LIKE 'confirmed_fid%'")
    return f"sqlite:///{copy}"


def _export(name: str, url: str, out: Path) -> dict:
    """The study's lowest-FID schedule (``export --fid-tolerance 0``), written to ``out``."""
    _cli("export", "--name", name, "--storage", url, "--out", str(out), "--fid-tolerance", "0")
    return json.loads(out.read_text())


def _heldout(schedule: Path) -> float:
    """The exported schedule's held-out FID, as ``evaluate`` scores it (its file names the
    model)."""
    return json.loads(_cli("evaluate", "--schedule", str(schedule), "--samples", str(SAMPLES),
                           "--seed", str(HELDOUT_SEED), "--no-uniform", "--json"))["fid"]


class _Scorer:
    """The model, its FID and the held-out noise, loaded once: exactly ``evaluate``'s scoring."""

    def __init__(self, model: str):
        from autodiff_optuna.metrics import load_scorer
        from autodiff_optuna.models import load_model
        from autodiff_optuna.sampling import HELDOUT, draw

        # both bundled models are scored against the digits reference
        self.model, self.scorer = load_model(model), load_scorer("digits")
        self.batch = draw(self.model, SAMPLES, HELDOUT_SEED, HELDOUT)

    def fid(self, timesteps, solver) -> tuple[float, float]:
        """Held-out FID and the CPU seconds it took."""
        from autodiff_optuna.metrics.scoring import score_schedule

        started = time.process_time()
        try:
            fid = float(score_schedule(self.model, self.scorer, tuple(timesteps), self.batch,
                                       solver))
        except Exception as err:  # a sampler whose samples are not finite: recorded as such
            print(f"  {list(timesteps)} {solver}: {err}", flush=True)
            fid = float("nan")
        return fid, time.process_time() - started


_SCORERS: dict[str, _Scorer] = {}


def _scorer(model: str) -> _Scorer:
    if model not in _SCORERS:
        _SCORERS[model] = _Scorer(model)
    return _SCORERS[model]


def fixed(k: int, model: str = "digits") -> dict:
    """Every standard spacing with every fixed solver at K; a solver that runs exactly as another
    at this K (DPM-Solver++(3M) at K <= 4, lowered to 2M by lower_order_final) is marked
    ``same_as`` and not sampled again (its samples are identical)."""
    from autodiff_optuna.sampling import standard_spacings
    from autodiff_optuna.sampling.rules import fixed_solver
    from autodiff_optuna.search.context import alphas_cumprod

    s = _scorer(model)
    spacings = standard_spacings(k, s.model.num_train_timesteps, alphas_cumprod(s.model))
    out = {}
    for spacing in SPACINGS:
        out[spacing] = {}
        for solver in SOLVERS:
            runs_as = fixed_solver(solver, k)
            if runs_as != solver and runs_as in out[spacing]:
                out[spacing][solver] = {**out[spacing][runs_as], "same_as": runs_as}
                continue
            fid, cpu = s.fid(spacings[spacing], solver)
            out[spacing][solver] = {"timesteps": list(spacings[spacing]), "fid": fid,
                                    "cpu_s": cpu}
            print(f"  K={k} {spacing} {list(spacings[spacing])} {solver}: {fid:.3f} "
                  f"({cpu:.1f} CPU s)", flush=True)
    return out


def ceiling(model: str = "digits") -> dict:
    from autodiff_optuna.sampling import standard_spacings
    from autodiff_optuna.search.context import alphas_cumprod

    s = _scorer(model)
    steps = standard_spacings(CEILING_STEPS, s.model.num_train_timesteps,
                              alphas_cumprod(s.model))["uniform"]
    fid, cpu = s.fid(steps, "ddim")
    print(f"  ceiling: {CEILING_STEPS}-step uniform DDIM {fid:.3f} ({cpu:.0f} CPU s)", flush=True)
    return {"steps": CEILING_STEPS, "solver": "ddim", "fid": fid, "cpu_s": cpu,
            "timesteps_first_last": [int(steps[0]), int(steps[-1])]}


def _study_args(model: str, k: int, seed: int, variant: str) -> list[str]:
    """The ``study`` command of one search, in generations of 20. A model with no preset at K
    (digits-deep has them at K = 4 and 8 only) searches with its K=4 preset's images and
    pruning, as digits does at every K, rather than with the library's defaults (no pruning)."""
    from autodiff_optuna.search.config import load_preset

    args = ["study", "--model", model, "--steps", str(k), "--seed", str(seed), "--stage", "1"]
    if not load_preset(model, k):
        preset = load_preset(model, 4)
        args += [item for key in ("samples", "min_samples") if key in preset
                 for item in (f"--{key.replace('_', '-')}", str(preset[key]))]
    # every grid bred in generations of 20 and moved steps in training steps, unscaled unless
    # the variant says, as every preset did then (digits-k3 and digits-k4 since take 10, noise
    # levels and 1.015: pinned here, so that a rerun searches as the grid's searches did)
    flags = list(VARIANTS[variant])
    pinned = ["--population", str(GRID_POPULATION), "--step-moves", "steps"]
    if "--noise-scale" not in flags:
        pinned += ["--noise-scale", "1"]
    return args + pinned + flags


def search_tag(k: int, variant: str, seed: int) -> str:
    """What a search's files in its folder are named by: <tag>.db (its study), <tag>.json."""
    return f"k{k}-{variant}-s{seed}"


def search(k: int, variant: str, seed: int, folder: Path, model: str = "digits") -> dict:
    """One stage-1 study through the CLI on its own SQLite file, its lowest-FID schedule
    exported and scored held out; its cost."""
    import optuna
    from optuna.trial import TrialState

    from autodiff_optuna.search.config import study_name
    from autodiff_optuna.search.fidelity import PRUNED_AT, is_evaluated
    from autodiff_optuna.search.results import stored_config

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tag = search_tag(k, variant, seed)
    db, out = folder / f"{tag}.db", folder / f"{tag}.json"
    db.unlink(missing_ok=True)
    url, name = f"sqlite:///{db}", study_name(model, k)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    _cli(*_study_args(model, k, seed, variant), "--storage", url, "--quiet")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    study = optuna.load_study(study_name=name, storage=url)
    config = stored_config(study)
    evaluated = [t for t in study.get_trials(deepcopy=False) if is_evaluated(t)]
    complete = [t for t in evaluated if t.state == TrialState.COMPLETE]
    images = sum(config["samples"] if t.state == TrialState.COMPLETE
                 else int(t.user_attrs.get(PRUNED_AT, 0)) for t in evaluated)
    exported = _export(name, url, out)
    from autodiff_optuna.sampling.rules import describe

    run = {"k": k, "variant": variant, "seed": seed, "candidates": len(evaluated),
           "complete": len(complete), "images": images, "cpu_s": cpu, "wall_s": wall,
           "config": {key: config.get(key) for key in ("solver", "sampler", "samples",
                                                       "min_samples", "population")},
           "timesteps": exported["timesteps"], "solver": exported["solver"],
           "solver_described": describe(exported["solver"], k),
           "fid_search": exported.get("fid"), "fid_heldout": _heldout(out),
           "provenance": exported.get("provenance"), "commit": _commit()}
    print(f"  K={k} {variant} seed {seed}: {run['timesteps']} {run['solver_described']} "
          f"search {run['fid_search']:.3f} held-out {run['fid_heldout']:.3f}; "
          f"{run['candidates']} candidates, {images:,} images, {cpu:.0f} CPU s", flush=True)
    return run


def reconfirm(folder: Path, model: str = "digits") -> None:
    """Each kept search confirmed again by today's ``search.confirm``, from nothing: a copy of
    its database without its confirmed FIDs, its study command run on the copy (nothing is left
    to search: stage 1's trials are as they were, only confirmation runs), the lowest-FID
    schedule exported and scored held out as ``search`` scores it. Kept in the job as
    ``reconfirmed``, with the confirmed candidates and the commit that confirmed them."""
    import sqlite3

    from autodiff_optuna.sampling.rules import describe
    from autodiff_optuna.search.config import study_name

    for path in sorted((Path(folder) / "jobs").glob("search-*.json")):
        run = json.loads(path.read_text())
        tag = search_tag(run["k"], run["variant"], run["seed"])
        source = Path(folder) / f"{tag}.db"
        if run.get("reconfirmed") or not source.exists():
            continue
        copy, out = source.with_name(f"{tag}-reconfirmed.db"), source.with_name(f"{tag}-re.json")
        url, name = unconfirmed_copy(source, copy), study_name(model, run["k"])
        _cli(*_study_args(model, run["k"], run["seed"], run["variant"]), "--storage", url,
             "--quiet")
        with sqlite3.connect(copy) as db:
            confirmed = db.execute("SELECT COUNT(*) FROM study_user_attributes WHERE key LIKE "
                                   "'confirmed_fid:%'").fetchone()[0]
        exported = _export(name, url, out)
        same = (exported["timesteps"], exported["solver"]) == (run["timesteps"], run["solver"])
        held = run["fid_heldout"] if same else _heldout(out)
        run["reconfirmed"] = {"timesteps": exported["timesteps"], "solver": exported["solver"],
                              "solver_described": describe(exported["solver"], run["k"]),
                              "fid_search": exported.get("fid"), "fid_heldout": held,
                              "confirmed_trials": confirmed, "commit": _commit()}
        path.write_text(json.dumps(run) + "\n")
        print(f"  {tag}: {confirmed} confirmed; exported {exported['timesteps']} "
              f"{run['reconfirmed']['solver_described']} held out {held:.3f} (was "
              f"{run['fid_heldout']:.3f})", flush=True)


def dp(k: int, model: str = "digits") -> dict:
    """The trajectory-DP spacing for each of DP_SOLVERS at K (teacher: the library's default,
    on the teacher noise stream), scored held out with that solver; the DP's CPU time."""
    from autodiff_optuna.sampling.trajectory_dp import dp_schedule, teacher_trajectory

    s = _scorer(model)
    started = time.process_time()
    teacher = teacher_trajectory(s.model)
    teacher_cpu = time.process_time() - started
    out = {"teacher_cpu_s": teacher_cpu}
    for solver in DP_SOLVERS:
        started = time.process_time()
        steps = dp_schedule(s.model, k, solver, teacher=teacher)
        fit_cpu = time.process_time() - started
        fid, cpu = s.fid(steps, solver)
        out[solver] = {"timesteps": list(steps), "fid": fid, "fit_cpu_s": fit_cpu, "cpu_s": cpu}
        print(f"  K={k} DP {solver} {list(steps)}: {fid:.3f}", flush=True)
    return out


def run_job(job: str, folder: Path, model: str = "digits") -> dict:
    kind, *args = job.split("-")
    if kind == "fixed":
        return fixed(int(args[0]), model)
    if kind == "ceiling":
        return ceiling(model)
    if kind == "search":
        return search(int(args[0]), args[1], int(args[2]), folder, model)
    if kind == "dp":
        return dp(int(args[0]), model)
    raise ValueError(f"unknown job {job!r}")


def collect(done: dict, machine: str, model: str = "digits") -> dict:
    """results.json's entry from the finished jobs (raw runs kept), with the model's
    ``HISTORICAL`` searches as results.json holds them."""
    out = {"model": model, "machine": machine, "commit_at_collect": _commit(), "samples": SAMPLES,
           "heldout_seed": HELDOUT_SEED, "fixed": {}, "searches": _historical(model), "dp": {}}
    for job, value in done.items():
        kind, *args = job.split("-")
        if kind == "fixed":
            out["fixed"][args[0]] = value
        elif kind == "ceiling":
            out["ceiling"] = value
        elif kind == "search":
            out["searches"].append(value)
        elif kind == "dp":
            out["dp"][args[0]] = value
    out["searches"].sort(key=lambda r: (r["k"], list(VARIANT_NAMES).index(r["variant"]),
                                        r["seed"]))
    return out


def _historical(model: str) -> list[dict]:
    from bench.run import RESULTS

    old = json.loads(RESULTS.read_text()).get(MODELS[model][0], {}) if RESULTS.exists() else {}
    return [r for r in old.get("searches", []) if r["variant"] in HISTORICAL]


def _commit() -> str | None:
    """The checkout's commit, ``+dirty`` when its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def measure(folder: Path | None = None, on_job=None, shard: tuple[int, int] = (0, 1),
            model: str = "digits") -> dict:
    """Every job not yet in ``folder`` (default: the model's folder in ``MODELS``), in
    ``jobs()``'s order; ``on_job(entry)`` after each. ``shard=(i, n)``: only the jobs of
    ``jobs()`` whose place modulo n is i."""
    i, n = shard
    return measure_jobs(Path(folder or MODELS[model][2]), jobs(model)[i::n],
                        lambda job, where: run_job(job, where, model),
                        lambda done, machine: collect(done, machine, model), on_job)


def measure_jobs(folder: Path, names: list[str], run_one, collect_done, on_job=None) -> dict:
    """Each job of ``names`` not yet kept in ``folder/jobs`` run by ``run_one(job, folder)`` and
    kept as ``<job>.json`` (a failed one is left for a rerun); ``collect_done(done, machine)``
    of the finished ones, also handed to ``on_job`` after each job."""
    from bench.run import machine

    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    done = {}
    for job in names:
        path = folder / "jobs" / f"{job.replace(':', '-')}.json"
        if not path.exists():
            print(f"{job} ...", flush=True)
            try:
                result = run_one(job, folder)
            except Exception as err:  # one failed job leaves the others to run; rerun resumes
                print(f"{job} failed: {type(err).__name__}: {err}", flush=True)
                continue
            partial = path.with_suffix(".part")
            partial.write_text(json.dumps(result) + "\n")
            partial.rename(path)
        done[job] = json.loads(path.read_text())
        if on_job:
            on_job(collect_done(done, machine()))
    return collect_done(done, machine())


def kept_jobs_cli(args: list[str], all_jobs: list[str], default_dir: Path, measure, collect,
                  save, usage, what: str) -> None:
    """``[--shard I/N | --collect] [DIR]`` of a benchmark whose jobs are kept in DIR/jobs:
    run every job not kept yet (or every N-th from the I-th, N processes sharing the machine),
    then save the entry ``collect(done, machine)`` makes of all of them (``what``: where it
    goes), as ``measure_jobs`` keeps and collects them; ``--collect`` saves it from the kept
    jobs alone. Bad input: ``usage()``."""
    if args[:1] == ["--collect"]:
        from bench.run import machine

        if len(args) > 2:
            usage()
        kept_in = (Path(args[1]) if args[1:] else default_dir) / "jobs"
        kept = sorted(kept_in.glob("*.json"))
        if not kept:  # nothing to show: the stored entry stays as it is
            print(f"no kept jobs under {kept_in}", file=sys.stderr)
            sys.exit(2)
        save(collect({p.stem: json.loads(p.read_text()) for p in kept}, machine()))
        return
    names = all_jobs
    if args[:1] == ["--shard"]:
        try:
            index, count = (int(x) for x in args[1].split("/"))
        except (IndexError, ValueError):
            usage()
        if not 0 <= index < count:
            usage()
        names, args = names[index::count], args[2:]
    if len(args) > 1 or (args and args[0].startswith("-")):
        usage()
    entry = measure(Path(args[0]) if args else default_dir, names)
    if len(entry["runs"]) < len(names):  # a failed job is printed above; a rerun resumes
        sys.exit(1)
    if names == all_jobs:
        save(entry)
        print(f"updated {what}")


# ---- rendering ----------------------------------------------------------------------------

SPACING_NAMES = {"uniform": "uniform", "trailing": "trailing", "linspace": "linspace",
                 "quadratic": "quadratic", "logsnr": "log-SNR"}
SOLVER_NAMES = {"ddim": "DDIM", "dpmpp2m": "DPM++(2M)", "dpmpp3m": "DPM++(3M)",
                "unipc": "UniPC", "ipndm": "iPNDM"}


def best_fixed(entry: dict, k: int) -> tuple[str, str, float] | None:
    """The lowest held-out FID of every fixed sampler at K (DP spacing included where run):
    (spacing, solver, fid)."""
    cells = [(sp, so, v["fid"]) for sp, row in entry["fixed"].get(str(k), {}).items()
             for so, v in row.items() if np.isfinite(v["fid"])]
    for solver, v in entry.get("dp", {}).get(str(k), {}).items():
        if isinstance(v, dict):
            cells.append(("DP", solver, v["fid"]))
    return min(cells, key=lambda c: c[2], default=None)


def _runs(entry: dict, k: int, variant: str) -> dict[int, dict]:
    return {r["seed"]: r for r in entry["searches"] if r["k"] == k and r["variant"] == variant}


def _paired(a: dict[int, dict], b: dict[int, dict]) -> tuple[float, float, int] | None:
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s]["fid_heldout"] - b[s]["fid_heldout"] for s in seeds]
    return float(np.mean(d)), float(np.std(d, ddof=1) / np.sqrt(len(d))), len(d)


def render(entry: dict) -> list[str]:
    model = entry["model"]
    key = MODELS[model][0]
    rerun = (f"`python -m bench.solvers{'' if model == 'digits' else f' --model {model}'}` (or "
             f"`make bench PARTS={key}`)")
    lines = [f"Machine: {entry['machine']}.", "",
             f"Model: `{model}`. Held-out FID: {entry['samples']} images of the held-out noise "
             f"stream of seed {entry['heldout_seed']} against the digits reference (`evaluate "
             f"--samples {entry['samples']}`), one torch thread. {rerun} reruns it; raw runs in "
             f"`bench/results.json` (`{key}`).", ""]
    c = entry.get("ceiling")
    if c:
        lines += [f"Quality ceiling, the model's own {c['steps']}-step uniform DDIM on the same "
                  f"protocol: **{c['fid']:.3f}**.", ""]
    lines += _render_fixed(entry)
    lines += _render_searches(entry)
    return lines


def _render_fixed(entry: dict) -> list[str]:
    fixed = entry["fixed"]
    if not fixed:
        return []
    ks = sorted(fixed, key=int)
    rows = []
    for k in ks:
        best = best_fixed({"fixed": {k: fixed[k]}}, int(k))
        for spacing, row in fixed[k].items():
            steps = next(iter(row.values()))["timesteps"]
            cells = []
            for solver in SOLVERS:
                v = row.get(solver)
                if v is None:
                    cells.append("")
                    continue
                text = f"{v['fid']:.2f}" + ("=" if v.get("same_as") else "")
                if best and (spacing, solver) == best[:2]:
                    text = f"**{text}**"
                cells.append(text)
            rows.append(f"| {k} | {SPACING_NAMES.get(spacing, spacing)} {steps} | "
                        + " | ".join(cells) + " |")
        for solver, v in entry.get("dp", {}).get(k, {}).items():
            if isinstance(v, dict):
                rows.append(f"| {k} | trajectory DP for {SOLVER_NAMES[solver]} {v['timesteps']}"
                            f" | " + " | ".join(f"{v['fid']:.2f}" if s == solver else ""
                                                for s in SOLVERS) + " |")
    return ["Fixed samplers: each standard spacing with each fixed solver; **bold**: the best "
            "fixed sampler at that K (the trajectory-DP rows, where run, were not part of that "
            "choice). `=`: runs exactly as DPM-Solver++(2M) at this K (lower_order_final lowers "
            "3M to 2M at K <= 4), the same samples.", "",
            "| K | spacing | " + " | ".join(SOLVER_NAMES[s] for s in SOLVERS) + " |",
            "|---|---|" + "---|" * len(SOLVERS), *rows, ""]


def _ms(values) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def _render_searches(entry: dict) -> list[str]:
    ks = sorted({r["k"] for r in entry["searches"]})
    if not ks:
        return []
    ceiling = entry.get("ceiling", {}).get("fid")
    model = entry["model"]
    out = [f"Searches: stage 1 with the {model} preset's defaults (100 candidates, 1000 images "
           "each, multi-fidelity from 125 when these were measured; the K = 3 and 4 presets and "
           "digits-deep's K=8 from 250 since; at a K with no preset, the K=4 preset's), seeds "
           + ", ".join(map(str, SEEDS)) + "; each "
           "study's lowest-FID schedule (`export --fid-tolerance 0`) scored with `evaluate "
           "--schedule`. Held-out FID mean ± std (sample std over seeds), then each seed's. "
           "Cost per study: candidates evaluated, images sampled (pruned candidates' "
           "`pruned_at_samples` counted), CPU seconds of the study process (one thread).", "",
           "| K | sampler | held-out FID | per seed (schedule, solver) | / 100-step DDIM | "
           "candidates | images | CPU s |",
           "|---|---|---|---|---|---|---|---|"]
    summary = []
    for k in ks:
        best = best_fixed(entry, k)
        if best:
            out.append(f"| {k} | best fixed: {SPACING_NAMES.get(best[0], best[0])} "
                       f"{SOLVER_NAMES[best[1]]} | {best[2]:.2f} | | "
                       + (f"{best[2] / ceiling:.2f}x" if ceiling else "") + " | no search | | |")
        for variant in VARIANT_NAMES:
            runs = _runs(entry, k, variant)
            if not runs and variant not in HISTORICAL:
                out.append(f"| {k} | {VARIANT_NAMES[variant]} | not run | | | | | |")
            if not runs:
                continue
            fids = [runs[s]["fid_heldout"] for s in sorted(runs)]
            per = "; ".join(f"s{s}: {runs[s]['fid_heldout']:.2f} {runs[s]['timesteps']} "
                            f"{runs[s]['solver_described']}" for s in sorted(runs))
            out.append(
                f"| {k} | {VARIANT_NAMES[variant]} | {_ms(fids)} | {per} | "
                + (f"{np.mean(fids) / ceiling:.2f}x" if ceiling else "") + " | "
                f"{np.mean([r['candidates'] for r in runs.values()]):.0f} | "
                f"{np.mean([r['images'] for r in runs.values()]):,.0f} | "
                f"{np.mean([r['cpu_s'] for r in runs.values()]):.0f} |")
        summary += _targets(entry, k, best, ceiling)
    return out + ["", _commits(entry), "", *_reconfirmed(entry),
                  "Against issue 27's targets (held out; paired differences over the seeds both "
                  "ran, mean ± standard error):", "", *summary]


SHORT_NAMES = {"ours": "steps + solver", "steps_only_dpmpp2m": "steps-only 2M",
               "steps_only_unipc": "steps-only UniPC", "steps_only_ipndm": "steps-only iPNDM",
               "steps_only_ipndm_scaled": "steps-only iPNDM, noise / 1.015",
               "tpe": "TPE", "ours_dpm": "steps + DPM-Solver++/UniC rules",
               "tpe_dpm": "TPE over steps + DPM-Solver++/UniC rules"}


def _commits(entry: dict) -> str:
    """Which code each search ran: runs measured at different commits compare only as far as
    the search did not change between them."""
    groups: dict[str, dict[int, list[str]]] = {}
    for r in entry["searches"]:
        names = groups.setdefault(str(r.get("commit")), {}).setdefault(r["k"], [])
        if SHORT_NAMES[r["variant"]] not in names:
            names.append(SHORT_NAMES[r["variant"]])
    described = [f"`{commit}`: " + ", ".join(f"K={k} " + " / ".join(names)
                                             for k, names in sorted(ks.items()))
                 for commit, ks in groups.items()]
    return "Code of each search: " + "; ".join(described) + "."


def _reconfirmed(entry: dict) -> list[str]:
    """``reconfirm``'s measurement: what each search exports when confirmed again by the code
    that confirmed it (a confirmation rule tried on kept searches), against what it first named."""
    runs = [r for r in entry["searches"] if r.get("reconfirmed")]
    if not runs:
        return []
    changed = [r for r in runs if (r["reconfirmed"]["timesteps"], r["reconfirmed"]["solver"])
               != (r["timesteps"], r["solver"])]
    first = np.mean([r["fid_heldout"] for r in runs])
    again = np.mean([r["reconfirmed"]["fid_heldout"] for r in runs])
    commits = sorted({r["reconfirmed"]["commit"] for r in runs})
    lines = [f"Confirmed again (`--reconfirm`, at {', '.join(f'`{c}`' for c in commits)}): "
             f"{len(changed)} of {len(runs)} exports changed; mean held-out FID over the "
             f"{len(runs)} {first:.3f} as first named, {again:.3f} confirmed again."]
    lines += [f"- K={r['k']} {SHORT_NAMES[r['variant']]} seed {r['seed']}: {r['timesteps']} "
              f"{r['fid_heldout']:.2f} -> {r['reconfirmed']['timesteps']} "
              f"{r['reconfirmed']['solver_described']} {r['reconfirmed']['fid_heldout']:.2f}"
              for r in changed]
    return lines + [""]


def _preset_variant(k: int, model: str = "digits") -> str | None:
    """The grid's search that is the one ``make study MODEL=model STEPS=k`` runs (stage 1): the
    variant with its solver (the library's default where the model has no preset at K) and
    noise scale. None where the preset breeds or moves steps otherwise than every grid search
    did (``_study_args``: generations of 20, steps moved in training steps): the grid did not
    run that search (``digits-k3`` and ``digits-k4`` since; ``bench/three_steps.py`` and
    ``bench/local_moves.py`` measure them)."""
    from autodiff_optuna.search.config import DEFAULT_SOLVER, SearchConfig, load_preset

    preset = load_preset(model, k)
    if (preset.get("population", GRID_POPULATION) != GRID_POPULATION
            or preset.get("step_moves", SearchConfig.step_moves) != SearchConfig.step_moves):
        return None
    flags = ("--solver", preset.get("solver", DEFAULT_SOLVER))
    if preset.get("noise_scale", 1.0) != 1:
        flags += ("--noise-scale", f"{preset['noise_scale']:g}")
    return next((v for v, known in VARIANTS.items() if known == flags), None)


STEPS_ONLY = {"steps_only_dpmpp2m": "DPM-Solver++(2M)", "steps_only_unipc": "UniPC",
              "steps_only_ipndm": "iPNDM", "steps_only_ipndm_scaled": "iPNDM, noise / 1.015"}


def _best_steps_only(entry: dict, k: int) -> tuple[str, dict[int, dict]] | None:
    """The steps-only search with the lowest mean held-out FID at K, among those run on every
    seed (fewer seeds would not compare like with like): (variant, runs)."""
    full = {v: _runs(entry, k, v) for v in STEPS_ONLY}
    full = {v: runs for v, runs in full.items() if len(runs) == len(SEEDS)}
    if not full:
        return None
    variant = min(full, key=lambda v: np.mean([r["fid_heldout"] for r in full[v].values()]))
    return variant, full[variant]


def _lower(gain: float) -> str:
    return f"{gain:.1%} lower FID" if gain >= 0 else f"{-gain:.1%} higher FID (worse)"


def _targets(entry: dict, k: int, best, ceiling) -> list[str]:
    lines = []
    model = entry["model"]
    preset = _preset_variant(k, model)
    default = _runs(entry, k, preset) if preset else {}
    if best and len(default) == len(SEEDS):
        value = float(np.mean([r["fid_heldout"] for r in default.values()]))
        gain = 1 - value / best[2]
        command = "make study" + (f" MODEL={model}" if model != "digits" else "")
        lines.append(f"- K={k}, the preset's search (`{command} STEPS={k} STAGE=1`: "
                     f"{VARIANT_NAMES[preset].split(' (')[0]}, {value:.2f}) against the best "
                     f"fixed sampler ({SPACING_NAMES.get(best[0], best[0])} "
                     f"{SOLVER_NAMES[best[1]]}, {best[2]:.2f}): {_lower(gain)} (target: >= 10% "
                     f"lower): **{'met' if gain >= 0.10 else 'not met'}**.")
    elif best and preset is None:
        where = PRESET_BENCHES.get((model, k))
        lines.append(f"- K={k}, the preset's search: not one of this grid's (its population, "
                     "its step moves or its solver differ from the grid's searches'"
                     + (f"; `{where}` measures it)." if where else ")."))
    ours = _runs(entry, k, "ours")
    if not ours:
        return lines
    mean = float(np.mean([r["fid_heldout"] for r in ours.values()]))
    if best:
        gain = 1 - mean / best[2]
        lines.append(f"- K={k}, ours, steps + solver ({mean:.2f}), against the best fixed sampler "
                     f"({SPACING_NAMES.get(best[0], best[0])} {SOLVER_NAMES[best[1]]}, "
                     f"{best[2]:.2f}): {_lower(gain)} (target: >= 10% lower): "
                     f"**{'met' if gain >= 0.10 else 'not met'}**.")
    steps_only = _best_steps_only(entry, k)
    if steps_only:
        variant, steps = steps_only
        other = float(np.mean([r["fid_heldout"] for r in steps.values()]))
        gain = 1 - mean / other
        paired = _paired(ours, steps)
        verdict = "met" if gain >= 0.10 else "not met"
        lines.append(f"- K={k}, ours against the best steps-only search ({STEPS_ONLY[variant]}, "
                     f"{other:.2f}): {_lower(gain)} (target: >= 10% lower): **{verdict}**"
                     + (f"; paired ours - steps-only {paired[0]:+.2f} ± {paired[1]:.2f} "
                        f"({paired[2]} seeds)." if paired else "."))
    target = {3: 1.3, 4: 1.15, 8: 1.05}.get(k)
    if ceiling and target:
        ratio = mean / ceiling
        lines.append(f"- K={k}, ours / 100-step DDIM: {ratio:.2f}x (target within {target}x): "
                     f"**{'met' if ratio <= target else 'not met'}**.")
    tpe = _runs(entry, k, "tpe")
    paired = _paired(ours, tpe) if tpe else None
    if paired:
        ahead = -paired[0] > paired[1]
        share = (np.mean([r["images"] for r in ours.values()])
                 / np.mean([r["images"] for r in tpe.values()]))
        lines.append(f"- K={k}, ours - TPE, paired: {paired[0]:+.2f} ± {paired[1]:.2f} "
                     f"({paired[2]} seeds; target: ours ahead by more than the SE): "
                     f"**{'met' if ahead else 'not met'}**; images per study, ours/TPE "
                     f"{share:.2f}.")
    elif not tpe:
        lines.append(f"- K={k}, ours against TPE: not run.")
    else:
        seeds = sorted(set(ours) & set(tpe))
        lines.append(f"- K={k}, ours against TPE: {len(seeds)} paired seed(s) only, no standard "
                     "error: not judged; "
                     + "; ".join(f"seed {s}: ours {ours[s]['fid_heldout']:.2f}, TPE "
                                 f"{tpe[s]['fid_heldout']:.2f}" for s in seeds) + ".")
    return lines


def save(entry: dict) -> None:
    """The model's results.json key and BENCHMARKS.md section, leaving every other entry as it
    is."""
    from bench.run import RESULTS, write_sections

    key, section, _ = MODELS[entry["model"]]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[key] = entry
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections({section: "\n".join(render(entry))})


def finished(folder: Path | None = None, model: str = "digits") -> dict:
    """results.json's entry from the jobs already in ``folder`` (default: the model's folder in
    ``MODELS``), measuring nothing."""
    folder = folder or MODELS[model][2]
    from bench.run import RESULTS, machine

    done = {job: json.loads((Path(folder) / "jobs" / f"{job}.json").read_text())
            for job in jobs(model) if (Path(folder) / "jobs" / f"{job}.json").exists()}
    key = MODELS[model][0]
    old = json.loads(RESULTS.read_text()).get(key, {}) if RESULTS.exists() else {}
    # a first render names this machine, at the torch threads the jobs ran with (main sets them)
    return collect(done, old.get("machine") or machine(), model)


def main() -> None:
    """``python -m bench.solvers [--model NAME] [DIR]``: measure what is not yet in DIR (a
    bundled model, digits by default); ``--render [DIR]``: rewrite results.json's entry and the
    section from DIR's finished jobs alone."""
    import torch

    args = sys.argv[1:]
    model = "digits"
    if "--model" in args:  # anywhere: --model NAME
        at = args.index("--model")
        model = args[at + 1]
        del args[at:at + 2]
    key, section, default_dir = MODELS[model]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args[:1] == ["--render"]:
        save(finished(Path(args[1]) if len(args) > 1 else default_dir, model))
        return
    if args[:1] == ["--reconfirm"]:  # --reconfirm DIR, then --render DIR
        reconfirm(Path(args[1]) if len(args) > 1 else default_dir, model)
        return
    if args[:1] == ["--shard"]:  # results.json and BENCHMARKS.md are left to --render
        i, n = (int(x) for x in args[1].split("/"))
        measure(Path(args[2]) if len(args) > 2 else default_dir, shard=(i, n), model=model)
        return
    folder = Path(args[0]) if args else default_dir
    save(measure(folder, on_job=save, model=model))
    print(f"updated bench/results.json ({key}) and BENCHMARKS.md ({section})")


if __name__ == "__main__":
    main()
