"""Per-step solver rules: each step of a schedule picks its own update.

A step's rule (``StepRule``) is the order of its DPM-Solver++ multistep update (1 is DDIM with
eta 0, 2 is DPM-Solver++(2M), 3 is DPM-Solver++(3M)) and whether UniPC's corrector (UniC) refines
the sample that update lands on. The corrector reuses the network evaluation the next step makes
anyway, so K steps stay K evaluations; the last step has none after it, as in UniPC.

A rule of ``method="ipndm"`` is instead iPNDM's update (Zhang & Chen, ICLR 2023, "Fast sampling
of diffusion models with exponential integrator"; the few-step solver of GITS and diff-sampler):
the Adams-Bashforth combination of the last ``order`` (1 to 4) noise predictions, with the
fixed coefficients of equal steps, as an Euler step in sigma of x / alpha (order 1 is DDIM). It
keeps its order to the last step (landing on sigma = 0 is finite in that form) and takes no
corrector. A schedule whose first step is iPNDM's (the fixed solver ``ipndm``, and per-step
rules that start with an ipndm rule) starts from the noise at the training schedule's last step
and moves it to the schedule's first by the analytical first step (AFS, Zhou et al., CVPR 2024:
the noise prediction of pure noise is the noise itself), so a schedule that starts below T - 1
starts from the marginal at its first step, not from noise put there, for no network
evaluation; that noise prediction is one more in iPNDM's history. Rules mix freely: every step
keeps both histories (data predictions for DPM-Solver++ and UniC, noise predictions for iPNDM).

A rule's ``scale`` divides the network's noise prediction at its step before any update reads
it: epsilon scaling (Ning et al., ICLR 2024, "Elucidating the Exposure Bias in Diffusion
Models"), which corrects a few-step sampler's drift off the training marginals (its samples'
noise is overestimated by the network), for no evaluation. 1 is the network's own prediction;
the fixed solvers run with 1.

diffusers' schedulers compute every update; only the switching between them, step by step, is
written here (``RuleStepper``): ``DPMSolverMultistepScheduler``'s
``dpm_solver_first_order_update`` and ``multistep_dpm_solver_second/third_order_update`` for the
predictor, ``UniPCMultistepScheduler.multistep_uni_c_bh_update`` for the corrector, each given the
model-output history and the sigmas it reads. A constant order reproduces
``DPMSolverMultistepScheduler`` (solver_order 1, 2 or 3); order 1 or 2 with the corrector
reproduces ``UniPCMultistepScheduler`` of that solver_order (its UniP predictor is DPM-Solver++'s
update at those orders), ``disable_corrector`` listing the steps without one.
"""

from __future__ import annotations  # torch in annotations only: imported where it runs

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autodiff_optuna.errors import UsageError

if TYPE_CHECKING:  # the names and their descriptions are read without torch (``best``, ``list``)
    import torch

ORDERS = (1, 2, 3)
METHODS = ("dpm", "ipndm")
# iPNDM's Adams-Bashforth coefficients by order, the newest noise prediction first
IPNDM_COEFFICIENTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                      4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
# diffusers lowers the order of the second-to-last step below this many steps
# (DPMSolverMultistepScheduler's lower_order_final)
LOWER_ORDER_FINAL_BELOW = 15


# the noise-prediction scales a rule may take: near 1, as epsilon scaling's are (1.00x)
SCALE_RANGE = (0.9, 1.1)


@dataclass(frozen=True)
class StepRule:
    """One step's update: DPM-Solver++ multistep of ``order``, then UniC if ``corrector``; or,
    with ``method="ipndm"``, iPNDM of ``order``; the network's noise prediction there divided by
    ``scale`` (epsilon scaling; 1: as it is)."""

    order: int = 1
    corrector: bool = False
    method: str = "dpm"
    scale: float = 1.0

    def __post_init__(self):
        low, high = SCALE_RANGE
        if (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))
                or not low <= self.scale <= high):
            raise UsageError(f"a step's noise-prediction scale must be a number in [{low}, "
                             f"{high}], got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        if self.method not in METHODS:
            raise UsageError(f"a step's method must be one of {METHODS}, got {self.method!r}")
        orders = tuple(IPNDM_COEFFICIENTS) if self.method == "ipndm" else ORDERS
        if self.order not in orders or isinstance(self.order, bool):
            raise UsageError(f"a step's {self.method} order must be one of {orders}, got "
                             f"{self.order!r}")
        if not isinstance(self.corrector, bool):
            raise UsageError(f"a step's corrector must be true or false, got {self.corrector!r}")
        if self.corrector and self.method == "ipndm":
            raise UsageError("an ipndm step takes no corrector")

    def to_json(self) -> list:
        """``[order, corrector]``, with ``method`` where it is not ``"dpm"`` or a ``scale`` follows,
        and ``scale`` where it is not 1."""
        tail = [self.method, self.scale] if self.scale != 1 else (
            [self.method] if self.method != "dpm" else [])
        return [self.order, self.corrector, *tail]

    def scaled(self, scale: float) -> StepRule:
        return dataclasses.replace(self, scale=scale)


# the fixed solvers: one rule at every step
SOLVERS = {
    "ddim": StepRule(1),
    "dpmpp2m": StepRule(2),
    "dpmpp3m": StepRule(3),
    "unipc": StepRule(2, corrector=True),  # UniPCMultistepScheduler's defaults: bh2, order 2
    "ipndm": StepRule(3, method="ipndm"),  # with the analytical first step (``analytic_start``)
}
# the method whose first step starts by the analytical first step (``analytic_start``)
ANALYTIC_START_METHOD = "ipndm"


def step_rules(solver, steps: int) -> tuple[StepRule, ...]:
    """The rules a schedule of ``steps`` steps runs, as requested: ``solver`` is a name of
    ``SOLVERS``, one ``StepRule`` for every step, or one rule per step (a ``StepRule``, or
    ``[order, corrector]``, ``[order, corrector, method]`` or ``[order, corrector, method,
    scale]`` each). Not yet bounded by the history: see ``bounded``."""
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise UsageError(f"unknown solver {solver!r}; known: {', '.join(SOLVERS)}")
        return (SOLVERS[solver],) * steps
    if isinstance(solver, StepRule):
        return (solver,) * steps
    if not isinstance(solver, Sequence):
        raise UsageError(f"a solver is a name, a StepRule or one rule per step, got {solver!r}")
    if len(solver) != steps:
        raise UsageError(f"{len(solver)} solver rules for {steps} time steps")
    return tuple(_rule(rule) for rule in solver)


def _rule(rule) -> StepRule:
    if isinstance(rule, StepRule):
        return rule
    if isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) in (2, 3, 4):
        return StepRule(*rule)
    raise UsageError(f"a step's rule is [order, corrector], [order, corrector, method] or "
                     f"[order, corrector, method, scale], got {rule!r}")


def analytic_start(solver) -> bool:
    """Whether ``solver`` (a name, a rule for every step, or one rule per step) starts by the
    analytical first step: where its first step is iPNDM's (``ipndm``, and per-step rules that
    start with an ipndm rule). Other schedules start as DPM-Solver does, from the noise put at
    their first step. An unknown name or a malformed rule is not checked here."""
    if isinstance(solver, str):
        return solver in SOLVERS and SOLVERS[solver].method == ANALYTIC_START_METHOD
    if isinstance(solver, Sequence):
        if not solver:
            return False
        solver = solver[0]
    rule = solver if isinstance(solver, StepRule) else _rule_or_none(solver)
    return rule is not None and rule.method == ANALYTIC_START_METHOD


def _rule_or_none(rule) -> StepRule | None:
    try:
        return _rule(rule)
    except UsageError:
        return None


def bounded(rules: Sequence[StepRule], afs: bool | None = None) -> tuple[StepRule, ...]:
    """The rules as they run: step i's order is at most i + 1 (the model outputs it has), the
    last step's is 1 (it lands on sigma = 0, where only the first-order update is finite) and,
    below ``LOWER_ORDER_FINAL_BELOW`` steps, the second-to-last step's at most 2, as diffusers
    does; no corrector after the last step (no evaluation follows it). An ipndm step's order
    is at most the noise predictions it has, i + 1, one more after the analytical first step
    (``analytic_start``; where the schedule starts at T - 1 and takes none, ``run_rules`` runs
    one order less there), to the last step; of order 1 it is DDIM, and is written so
    (``StepRule(1)``: the same update is one rule), but at the first step of an analytical
    start, which it marks. ``afs``: whether the analytical first step runs (default: where
    ``analytic_start`` says it would; False for a schedule from T - 1, which takes none)."""
    k = len(rules)
    afs = int(analytic_start(rules) if afs is None else afs and analytic_start(rules))
    out = []
    for i, rule in enumerate(rules):
        if rule.method == "ipndm":
            order = min(rule.order, i + 1 + afs)
            out.append(StepRule(order, method="ipndm", scale=rule.scale)
                       if order > 1 or (i == 0 and afs) else StepRule(1, scale=rule.scale))
            continue
        order = min(rule.order, i + 1)
        if i == k - 1:
            order = 1
        elif i == k - 2 and k < LOWER_ORDER_FINAL_BELOW:
            order = min(order, 2)
        out.append(StepRule(order, rule.corrector and i < k - 1, scale=rule.scale))
    return tuple(out)


def diffusers_order(rules: Sequence[StepRule]) -> int | None:
    """The ``solver_order`` of the one ``DPMSolverMultistepScheduler`` that runs ``rules`` over
    custom time steps, or None when none does (mixed orders, or a corrector: diffusers' UniPC
    takes no custom time steps)."""
    if any(rule.corrector or rule.method != "dpm" or rule.scale != 1 for rule in rules):
        return None
    for order in ORDERS:
        if bounded(rules) == bounded([StepRule(order)] * len(rules)):
            return order
    return None


def fixed_solver(solver, steps: int) -> str | None:
    """The name of the fixed solver (``SOLVERS``) that runs ``solver`` (a name or one rule per
    step) over ``steps`` steps exactly as it runs, or None for mixed rules."""
    rules = bounded(step_rules(solver, steps))
    return next((name for name, rule in SOLVERS.items() if bounded([rule] * steps) == rules),
                None)


def with_scale(solver, scale: float, steps: int):
    """``solver`` (a name, or rules of scale 1) with the network's noise prediction divided by
    ``scale`` at every step: itself where ``scale`` is 1, else one rule per step, each of that
    scale."""
    if scale == 1:
        return solver
    return [rule.scaled(scale) for rule in step_rules(solver, steps)]


def common_scale(solver, steps: int) -> float | None:
    """The noise-prediction scale every step of ``solver`` takes (1 for a fixed solver's name),
    or None where the steps' scales differ."""
    scales = {rule.scale for rule in step_rules(solver, steps)}
    return scales.pop() if len(scales) == 1 else None


def without_scale(solver, steps: int) -> tuple[object, float] | None:
    """``solver`` less the noise-prediction scale every step takes, and that scale (``with_scale``
    undone: ``solver`` itself where it is 1); None where the steps' scales differ."""
    scale = common_scale(solver, steps)
    if scale is None:
        return None
    if scale == 1:
        return solver, 1.0
    return [rule.scaled(1.0) for rule in step_rules(solver, steps)], scale


def single_scheduler_solver(solver, steps: int) -> str | None:
    """The fixed solver a single ``DPMSolverMultistepScheduler`` runs ``solver`` with (over
    custom time steps), or None where none does (mixed orders, UniPC's corrector, iPNDM)."""
    if analytic_start(solver):
        return None
    order = diffusers_order(step_rules(solver, steps))
    return next((name for name, rule in SOLVERS.items()
                 if not rule.corrector and rule.order == order), None)


def describe(solver, steps: int) -> str:
    """A solver as people read it: a fixed solver's name, else each step's order with ``+C``
    where UniPC's corrector follows and ``i`` for iPNDM (``per-step 1+C, 2+C, 3i, 1``); a
    noise-prediction scale other than 1 after it (``ipndm, noise / 1.01``), or after each
    step's rule where they differ (``per-step 2/1.01, 1``)."""
    split = without_scale(solver, steps)
    if split is not None and split[1] != 1:  # one scale at every step: said once
        return f"{describe(split[0], steps)}, noise / {split[1]:g}"
    rules = bounded(step_rules(solver, steps))
    name = fixed_solver(solver, steps)
    if name is not None:
        return name
    return "per-step " + ", ".join(
        f"{r.order}{'i' * (r.method == 'ipndm')}{'+C' * r.corrector}"
        + (f"/{r.scale:g}" if r.scale != 1 else "") for r in rules)


def training_schedule(config: dict) -> dict:
    """A scheduler config less its own sampler's settings: what a ``DDPMScheduler`` takes (the
    training noise schedule). Every solver here is built on it, so that a checkpoint's or a
    pipeline's DPM-Solver settings (``solver_type="heun"``, Karras sigmas) change neither the
    update the search scores nor the one ``apply`` and the export hand over."""
    import inspect

    from diffusers import DDPMScheduler

    accepted = inspect.signature(DDPMScheduler.__init__).parameters
    return {key: value for key, value in config.items() if key in accepted}


class RuleStepper:
    """Any rule's update at any step, by diffusers' own update methods.

    Every method takes ``sigmas``: the sigmas (diffusers' sqrt((1 - alpha_bar) / alpha_bar)) of
    the path so far and of where the step lands, and ``i``: the index in ``sigmas`` of the
    current sample. ``history`` holds the data predictions (``data_prediction``) of the path's
    last steps, the current one last. The schedulers read the step's sigmas from their
    ``sigmas`` and ``step_index``, which each call sets.
    """

    def __init__(self, training_config: dict):
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

        common = dict(prediction_type="epsilon", thresholding=False, final_sigmas_type="zero",
                      lower_order_final=True, solver_order=max(ORDERS))
        training_config = training_schedule(training_config)
        self.dpm = DPMSolverMultistepScheduler.from_config(
            training_config, algorithm_type="dpmsolver++", **common)
        self.unipc = UniPCMultistepScheduler.from_config(
            training_config, predict_x0=True, solver_type="bh2", **common)

    def schedule(self, timesteps, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The time steps as diffusers feeds them to the network, and their sigmas with the
        final sigma = 0 appended (one more than the steps)."""
        self.dpm.set_timesteps(timesteps=list(timesteps), device=device)
        return self.dpm.timesteps, self.dpm.sigmas

    def data_prediction(self, sigmas: torch.Tensor, i: int, eps: torch.Tensor,
                        x: torch.Tensor) -> torch.Tensor:
        """The clean-sample prediction of the network's ``eps`` at ``x`` (sigma ``sigmas[i]``)."""
        self._at(self.dpm, sigmas, i)
        return self.dpm.convert_model_output(eps, sample=x)

    def predict(self, sigmas: torch.Tensor, i: int, order: int, history: Sequence[torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
        """DPM-Solver++ of ``order`` from ``x`` at ``sigmas[i]`` to ``sigmas[i + 1]``, with the
        float32 upcast of ``DPMSolverMultistepScheduler.step``."""
        import torch

        self._at(self.dpm, sigmas, i)
        dtype = history[-1].dtype
        x = x.to(torch.float32)
        if order == 1:
            out = self.dpm.dpm_solver_first_order_update(history[-1], sample=x)
        elif order == 2:
            out = self.dpm.multistep_dpm_solver_second_order_update(list(history), sample=x)
        else:
            out = self.dpm.multistep_dpm_solver_third_order_update(list(history), sample=x)
        return out.to(dtype)

    @staticmethod
    def adams_bashforth(sigma, sigma_next, order: int, noise_history: Sequence[torch.Tensor],
                        x: torch.Tensor) -> torch.Tensor:
        """iPNDM of ``order`` (at most the predictions there are) from ``x`` at ``sigma`` to
        ``sigma_next``: an Euler step of x / alpha in sigma along the Adams-Bashforth
        combination of ``noise_history`` (the network's noise predictions, the current one
        last), computed in float32."""
        import torch

        dtype = x.dtype
        sigma, sigma_next = float(sigma), float(sigma_next)
        order = min(order, len(noise_history))  # the lower orders warm iPNDM up
        slope = sum(c * e.to(torch.float32) for c, e in
                    zip(IPNDM_COEFFICIENTS[order], reversed(noise_history[-order:])))
        scaled = x.to(torch.float32) * math.sqrt(sigma**2 + 1) + (sigma_next - sigma) * slope
        return (scaled / math.sqrt(sigma_next**2 + 1)).to(dtype)

    def start(self, timesteps, solver) -> float | None:
        """``run_rules``' ``start`` for ``solver`` over ``timesteps``: the sigma the analytical
        first step starts from for a solver that starts by it (``analytic_start``: a name or
        rules), else None. Every caller of ``run_rules`` passes it, as ``sample`` does."""
        if not analytic_start(solver):
            return None
        return start_sigma(self.dpm.alphas_cumprod, timesteps)

    def correct(self, sigmas: torch.Tensor, i: int, order: int, history: Sequence[torch.Tensor],
                prediction: torch.Tensor, x_before: torch.Tensor,
                x: torch.Tensor) -> torch.Tensor:
        """UniC of ``order`` (the order of the update that made ``x``): ``x`` at ``sigmas[i]``,
        made from ``x_before`` at ``sigmas[i - 1]``, refined with ``prediction``, the data
        prediction of the network at ``x``; ``history`` ends at ``sigmas[i - 1]``."""
        self._at(self.unipc, sigmas, i)
        self.unipc.model_outputs = list(history)
        return self.unipc.multistep_uni_c_bh_update(
            this_model_output=prediction, last_sample=x_before, this_sample=x, order=order)

    @staticmethod
    def _at(scheduler, sigmas: torch.Tensor, i: int) -> None:
        # the update methods read sigmas[step_index - k .. step_index + 1]; diffusers' own step
        # advances _step_index the same way
        scheduler.sigmas = sigmas
        scheduler._step_index = i


def start_sigma(alphas_cumprod, timesteps) -> float | None:
    """The sigma the analytical first step starts from, the training schedule's last step's,
    or None where the schedule (its ``timesteps``) starts there already."""
    last = len(alphas_cumprod) - 1
    if int(timesteps[0]) >= last:
        return None
    alpha_bar = float(alphas_cumprod[last])
    return math.sqrt((1 - alpha_bar) / alpha_bar)


def run_rules(stepper: RuleStepper, sigmas: torch.Tensor, rules: Sequence[StepRule], x, network,
              record=None, start: float | None = None) -> torch.Tensor:
    """Solve from ``x`` over the schedule whose sigmas ``sigmas`` are (``RuleStepper.schedule``)
    with ``rules`` (as ``bounded`` bounds them); ``network(i, x)`` is the model's epsilon at
    step i. ``record(i, x, prediction)``, when given, sees each step's sample and data
    prediction. ``start``: the sigma of the noise ``x`` where it starts by the analytical first
    step (``RuleStepper.start``); None: ``x`` is the noise put at the first step."""
    rules = bounded(rules)
    history, noise_history, x_before = [], [], None
    if start is not None:
        # AFS: the noise prediction of pure noise is the noise itself, and iPNDM's history
        # keeps it (as diff-sampler's does)
        noise_history = [x]
        x = stepper.adams_bashforth(start, sigmas[0], 1, noise_history, x)
    for i, rule in enumerate(rules):
        eps = network(i, x)
        if rule.scale != 1:
            eps = eps / rule.scale
        prediction = stepper.data_prediction(sigmas, i, eps, x)
        if i and rules[i - 1].corrector:
            # as UniPC: the data prediction stays the one at the uncorrected sample
            x = stepper.correct(sigmas, i, rules[i - 1].order, history, prediction, x_before, x)
        if record is not None:
            record(i, x, prediction)
        history = [*history[-(max(ORDERS) - 1):], prediction]
        noise_history = [*noise_history[-(max(IPNDM_COEFFICIENTS) - 1):], eps]
        x_before = x
        if rule.method == "ipndm":
            x = stepper.adams_bashforth(sigmas[i], sigmas[i + 1], rule.order, noise_history, x)
        else:
            x = stepper.predict(sigmas, i, rule.order, history, x)
    return x
