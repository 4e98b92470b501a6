"""``report``: one HTML page per study under ``reports/<study>/index.html``.

The page holds Optuna's plots of each study it covers (see ``scope`` for which), where the
chosen schedules put their steps (time and log-SNR axes), stage 2's skip masks, sample grids of
the uniform and the chosen schedules on the same held-out noise, and a table of the top
candidates with search FID, GFLOPs and held-out FID. The grids are also attached to their
trials as artifacts, for optuna-dashboard.
"""

import html
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import (
    GRID_COPIES,
    MAX_GRID,
    SearchedSchedule,
    load_schedule,
    sample,
    save_grid,
)
from autodiff_optuna.metrics import check_same_scorer, load_scorer
from autodiff_optuna.metrics.flops import layer_costs
from autodiff_optuna.models import load_model
from autodiff_optuna.models.registry import check_same_model
from autodiff_optuna.reporting import (
    artifacts,
    candidates,
    heldout,
    optuna_plots,
    page,
    plots,
    png,
    scope,
)
from autodiff_optuna.sampling import validate
from autodiff_optuna.sampling.noise import check_count, check_fits, check_seed
from autodiff_optuna.sampling.skipping import check_skip
from autodiff_optuna.search import objectives
from autodiff_optuna.search.context import alphas_cumprod
from autodiff_optuna.search.fidelity import n_evaluated
from autodiff_optuna.search.results import (
    complete_trials,
    pareto_front,
    pareto_point,
    uniform_trial,
)
from autodiff_optuna.storage import artifacts_dir


@dataclass
class Options:
    out: Path | None = None  # default reports/<study>
    artifacts: str | None = None  # default: storage.artifacts_dir's rule
    top: int = 5  # stage-1 candidates in the table
    heldout_samples: int | None = None  # None: the study's own count per candidate; 0: none
    grid: int = 64  # images per sample grid
    seed: int = 0  # held-out noise seed of the grids and held-out FIDs (as ``evaluate --seed``)
    png: bool = True
    schedule: str | None = None  # an exported schedule file to show beside the others
    device: str = "cpu"
    model_options: object = None  # models.ModelOptions: a real model's files, as the study had them


@dataclass
class Chosen:
    """A schedule the page singles out: it gets a sample grid and a row in the schedule plot."""

    key: str  # file-name part: uniform, best, stage2, file
    label: str  # its name in the schedule plot
    caption: str
    model: str
    solver: str
    timesteps: list[int]
    skip: list[list[str]]
    study: object = None  # the study and trial the grid is attached to (None: a file)
    trial: object = None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(name: str, storage, options: Options) -> Path:
    """Write the report of study ``name``; returns the page's path."""
    _check_options(options)
    out = _out_dir(name, options)
    reported = scope.load(name, storage)
    config = reported.config
    # the network the study searched with, or one line naming the flag that loads it
    model = load_model(config["model"], options.device, options.model_options)
    check_same_model(model, config.get("model_weights"), f"study {name!r}")
    schedule = None
    if options.schedule:
        schedule = load_schedule(options.schedule, options.model_options, options.device)
        if schedule.model != config["model"]:
            raise UsageError(f"schedule {options.schedule} is for model {schedule.model!r}, "
                             f"the study for {config['model']!r}")
        features = schedule.provenance.get("fid_features")
        if features is not None and features != config.get("fid_features"):
            raise UsageError(f"schedule {options.schedule} was scored with FID features "
                             f"{features}, study {name!r} with {config.get('fid_features')}: "
                             "their FIDs cannot share a table")
    scorer, samples = _heldout_scorer(config, options)  # refuse a bad count before any work
    if scorer is not None:
        check_same_scorer(scorer, config.get("fid_features"), f"study {name!r}")
    check_fits(model, options.grid, "--grid", GRID_COPIES)
    check_fits(model, samples, "--heldout-samples")
    chosen, shown_trial = _chosen(reported, schedule, options.schedule)
    _check_stored_schedules(reported, chosen, model)
    # every refusal is above: from here on files are written and the study's cache grows
    artifacts.writable_folder(out, "--out")
    store = artifacts.store(artifacts_dir(storage.url, options.artifacts))
    log(f"report {name!r}: {', '.join(s.study_name for s in reported.shown)} -> {out}")

    full_gflops = layer_costs(model).gflops([()] * config["steps"])
    rows = _rows(reported, options.top, full_gflops, shown_trial, schedule)
    if scorer is not None:
        heldout.fill(rows, reported.stage1, model, scorer, config["solver"], samples,
                     options.seed, log)
    grid_blocks = _grids(chosen, out, storage, store, options)
    figures, blocks = _figures(reported, chosen, model, shown_trial)
    png_notice = ""
    if options.png:
        log(f"rendering {len(figures)} plots to PNG")
        png_notice = png.write_pngs(figures, out / "png")
        if png_notice:
            log(png_notice)
    sections = [("Schedules", [blocks.pop("schedule"), grid_blocks]),
                ("Top candidates", [page.table(rows), page.note(_heldout_note(samples, options))])]
    sections += blocks.pop("studies")
    meta = _meta(reported, config) + ([html.escape(png_notice)] if png_notice else [])
    path = out / "index.html"
    path.write_text(page.page(f"Study {name}", meta, sections), encoding="utf-8")
    return path


def _check_options(options: Options) -> None:
    for flag, value, low in (("--top", options.top, 1), ("--grid", options.grid, 1),
                             ("--heldout-samples", options.heldout_samples or 0, 0)):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    check_count(options.grid, "--grid", MAX_GRID)
    check_count(options.heldout_samples or 0, "--heldout-samples")
    check_seed(options.seed)


def _out_dir(name: str, options: Options) -> Path:
    """``--out``, else ``reports/<name>``: refused for a name that is not one plain folder name,
    so that no study name (``..``, ``../../x``, ``/etc``) puts the page outside ``reports/``."""
    if options.out:
        return Path(options.out)
    if not is_folder_name(name):
        raise UsageError(f"study name {name!r} cannot be a folder under reports/ (it is '.' or "
                         "'..', or holds a path separator or control character): pass --out DIR")
    return Path("reports") / name


def is_folder_name(name: str) -> bool:
    """One path component that stays where it is put (no separator of any system)."""
    return name not in ("", ".", "..") and name.isprintable() and not any(
        separator in name for separator in "/\\")


def _check_stored_schedules(reported, chosen: list, model) -> None:
    """The schedules the page samples (its grids) and plots (stage 2's front, in the masks), as
    the study stores them: refused in one line, before anything is written, when they are not
    schedules of this model (a database edited by hand or by another program)."""
    stored = [(f"{c.label} (study {c.study.study_name!r}, trial {c.trial.number})",
               c.timesteps, c.skip) for c in chosen if c.trial is not None]
    if reported.stage2 is not None and reported.stage2 in reported.shown:
        stored += [(f"study {reported.stage2.study_name!r}, trial {t.number}",
                    t.user_attrs.get("timesteps"), t.user_attrs.get("skip"))
                   for t in pareto_front(reported.stage2)]
    for where, timesteps, skip in stored:
        try:
            if not isinstance(timesteps, list):
                raise UsageError(f"time steps must be a list, got {timesteps!r}")
            validate(timesteps, model.num_train_timesteps)
            check_skip(skip, len(timesteps), model.skippable_layers())
        except UsageError as err:
            raise UsageError(f"{where}: the stored schedule is malformed: {err}") from None


def _chosen(reported, schedule, schedule_path) -> tuple[list[Chosen], object]:
    """Uniform, stage 1's best, stage 2's shown trade-off, the schedule file: those present."""
    config = reported.config
    model, solver, full = config["model"], config["solver"], [[] for _ in range(config["steps"])]
    out = []
    uniform = uniform_trial(reported.stage1)
    if uniform is not None:
        caption = f"uniform: FID {objectives.fid(uniform):.3f} (trial {uniform.number})"
        out.append(Chosen("uniform", "uniform", caption, model, solver,
                          uniform.user_attrs.get("timesteps"), full, reported.stage1, uniform))
    if reported.stage1 in reported.shown:
        best = min(complete_trials(reported.stage1), key=objectives.fid)
        caption = f"stage 1 best: FID {objectives.fid(best):.3f} (trial {best.number})"
        out.append(Chosen("best", "stage 1 best", caption, model, solver,
                          best.user_attrs.get("timesteps"), full, reported.stage1, best))
    shown_trial = None
    if reported.stage2 is not None and reported.stage2 in reported.shown:
        shown_trial = scope.stage2_pick(pareto_front(reported.stage2),
                                          objectives.fid(uniform) if uniform is not None else None)
        if shown_trial is not None:
            fid, gflops = shown_trial.values
            out.append(Chosen("stage2", "stage 2 trade-off", f"stage 2 trade-off: FID {fid:.3f} "
                              f"at {gflops:.4f} GFLOPs (trial {shown_trial.number})", model,
                              solver, shown_trial.user_attrs.get("timesteps"),
                              shown_trial.user_attrs.get("skip"), reported.stage2, shown_trial))
    if schedule is not None:
        fid = "" if schedule.fid is None else f": FID {schedule.fid:.3f} in its study"
        out.append(Chosen("file", "schedule file", f"{Path(schedule_path).name}{fid}",
                          schedule.model, schedule.solver, list(schedule.timesteps),
                          [list(s) for s in schedule.skip]))
    return out, shown_trial


def _rows(reported, top: int, full_gflops: float, shown_trial, schedule) -> list:
    rows = []
    if reported.stage1 in reported.shown:
        rows += candidates.stage1_rows(reported.stage1, top, full_gflops)
    else:  # a stage-2 page still compares against the uniform baseline
        rows += candidates.uniform_rows(reported.stage1, full_gflops)
    if reported.stage2 is not None and reported.stage2 in reported.shown:
        rows += candidates.stage2_rows(reported.stage2, shown_trial)
    if schedule is not None:
        gflops = schedule.gflops if schedule.gflops is not None else full_gflops
        rows.append(candidates.Row("schedule file", None, None, list(schedule.timesteps),
                                   [list(s) for s in schedule.skip], schedule.fid, gflops))
    return rows


def _heldout_scorer(config: dict, options: Options):
    """The FID scorer and sample count of the held-out FIDs; (None, 0) with --heldout-samples 0."""
    if options.heldout_samples == 0:
        return None, 0

    samples = options.heldout_samples or config["samples"]
    scorer = load_scorer(config["model"], options.device, options.model_options)
    scorer.check_sample_count(samples, "--heldout-samples")  # else a singular covariance
    return scorer, samples


def _heldout_note(samples: int, options: Options) -> str:
    if not samples:
        return "Held-out FID was not computed (--heldout-samples 0)."
    return (f"Held-out FID: {samples} samples per candidate on held-out noise seed {options.seed}"
            f" (as `evaluate --samples {samples} --seed {options.seed}` computes it).")


def _grids(chosen: list[Chosen], out: Path, storage, store, options: Options) -> str:
    """One grid per chosen schedule, all from the same held-out noise, each attached to its
    trial as an artifact (once: a rerun finds it there)."""
    name = f"samples-n{options.grid}-seed{options.seed}.png"
    images = []
    for c in chosen:
        log(f"sample grid: {c.caption}")
        schedule = SearchedSchedule(model=c.model, solver=c.solver, timesteps=c.timesteps,
                                    skip=c.skip)
        path = out / f"samples-{c.key}.png"
        save_grid(sample(schedule, options.grid, options.seed, options.device,
                         options=options.model_options), path)
        if c.trial is not None:
            artifacts.attach(storage, c.study, c.trial, path, store, filename=name)
        images.append((path.name, c.caption))
    return page.grids(images)


def _figures(reported, chosen, model, shown_trial) -> tuple[dict, dict]:
    """Every figure by slug (for the PNGs), and the page blocks they make up."""
    log("plots")
    figures = {"schedules": plots.schedule_figure(
        {c.label: c.timesteps for c in chosen}, alphas_cumprod(model))}
    blocks = {"schedule": page.figure("schedules", "Schedules", figures["schedules"])}
    sections = []
    for study in reported.shown:
        stage = study.user_attrs.get("stage", 1)
        heading = f"Stage {stage}: {study.study_name} ({_counts(study)})"
        if not complete_trials(study):
            sections.append((heading, [page.note("No complete trial yet.")]))
            continue
        items = []
        panels = optuna_plots.panels(study)
        if stage == 2 and shown_trial is not None:
            panels.insert(2, _mask_panel(study, shown_trial))
        for panel in panels:
            if panel.figure is not None:
                figures[panel.slug] = panel.figure
            items.append(page.figure(panel.slug, panel.title, panel.figure, panel.note))
        sections.append((heading, items))
    blocks["studies"] = sections
    return figures, blocks


def _counts(study) -> str:
    """How many candidates a study scored: on all its images, and stopped early by the
    multi-fidelity pruner (those count towards --trials too)."""
    complete = len(complete_trials(study))
    evaluated = n_evaluated(study)
    if evaluated == complete:
        return f"{complete} complete"
    return f"{evaluated} evaluated: {complete} complete, {evaluated - complete} stopped early"


def _mask_panel(stage2, shown_trial) -> optuna_plots.Panel:
    front = pareto_front(stage2)
    shown = [t.number for t in front].index(shown_trial.number)
    figure = plots.mask_figure([pareto_point(t) for t in front],
                               stage2.user_attrs.get("layers", []), shown)
    return optuna_plots.Panel("stage2-masks", "Skipped layers per step", figure)


def _meta(reported, config: dict) -> list[str]:
    lines = [html.escape(f"{config['model']}, {config['steps']} steps, {config['solver']}, "
                         f"{config['samples']} samples per candidate, seed {config['seed']}")]
    if reported.stage1 not in reported.shown:
        stage1 = reported.stage1.study_name
        link = html.escape(urllib.parse.quote(stage1, safe=""))  # a name, not a path
        lines.append(f'Stage 2 of <a href="../{link}/index.html">'
                     f"{html.escape(stage1)}</a> (its report covers both stages).")
    elif reported.stage2 is not None:
        lines.append(f"With its stage 2, {html.escape(reported.stage2.study_name)}, below.")
    return lines
