"""``evaluate``: one schedule's FID on held-out noise that no study searches on, with its GFLOPs
and the uniform schedule's FID on the same noise. Each FID comes with its spread (its bootstrap
standard deviation over the images), and the difference from uniform with the spread of that
difference, resampling the same noises for both: what says whether the margin is more than the
luck of this draw of noise. ``--against-fixed`` also scores every standard spacing with every
fixed solver on the same noise and compares the schedule with the best of them: the strongest
sampler a user could pick without a search."""

import sys
from dataclasses import dataclass

from autodiff_optuna import runtime
from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import SearchedSchedule
from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.fid import FIDError, fid_from_features, paired_spreads, resamples_for
from autodiff_optuna.metrics.flops import layer_costs
from autodiff_optuna.metrics.scoring import sample_features
from autodiff_optuna.models import load_model
from autodiff_optuna.models.files import read_json
from autodiff_optuna.sampling import HELDOUT, draw, standard_spacings, validate
from autodiff_optuna.sampling.limits import check_count, check_seed
from autodiff_optuna.sampling.noise import check_fits
from autodiff_optuna.sampling.rules import SOLVERS, fixed_solver, without_scale
from autodiff_optuna.sampling.rules import describe as describe_solver
from autodiff_optuna.sampling.schedules import uniform as uniform_spacing
from autodiff_optuna.sampling.skipping import check_skip
from autodiff_optuna.schedule_sampling import load_schedule
from autodiff_optuna.search.config import DEFAULT_SOLVER, load_preset
from autodiff_optuna.search.context import alphas_cumprod


@dataclass(frozen=True)
class Request:
    """What ``evaluate`` is asked: a schedule by its time steps (with ``model``) or by an
    exported file (``schedule``), how many images on which held-out seed, and how."""

    model: str | None
    timesteps: list[int] | None
    schedule: str | None  # an exported schedule file: its model, steps, solver and skips
    samples: int | None  # None: the study preset's, else what the scorer needs
    seed: int
    solver: str | None  # --timesteps' fixed solver (None: ddim) and the uniform baseline's
    # (None: a --schedule's own where it runs as one fixed solver, else dpmpp2m)
    skip: str | None  # a JSON file whose "skip" holds one list of layer names per step
    uniform: bool  # also score the uniform schedule on the same noise
    device: str | None  # as --device gives it (None: a GPU where there is one)
    options: object = None  # models.ModelOptions
    fixed: bool = False  # also every standard spacing with every fixed solver on the same noise


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
    solver = (request.solver or "ddim") if schedule is None else schedule.solver
    baseline = request.solver or _unscaled_fixed_solver(solver, len(timesteps)) or DEFAULT_SOLVER
    features = sample_features(model, scorer, timesteps, batch, solver, skip=skip)
    result = {"model": name, "timesteps": list(timesteps), "solver": solver,
              "samples": samples, "seed": request.seed, "noise": HELDOUT,
              "fid": _fid(features, scorer),
              "gflops": costs.gflops(skip) if skip is not None else full, "full_gflops": full}
    if skip is not None:
        result["skip"] = [list(s) for s in skip]
    # what is sampled already, by (time steps, fixed solver as it runs): not sampled again
    known = {} if skip is not None else {(tuple(timesteps), fixed_solver(solver, len(timesteps))):
                                         features}
    others = []  # (where its scores go, its features): each compared with the schedule
    if request.uniform:  # the baseline on the same held-out noise
        # the study's baseline spacing (standard_spacings' "uniform")
        uniform = list(uniform_spacing(len(timesteps), model.num_train_timesteps))
        result["uniform_timesteps"] = uniform
        result["uniform_solver"] = baseline
        key = (tuple(uniform), fixed_solver(baseline, len(timesteps)))
        if key not in known:  # else the schedule is the uniform baseline itself
            known[key] = sample_features(model, scorer, uniform, batch, baseline)
        uniform_scores = {"fid": _fid(known[key], scorer)}
        others.append((uniform_scores, known[key]))
    if request.fixed:
        result["fixed"] = _fixed_samplers(model, scorer, batch, len(timesteps), known, others)
    _spreads(result, features, others, scorer)
    if request.uniform:
        result.update(uniform_fid=uniform_scores["fid"],
                      uniform_fid_spread=uniform_scores["fid_spread"],
                      difference=uniform_scores["difference"],
                      difference_spread=uniform_scores["difference_spread"])
    if request.fixed:
        scored = [r for r in result["fixed"] if r["fid"] is not None]
        if scored:
            result["best_fixed"] = min(scored, key=lambda r: r["fid"])
    return result


def _fixed_samplers(model, scorer, batch, steps: int, known: dict, others: list) -> list[dict]:
    """Every standard spacing with every fixed solver at ``steps`` steps on ``batch``, each a
    row with its FID (its spread and difference from the schedule are added with the others',
    ``_spreads``: each row with its features goes to ``others``). A sampler that runs exactly as
    one already scored (DPM-Solver++(3M) lowered to 2M at few steps, two spacings that coincide)
    is scored once, and one in ``known`` (time steps, the solver as it runs -> features) is not
    sampled again; samples that are not finite, or a FID that cannot be computed, give a FID of
    None."""
    spacings = standard_spacings(steps, model.num_train_timesteps, alphas_cumprod(model))
    runs = {}  # (time steps, the solver as it runs) -> its spacings and solvers
    for spacing, timesteps in spacings.items():
        for solver in SOLVERS:
            key = (tuple(timesteps), fixed_solver(solver, steps))
            runs.setdefault(key, []).append((spacing, solver))
    out = []
    for i, (key, names) in enumerate(runs.items(), 1):
        (timesteps, _), (spacing, solver) = key, names[0]
        print(f"fixed sampler {i}/{len(runs)}: {spacing} {list(timesteps)} ({solver})",
              file=sys.stderr, flush=True)
        row = {"spacing": spacing, "solver": solver, "timesteps": list(timesteps),
               "same_as": [f"{sp} {so}" for sp, so in names[1:]], "fid": None}
        out.append(row)
        try:
            features = known[key] if key in known else sample_features(model, scorer, timesteps,
                                                                       batch, solver)
            row["fid"] = _fid(features, scorer)
        except FIDError:
            continue
        others.append((row, features))
    return out


def _spreads(result: dict, features, others: list, scorer) -> None:
    """The schedule's spread into ``result``, and into each of ``others``' score dicts its spread
    and its difference from the schedule with that difference's spread: one bootstrap of the
    same noises for them all (``fid.paired_spreads``)."""
    spreads, differences = paired_spreads([features, *(f for _, f in others)], scorer.ref_mu,
                                          scorer.ref_sigma, resamples_for(scorer.feature_dim))
    result["fid_spread"] = spreads[0]
    for (scores, _), spread, difference in zip(others, spreads[1:], differences, strict=True):
        scores.update(fid_spread=spread, difference=result["fid"] - scores["fid"],
                      difference_spread=difference)


def _unscaled_fixed_solver(solver, steps: int) -> str | None:
    """The fixed solver ``solver`` runs as, less its noise-prediction scale where every step has
    the same one (a scaled ipndm's baseline is ipndm: the strongest a user picks without it)."""
    split = without_scale(solver, steps)
    return None if split is None else fixed_solver(split[0], steps)


def _fid(features, scorer) -> float:
    return fid_from_features(features, scorer.ref_mu, scorer.ref_sigma)


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
        if result["difference"] == 0 and result["difference_spread"] == 0:
            text.append("the schedule is the uniform baseline")
        else:
            text.append(_margin(result["difference"], result["difference_spread"]))
    if "fixed" in result:
        text += _fixed_lines(result)
    text.append("± is the FID's bootstrap standard deviation over the images (how far another "
                "draw of as many could move it); a margin's, that of the difference, the same "
                "noises resampled for both")
    return text


def _fixed_lines(result: dict) -> list[str]:
    best = result.get("best_fixed")
    scored = [r for r in result["fixed"] if r["fid"] is not None]
    if best is None:
        return [f"no fixed sampler of the {len(result['fixed'])} gave finite samples"]
    head = (f"the best of {len(scored)} fixed samplers (every standard spacing with every fixed "
            f"solver) on the same noise: {best['spacing']} {best['timesteps']} "
            f"({best['solver']}), FID {best['fid']:.3f} ± {best['fid_spread']:.3f}")
    if best["difference"] == 0 and best["difference_spread"] == 0:
        return [head, "the schedule is that sampler"]
    return [head, _margin(best["difference"], best["difference_spread"],
                          "that best fixed sampler's")
            + " (it was picked on this noise, which favours it)"]


def _margin(difference: float, spread: float, against: str = "uniform's") -> str:
    """The difference in words, and whether it is more than the noise (two standard
    deviations of the paired difference)."""
    word = "lower" if difference < 0 else "higher"
    beyond = abs(difference) > 2 * spread
    return (f"the schedule's FID is {abs(difference):.3f} ± {spread:.3f} {word} than {against} "
            "on the same noise: " + ("more than twice its spread" if beyond else
                                     "within twice its spread, so not told apart at this count"))
