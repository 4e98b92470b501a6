"""``evaluate``: one schedule's FID on held-out noise that no study searches on, with its GFLOPs
and the uniform schedule's FID on the same noise. Each FID comes with its spread (its bootstrap
standard deviation over the images), and the difference from uniform with the spread of that
difference, resampling the same noises for both: what says whether the margin is more than the
luck of this draw of noise."""

from dataclasses import dataclass

from autodiff_optuna import runtime
from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import SearchedSchedule
from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.fid import fid_difference_spread, fid_from_features, fid_spread
from autodiff_optuna.metrics.flops import layer_costs
from autodiff_optuna.metrics.scoring import sample_features
from autodiff_optuna.models import load_model
from autodiff_optuna.models.files import read_json
from autodiff_optuna.sampling import HELDOUT, draw, validate
from autodiff_optuna.sampling.limits import check_count, check_seed
from autodiff_optuna.sampling.noise import check_fits
from autodiff_optuna.sampling.rules import describe as describe_solver
from autodiff_optuna.sampling.schedules import uniform as uniform_spacing
from autodiff_optuna.sampling.skipping import check_skip
from autodiff_optuna.schedule_sampling import load_schedule
from autodiff_optuna.search.config import load_preset


@dataclass(frozen=True)
class Request:
    """What ``evaluate`` is asked: a schedule by its time steps (with ``model``) or by an
    exported file (``schedule``), how many images on which held-out seed, and how."""

    model: str | None
    timesteps: list[int] | None
    schedule: str | None  # an exported schedule file: its model, steps, solver and skips
    samples: int | None  # None: the study preset's, else what the scorer needs
    seed: int
    solver: str  # the fixed solver of --timesteps, and of the uniform baseline
    skip: str | None  # a JSON file whose "skip" holds one list of layer names per step
    uniform: bool  # also score the uniform schedule on the same noise
    device: str | None  # as --device gives it (None: a GPU where there is one)
    options: object = None  # models.ModelOptions


def evaluate_samples(model: str, steps: int, scorer) -> int:
    """``evaluate``'s default image count: the study preset's (``<model>-k<steps>.yaml``),
    else one the scorer can compute FID from (``FIDScorer.default_samples``)."""
    return int(load_preset(model, steps).get("samples") or scorer.default_samples)


def evaluate(request: Request) -> dict:
    """The scores ``evaluate --json`` prints: the schedule's FID and GFLOPs (with the full
    network's), and the uniform schedule's FID on the same held-out noise."""
    if request.samples is not None:
        check_count(request.samples, "--samples")
    check_seed(request.seed)
    device = runtime.device(request.device)
    schedule = _schedule_file(request, device)
    name = request.model if schedule is None else schedule.model
    model = load_model(name, device, request.options)
    timesteps = validate(request.timesteps if schedule is None else schedule.timesteps,
                         model.num_train_timesteps)
    skip = None
    if schedule is not None and any(schedule.skip):
        skip = [tuple(s) for s in schedule.skip]
    if request.skip is not None:
        skip = check_skip(read_json(request.skip).get("skip"), len(timesteps),
                          model.skippable_layers())
    scorer = load_scorer(name, device, request.options)
    samples = request.samples if request.samples is not None else \
        evaluate_samples(name, len(timesteps), scorer)
    scorer.check_sample_count(samples)  # too few for the features: one line, the minimum
    check_fits(model, samples, "--samples")
    batch = draw(model, samples, request.seed, HELDOUT)
    costs = layer_costs(model)
    full = costs.gflops([()] * len(timesteps))
    solver = request.solver if schedule is None else schedule.solver
    features = sample_features(model, scorer, timesteps, batch, solver, skip=skip)
    result = {"model": name, "timesteps": list(timesteps), "solver": solver,
              "samples": samples, "seed": request.seed, "noise": HELDOUT,
              **_scores(features, scorer),
              "gflops": costs.gflops(skip) if skip is not None else full, "full_gflops": full}
    if skip is not None:
        result["skip"] = [list(s) for s in skip]
    if request.uniform:  # the baseline on the same held-out noise
        # the study's baseline spacing (standard_spacings' "uniform")
        uniform = list(uniform_spacing(len(timesteps), model.num_train_timesteps))
        same = uniform == list(timesteps) and skip is None and solver == request.solver
        result["uniform_timesteps"] = uniform
        result["uniform_solver"] = request.solver
        other = features if same else sample_features(model, scorer, uniform, batch,
                                                      request.solver)
        scores = _scores(other, scorer)
        result["uniform_fid"], result["uniform_fid_spread"] = scores["fid"], scores["fid_spread"]
        result["difference"] = result["fid"] - result["uniform_fid"]
        result["difference_spread"] = fid_difference_spread(features, other, scorer.ref_mu,
                                                            scorer.ref_sigma)
    return result


def _scores(features, scorer) -> dict:
    """One schedule's FID and its spread over the images."""
    return {"fid": fid_from_features(features, scorer.ref_mu, scorer.ref_sigma),
            "fid_spread": fid_spread(features, scorer.ref_mu, scorer.ref_sigma)}


def _schedule_file(request: Request, device: str) -> SearchedSchedule | None:
    """``--schedule``'s file, checked against its model, or None where --timesteps gives the
    schedule."""
    if (request.schedule is None) == (request.timesteps is None):
        raise UsageError("evaluate: give the schedule as --timesteps or as --schedule FILE")
    if request.schedule is None:
        if request.model is None:
            raise UsageError("evaluate: --model is required with --timesteps")
        return None
    schedule = load_schedule(request.schedule, request.options, device)
    if request.model not in (None, schedule.model):
        raise UsageError(f"--model {request.model}: the schedule {request.schedule} is for "
                         f"{schedule.model}")
    return schedule


def lines(result: dict) -> list[str]:
    """The scores in words, as ``evaluate`` prints them."""
    timesteps, skip, full = result["timesteps"], result.get("skip"), result["full_gflops"]
    text = [f"{result['model']} {timesteps} ({describe_solver(result['solver'], len(timesteps))}"
            + (f", {sum(map(len, skip))} layer-steps skipped" if skip is not None else "")
            + f"): FID {result['fid']:.3f} ± {result['fid_spread']:.3f} on {result['samples']} "
            f"held-out samples (seed {result['seed']}), {result['gflops']:.4f} GFLOPs/image "
            f"({result['gflops'] / full:.1%} of the full network)"]
    if "uniform_fid" in result:
        text.append(f"uniform {result['uniform_timesteps']} ({result['uniform_solver']}): FID "
                    f"{result['uniform_fid']:.3f} ± {result['uniform_fid_spread']:.3f} on the "
                    "same noise")
        if result["difference"] != 0 or result["difference_spread"] != 0:
            text.append(_margin(result["difference"], result["difference_spread"]))
    text.append("± is the FID's bootstrap standard deviation over the images: how far another "
                "draw of as many could move it")
    return text


def _margin(difference: float, spread: float) -> str:
    """The difference from uniform in words, and whether it is more than the noise (two
    standard deviations of the paired difference)."""
    word = "lower" if difference < 0 else "higher"
    beyond = abs(difference) > 2 * spread
    return (f"the schedule's FID is {abs(difference):.3f} ± {spread:.3f} {word} than uniform's on "
            "the same noise: " + ("more than twice its spread" if beyond else
                                  "within twice its spread, so not told apart at this count"))
