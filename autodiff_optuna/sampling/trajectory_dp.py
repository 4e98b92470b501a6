"""A schedule in seconds, with no reference images: dynamic programming against a teacher.

GITS's idea (Chen et al., ICML 2024, "On the Trajectory Regularity of ODE-based Diffusion
Sampling"): sample a few hundred noises finely (the teacher trajectory), then pick, out of a
coarse grid of its time steps, the K steps whose one-step errors against the teacher add up to
the least. A hop from grid step i to grid step j starts from the teacher's sample at i, runs one
update of the step's rule (``rules.StepRule``) and is scored by the mean over samples of the L2
distance to the teacher's sample at j (the teacher's final sample for the last hop, which lands
on sigma = 0), weighted by the square of alpha_bar at j (``WEIGHT_POWER``): the signal's share
of the sample there, 1 at sigma = 0. Unweighted, the sum favours many small hops at high noise
and one long final hop, which lands on the blurred mean of the images the state could become
(the least L2 error, and a poor sample); an error at high noise, by contrast, leaves a valid
sample, another one. GITS weights later hops more for the same reason (a factor per hop, its
``coeff``); a weight by noise level does not depend on K. BENCHMARKS.md compares the two
("The solver searched with the steps").

A multistep update needs the data predictions of the steps before: they are the teacher's at the
path's earlier grid steps, the path being the best one into the hop's start (the DP keeps one
path per (step count, grid step)), so the DP's value of its schedule is exactly
``trajectory_error`` of that schedule, and for first-order rules it is the least over all
schedules of the grid. A corrector after a hop refines its sample with the teacher's data
prediction at j, standing in for the network's at the hop's own sample (the sampler evaluates
the network there; the DP would need one evaluation per hop).

Every schedule starts at the teacher's first step (the grid's first), where the noise is exactly
the teacher's sample: a grid whose first step is lower (a standard spacing's first, say) fits
schedules from there, the teacher starting from the noise at that step as the sampler does.
A solver that starts by the analytical first step (``rules.analytic_start``: ``ipndm``, and
rules whose first is an ipndm rule) is fitted as it samples: its path starts at the grid's
first step (T - 1 on the default grid), whose noise prediction is the noise itself, and its
first hop, to the schedule's first step, is that analytical step, costing no evaluation; its K
steps are the path's other K nodes.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.sampling.noise import TEACHER, NoiseBatch, draw
from autodiff_optuna.sampling.rules import (
    RuleStepper,
    StepRule,
    analytic_start,
    bounded,
    describe,
    run_rules,
    step_rules,
)
from autodiff_optuna.sampling.schedules import Schedule
from autodiff_optuna.sampling.solvers import network_at

TEACHER_STEPS = 101  # the fine schedule, evenly spaced from the grid's first step to 0
TEACHER_SAMPLES = 256
TEACHER_SOLVER = "dpmpp2m"
GRID_STRIDE = 2  # the default grid: every other step of the teacher's
WEIGHT_POWER = 2  # a hop's error is weighted by alpha_bar ** WEIGHT_POWER at its target


@dataclass(frozen=True)
class Teacher:
    """The teacher's trajectory at the grid's time steps (on the CPU)."""

    grid: Schedule  # descending; every DP schedule starts at grid[0]
    states: torch.Tensor  # (len(grid) + 1, n, *sample_shape): its samples, its final one last
    predictions: torch.Tensor  # (len(grid), n, *sample_shape): its data predictions
    sigmas: torch.Tensor  # (len(grid) + 1,): diffusers' sigmas of the grid, 0 last
    scheduler_config: dict  # the model's training schedule (``RuleStepper``'s)

    @property
    def end(self) -> int:
        """The index of the final sample (sigma = 0) in ``states`` and ``sigmas``."""
        return len(self.grid)


def fine_steps(num_train_timesteps: int, start: int | None = None,
               steps: int = TEACHER_STEPS) -> Schedule:
    """The teacher's default schedule: ``steps`` evenly spaced from ``start`` (T-1) to 0."""
    start = num_train_timesteps - 1 if start is None else start
    points = np.rint(np.linspace(start, 0, min(steps, start + 1))).astype(int)
    return tuple(sorted({int(t) for t in points}, reverse=True))


def default_grid(num_train_timesteps: int) -> Schedule:
    """Every ``GRID_STRIDE``-th step of the teacher's default schedule, 0 included."""
    fine = fine_steps(num_train_timesteps)
    return tuple(sorted({*fine[::GRID_STRIDE], fine[-1]}, reverse=True))


@torch.inference_mode()
def teacher_trajectory(model: DiffusionModel, grid: Schedule | None = None,
                       batch: NoiseBatch | None = None, samples: int = TEACHER_SAMPLES,
                       seed: int = 0, steps: int = TEACHER_STEPS,
                       solver=TEACHER_SOLVER) -> Teacher:
    """Sample ``batch`` (default: ``samples`` noises of the teacher stream of ``seed``) with
    ``solver`` over ``steps`` even steps from the grid's first to 0, merged with ``grid``
    (default: ``default_grid``), and keep its samples and predictions at the grid's steps."""
    grid = _checked_grid(grid or default_grid(model.num_train_timesteps), model)
    batch = batch or draw(model, samples, seed, TEACHER)
    fine = tuple(sorted({*fine_steps(model.num_train_timesteps, grid[0], steps), *grid},
                        reverse=True))
    rules = bounded(step_rules(solver, len(fine)))
    stepper = RuleStepper(model.scheduler_config)
    timesteps, sigmas = stepper.schedule(fine, model.device)
    at_grid = {fine.index(t): k for k, t in enumerate(grid)}
    model.prepare()
    states, predictions, finals = [], [], []
    size = model.batch_size or len(batch.noise)
    for start in range(0, len(batch.noise), size):
        chunk = batch.subset(start, start + size)
        labels = None if chunk.labels is None else chunk.labels.to(model.device)
        kept_x, kept_m = [None] * len(grid), [None] * len(grid)

        def keep(i, x, prediction, kept_x=kept_x, kept_m=kept_m):
            if i in at_grid:
                kept_x[at_grid[i]], kept_m[at_grid[i]] = x.cpu(), prediction.cpu()

        final = run_rules(stepper, sigmas, rules, chunk.noise.to(model.device),
                          network_at(model, timesteps, labels), record=keep)
        states.append(torch.stack(kept_x))
        predictions.append(torch.stack(kept_m))
        finals.append(final.cpu())
    grid_sigmas = torch.cat([sigmas[list(at_grid)], sigmas[-1:]])
    return Teacher(grid, torch.cat([torch.cat(states, 1), torch.cat(finals)[None]]),
                   torch.cat(predictions, 1), grid_sigmas, dict(model.scheduler_config))


def _checked_grid(grid, model: DiffusionModel) -> Schedule:
    steps = [int(t) for t in grid]
    if steps != sorted(set(steps), reverse=True) or not 0 <= steps[-1] <= steps[0] \
            < model.num_train_timesteps:
        raise UsageError(f"a DP grid is distinct descending time steps in [0, "
                         f"{model.num_train_timesteps - 1}], got {list(grid)}")
    return tuple(steps)


class _Hops:
    """One-step errors against the teacher, each computed once."""

    def __init__(self, teacher: Teacher, analytic: bool = False):
        self.teacher = teacher
        self.analytic = analytic  # the path's first node is the analytical first step's start
        self.stepper = RuleStepper(teacher.scheduler_config)
        self.cache: dict = {}

    def error(self, path: tuple[int, ...], target: int, rule: StepRule | None) -> float:
        """The error of one ``rule`` update from the teacher's sample at ``path[-1]`` (its
        history at the path's earlier nodes) to ``target`` (a grid index, or ``end``); rule
        None: the analytical first step."""
        if rule is None:
            rule = StepRule(1, method="ipndm")  # an Euler step along the noise prediction
        corrector = rule.corrector and target != self.teacher.end
        nodes = path[-rule.order:]
        key = (nodes, target, rule.order, corrector, rule.method)
        if key not in self.cache:
            self.cache[key] = self._error(nodes, target, rule.order, corrector, rule.method)
        return self.cache[key]

    def _error(self, nodes, target, order, corrector, method="dpm") -> float:
        teacher, stepper = self.teacher, self.stepper
        sigmas = teacher.sigmas[[*nodes, target]]
        i = len(nodes) - 1
        history = [teacher.predictions[n] for n in nodes]
        x = teacher.states[nodes[-1]]
        if method == "ipndm":
            landed = stepper.adams_bashforth(sigmas[i], sigmas[i + 1], order,
                                             [self._noise(n) for n in nodes], x)
        else:
            landed = stepper.predict(sigmas, i, order, history, x)
        if corrector:
            landed = stepper.correct(sigmas, i + 1, order, history,
                                     teacher.predictions[target], x, landed)
        distance = torch.linalg.vector_norm((landed - teacher.states[target]).flatten(1), dim=1)
        alpha_bar = 1 / (1 + float(teacher.sigmas[target]) ** 2)  # diffusers' sigmas
        return float(distance.mean()) * alpha_bar ** WEIGHT_POWER


    def _noise(self, node: int) -> torch.Tensor:
        """The network's noise prediction at a node, from its sample and data prediction:
        x / alpha = x0 + sigma * eps in diffusers' sigmas."""
        state, prediction = self.teacher.states[node], self.teacher.predictions[node]
        if self.analytic and node == 0:
            return state  # pure noise's: the noise itself
        sigma = float(self.teacher.sigmas[node])
        return (state * math.sqrt(sigma**2 + 1) - prediction) / sigma


def trajectory_error(teacher: Teacher, schedule: Schedule, rule="ddim") -> float:
    """The DP's objective for ``schedule`` (steps of ``teacher.grid``, starting at its first, or
    below it for a solver that starts by the analytical first step): the weighted one-step
    errors of its hops against the teacher, summed, with ``rule`` (a solver name, a
    ``StepRule`` or one per step) bounded as the sampler bounds it."""
    rules = _hop_rules(teacher, rule, len(schedule))
    if rules[0] is None and int(schedule[0]) == teacher.grid[0]:
        rules = rules[1:]  # a schedule from T - 1 has no analytical step, as the sampler
    hops = _Hops(teacher, analytic=rules[0] is None)
    nodes = _grid_indices(teacher, [teacher.grid[0]] * (rules[0] is None) + list(schedule))
    targets = [*nodes[1:], teacher.end]
    return sum(hops.error(tuple(nodes[:k + 1]), target, rules[k])
               for k, target in enumerate(targets))


def _hop_rules(teacher: Teacher, rule, steps: int) -> list[StepRule | None]:
    """The rule of each hop of a schedule of ``steps`` steps, bounded; a solver that starts by
    the analytical first step has one hop more, first, None (from the grid's first step, which
    must be the training schedule's last, where the sampler starts it)."""
    rules = list(bounded(step_rules(rule, steps)))
    if any(r.scale != 1 for r in rules):  # the hops read the teacher's predictions, unscaled
        raise UsageError(f"the DP fits no noise-prediction scale ({describe(rule, steps)})")
    if not analytic_start(rule):
        return rules
    last = int(teacher.scheduler_config["num_train_timesteps"]) - 1
    if teacher.grid[0] != last:
        raise UsageError(f"{describe(rule, steps)} starts by the analytical first step from "
                         f"step {last}: its DP grid must start there, not at {teacher.grid[0]}")
    return [None, *rules]


def _grid_indices(teacher: Teacher, schedule) -> list[int]:
    index = {t: i for i, t in enumerate(teacher.grid)}
    if any(int(t) not in index for t in schedule) or int(schedule[0]) != teacher.grid[0]:
        raise UsageError(f"schedule {list(schedule)} is not made of the DP grid's steps from "
                         f"its first, {teacher.grid[0]}")
    return [index[int(t)] for t in schedule]


def fit_schedule(teacher: Teacher, steps: int, rule="ddim") -> tuple[Schedule, float]:
    """The ``steps`` grid steps from ``teacher.grid[0]`` (after it, for a solver that starts by
    the analytical first step) whose summed weighted one-step errors with ``rule`` are the
    least the DP finds, and that sum (``trajectory_error`` of it)."""
    size = len(teacher.grid)
    rules = _hop_rules(teacher, rule, steps)
    nodes = len(rules)  # the path's nodes: one per hop, each hop leaving from one
    if not 1 <= steps <= size - (nodes - steps):
        raise UsageError(f"the DP picks 1 to {size - (nodes - steps)} steps (the grid's), "
                         f"not {steps}")
    hops = _Hops(teacher, analytic=rules[0] is None)
    best = {0: (0.0, (0,))}  # grid index of the path's last step -> (error, path)
    for k in range(1, nodes):
        last_allowed = size - (nodes - k)  # room for the steps still to pick below
        best = {j: min((error + hops.error(path, j, rules[k - 1]), (*path, j))
                       for i, (error, path) in best.items() if i < j)
                for j in range(k, last_allowed + 1)}
    error, path = min((error + hops.error(path, teacher.end, rules[-1]), path)
                      for error, path in best.values())
    return tuple(teacher.grid[i] for i in path[nodes - steps:]), error


def dp_schedule(model: DiffusionModel, steps: int, rule="ddim", teacher: Teacher | None = None,
                grid: Schedule | None = None, samples: int = TEACHER_SAMPLES,
                seed: int = 0) -> Schedule:
    """GITS's schedule of ``steps`` steps for ``rule`` (a solver name, a ``StepRule`` or one per
    step): from ``teacher``, or from a fresh ``teacher_trajectory`` of ``samples`` noises of
    the teacher stream of ``seed`` over ``grid``."""
    teacher = teacher or teacher_trajectory(model, grid, samples=samples, seed=seed)
    schedule, error = fit_schedule(teacher, steps, rule)
    if not math.isfinite(error):
        raise UsageError(f"the teacher trajectory of {model.name} is not finite: no DP schedule")
    return schedule

