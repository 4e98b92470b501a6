"""The command line: ``python -m autodiff_optuna COMMAND`` (study, best, evaluate, export, sample,
report, dashboard, list, delete, download).

Exit codes: 0 done, 2 bad input or a missing resource (one line, no traceback), 1 a bug (or
output to a pipe whose reader has gone, as Python itself exits then), 130 Ctrl-C.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time

from autodiff_optuna.errors import UsageError, one_line
from autodiff_optuna.search.config import (
    DEFAULT_SOLVER,
    DEFAULT_TRIALS,
    SOLVER_CHOICES,
    SearchConfig,
    load_preset,
)
from autodiff_optuna.search.results import FID_TOLERANCE
from autodiff_optuna.storage import DEFAULT_STORAGE, load_existing_study, open_storage, redact


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit code 2 like every other bad input, a
    flag is never taken for a longer one it begins (``--trial`` is not ``--trials``), and an
    unknown flag is named with the command's nearest one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._unrecognized(parsed, extras)
        return parsed

    def _unrecognized(self, parsed, extras: list[str]) -> None:
        """Arguments no parser took, named by the command they were given to (argparse leaves
        them to the top parser, whose message would not say which command or flag was meant)."""
        import difflib

        commands = next((a for a in self._actions
                         if isinstance(a, argparse._SubParsersAction)), None)
        parser = self
        if commands is not None and getattr(parsed, commands.dest, None) in commands.choices:
            parser = commands.choices[getattr(parsed, commands.dest)]
        flags = [flag for action in parser._actions for flag in action.option_strings]
        unknown = extras[0]
        word = unknown.split("=", 1)[0]
        begun = [flag for flag in flags if flag.startswith(word)]  # an abbreviation's own flag
        near = difflib.get_close_matches(word, begun or flags, n=1, cutoff=0 if begun else 0.6)
        hint = f"; did you mean {near[0]}?" if near and unknown.startswith("-") else ""
        raise UsageError(f"{parser.prog}: unrecognized argument {unknown!r}{hint} "
                         f"(usage: '{parser.prog} --help' lists its flags)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _device(requested: str | None) -> str:
    """``--device``, checked here: the CPU or a CUDA GPU this machine has (default: the GPU where
    there is one). Anything else (a typo, ``meta``, a GPU that is not there) would otherwise
    fail deep inside torch, with a traceback."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {requested!r} is not a device: use cpu or cuda[:N]") from None
    if device.type == "cpu":
        return str(device)
    if device.type != "cuda":
        raise UsageError(f"--device {requested!r}: only cpu and cuda[:N] run models here")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested!r}: no CUDA GPU is available on this machine "
                         "(or torch was built without CUDA); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {requested!r}: this machine has {count} CUDA GPU(s), "
                         f"cuda:0 to cuda:{count - 1}")
    return str(device)


def use_available_cores() -> int:
    """Set torch's intra-op threads to the cores this process may use: ``OMP_NUM_THREADS``
    where it is set, else the CPUs it may run on (its affinity: taskset, a container's cpuset).
    Torch's own default counts every core of the machine, so N workers started on one machine
    would each run that many threads and oversubscribe it. Returns the count."""
    import torch

    threads = _omp_threads() or _affinity_cores()
    torch.set_num_threads(threads)
    return threads


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive count (its first level where it lists nested ones:
    ``4,2``); None where it is unset or not a count."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def _affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


DESCRIPTION = ("Search the few time steps (and the layers to skip at each) at which a diffusion "
               "model should be sampled, as Optuna studies scored by FID; inspect the result "
               "and use it.")
EPILOG = ("exit codes: 0 done; 2 bad input or a missing resource (one line); 130 Ctrl-C; 1 a bug "
          "or a closed output pipe. 'COMMAND --help' shows a command's flags.")
DEFAULT_MODEL, DEFAULT_STEPS = "digits", 4  # the bundled model, as `make study` runs it
HEARTBEAT = 10  # seconds between a running trial's heartbeats
GRACE_BEATS = 3  # beats missed before a trial is stale: storage.open_storage's grace period


def _preset_default(key: str, fallback) -> str:
    """A study flag's default, in its help, as ``search.configure`` decides it: the preset
    ``studies/<model>-k<steps>.yaml`` where one exists (the bundled model's value shown), else
    ``fallback``."""
    value = load_preset(DEFAULT_MODEL, DEFAULT_STEPS).get(key)
    example = "" if value is None else f", {DEFAULT_MODEL}-k{DEFAULT_STEPS}: {value}"
    return (f" (default: from the model's preset studies/<model>-k<steps>.yaml{example}; "
            f"without one, {fallback})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autodiff_optuna", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")

    study = sub.add_parser("study", help="run (or resume) a two-stage schedule search",
                           description="Run both stages of a search (or one), resuming the "
                                       "study where it stopped; ends with its result.")
    _add_model_choice(study, required=True)
    study.add_argument("--steps", type=int, required=True,
                       help="time steps of the schedule searched (network calls per image)")
    preset = _preset_default
    study.add_argument("--trials", type=int, help="candidates to evaluate in stage 1 (complete "
                       "trials plus those multi-fidelity pruning stopped early)"
                       + preset("trials", DEFAULT_TRIALS))
    study.add_argument("--samples", type=int,
                       help="images per candidate" + preset("samples", SearchConfig.samples))
    study.add_argument("--min-samples", type=int,
                       help="multi-fidelity: report FID at this many images, then twice as "
                       "many, ... and stop a candidate worse than the 40th percentile of the "
                       "complete trials there (stage 1); 0: off"
                       + preset("min_samples", "off"))
    study.add_argument("--seed", type=int, help="the study's noise, and its samplers' seed "
                       "(stage 2's is 1000 higher): 0 to 2^32-1001"
                       + preset("seed", SearchConfig.seed))
    study.add_argument("--solver", choices=SOLVER_CHOICES,
                       help="search: each step's update (DPM-Solver++ order 1-3, UniPC's "
                            "corrector or not) searched with the steps; or one fixed solver: "
                            "ddim, dpmpp2m, dpmpp3m (DPM-Solver++ 2M/3M), unipc"
                       + preset("solver", DEFAULT_SOLVER))
    study.add_argument("--population", type=int, help="trials per generation"
                       + preset("population", SearchConfig.population))
    study.add_argument("--sampler", help="stage 1's sampler: evolutionary (ours) or Optuna's "
                       "tpe, cmaes, nsgaii or random on the same encoding (compared in "
                       "BENCHMARKS.md); stage 2 is always ours"
                       + preset("sampler", SearchConfig.sampler))
    study.add_argument("--stage", choices=["1", "2", "both"], default="both",
                       help="1: time steps; 2: steps and layer skips (needs stage 1); both "
                            "(default both)")
    study.add_argument("--stage2-trials", type=int, help="COMPLETE stage-2 trials to reach"
                       + preset("stage2_trials", "--trials"))
    study.add_argument("--max-gflops", type=float, help="stage-2 budget, GFLOPs per image "
                       "(default: none)")
    _add_storage(study)
    _add_name(study)
    study.add_argument("--heartbeat", type=int, default=HEARTBEAT,
                       help="seconds between a running trial's heartbeats; a trial whose worker "
                            f"died is retried once {GRACE_BEATS} beats are missed (default "
                            f"{HEARTBEAT})")
    study.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="start no trial after SECONDS of search: the command stops between "
                            "trials (exit 0, a line saying where), and rerunning it resumes "
                            "(default: none)")
    _add_device(study)
    _add_model_flags(study)
    study.add_argument("--quiet", action="store_true", help="no line per trial")
    study.add_argument("--estimate", action="store_true",
                       help="print what the study would cost (per stage: candidates, images, "
                            "network evaluations, GFLOPs, hours here and on an H100/H200) and "
                            "stop; needs no weights")
    _add_json(study, "print the result as JSON on stdout at the end (progress goes to stderr)")

    best = sub.add_parser("best", help="a study's result: its best schedule, the fast one "
                                       "export writes, the uniform baseline, the Pareto front",
                          description="Print a study's result, over both stages: the uniform "
                                      "baseline, the best schedule, the one export writes (the "
                                      "cheapest within --fid-tolerance of the best FID) and the "
                                      "Pareto front of FID against GFLOPs.")
    _add_study_flags(best)
    _add_choice_flags(best)
    _add_json(best, "print the result as JSON")

    evaluate = sub.add_parser("evaluate", help="FID of one schedule, and of the uniform one, "
                                               "on held-out noise",
                              description="Score one schedule (optionally with layer skips) "
                                          "by FID on held-out noise that no study searches on, "
                                          "with its GFLOPs and the uniform schedule's FID on "
                                          "the same noise.")
    _add_model_choice(evaluate)
    evaluate.add_argument("--timesteps", type=_int_list,
                          help="the schedule: comma-separated time steps, e.g. 999,749,499,249")
    evaluate.add_argument("--schedule", help="an exported schedule file instead of --timesteps "
                                             "(its model, steps, per-step solver and skips)")
    evaluate.add_argument("--samples", type=int, default=None,
                          help="images (default: the study preset's, else 1000 or twice the "
                               "FID feature dimension)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="held-out noise stream; no study ever searches on it (default 0)")
    evaluate.add_argument("--solver", choices=SOLVER_CHOICES[:-1], default="ddim",
                          help="the fixed solver: ddim (default), dpmpp2m, dpmpp3m or unipc")
    evaluate.add_argument("--skip", help="JSON file whose 'skip' holds one list of layer names "
                                         "per step")
    evaluate.add_argument("--no-uniform", action="store_true",
                          help="do not also score the uniform schedule (halves the time)")
    _add_device(evaluate)
    _add_model_flags(evaluate)
    _add_json(evaluate, "print the scores as JSON")

    export = sub.add_parser("export", help="write a study's result to a schedule file (JSON)",
                            description="Write the schedule a study found (the cheapest "
                                        "Pareto-front point within --fid-tolerance of the best "
                                        "FID, or within --max-gflops) to a JSON file that "
                                        "sample and autodiff_optuna.apply use.")
    _add_study_flags(export)
    export.add_argument("--out", default="schedule.json",
                        help="the file to write (default schedule.json)")
    _add_choice_flags(export)

    sample = sub.add_parser("sample", help="sample a PNG grid with an exported schedule",
                            description="Sample a grid of images with an exported schedule, "
                                        "on held-out noise, and write it as a PNG.")
    sample.add_argument("--schedule", default="schedule.json",
                        help="an exported schedule file (default schedule.json)")
    sample.add_argument("--n", type=int, default=64, help="images in the grid (default 64)")
    sample.add_argument("--seed", type=int, default=0, help="held-out noise seed (default 0)")
    sample.add_argument("--out", default="samples.png",
                        help="the PNG to write (default samples.png)")
    _add_device(sample)
    _add_model_flags(sample, fid=False)  # a real model's files, as the study was given them

    report = sub.add_parser("report", help="an HTML report of a study: reports/<name>/index.html",
                            description="Write a study's HTML report: its result, sample grids "
                                        "of its schedules on held-out noise, a table with "
                                        "held-out FIDs and the plots of each stage.")
    _add_study_flags(report)
    report.add_argument("--out", help="directory of the page (default reports/<name>)")
    report.add_argument("--artifacts", help="artifact store of the sample grids (default: "
                        "beside an SQLite file, else studies/artifacts)")
    report.add_argument("--top", type=int, default=5,
                        help="stage-1 candidates in the table (default 5)")
    report.add_argument("--heldout-samples", type=int,
                        help="images per held-out FID (default: the study's; 0: none)")
    report.add_argument("--grid", type=int, default=64,
                        help="images per sample grid (default 64)")
    report.add_argument("--seed", type=int, default=0,
                        help="held-out noise of grids and FIDs (default 0)")
    report.add_argument("--schedule", help="an exported schedule file to show beside the rest")
    report.add_argument("--no-png", action="store_true", help="no PNG copies of the plots")
    _add_choice_flags(report)
    _add_device(report)
    _add_model_flags(report)  # a real model's files, as the study was given them

    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on a study database, with "
                                                 "the report's sample grids",
                               description="Serve optuna-dashboard on a study database, with "
                                           "the sample grids the report attached to trials; "
                                           "Ctrl-C stops it.")
    _add_storage(dashboard)
    dashboard.add_argument("--artifacts", help="the report's artifact store (default: beside "
                                               "an SQLite file, else studies/artifacts)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="interface to listen on (default 127.0.0.1; the dashboard can "
                                "edit and delete studies, so 0.0.0.0 exposes that to the network)")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    listing = sub.add_parser("list", help="the studies in a storage: model, steps, stages, "
                                          "trials, best FID",
                             description="List the studies in a storage: model, steps, "
                                         "stages, trials and best FID of each search.")
    _add_storage(listing)
    _add_json(listing, "print the list as JSON")

    delete = sub.add_parser("delete", help="delete a study (a stage-1 name: both of its stages)",
                            description="Delete a search from its storage (a stage-1 name: "
                                        "both of its stages; a stage-2 name: that stage).")
    _add_study_flags(delete, default_model=None)  # deleting names its study: no default
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--force", action="store_true",
                        help="delete even while a worker runs the study (it stops, exit 2)")

    download = sub.add_parser("download", help="fetch a real model's files (needs internet)",
                              description="Fetch a real model preset's files (weights, "
                                          "classifier, FID statistics, Inception) into the "
                                          "models directory.")
    download.add_argument("model", metavar="MODEL",
                          help="the preset whose files to fetch: " + ", ".join(_model_names()))
    download.add_argument("--dir", help="where to put them (default: $AUTODIFF_MODELS_DIR, "
                                        "else ~/.cache/autodiff-optuna)")
    download.add_argument("--timeout", type=float, default=60.0,
                          help="seconds without data before a download is abandoned "
                               "(default 60)")
    return parser


def _model_names() -> list[str]:
    from autodiff_optuna.models.registry import PRESETS

    return list(PRESETS)


def _add_model_choice(parser, required: bool = False, default: str | None = None) -> None:
    names = _model_names()
    # not argparse's choices: the registry refuses an unknown name, naming the known ones
    parser.add_argument("--model", required=required, metavar="MODEL", default=default,
                        help="the model preset: " + ", ".join(names)
                        + (f" (default {default})" if default else ""))


def _add_study_flags(parser, default_model: str | None = DEFAULT_MODEL) -> None:
    """Which study a reading command means: --name, else <model>-k<steps> as `study` names it."""
    _add_name(parser)
    _add_model_choice(parser, default=default_model)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"with --model, names the study <model>-k<steps> (default "
                             f"{DEFAULT_STEPS})")
    _add_storage(parser)


def _add_choice_flags(parser) -> None:
    """How the result's exported point is chosen (search/results.py)."""
    parser.add_argument("--fid-tolerance", type=float, default=FID_TOLERANCE,
                        help="export the cheapest Pareto-front schedule whose FID is within this "
                             f"share of the best (default {FID_TOLERANCE}: 10%%; 0: the best)")
    parser.add_argument("--max-gflops", type=float,
                        help="export the lowest-FID point of the printed Pareto front within "
                             "this budget (GFLOPs per image) instead (default: the budget "
                             "stage 2 ran with, if any); refused if it is worse than the "
                             "uniform schedule")


def _add_name(parser) -> None:
    parser.add_argument("--name", help="study name (default <model>-k<steps>)")


def _add_storage(parser) -> None:
    parser.add_argument("--storage", help="SQLAlchemy URL of the study database (default "
                                          "sqlite:///studies/autodiff.db)")


def _add_device(parser) -> None:
    parser.add_argument("--device", help="cpu or cuda[:N] (default: a GPU where there is one)")


def _add_json(parser, text: str) -> None:
    parser.add_argument("--json", action="store_true", help=text)


def _add_model_flags(parser, fid: bool = True) -> None:
    """Where a real model's files are and how it runs (models/registry.py ModelOptions);
    ``fid`` False: without the FID reference and network flags (a command that scores
    nothing)."""
    parser.add_argument("--checkpoint", help="model weights: a file (ADM), a diffusers "
                                             "directory or hub id (google/ddpm-*, "
                                             "--model diffusers, Stable Diffusion)")
    parser.add_argument("--classifier", help="ADM-G classifier file (64x64_classifier.pt)")
    parser.add_argument("--classifier-scale", type=float,
                        help="classifier guidance scale (adm64 default 1.0; 0: unguided)")
    parser.add_argument("--prompts", help="text-to-image prompts: one a line, or COCO's "
                                          "captions_*.json (sd14/sd15 default: COCO 2014 val)")
    parser.add_argument("--guidance-scale", type=float,
                        help="classifier-free guidance (sd14/sd15 default 7.5; 1: none)")
    if fid:
        _add_fid_flags(parser)
    else:
        parser.set_defaults(ref_stats=None, ref_images=None, ref_teacher=None, inception=None)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                        help="network autocast (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each skippable block (GPU)")
    parser.add_argument("--batch-size", type=int,
                        help="images per network call (default: sized to the device)")


def _add_fid_flags(parser) -> None:
    parser.add_argument("--ref-stats", help="FID reference statistics: an .npz with mu, sigma")
    parser.add_argument("--ref-images", help="FID reference: a folder of real images (clean-fid "
                                             "statistics, made once and cached)")
    parser.add_argument("--ref-teacher", type=int, metavar="N",
                        help="FID reference: the model's own N-step samples on held-out noise "
                             "(made once and cached)")
    parser.add_argument("--inception", help="clean-fid's inception-2015-12-05.pt")


def _model_options(args):
    from autodiff_optuna.models import ModelOptions

    return ModelOptions(checkpoint=args.checkpoint, classifier=args.classifier,
                        classifier_scale=args.classifier_scale, ref_stats=args.ref_stats,
                        inception=args.inception, precision=args.precision,
                        compile=args.compile, batch_size=args.batch_size,
                        prompts=args.prompts, guidance_scale=args.guidance_scale,
                        ref_images=args.ref_images, ref_teacher=args.ref_teacher)


def cmd_study(args) -> None:
    import optuna
    import sqlalchemy

    from autodiff_optuna import search
    from autodiff_optuna.search.config import check_study_name

    config, targets = search.configure(
        args.model, args.steps, trials=args.trials, stage2_trials=args.stage2_trials,
        **{key: getattr(args, key) for key in ("samples", "seed", "solver", "population",
                                               "min_samples", "sampler")})
    _check_budget(args.max_gflops)
    if args.max_gflops is not None and args.stage == "1":
        raise UsageError("--max-gflops applies to stage 2; use --stage 2 or both")
    if not 1 <= args.heartbeat <= MAX_HEARTBEAT:
        raise UsageError(f"--heartbeat must be from 1 to {MAX_HEARTBEAT} seconds (a day), got "
                         f"{args.heartbeat}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout >= 0):
        raise UsageError(f"--timeout must be a number of seconds, 0 or more, got {args.timeout}")
    check_study_name(args.name or config.default_name)
    if args.estimate:
        _print_estimate(config, targets, args)
        return
    started = time.monotonic()
    # with --json, stdout is the result alone: every line before it goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        # checked against the model and metric before any study is created
        ctx = search.SearchContext.build(config, _device(args.device), _model_options(args))
        name = args.name or config.default_name
        if not args.quiet:
            _print_estimate(config, targets, args, ctx)
        storage = open_storage(args.storage, heartbeat=args.heartbeat,
                               on_stale_trial=search.retry_stale_trial, writable=True)
        if args.stage == "2":  # stage 2 alone continues from an existing stage-1 study
            stage1 = search.load_stage1(ctx, name, storage)
        else:
            stage1 = search.open_stage1(ctx, name, storage)
        print(f"study {name!r}: {config.model}, {config.steps} steps, {config.solver}, "
              f"{config.samples} samples/candidate; stage {args.stage}", flush=True)
        try:
            if not _run_stages(ctx, args, stage1, storage, targets):
                return  # --timeout: stopped between trials, resumable
        except KeyboardInterrupt:
            from autodiff_optuna.search.progress import resume_line

            print("\n" + printable(resume_line(name, args.argv)), file=sys.stderr)
            raise SystemExit(130) from None
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
            raise UsageError(f"the study database failed during the search ({one_line(err)}); "
                             "completed trials are kept: rerun the same command to resume") \
                from None
        result = search.study_result(stage1)
        seconds = time.monotonic() - started
        _print_result(result)
        store_result(result)
    if args.json:
        print(json.dumps({**result.as_dict(), "wall_seconds": round(seconds, 1)}, indent=1))
    else:
        print(done_line(result, seconds))


def _print_estimate(config, targets, args, ctx=None) -> None:
    """The study's cost before it runs: timed on the loaded model where there is one (``ctx``,
    or a model whose files are here), else from its FLOPs."""
    from autodiff_optuna.search import SearchContext
    from autodiff_optuna.search.estimate import estimate, time_here

    if ctx is None:
        try:
            ctx = SearchContext.build(config, _device(args.device), _model_options(args))
        except UsageError:  # its files are not here: priced from the architecture alone
            ctx = None
    timing = None if ctx is None else time_here(ctx.model, ctx.scorer, config.steps)
    stages = {"1": (1,), "2": (2,), "both": (1, 2)}[args.stage]
    result = estimate(config, targets, args.name or config.default_name, stages, timing)
    if args.json and args.estimate:
        print(result.json())
    else:
        print("\n".join(result.lines()), flush=True)


def _run_stages(ctx, args, stage1, storage, targets) -> bool:
    """The stages ``--stage`` asks for, with one ETA over both, and a line when stage 1 ends.
    False: ``--timeout`` stopped them between trials (a line says so)."""
    from autodiff_optuna import search
    from autodiff_optuna.search.fidelity import n_evaluated
    from autodiff_optuna.search.progress import remaining_stage2, stage_done_line

    progress = not args.quiet
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    if args.stage in ("1", "both"):
        later = remaining_stage2(stage1, targets.stage2_trials) if args.stage == "both" else 0
        started, before = time.monotonic(), n_evaluated(stage1)
        if not search.run(ctx, stage1, targets.trials, progress=progress, later_trials=later,
                          deadline=deadline):
            return _timed_out(args, stage1, targets.trials, stage1.study_name)
        seconds = None if before >= targets.trials else time.monotonic() - started
        print(stage_done_line(stage1, seconds), flush=True)
    if args.stage in ("2", "both"):
        stage2 = search.open_stage2(ctx, stage1, storage, args.max_gflops)
        if not search.run(ctx, stage2, targets.stage2_trials, progress=progress,
                          max_gflops=args.max_gflops, deadline=deadline):
            return _timed_out(args, stage2, targets.stage2_trials, stage1.study_name)
    return True


def _timed_out(args, study, target: int, name: str) -> bool:
    """The line a search stopped by ``--timeout`` ends with: where it is, and how to go on."""
    from autodiff_optuna.search.fidelity import n_evaluated

    stage = study.user_attrs.get("stage", 1)
    print(f"stopped by --timeout {args.timeout:g}s, between trials: stage {stage} has "
          f"{n_evaluated(study)} of {target} trials; rerun the same command to resume study "
          f"{printable(name)!r}", file=sys.stderr, flush=True)
    return False


def store_result(result) -> None:
    """Keep the result in the studies and as optuna-dashboard's note on them, so the dashboard
    shows the same answer as ``best``. A failure here costs the dashboard its note, not the
    search its result (printed before): one warning line."""
    from autodiff_optuna.reporting.dashboard import write_note
    from autodiff_optuna.search.results import store_result as store

    try:
        store(result)
        write_note(result)
    except Exception as err:  # noqa: BLE001 - any failure: the search itself is done
        print(f"warning: the result was not stored in the studies ({one_line(err)}); `best` "
              "computes it again", file=sys.stderr)


# the longest --heartbeat: beyond a day a dead worker's trial would wait days to be retried, and
# far beyond it the number overflows the timers of Optuna's heartbeat thread
MAX_HEARTBEAT = 24 * 3600


def _print_result(result, max_gflops: float | None = None) -> None:
    """The result as ``best`` prints it: the baseline, the best, the exported one, the front.
    A budget that is refused is refused before anything is printed."""
    from autodiff_optuna.search.results import describe_counts

    full = result.full_gflops
    pick, rule = result.exported(max_gflops)  # a refused --max-gflops: before any line
    stages = " and ".join(f"stage {stage} ({describe_counts(counts)})"
                          for stage, counts in result.counts.items())
    print(f"{printable(result.name)}: {stages}")
    if result.uniform is not None:
        print(f"  uniform  {result.uniform.describe(full)}")
    else:
        print("  uniform  its trial did not complete: no baseline")
    print(f"  best     {result.best.describe(full)}")
    print(f"  export   {pick.describe(full)}  ({rule}: what export writes)" if pick is not None
          else f"  export   none: {rule}")
    if full is None:
        print("  (no GFLOPs recorded: rerun the study command once to record them)")
        return
    print(f"Pareto front of both stages, cheapest first (skips: layer-steps skipped; full network "
          f"{full:.4f} GFLOPs/image{_unskippable(result)}; each point saves at least "
          f"{result.min_saving:.1%} of it over the next):")
    for point in result.front:
        worse = (result.uniform is not None and point.fid > result.uniform.fid)
        print(f"  GFLOPs {point.gflops:.4f} ({point.share(full):6.1%})  FID {point.fid:8.3f}  "
              f"skips {point.skipped:>2}  {point.timesteps}  (stage {point.stage} trial "
              f"{point.trial})"
              + ("  worse than uniform" if worse else ""))


def _warn_without_baseline(result) -> None:
    if result.uniform is None:
        print(f"warning: study {printable(result.name)!r} has no complete uniform trial: what "
              "is exported is not checked against the baseline", file=sys.stderr)


def done_line(result, seconds: float) -> str:
    """The one line a study ends with."""
    from autodiff_optuna.search.progress import duration
    from autodiff_optuna.search.results import describe_counts

    full = result.full_gflops
    pick, _ = result.exported()
    uniform = "n/a" if result.uniform is None else f"{result.uniform.fid:.3f}"
    if pick is None:
        export = "export none within the budget"
    else:
        share = pick.share(full)
        cost = "" if share is None else f" at {share:.1%} of the GFLOPs"
        export = f"export FID {pick.fid:.3f}{cost} (stage {pick.stage} trial {pick.trial})"
    trials = "; ".join(f"stage {stage} {describe_counts(counts)}"
                       for stage, counts in result.counts.items())
    points = len(result.front)
    return (f"done: {printable(result.name)} in {duration(seconds)}: best FID "
            f"{result.best.fid:.3f} (stage {result.best.stage} trial {result.best.trial}), "
            f"uniform FID {uniform}, {export}, front {points} point{'s' * (points != 1)}; "
            f"{trials}")


def _unskippable(result) -> str:
    """The work beside the network that no mask skips (a latent model's text encoder and
    decoder), as the study recorded it: empty for a model that has none."""
    from autodiff_optuna.search.results import UNSKIPPABLE_ATTR

    stage2 = result.stage2
    parts = (stage2.user_attrs.get(UNSKIPPABLE_ATTR) if stage2 is not None else None) or {}
    if not parts:
        return ""
    return "; not skippable: " + ", ".join(f"{part.replace('_', ' ')} {gflops:.4f}"
                                           for part, gflops in parts.items())


def _study_name(args) -> str:
    """``--name``, else the name ``study`` gives: <model>-k<steps>."""
    return args.name or f"{args.model}-k{args.steps}"


def _result(args, storage=None):
    from autodiff_optuna.search.results import study_result

    storage = storage or open_storage(args.storage)
    return study_result(load_existing_study(_study_name(args), storage), args.fid_tolerance)


def _check_budget(max_gflops: float | None) -> None:
    if max_gflops is not None and not (math.isfinite(max_gflops) and max_gflops > 0):
        raise UsageError(f"--max-gflops must be a positive number, got {max_gflops}")


def cmd_best(args) -> None:
    _check_budget(args.max_gflops)
    result = _result(args)
    _warn_without_baseline(result)
    if args.json:
        print(json.dumps(result.as_dict(args.max_gflops), indent=1))
    else:
        _print_result(result, args.max_gflops)


def cmd_evaluate(args) -> None:
    from autodiff_optuna.metrics import load_scorer
    from autodiff_optuna.metrics.flops import layer_costs
    from autodiff_optuna.metrics.scoring import score_schedule
    from autodiff_optuna.models import load_model
    from autodiff_optuna.models.files import read_json
    from autodiff_optuna.sampling import HELDOUT, draw, validate
    from autodiff_optuna.sampling.noise import check_count, check_fits, check_seed
    from autodiff_optuna.sampling.rules import describe as describe_solver
    from autodiff_optuna.sampling.schedules import uniform as uniform_spacing
    from autodiff_optuna.sampling.skipping import check_skip

    if args.samples is not None:
        check_count(args.samples, "--samples")
    check_seed(args.seed)
    device = _device(args.device)
    options = _model_options(args)
    schedule = _evaluated_schedule(args, options, device)
    model = load_model(args.model, device, options)
    timesteps = validate(args.timesteps, model.num_train_timesteps)
    skip = None
    if schedule is not None and any(schedule.skip):
        skip = [tuple(s) for s in schedule.skip]
    if args.skip is not None:
        skip = check_skip(read_json(args.skip).get("skip"), len(timesteps),
                          model.skippable_layers())
    scorer = load_scorer(args.model, device, options)
    samples = args.samples if args.samples is not None else \
        evaluate_samples(args.model, len(timesteps), scorer)
    scorer.check_sample_count(samples)  # too few for the features: one line, the minimum
    check_fits(model, samples, "--samples")
    batch = draw(model, samples, args.seed, HELDOUT)
    costs = layer_costs(model)
    full = costs.gflops([()] * len(timesteps))
    solver = args.solver if schedule is None else schedule.solver
    result = {"model": args.model, "timesteps": list(timesteps), "solver": solver,
              "samples": samples, "seed": args.seed, "noise": HELDOUT,
              "fid": score_schedule(model, scorer, timesteps, batch, solver, skip=skip),
              "gflops": costs.gflops(skip) if skip is not None else full, "full_gflops": full}
    if skip is not None:
        result["skip"] = [list(s) for s in skip]
    if not args.no_uniform:  # the baseline on the same held-out noise
        # the study's baseline spacing (standard_spacings' "uniform")
        uniform = list(uniform_spacing(len(timesteps), model.num_train_timesteps))
        same = uniform == list(timesteps) and skip is None and solver == args.solver
        result["uniform_timesteps"] = uniform
        result["uniform_solver"] = args.solver
        result["uniform_fid"] = result["fid"] if same else score_schedule(
            model, scorer, uniform, batch, args.solver)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{args.model} {list(timesteps)} ({describe_solver(solver, len(timesteps))}"
          + (f", {sum(map(len, skip))} layer-steps skipped" if skip is not None else "")
          + f"): FID {result['fid']:.3f} on {samples} held-out samples (seed {args.seed}), "
          f"{result['gflops']:.4f} GFLOPs/image ({result['gflops'] / full:.1%} of the full "
          "network)")
    if "uniform_fid" in result:
        print(f"uniform {result['uniform_timesteps']} ({args.solver}): FID "
              f"{result['uniform_fid']:.3f} on the same noise")


def _evaluated_schedule(args, options, device):
    """``--schedule``'s file, checked against its model (which fills in --model and
    --timesteps), or None where --timesteps gives the schedule."""
    from autodiff_optuna.export import load_schedule

    if (args.schedule is None) == (args.timesteps is None):
        raise UsageError("evaluate: give the schedule as --timesteps or as --schedule FILE")
    if args.schedule is None:
        if args.model is None:
            raise UsageError("evaluate: --model is required with --timesteps")
        return None
    schedule = load_schedule(args.schedule, options, device)
    if args.model not in (None, schedule.model):
        raise UsageError(f"--model {args.model}: the schedule {args.schedule} is for "
                         f"{schedule.model}")
    args.model, args.timesteps = schedule.model, list(schedule.timesteps)
    return schedule


def evaluate_samples(model: str, steps: int, scorer) -> int:
    """``evaluate``'s default image count: the study preset's (``studies/<model>-k<steps>.yaml``),
    else one the scorer can compute FID from (``FIDScorer.default_samples``)."""
    from autodiff_optuna.search.config import load_preset

    return int(load_preset(model, steps).get("samples") or scorer.default_samples)


def cmd_export(args) -> None:
    from autodiff_optuna.export import from_result

    _check_budget(args.max_gflops)
    result = _result(args)
    _warn_without_baseline(result)
    schedule = from_result(result, args.max_gflops)
    try:
        with open(args.out, "w") as f:
            f.write(schedule.to_json())
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err.strerror}") from None
    pick = result.choose(args.max_gflops)
    uniform = "" if result.uniform is None else f"; uniform FID {result.uniform.fid:.3f}"
    print(f"wrote {args.out}: {pick.describe(result.full_gflops)}{uniform}")
    if schedule.diffusers is None:
        print(f"note: study {result.name!r} was made before studies recorded the model's "
              "training schedule, so the file has no diffusers fields; rerun its study command "
              "once (it records it) and export again", file=sys.stderr)


def cmd_sample(args) -> None:
    from autodiff_optuna.export import GRID_COPIES, MAX_GRID, load_schedule, sample, save_grid
    from autodiff_optuna.models import load_model
    from autodiff_optuna.sampling.noise import check_count, check_fits, check_seed

    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    check_count(args.n, "--n", MAX_GRID)
    check_seed(args.seed)
    device, options = _device(args.device), _model_options(args)
    schedule = load_schedule(args.schedule, options, device)
    check_fits(load_model(schedule.model, device, options), args.n, "--n", GRID_COPIES)
    images = sample(schedule, args.n, args.seed, device, options=options)
    try:
        save_grid(images, args.out)
    except (OSError, ValueError) as err:  # unwritable path, unknown image extension
        raise UsageError(f"cannot write {args.out}: {err}") from None
    print(f"wrote {args.out}: {args.n} samples of {schedule.model} at {schedule.timesteps}")


def cmd_report(args) -> None:
    from autodiff_optuna.reporting.report import Options, build

    _check_budget(args.max_gflops)
    options = Options(out=args.out, artifacts=args.artifacts, top=args.top,
                      heldout_samples=args.heldout_samples, grid=args.grid, seed=args.seed,
                      png=not args.no_png, schedule=args.schedule,
                      fid_tolerance=args.fid_tolerance, max_gflops=args.max_gflops,
                      device=_device(args.device), model_options=_model_options(args))
    path = build(_study_name(args), open_storage(args.storage, writable=True), options)
    print(f"wrote {path}")


def cmd_dashboard(args) -> None:
    from autodiff_optuna.reporting.dashboard import serve

    serve(args.storage, args.artifacts, args.port, args.host)  # until Ctrl-C: exit 130


def cmd_list(args) -> None:
    from autodiff_optuna.search.results import study_listing

    rows = study_listing(open_storage(args.storage))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    if not rows:
        print("no studies")
        return
    header = ["study", "model", "steps", "stage 1", "stage 2", "best FID", "uniform FID"]
    table = [header] + [[row["study"], "foreign" if row["foreign"] else row["model"],
                         str(row["steps"] or "-"), _stage_cell(row, 1), _stage_cell(row, 2),
                         _fid_cell(row["best_fid"]), _fid_cell(row["uniform_fid"])]
                        for row in rows]
    widths = [max(len(printable(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(printable(cell).ljust(width) for cell, width in zip(r, widths)).rstrip())


# a stage's trials that did not count towards its target, as the listing names them
OTHER_TRIALS = {"stopped_early": "stopped early", "interrupted": "interrupted",
                "queued": "queued", "running": "running", "failed": "failed"}


def _stage_cell(row: dict, stage: int) -> str:
    """``done 100/100, 48 stopped early``; ``31/100, 1 interrupted, 1 queued`` (unfinished);
    ``40 complete`` where the stage did not record its target; ``-``: no such stage."""
    key = f"stage{stage}"
    if key not in row["trials"]:
        return "-"
    counts, state = row["trials"][key], row["state"][key]
    if state["target"] is None:
        progress = f"{counts['complete']} complete"
    else:
        progress = ("done " if state["finished"] else "") + \
            f"{state['evaluated']}/{state['target']}"
    return ", ".join([progress] + [f"{counts[k]} {text}" for k, text in OTHER_TRIALS.items()
                                   if counts.get(k)])


def _fid_cell(fid) -> str:
    return "-" if fid is None else f"{fid:.3f}"


def cmd_delete(args) -> None:
    from autodiff_optuna.search.results import deletion_plan

    if args.name is None and args.model is None:
        raise UsageError("delete needs the study: --name NAME, or --model MODEL [--steps K]")
    name = _study_name(args)
    # found and checked through read-only openings: a mistyped SQLite path creates no file,
    # and a refused delete writes nothing
    plan = deletion_plan(open_storage(args.storage), name)
    if not args.force:
        _refuse_while_running(args.storage, plan)
    trials = sum(len(study.get_trials(deepcopy=False)) for study in plan)
    what = " and ".join(repr(study.study_name) for study in plan) + f" ({trials} trials)"
    shown = redact(args.storage or DEFAULT_STORAGE)
    if not args.yes and not _confirmed(f"delete {printable(what)} from {shown}?"):
        print("nothing deleted")
        return
    _delete_in_order(plan, open_storage(args.storage, writable=True))
    print(f"deleted {printable(what)}")


def _refuse_while_running(url: str | None, plan) -> None:
    """A study deleted under a live worker would stop it mid-trial: refused while any trial
    runs whose worker still beats, by the grace period the workers' heartbeat gives."""
    import optuna

    from autodiff_optuna.search.results import heartbeat_of, live_trials
    from autodiff_optuna.storage.record import DEFAULT_HEARTBEAT

    storage = open_storage(url, heartbeat=heartbeat_of(plan, DEFAULT_HEARTBEAT))
    live = live_trials([optuna.load_study(study_name=study.study_name, storage=storage)
                        for study in plan])
    if live:
        raise UsageError(f"{live[0]} is running" + (f" (and {len(live) - 1} more)" if live[1:]
                                                    else "")
                         + ": stop its worker first, or pass --force to delete it under the "
                           "worker (which then stops)")


def _delete_in_order(plan, storage) -> None:
    """Delete the studies in ``deletion_plan``'s order. A stage 2 deleted alone is first
    unlinked from its stage 1 and that study's stored result recomputed without it: a delete
    killed part-way leaves the stage 2 there, for a rerun to finish."""
    import optuna

    from autodiff_optuna.storage import record

    names = optuna.get_all_study_names(storage)
    for study in plan:
        attrs = study.user_attrs
        if len(plan) == 1 and record.stage_of(attrs) == 2 \
                and attrs[record.STAGE1_ATTR] in names:
            _unlink_stage2(attrs[record.STAGE1_ATTR], study.study_name, storage)
        with contextlib.suppress(KeyError):  # deleted meanwhile by another delete
            optuna.delete_study(study_name=study.study_name, storage=storage)


def _unlink_stage2(stage1_name: str, stage2_name: str, storage) -> None:
    """Stage 1 no longer names its stage 2, and its stored result and dashboard note are
    recomputed without it."""
    import optuna

    from autodiff_optuna.search.results import study_result
    from autodiff_optuna.storage import record

    stage1 = optuna.load_study(study_name=stage1_name, storage=storage)
    if not record.is_ours(stage1.user_attrs):
        return
    if record.linked_stage2_name(stage1.user_attrs) == stage2_name:
        stage1.set_user_attr(record.STAGE2_ATTR, None)
    try:
        result = study_result(stage1)
    except UsageError:  # nothing complete: nothing stored to correct
        return
    store_result(result)


def _confirmed(question: str) -> bool:
    """The user's yes on the terminal; without one to ask on, --yes is needed."""
    if not sys.stdin.isatty():
        raise UsageError(f"{question[:-1]}: pass --yes to delete without a terminal to ask on")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:  # Ctrl-D: no
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_download(args) -> None:
    from pathlib import Path

    from autodiff_optuna.models import get_preset
    from autodiff_optuna.models.files import download, models_dirs
    from autodiff_optuna.models.registry import INCEPTION

    preset = get_preset(args.model)
    if preset.directory is not None:
        print(f"{preset.name} is bundled: nothing to download")
        return
    if preset.weights is None:
        raise UsageError(f"model {preset.name!r} is whatever --checkpoint names: there is "
                         "nothing of its own to download")
    directory = Path(args.dir) if args.dir else None
    remotes = [r for r in (preset.weights, preset.classifier, preset.ref_stats) if r]
    remotes.append(INCEPTION)
    for path in download(remotes, directory, args.timeout):
        print(f"ready: {path}")
    data = [r for r in (preset.prompts, preset.ref_images) if r]  # GBs: the user's call
    if data:
        print("not downloaded: " + " and ".join(f"{r.what} from {r.url}" for r in data)
              + f", into {directory or models_dirs()[0]} (or pass "
              + " and ".join(r.flag for r in data) + ")")


COMMANDS = {"study": cmd_study, "best": cmd_best, "evaluate": cmd_evaluate,
            "export": cmd_export, "sample": cmd_sample, "report": cmd_report,
            "dashboard": cmd_dashboard, "list": cmd_list, "delete": cmd_delete,
            "download": cmd_download}


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download that hangs
    with _second_interrupt_exits():
        try:
            code = _run(argv)
            sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
            return code
        except BrokenPipeError:
            # the reader of the output went away (`best --json | head -1`): exit quietly, the
            # way Python's documentation recommends (signal.SIGPIPE's notes)
            _discard_stdout()
            return 1


def _run(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: to say how to resume
        use_available_cores()
        _quiet_libraries()
        COMMANDS[args.command](args)
    except UsageError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        print(f"error: out of memory ({printable(one_line(err))}): fewer images per network call "
              "(--batch-size), or a model whose sample size fits this machine", file=sys.stderr)
        return 2
    return 0


def _out_of_memory(err: BaseException) -> bool:
    """An allocation that failed (torch's own error on a CPU or GPU, or Python's): the input
    (a count, a batch, a model's sample size) is too large for this machine, not a bug."""
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or \
        "can't allocate memory" in str(err)


def printable(text: str) -> str:
    """A message as one line: a line break or other control character in it (a study name, a
    layer name or a path may hold any) is shown escaped, as ``repr`` shows it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail once more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (in-process)
        pass


@contextlib.contextmanager
def _second_interrupt_exits():
    """The first Ctrl-C raises KeyboardInterrupt as usual, so a search stops cleanly (Optuna
    fails the running trial, and it is queued again for the resume). A second one, during that
    cleanup or at exit, ends the process at once with the same exit code: raised inside Optuna's
    or SQLAlchemy's cleanup, a KeyboardInterrupt leaves their traceback, and a trial the cleanup
    did not finish is retried through its heartbeat all the same."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main's
        yield
        return
    interrupted = False

    def first(signum, frame):
        nonlocal interrupted
        interrupted = True
        signal.signal(signal.SIGINT, again)
        raise KeyboardInterrupt

    def again(signum, frame):
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # RuntimeError: reentrant
            print("\ninterrupted again: stopped at once", file=sys.stderr, flush=True)
        os._exit(130)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if not interrupted:  # after a Ctrl-C, `again` stays until the process has exited
            signal.signal(signal.SIGINT, previous)


def _quiet_libraries() -> None:
    import warnings

    import optuna

    # our progress lines report failed trials; Optuna's own warning would add a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # deprecation notices of the libraries' APIs this code calls are for its maintainers (the
    # test suite shows them), not lines for a user to read after a Ctrl-C
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"(autodiff_optuna|optuna)(\.|$)")


if __name__ == "__main__":
    sys.exit(main())
