"""The command line: ``python -m autodiff_optuna COMMAND`` (study, best, evaluate, export, sample,
report, dashboard, list, delete, download).

Each command parses its flags (``arguments``), calls one function of the layer below, and
prints. The commands that compute import their modules inside them: the ones that only read a
study database (``best``, ``list``) never load torch.

Exit codes: 0 done, 2 bad input or a missing resource (one line, no traceback), 1 a bug (or
output to a pipe whose reader has gone, as Python itself exits then), 130 Ctrl-C.
"""

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from autodiff_optuna import runtime
from autodiff_optuna.arguments import build_parser, export_rule, model_options, study_name_of
from autodiff_optuna.errors import UsageError, one_line, printable
from autodiff_optuna.reporting import text
from autodiff_optuna.search.results import study_listing, study_result
from autodiff_optuna.storage import DEFAULT_STORAGE, load_existing_study, open_storage, redact

# the commands that run a model: torch's threads are set to this process's cores for them
COMPUTING = ("study", "evaluate", "sample", "report")


def cmd_study(args) -> None:
    from autodiff_optuna.reporting.dashboard import keep_result
    from autodiff_optuna.search import SearchContext, configure, retry_stale_trial
    from autodiff_optuna.search.config import check_study_name
    from autodiff_optuna.search.session import Plan, run_study

    config, targets = configure(
        args.model, args.steps, trials=args.trials, stage2_trials=args.stage2_trials,
        stage2_patience=args.stage2_patience,
        **{key: getattr(args, key) for key in ("samples", "seed", "solver", "population",
                                               "min_samples", "sampler", "noise_scale",
                                               "step_moves")})
    if args.max_gflops is not None and args.stage == "1":
        raise UsageError("--max-gflops applies to stage 2; use --stage 2 or both")
    name = args.name or config.default_name
    check_study_name(name)
    if args.estimate:
        _print_estimate(config, targets, args)
        return
    started = time.monotonic()
    # with --json, stdout is the result alone: every line before it goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        # checked against the model and metric before any study is created
        ctx = SearchContext.build(config, runtime.device(args.device), model_options(args))
        storage = open_storage(args.storage, heartbeat=args.heartbeat,
                               on_stale_trial=retry_stale_trial, writable=True)
        plan = Plan(args.stage, args.max_gflops, args.timeout, not args.quiet, tuple(args.argv))
        estimate = None if args.quiet else lambda: _print_estimate(config, targets, args, ctx)
        result = run_study(ctx, name, storage, targets, plan, before_search=estimate)
        if result is None:
            return  # --timeout: stopped between trials, resumable
        seconds = time.monotonic() - started
        _print(text.result_lines(result))
        keep_result(result)
    if args.json:
        print(json.dumps({**result.as_dict(), "wall_seconds": round(seconds, 1)}, indent=1))
    else:
        print(text.done_line(result, seconds))


def _print_estimate(config, targets, args, ctx=None) -> None:
    """The study's cost before it runs: timed on the loaded model where there is one (``ctx``,
    or a model whose files are here), else from its FLOPs."""
    from autodiff_optuna.search import SearchContext
    from autodiff_optuna.search.estimate import estimate, priced_without_weights, time_here
    from autodiff_optuna.search.session import STAGES

    if ctx is None:
        from autodiff_optuna.metrics import load_scorer
        from autodiff_optuna.models import load_model

        device, options = runtime.device(args.device), model_options(args)
        config.check()
        model = scorer = None
        try:  # files not here: priced from the architecture alone (and timed only with both)
            model = load_model(config.model, device, options)
            scorer = load_scorer(config.model, device, options)
        except UsageError:
            if model is None and not priced_without_weights(config.model):
                raise  # only the checkpoint knows the network: why it did not load
        # settings the loaded model refuses (a --steps beyond its schedule) are refused here too
        if model is not None:
            config.check_steps(model)
        ctx = None if scorer is None else SearchContext.of(config, model, scorer)
    else:
        model = ctx.model
    if ctx is not None:  # many steps take minutes to time: say what is running
        print(f"timing {ctx.config.steps}-step sampling and FID features on this machine for "
              "the estimate...", file=sys.stderr if args.json else sys.stdout, flush=True)
    timing = None if ctx is None else time_here(ctx)
    if args.max_gflops is not None:  # a budget turns stage 2's patience off (``run_study``)
        targets = dataclasses.replace(targets, stage2_patience=0)
    result = estimate(config, targets, args.name or config.default_name, STAGES[args.stage],
                      timing, None if model is None else model.architecture)
    if args.json and args.estimate:
        print(result.json())
    else:
        print("\n".join(result.lines()), flush=True)


def _result(args):
    """The result of the study the flags name, its exported point chosen as they say."""
    study = load_existing_study(study_name_of(args), open_storage(args.storage))
    result = study_result(study, export_rule(args))
    warning = text.no_baseline_warning(result)
    if warning:
        print(warning, file=sys.stderr)
    return result


def cmd_best(args) -> None:
    result = _result(args)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        _print(text.result_lines(result))


def cmd_evaluate(args) -> None:
    from autodiff_optuna.reporting.evaluate import Request, evaluate, lines

    result = evaluate(Request(
        model=args.model, timesteps=args.timesteps, schedule=args.schedule,
        samples=args.samples, seed=args.seed, solver=args.solver, skip=args.skip,
        uniform=not args.no_uniform, device=args.device, options=model_options(args),
        fixed=args.against_fixed))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print(lines(result))


def cmd_export(args) -> None:
    from autodiff_optuna.export import from_result

    result = _result(args)
    pick = result.choose()
    schedule = from_result(result, pick)
    try:
        with open(args.out, "w") as f:
            f.write(schedule.to_json())
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err.strerror}") from None
    print(text.exported_line(args.out, result, pick))
    if schedule.diffusers is None:
        print(f"note: study {result.name!r} was made before studies recorded the model's "
              "training schedule, so the file has no diffusers fields; rerun its study command "
              "once (it records it) and export again", file=sys.stderr)


def cmd_sample(args) -> None:
    from autodiff_optuna.models import load_model
    from autodiff_optuna.sampling.limits import check_count
    from autodiff_optuna.sampling.noise import check_fits
    from autodiff_optuna.schedule_sampling import (
        GRID_COPIES,
        MAX_GRID,
        load_schedule,
        sample,
        save_grid,
    )

    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    check_count(args.n, "--n", MAX_GRID)
    if Path(args.out).is_dir():  # before any sampling
        raise UsageError(f"cannot write {args.out}: it is a directory; give a file, e.g. "
                         f"{Path(args.out) / 'samples.png'}")
    device, options = runtime.device(args.device), model_options(args)
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

    options = Options(out=args.out, artifacts=args.artifacts, top=args.top,
                      heldout_samples=args.heldout_samples, grid=args.grid, seed=args.seed,
                      png=not args.no_png, schedule=args.schedule,
                      export_rule=export_rule(args), device=runtime.device(args.device),
                      model_options=model_options(args))
    # refused on a read-only open first: a missing file, another program's database or a
    # study name that is not there is never created or changed by a report
    load_existing_study(study_name_of(args), open_storage(args.storage))
    path = build(study_name_of(args), open_storage(args.storage, writable=True), options)
    print(f"wrote {path}")


def cmd_dashboard(args) -> None:
    from autodiff_optuna.reporting.dashboard import serve

    serve(args.storage, args.artifacts, args.port, args.host)  # until Ctrl-C: exit 130


def cmd_list(args) -> None:
    rows = study_listing(open_storage(args.storage))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _print(text.listing_lines(rows))


def cmd_delete(args) -> None:
    from autodiff_optuna.reporting.dashboard import keep_result
    from autodiff_optuna.search import deletion

    if args.name is None and args.model is None:
        raise UsageError("delete needs the study: --name NAME, or --model MODEL [--steps K] "
                         "(unlike best and export, delete has no default model)")
    planned = deletion.plan(args.storage, study_name_of(args), args.force)
    trials = sum(len(study.get_trials(deepcopy=False)) for study in planned.studies)
    what = " and ".join(repr(study.study_name) for study in planned.studies) + \
        f" ({trials} trials)"
    shown = redact(args.storage or DEFAULT_STORAGE)
    if not args.yes and not _confirmed(f"delete {printable(what)} from {shown}?"):
        print("nothing deleted")
        return
    deletion.delete(planned, args.storage, keep_result)
    print(f"deleted {printable(what)}")


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


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


COMMANDS = {"study": cmd_study, "best": cmd_best, "evaluate": cmd_evaluate,
            "export": cmd_export, "sample": cmd_sample, "report": cmd_report,
            "dashboard": cmd_dashboard, "list": cmd_list, "delete": cmd_delete,
            "download": cmd_download}


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download that hangs
    with runtime.second_interrupt_exits():
        try:
            code = _run(argv)
            sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
            return code
        except BrokenPipeError:
            # the reader of the output went away (`best --json | head -1`): exit quietly, the
            # way Python's documentation recommends (signal.SIGPIPE's notes)
            runtime.discard_stdout()
            return 1


def _run(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: to say how to resume
        if args.command in COMPUTING or "torch" in sys.modules:
            runtime.use_available_cores()
        runtime.quiet_libraries()
        COMMANDS[args.command](args)
    except UsageError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (MemoryError, RuntimeError) as err:
        if not runtime.out_of_memory(err):
            raise
        print(f"error: out of memory ({printable(one_line(err))}): fewer images per network call "
              "(--batch-size), or a model whose sample size fits this machine", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
