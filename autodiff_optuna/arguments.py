"""The command line's arguments: the parser of every command, and the argparse types that
check a flag once, where it is parsed (a bad value is one line and exit code 2, as every bad
input is)."""

import argparse
import math
from contextlib import suppress
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.sampling.limits import check_seed
from autodiff_optuna.sampling.rules import SOLVERS
from autodiff_optuna.search.config import (
    DEFAULT_SOLVER,
    DEFAULT_TRIALS,
    MAX_STUDY_SEED,
    SOLVER_CHOICES,
    STAGE2_SEED_OFFSET,
    STEP_MOVES,
    SearchConfig,
    load_preset,
    study_name,
)
from autodiff_optuna.search.results import (
    FID_TOLERANCE,
    ExportRule,
    budget_problem,
    tolerance_problem,
)
from autodiff_optuna.storage.record import DEFAULT_HEARTBEAT

MODELS = "<the model presets>"  # in a help text: the registry's names, read when help is shown


class _Formatter(argparse.HelpFormatter):
    """argparse's help, with the model presets' names read only when help is shown: the
    registry of models loads torch, which the commands that read a database do without."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        if text and MODELS in text:
            text = text.replace(MODELS, ", ".join(_model_names()))
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit code 2 like every other bad input, a
    flag is never taken for a longer one it begins (``--trial`` is not ``--trials``), and an
    unknown flag is named with the command's nearest one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
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
        return [int(part) for part in text.split(",")]  # an empty item is a typo, not skipped
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _checked_float(problem_of, name: str):
    """An argparse type (``name``, as argparse names it): a float that ``problem_of``, a
    ``*_problem`` function of ``search.results`` that ``ExportRule`` checks with too, finds
    nothing wrong with; what it finds is the one-line error."""

    def check(text: str) -> float:
        value = _number(text, float)
        problem = problem_of(value)
        if problem:
            raise UsageError(problem)
        return value

    check.__name__ = check.__qualname__ = name
    return check


# --max-gflops: a positive number of GFLOPs per image
_budget = _checked_float(budget_problem, "_budget")
# --fid-tolerance: a share of the best FID, from 0 (the best itself)
_tolerance = _checked_float(tolerance_problem, "_tolerance")


def _heartbeat(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= MAX_HEARTBEAT:
        raise UsageError(f"--heartbeat must be from 1 to {MAX_HEARTBEAT} seconds (a day), got "
                         f"{value}")
    return value


def _timeout(text: str) -> float:
    value = _number(text, float)
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"--timeout must be a number of seconds, 0 or more, got {value}")
    return value


def _output_file(text: str) -> str:
    """A file a command writes (export's JSON, sample's PNG): named, and never a study database
    (``export --out studies/autodiff.db`` replaced every trial with one schedule)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file, got an empty path")
    path = Path(text)
    if path.is_file():
        from autodiff_optuna.storage import SQLITE_MAGIC

        with suppress(OSError), path.open("rb") as f:
            if f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                raise argparse.ArgumentTypeError(
                    f"{text} is an SQLite database (a study's?), which an output never "
                    "replaces; give another file")
    return text


def _noise_seed(text: str) -> int:
    """A held-out noise stream's seed (``sampling.limits.MAX_SEED``)."""
    value = _number(text, int)
    check_seed(value)
    return value


def _number(text: str, kind: type):
    """``text`` as an int or float; argparse names the flag where it is neither."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None


DESCRIPTION = ("Search the few time steps (and the layers to skip at each) at which a diffusion "
               "model should be sampled, as Optuna studies scored by FID; inspect the result "
               "and use it.")
EPILOG = ("exit codes: 0 done; 2 bad input or a missing resource (one line); 130 Ctrl-C; 1 a bug "
          "or a closed output pipe. 'COMMAND --help' shows a command's flags.")
DEFAULT_MODEL, DEFAULT_STEPS = "digits", 4  # the bundled model, as `make study` runs it
HEARTBEAT = DEFAULT_HEARTBEAT  # seconds between a running trial's heartbeats
GRACE_BEATS = 3  # beats missed before a trial is stale: storage.open_storage's grace period

# the longest --heartbeat: beyond a day a dead worker's trial would wait days to be retried, and
# far beyond it the number overflows the timers of Optuna's heartbeat thread
MAX_HEARTBEAT = 24 * 3600


def _preset_default(key: str, fallback) -> str:
    """A study flag's default, in its help, as ``search.configure`` decides it: the preset
    ``<model>-k<steps>.yaml`` where one exists (the bundled model's value shown), else
    ``fallback``."""
    value = load_preset(DEFAULT_MODEL, DEFAULT_STEPS).get(key)
    example = "" if value is None else f", {study_name(DEFAULT_MODEL, DEFAULT_STEPS)}: {value}"
    return (f" (default: from the model's preset <model>-k<steps>.yaml{example}; "
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
                       f"(stage 2's is {STAGE2_SEED_OFFSET} higher): 0 to {MAX_STUDY_SEED}"
                       + preset("seed", SearchConfig.seed))
    study.add_argument("--solver", choices=SOLVER_CHOICES,
                       help="search: each step's update (DPM-Solver++ order 1-3, UniPC's "
                            "corrector or not) searched with the steps; or one fixed solver: "
                            + ", ".join(SOLVERS) + " (ipndm: iPNDM from the noise at the last "
                            "training step, moved to the first by the analytical first step)"
                       + preset("solver", DEFAULT_SOLVER))
    study.add_argument("--noise-scale", type=float, dest="noise_scale",
                       help="divide the network's noise prediction by this at every step "
                            "(epsilon scaling, against few-step samplers' drift), 0.9 to 1.1; "
                            "a preset's only with the preset's solver"
                       + preset("noise_scale", SearchConfig.noise_scale))
    study.add_argument("--step-moves", choices=STEP_MOVES, dest="step_moves",
                       help="where our sampler draws and moves time steps: in training steps, "
                            "or in the model's noise levels (sigma ** (1/7): a few steps near "
                            "the data count as much as tens near the noise); stretch: in noise "
                            "levels, and one mutation in five stretches the whole schedule"
                       + preset("step_moves", SearchConfig.step_moves))
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
    study.add_argument("--stage2-patience", type=int, metavar="GENERATIONS",
                       help="end stage 2 before its trials once this many generations in a row "
                            "found no cheaper point within the export's FID tolerance; 0: run "
                            "them all; not with --max-gflops" + preset("stage2_patience", "0"))
    study.add_argument("--max-gflops", type=_budget, help="stage-2 budget, GFLOPs per image "
                       "(default: none)")
    _add_storage(study)
    _add_name(study)
    study.add_argument("--heartbeat", type=_heartbeat, default=HEARTBEAT,
                       help="seconds between a running trial's heartbeats; a trial whose worker "
                            f"died is retried once {GRACE_BEATS} beats are missed (default "
                            f"{HEARTBEAT})")
    study.add_argument("--timeout", type=_timeout, metavar="SECONDS",
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
    evaluate.add_argument("--seed", type=_noise_seed, default=0,
                          help="held-out noise stream; no study ever searches on it (default 0)")
    evaluate.add_argument("--solver", choices=tuple(SOLVERS), default=None,
                          help="the fixed solver of --timesteps (default ddim) and of the "
                               "uniform baseline (default: --timesteps' solver, or the "
                               "--schedule's own where it runs as one fixed solver, else "
                               "dpmpp2m): " + ", ".join(SOLVERS))
    evaluate.add_argument("--skip", help="JSON file whose 'skip' holds one list of layer names "
                                         "per step")
    evaluate.add_argument("--no-uniform", action="store_true",
                          help="do not also score the uniform schedule (one sampling fewer)")
    evaluate.add_argument("--against-fixed", action="store_true",
                          help="also score every standard spacing with every fixed solver on "
                               "the same noise and compare with the best of them, the strongest "
                               "sampler a user could pick without a search (20 to 25 samplings "
                               "more)")
    _add_device(evaluate)
    _add_model_flags(evaluate)
    _add_json(evaluate, "print the scores as JSON")

    export = sub.add_parser("export", help="write a study's result to a schedule file (JSON)",
                            description="Write the schedule a study found (the cheapest "
                                        "Pareto-front point within --fid-tolerance of the best "
                                        "FID, or within --max-gflops) to a JSON file that "
                                        "sample and autodiff_optuna.apply use.")
    _add_study_flags(export)
    export.add_argument("--out", type=_output_file, default="schedule.json",
                        help="the file to write (default schedule.json)")
    _add_choice_flags(export)

    sample = sub.add_parser("sample", help="sample a PNG grid with an exported schedule",
                            description="Sample a grid of images with an exported schedule, "
                                        "on held-out noise, and write it as a PNG.")
    sample.add_argument("--schedule", default="schedule.json",
                        help="an exported schedule file (default schedule.json)")
    sample.add_argument("--n", type=int, default=64, help="images in the grid (default 64)")
    sample.add_argument("--seed", type=_noise_seed, default=0,
                        help="held-out noise seed (default 0)")
    sample.add_argument("--out", type=_output_file, default="samples.png",
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
    report.add_argument("--seed", type=_noise_seed, default=0,
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
                          help="the preset whose files to fetch: " + MODELS)
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
    # not argparse's choices: the registry refuses an unknown name, naming the known ones
    parser.add_argument("--model", required=required, metavar="MODEL", default=default,
                        help="the model preset: " + MODELS
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
    parser.add_argument("--fid-tolerance", type=_tolerance, default=FID_TOLERANCE,
                        help="export the cheapest Pareto-front schedule whose FID is within this "
                             f"share of the best (default {FID_TOLERANCE}: 10%%; 0: the best)")
    parser.add_argument("--max-gflops", type=_budget,
                        help="export the lowest-FID point of the printed Pareto front within "
                             "this budget (GFLOPs per image) instead (default: the budget "
                             "stage 2 ran with, if any); refused if it is worse than the "
                             "uniform schedule")


def _add_name(parser) -> None:
    parser.add_argument("--name", type=_study_name, help="study name (default <model>-k<steps>)")


def _study_name(text: str) -> str:
    # an empty --name (an unset shell variable, or one quoted with spaces around it) must not
    # quietly mean the default study, nor make a study no one can tell from it by eye
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty or blank (leave --name out for "
                                         "<model>-k<steps>)")
    return text


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


def model_options(args):
    """The model flags as ``models.ModelOptions``."""
    from autodiff_optuna.models import ModelOptions

    return ModelOptions(checkpoint=args.checkpoint, classifier=args.classifier,
                        classifier_scale=args.classifier_scale, ref_stats=args.ref_stats,
                        inception=args.inception, precision=args.precision,
                        compile=args.compile, batch_size=args.batch_size,
                        prompts=args.prompts, guidance_scale=args.guidance_scale,
                        ref_images=args.ref_images, ref_teacher=args.ref_teacher)


def study_name_of(args) -> str:
    """``--name``, else the name ``study`` gives: <model>-k<steps>."""
    return args.name or study_name(args.model, args.steps)


def export_rule(args) -> ExportRule:
    """How ``--fid-tolerance`` and ``--max-gflops`` choose the exported point."""
    return ExportRule(args.fid_tolerance, args.max_gflops)
