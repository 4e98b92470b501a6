"""Command line: ``python -m autodiff_optuna {study,best,evaluate}``.

Exit codes: 0 done, 2 bad input or a missing resource (one line, no traceback), 1 a bug.
"""

import argparse
import json
import os
import sys

from autodiff_optuna.errors import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit code 2 like every other bad input."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autodiff_optuna", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    study = sub.add_parser("study", help="run (or resume) a schedule search")
    study.add_argument("--model", required=True)
    study.add_argument("--steps", type=int, required=True)
    study.add_argument("--trials", type=int, help="COMPLETE trials the study should reach")
    study.add_argument("--samples", type=int, help="images per candidate")
    study.add_argument("--seed", type=int)
    study.add_argument("--solver", choices=["ddim", "dpmpp2m"])
    study.add_argument("--population", type=int, help="trials per generation")
    study.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///studies/autodiff.db)")
    study.add_argument("--name", help="study name (default <model>-k<steps>)")
    study.add_argument("--device")
    study.add_argument("--quiet", action="store_true", help="no line per trial")

    best = sub.add_parser("best", help="the best schedule a study found")
    best.add_argument("--name", required=True)
    best.add_argument("--storage")
    best.add_argument("--json", action="store_true")

    evaluate = sub.add_parser("evaluate", help="FID of one schedule on held-out noise")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--timesteps", type=_int_list, required=True)
    evaluate.add_argument("--samples", type=int, default=None)
    evaluate.add_argument("--seed", type=int, default=0,
                          help="held-out noise stream; no study ever searches on it")
    evaluate.add_argument("--solver", choices=["ddim", "dpmpp2m"], default="ddim")
    evaluate.add_argument("--device")
    evaluate.add_argument("--json", action="store_true")
    return parser


def cmd_study(args) -> None:
    from autodiff_optuna.search import config as search_config
    from autodiff_optuna.search import stage1

    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    preset = search_config.load_preset(args.model, args.steps)
    values = {key: getattr(args, key) if getattr(args, key) is not None else preset.get(key)
              for key in ("samples", "seed", "solver", "population")}
    config = search_config.SearchConfig(args.model, args.steps,
                                        **{k: v for k, v in values.items() if v is not None})
    trials = args.trials if args.trials is not None else int(preset.get("trials", 100))
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    ctx = stage1.SearchContext.build(config, args.device or _default_device())
    name = args.name or config.default_name
    study = stage1.open_study(ctx, name, args.storage)
    print(f"study {name!r}: {config.model}, {config.steps} steps, {config.solver}, "
          f"{config.samples} samples/candidate, target {trials} complete trials", flush=True)
    try:
        stage1.run(ctx, study, trials, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume study {name!r}", file=sys.stderr)
        raise SystemExit(130)
    summary = stage1.best_summary(study)
    print(f"best: {summary['timesteps']}  FID {summary['fid']:.3f}  "
          f"(uniform {summary['baseline_timesteps']}: FID {summary['baseline_fid']:.3f})")


def cmd_best(args) -> None:
    from autodiff_optuna.search.stage1 import best_summary
    from autodiff_optuna.storage import load_existing_study, open_storage

    study = load_existing_study(args.name, open_storage(args.storage))
    summary = best_summary(study)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        baseline = summary["baseline_fid"]
        print(f"{summary['study']}: best {summary['timesteps']} FID {summary['fid']:.3f} "
              f"(trial {summary['trial']}, {summary['n_complete']} complete); uniform "
              f"{summary['baseline_timesteps']} FID "
              f"{'n/a' if baseline is None else f'{baseline:.3f}'}")


def cmd_evaluate(args) -> None:
    from autodiff_optuna.models import load_model, load_scorer
    from autodiff_optuna.sampling import HELDOUT, draw, validate
    from autodiff_optuna.search.config import SearchConfig
    from autodiff_optuna.search.objective import score_schedule

    model = load_model(args.model, args.device or _default_device())
    timesteps = validate(args.timesteps, model.num_train_timesteps)
    samples = args.samples or SearchConfig(args.model, len(timesteps)).samples
    if samples < 2:
        raise UsageError(f"--samples must be at least 2, got {samples}")
    batch = draw(model, samples, args.seed, HELDOUT)
    fid = score_schedule(model, load_scorer(args.model), timesteps, batch, args.solver)
    result = {"model": args.model, "timesteps": list(timesteps), "solver": args.solver,
              "samples": samples, "seed": args.seed, "noise": HELDOUT, "fid": fid}
    print(json.dumps(result, indent=1) if args.json else f"FID {fid:.3f}")


COMMANDS = {"study": cmd_study, "best": cmd_best, "evaluate": cmd_evaluate}


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download that hangs
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries()
        COMMANDS[args.command](args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _quiet_libraries() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


if __name__ == "__main__":
    sys.exit(main())
