"""``report``: one HTML page per study under ``reports/<study>/index.html``.

The page shows the search's result as ``best`` and ``export`` give it (``study_result``): the
best schedule, the exported one and the uniform baseline, each named by stage and trial with
its FID and GFLOPs against the full network; where they put their steps (time and log-SNR
axes); sample grids of them on the same held-out noise; a table of them, the thinned Pareto
front and stage 1's top candidates with search FID, GFLOPs and held-out FID; then the plots of
each study it covers (see ``scope`` for which), stage 2's with the front of both stages and its
skip masks. The grids are also attached to their trials as artifacts, for optuna-dashboard.
"""

import html
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import SearchedSchedule
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
from autodiff_optuna.sampling.limits import check_count, check_seed
from autodiff_optuna.sampling.noise import check_fits
from autodiff_optuna.sampling.skipping import check_skip
from autodiff_optuna.schedule_sampling import (
    GRID_COPIES,
    MAX_GRID,
    load_schedule,
    sample,
    save_grid,
)
from autodiff_optuna.search.config import name_problem, shortened
from autodiff_optuna.search.context import alphas_cumprod
from autodiff_optuna.search.fidelity import is_carried, n_evaluated
from autodiff_optuna.search.results import (
    DEFAULT_RULE,
    ExportRule,
    Point,
    StudyResult,
    complete_trials,
    solver_described,
    study_solver,
)
from autodiff_optuna.storage import artifacts_dir, record


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
    export_rule: ExportRule = DEFAULT_RULE  # how the exported point is chosen, as `export`'s
    device: str = "cpu"
    model_options: object = None  # models.ModelOptions: a real model's files, as the study had them


@dataclass
class Chosen:
    """A schedule the page singles out: it gets a sample grid and a row in the schedule plot."""

    key: str  # file-name part: uniform, best, exported, best-exported, ..., file
    label: str  # its name in the schedule plot: its roles ("best = exported")
    caption: str
    model: str
    # a fixed solver's name, or one [order, corrector(, method(, scale))] rule per step
    solver: str | list
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
    reported = scope.load(name, storage, options.export_rule)
    result, config = reported.result, reported.config
    # a --max-gflops nothing good fits: one line, as `export`; the budget stage 2 ran with
    # (if any) may buy nothing good: the page says so
    exported, _ = result.exported()
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
    _check_stored_schedules(result, exported, model)
    chosen = _chosen(result, exported, schedule, options.schedule)
    _check_nothing_in_the_way(out, ["index.html"] + [_grid_file(c) for c in chosen])
    # every refusal is above: from here on files are written and the study's cache grows
    artifacts.writable_folder(out, "--out")
    store = artifacts.store(artifacts_dir(storage.url, options.artifacts))
    log(f"report {name!r}: {', '.join(s.study_name for s in reported.shown)} -> {out}")

    # the full network's cost, where the study did not record it (made before it did)
    full_gflops = result.full_gflops or layer_costs(model).gflops([()] * config["steps"])
    rows = _rows(reported, exported, options.top, full_gflops, schedule)
    if scorer is not None:
        heldout.fill(rows, reported.stage1, model, scorer, lambda row: _row_solver(config, row),
                     samples, options.seed, log)
    grid_blocks = _grids(chosen, out, storage, store, options)
    figures, blocks = _figures(reported, chosen, model, exported)
    png_notice = ""
    if options.png:
        log(f"rendering {len(figures)} plots to PNG")
        png_notice = png.write_pngs(figures, out / "png")
        if png_notice:
            log(png_notice)
    sections = [("Result", [page.items(scope.result_lines(result, exported))]),
                ("Schedules", [blocks.pop("schedule"), page.note(_grid_note(options)),
                               grid_blocks]),
                ("Candidates", [page.table(rows), page.note(_heldout_note(samples, options))])]
    sections += blocks.pop("studies")
    meta = _meta(reported, config) + ([html.escape(png_notice)] if png_notice else [])
    path = out / "index.html"
    path.write_text(page.page(f"Study {name}", meta, sections), encoding="utf-8")
    return path


def _grid_file(chosen: Chosen) -> str:
    return f"samples-{chosen.key}.png"


def _check_nothing_in_the_way(out: Path, files: list[str]) -> None:
    """A folder where the page writes one of its files: refused before anything is written."""
    for name in files:
        if (out / name).is_dir():
            raise UsageError(f"--out {out}: {out / name} is a folder where the report writes a "
                             "file; move it, or give another --out")


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
    so that no study name (``..``, ``../../x``, ``/etc``) puts the page outside ``reports/``, and
    none is too long for a file name."""
    if options.out:
        return Path(options.out)
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"study name {shortened(name)!r} cannot be a folder under reports/ "
                         f"({problem}): pass --out DIR")
    return Path("reports") / name


def _check_stored_schedules(result: StudyResult, exported: Point, model) -> None:
    """The schedules the page samples (its grids) and plots (the front, in the masks), as the
    study stores them: refused in one line, before anything is written, when they are not
    schedules of this model (a database edited by hand or by another program). Each is named
    by its first role (``stage 1 best (study 'x', trial 7)``)."""
    roles = candidates.named(result, exported) + [("front point", p) for p in result.front]
    for role, p in roles:
        try:
            if not isinstance(p.timesteps, list):
                raise UsageError(f"time steps must be a list, got {p.timesteps!r}")
            validate(p.timesteps, model.num_train_timesteps)
            check_skip(p.skip, len(p.timesteps), model.skippable_layers())
        except UsageError as err:
            raise UsageError(f"stage {p.stage} {role} (study {p.study!r}, trial {p.trial}): "
                             f"the stored schedule is malformed: {err}") from None


def _row_solver(config: dict, row):
    """What a table row was sampled with: a schedule file's own solver, a trial's as its study
    sampled it."""
    return row.rules if row.stage is None else study_solver(config, row.rules)


def _chosen(result: StudyResult, exported: Point, schedule, schedule_path) -> list[Chosen]:
    """Uniform, best, exported (a trial that is several of them once, named by all), and the
    schedule file: those present."""
    config = result.config
    model = config["model"]
    out = []
    for roles, p in candidates.by_trial(candidates.named(result, exported)):
        study = result.stage1 if p.stage == 1 else result.stage2
        trial = next(t for t in complete_trials(study) if t.number == p.trial)
        label = " = ".join(roles)
        out.append(Chosen("-".join(roles), label, f"{label}: {p.describe(result.full_gflops)}",
                          model, study_solver(config, p.rules), p.timesteps, p.skip, study,
                          trial))
    if schedule is not None:
        fid = "" if schedule.fid is None else f": FID {schedule.fid:.3f} in its study"
        out.append(Chosen("file", "schedule file", f"{Path(schedule_path).name}{fid}",
                          schedule.model, schedule.solver, list(schedule.timesteps),
                          [list(s) for s in schedule.skip]))
    return out


def _rows(reported, exported: Point, top: int, full_gflops: float, schedule) -> list:
    """The table: the result's rows (stage 1's top ones on a page that shows stage 1), and the
    schedule file's."""
    shows_stage1 = reported.stage1 in reported.shown
    rows = candidates.rows(reported.result, exported, top if shows_stage1 else 0, full_gflops)
    if schedule is not None:
        gflops = schedule.gflops if schedule.gflops is not None else full_gflops
        rows.append(candidates.Row("schedule file", None, None, list(schedule.timesteps),
                                   [list(s) for s in schedule.skip], schedule.fid, gflops,
                                   share=gflops / full_gflops, rules=schedule.solver))
    return rows


def _grid_note(options: Options) -> str:
    return (f"Every grid: the same {options.grid} images of held-out noise (seed {options.seed}),"
            f' as "sample --n {options.grid} --seed {options.seed}" draws them.')


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
            f' (as "evaluate --samples {samples} --seed {options.seed}" computes it).')


def _grids(chosen: list[Chosen], out: Path, storage, store, options: Options) -> str:
    """One grid per chosen schedule, all from the same held-out noise, each attached to its
    trial as an artifact (once: a rerun finds it there)."""
    name = f"samples-n{options.grid}-seed{options.seed}.png"
    images = []
    for c in chosen:
        log(f"sample grid: {c.caption}")
        schedule = SearchedSchedule(model=c.model, solver=c.solver, timesteps=c.timesteps,
                                    skip=c.skip)
        path = out / _grid_file(c)
        save_grid(sample(schedule, options.grid, options.seed, options.device,
                         options=options.model_options), path)
        if c.trial is not None:
            artifacts.attach(storage, c.study, c.trial, path, store, filename=name)
        images.append((path.name, c.caption))
    return page.grids(images)


def _figures(reported, chosen, model, exported: Point) -> tuple[dict, dict]:
    """Every figure by slug (for the PNGs), and the page blocks they make up."""
    log("plots")
    figures = {"schedules": plots.schedule_figure(
        {c.label: c.timesteps for c in chosen}, alphas_cumprod(model))}
    blocks = {"schedule": page.figure("schedules", "Schedules", figures["schedules"])}
    sections = []
    for study in reported.shown:
        stage = record.stage_of(study.user_attrs)
        heading = f"Stage {stage}: {study.study_name} ({_counts(study)})"
        if not complete_trials(study):
            sections.append((heading, [page.note("No complete trial yet.")]))
            continue
        items = []
        for panel in optuna_plots.panels(study, reported.result, exported):
            if panel.figure is not None:
                figures[panel.slug] = panel.figure
            items.append(page.figure(panel.slug, panel.title, panel.figure, panel.note))
        sections.append((heading, items))
    blocks["studies"] = sections
    return figures, blocks


def _counts(study) -> str:
    """How many candidates a study scored: on all its images, and stopped early by the
    multi-fidelity pruner (those count towards --trials too)."""
    trials = complete_trials(study)
    carried = sum(is_carried(t) for t in trials)  # stage 1's elites, with their stage-1 scores
    complete = len(trials) - carried
    evaluated = n_evaluated(study)
    counts = (f"{complete} complete" if evaluated == complete else
              f"{evaluated} evaluated: {complete} complete, {evaluated - complete} stopped early")
    return counts + (f", {carried} carried from stage 1" if carried else "")


def _meta(reported, config: dict) -> list[str]:
    lines = [html.escape(f"{config['model']}, {config['steps']} steps, "
                         f"{solver_described(config)}, "
                         f"{config['samples']} samples per candidate, seed {config['seed']}")]
    if reported.stage1 not in reported.shown:
        stage1 = reported.stage1.study_name
        link = html.escape(urllib.parse.quote(stage1, safe=""))  # a name, not a path
        lines.append(f'Stage 2 of <a href="../{link}/index.html">'
                     f"{html.escape(stage1)}</a> (its report covers both stages).")
    elif reported.stage2 is not None:
        lines.append(f"With its stage 2, {html.escape(reported.stage2.study_name)}, below.")
    return lines
