"""Candidates and how they are written into an Optuna trial.

A candidate is K distinct time steps out of T, visited from high to low, and for each step the
set of layers skipped there (stage 2; empty in stage 1). In a trial it is the integer parameters
``t0 .. t{K-1}`` (``t0`` the noisiest) and, in stage 2, one 0/1 parameter ``m{i}:{layer}`` per step
and layer. A space that searches the solver too (``solver_search``) adds, per position, the
order of its update ``o{i}`` (1 to 3), whether UniPC's corrector follows it ``c{i}`` (0/1) and
whether the update is iPNDM's rather than DPM-Solver++'s ``p{i}`` (0/1; iPNDM takes no
corrector, and an iPNDM first step starts by the analytical first step): a position's rule,
bounded by the history available there (``sampling.rules.bounded``, and from T - 1, where no
analytical first step runs, as they run: ``rules_of``), so the same schedule is never two
candidates. A study made before ``p{i}`` existed has trials without it: DPM-Solver++ at every
position, which they ran. The evolutionary sampler writes canonical candidates; generic Optuna
samplers may not, so ``decode`` repairs deterministically (sort, then move a repeated step to
the nearest free one), and every sampler is scored on the same encoding.
``CandidateSpace.suggest`` writes a candidate into a trial and returns it decoded, for
objectives of one's own.

A candidate is a list of genes, one per step: the time step and what travels with it (the
mask). The variation operators (``variation``) move a step with everything it carries, and
``repair`` re-sorts the candidate by step. Solver rules belong to positions, not to steps: how
many earlier evaluations an update may use depends on where it stands, so a rule stays at its
position when the steps move.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import optuna
from optuna.distributions import IntDistribution

from autodiff_optuna.sampling.rules import ORDERS, SOLVERS, StepRule, bounded

Gene = tuple[int, frozenset]  # (time step, names of the layers skipped at that step)
# draws in the coordinate before ``random_free`` takes a free step uniformly instead (a
# free step may hold a sliver of the coordinate)
MAX_FREE_DRAWS = 1000


@dataclass(frozen=True)
class Candidate:
    timesteps: tuple[int, ...]
    skip: tuple[tuple[str, ...], ...]  # per step, in layer order; empty tuples in stage 1
    rules: tuple[StepRule, ...] = ()  # per position, bounded; () where the study fixes the solver

    @property
    def genes(self) -> list[Gene]:
        return [(t, frozenset(s)) for t, s in zip(self.timesteps, self.skip)]


@dataclass(frozen=True)
class CandidateSpace:
    steps: int  # K
    num_train_timesteps: int  # T
    layers: tuple[str, ...] = ()  # skippable layers, in execution order; () in stage 1
    solver_search: bool = False  # each position's solver rule is searched too
    # per training step, where the variation operators see it (increasing in t; e.g.
    # ``sampling.schedules.noise_coordinates``); None: the step itself. It shapes how candidates
    # are drawn and moved, not which are in the space
    coordinates: tuple[float, ...] | None = field(default=None, repr=False, compare=False)
    # with coordinates: mutation also stretches whole schedules (``variation._stretch``)
    stretch: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("steps", "num_train_timesteps"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or isinstance(value, bool):
                raise ValueError(f"CandidateSpace: {name} must be an integer, not {value!r}")
            object.__setattr__(self, name, int(value))
        if self.steps < 1:
            raise ValueError(f"CandidateSpace: steps must be at least 1, not {self.steps}")
        if self.num_train_timesteps < self.steps:
            raise ValueError(f"CandidateSpace: {self.steps} distinct steps do not fit in "
                             f"num_train_timesteps={self.num_train_timesteps}")
        if isinstance(self.layers, str):
            raise ValueError(f"CandidateSpace: layers must be a sequence of names, not the "
                             f"string {self.layers!r}")
        layers = tuple(self.layers)
        if not all(isinstance(layer, str) and layer for layer in layers):
            raise ValueError(f"CandidateSpace: layer names must be non-empty strings: {layers}")
        if len(set(layers)) < len(layers):
            raise ValueError(f"CandidateSpace: a layer is named twice: {layers}")
        object.__setattr__(self, "layers", layers)
        if self.coordinates is not None:
            coordinates = tuple(float(u) for u in self.coordinates)
            if len(coordinates) != self.num_train_timesteps or not all(
                    np.isfinite(coordinates)) or not all(np.diff(coordinates) > 0):
                raise ValueError(f"CandidateSpace: coordinates must be {self.num_train_timesteps}"
                                 f" finite values increasing with the step")
            object.__setattr__(self, "coordinates", coordinates)
        if self.stretch and self.coordinates is None:
            raise ValueError("CandidateSpace: a stretch scales steps in a coordinate; give one")

    @property
    def size(self) -> int:
        """How many distinct candidates the space holds."""
        masks = 2 ** (self.steps * len(self.layers))
        rules = math.prod(len(c) for c in self.rule_choices) if self.solver_search else 1
        return math.comb(self.num_train_timesteps, self.steps) * masks * rules

    @property
    def rule_choices(self) -> list[list[StepRule]]:
        """Per position, the distinct rules that can run there. An iPNDM rule's order is
        bounded as after the analytical first step (one more noise prediction): a candidate
        that starts otherwise runs it one order lower, its rules bounded so (``repair``)."""
        every = [StepRule(order, corrector) for order in ORDERS for corrector in (False, True)]
        every += [StepRule(order, method="ipndm") for order in ORDERS]
        return [sorted({bounded([rule] * self.steps)[i] for rule in every},
                       key=lambda r: (r.method, r.order, r.corrector))
                for i in range(self.steps)]

    @staticmethod
    def encodes(rule: StepRule) -> bool:
        """Whether a position's parameters hold ``rule``: DPM-Solver++'s rules, UniPC's
        corrector and iPNDM's of order 1 to 3 (``o{i}``, ``c{i}``, ``p{i}``), on the network's
        own noise prediction (a study's ``noise_scale`` scales every candidate alike)."""
        return rule.order in ORDERS and rule.scale == 1

    def rules_of(self, rules: Sequence[StepRule] | None,
                 first_step: int | None = None) -> tuple[StepRule, ...]:
        """The canonical rules of a candidate of this space whose first time step is
        ``first_step``: bounded, or () without a search. From T - 1 no analytical first step
        runs, so rules that differ only in what it would have given run alike there: they are
        written as the fixed solver that runs so (``sampling.rules.SOLVERS``), else as they run
        (an ipndm first step as DDIM, each ipndm order at most the noise predictions it has)."""
        if not self.solver_search:
            return ()
        if rules and not all(self.encodes(rule) for rule in rules):
            raise ValueError(f"CandidateSpace: the searched rules are of order {ORDERS}, "
                             f"unscaled, not {[rule.to_json() for rule in rules]}")
        rules = bounded(rules or [StepRule()] * self.steps)
        if first_step != self.num_train_timesteps - 1:
            return rules
        runs = bounded(rules, afs=False)
        for solver in SOLVERS.values():
            fixed = bounded([solver] * self.steps)
            if bounded(fixed, afs=False) == runs:
                return fixed
        return runs

    # -- encoding -------------------------------------------------------------------------------

    @property
    def step_names(self) -> list[str]:
        return [f"t{i}" for i in range(self.steps)]

    @property
    def rule_names(self) -> list[str]:
        if not self.solver_search:
            return []
        return [f"{kind}{i}" for i in range(self.steps) for kind in ("o", "c", "p")]

    @property
    def names(self) -> list[str]:
        return self.step_names + [self.mask_name(i, layer) for i in range(self.steps)
                                  for layer in self.layers] + self.rule_names

    @property
    def required_names(self) -> list[str]:
        """The parameters a trial must hold to be a candidate of this space: all but ``p{i}``,
        which a study made before it lacks (``decode`` reads its absence as what those trials
        ran)."""
        return [name for name in self.names if name[0] != "p"]

    @staticmethod
    def mask_name(position: int, layer: str) -> str:
        return f"m{position}:{layer}"

    def distributions(self) -> dict[str, IntDistribution]:
        top = self.num_train_timesteps - 1
        highest = {"t": top, "m": 1, "o": max(ORDERS), "c": 1, "p": 1}
        return {name: IntDistribution(1 if name[0] == "o" else 0, highest[name[0]])
                for name in self.names}

    def encode(self, candidate: Candidate) -> dict[str, int]:
        params = dict(zip(self.step_names, (int(t) for t in candidate.timesteps)))
        for i, skipped in enumerate(candidate.skip):
            params.update({self.mask_name(i, layer): int(layer in skipped)
                           for layer in self.layers})
        rules = self.rules_of(candidate.rules, candidate.timesteps[0])
        for i, rule in enumerate(rules):
            params.update({f"o{i}": rule.order, f"c{i}": int(rule.corrector),
                           f"p{i}": int(rule.method == "ipndm")})
        return params

    def suggest(self, trial: optuna.Trial) -> Candidate:
        """Suggest the encoding's parameters in ``trial`` (``t0 .. t{K-1}``, then the mask bits)
        and return the candidate they decode to. Under the ``EvolutionarySampler`` they are its
        proposal; another sampler's parameters are repaired as ``decode`` repairs them."""
        return self.decode({name: trial.suggest_int(name, d.low, d.high)
                            for name, d in self.distributions().items()})

    def encode_with(self, candidate: Candidate, fixed: dict[str, int],
                    rng: np.random.Generator) -> dict[str, int]:
        """``candidate``'s parameters around ``fixed`` ones that someone else set (an enqueued
        trial, ``PartialFixedSampler``): fixed values stay as they are, and each run of free
        steps between two fixed ones keeps the steps that fit between them, the others redrawn
        in that gap (masks move with their steps), so the steps still descend. Fixed steps that
        leave a run no room are left to ``decode`` to repair."""
        genes = candidate.genes
        pinned = [i for i, name in enumerate(self.step_names) if name in fixed]
        for i in pinned:
            genes[i] = (int(fixed[self.step_names[i]]), genes[i][1])
        start = 0
        for end in [*pinned, self.steps]:
            if start < end:
                upper = genes[start - 1][0] if start > 0 else self.num_train_timesteps
                lower = genes[end][0] if end < self.steps else -1
                genes[start:end] = self._fit(genes[start:end], lower, upper, rng)
            start = end + 1
        steps = tuple(t for t, _ in genes)
        skip = tuple(tuple(layer for layer in self.layers if layer in m) for _, m in genes)
        return {**self.encode(Candidate(steps, skip, candidate.rules)), **fixed}

    @staticmethod
    def _fit(genes: list[Gene], lower: int, upper: int, rng: np.random.Generator) -> list[Gene]:
        """``genes`` strictly between ``lower`` and ``upper``, descending: those outside move to
        random free steps inside."""
        if upper - lower - 1 < len(genes):
            return genes
        inside = [g for g in genes if lower < g[0] < upper]
        outside = [m for t, m in genes if not lower < t < upper]
        if outside:
            free = np.setdiff1d(np.arange(lower + 1, upper), [t for t, _ in inside])
            drawn = rng.choice(free, size=len(outside), replace=False)
            inside += [(int(t), m) for t, m in zip(drawn, outside)]
        return sorted(inside, key=lambda g: -g[0])

    def decode(self, params: dict[str, int]) -> Candidate:
        genes = [(params[f"t{i}"], frozenset(layer for layer in self.layers
                                             if params.get(self.mask_name(i, layer))))
                 for i in range(self.steps)]
        rules = ([self._decode_rule(params, i) for i in range(self.steps)]
                 if self.solver_search else None)
        return self.repair(genes, rules=rules)

    @staticmethod
    def _decode_rule(params: dict[str, int], i: int) -> StepRule:
        # p{i} is absent from the trials of a study made before it: DPM-Solver++'s rules there;
        # an iPNDM rule takes no corrector, whatever another sampler set c{i} to
        if params.get(f"p{i}", 0):
            return StepRule(int(params.get(f"o{i}", 1)), method="ipndm")
        return StepRule(int(params.get(f"o{i}", 1)), bool(params.get(f"c{i}", 0)))

    def candidate(self, timesteps: Sequence[int], skip: Sequence[Iterable[str]] | None = None,
                  rules: Sequence[StepRule] | None = None) -> Candidate:
        skip = skip if skip is not None else [()] * len(timesteps)
        return self.repair(list(zip(timesteps, (frozenset(s) for s in skip))), rules=rules)

    # -- repair and random candidates -----------------------------------------------------------

    def repair(self, genes: Sequence[Gene], rng: np.random.Generator | None = None,
               rules: Sequence[StepRule] | None = None) -> Candidate:
        """K distinct descending steps: a repeated step moves to the nearest free step (or, with
        ``rng``, to a random free one), keeping its mask; steps are clipped into [0, T-1]. The
        position's ``rules`` are bounded (all DDIM where none are given)."""
        top = self.num_train_timesteps - 1
        taken: dict[int, frozenset] = {}
        for t, mask in sorted(((min(max(int(t), 0), top), m) for t, m in genes),
                              key=lambda g: -g[0]):
            if t in taken:
                t = (self.random_free(rng, taken) if rng is not None
                     else self._nearest_free(t, taken))
            taken[t] = mask
        while len(taken) < self.steps:  # too few genes: fill with full-network steps
            taken[self.random_free(rng, taken) if rng is not None
                  else self._nearest_free(top, taken)] = frozenset()
        ordered = sorted(taken.items(), key=lambda g: -g[0])[: self.steps]
        return Candidate(tuple(t for t, _ in ordered),
                         tuple(tuple(layer for layer in self.layers if layer in m)
                               for _, m in ordered), self.rules_of(rules, ordered[0][0]))

    # -- the coordinate steps are drawn and moved in -------------------------------------------

    def coordinate(self, steps) -> np.ndarray:
        """Where ``steps`` lie in the coordinate the variation operators work in."""
        steps = np.asarray(steps, dtype=int)
        if self.coordinates is None:
            return steps.astype(float)
        return np.asarray(self.coordinates)[steps]

    @property
    def coordinate_span(self) -> float:
        """The coordinate's extent: T for the steps themselves (T cells of one step)."""
        if self.coordinates is None:
            return float(self.num_train_timesteps)
        return self.coordinates[-1] - self.coordinates[0]

    def step_at(self, u) -> np.ndarray:
        """The training steps nearest to coordinates ``u``, within [0, T-1]."""
        u = np.asarray(u, dtype=float)
        top = self.num_train_timesteps - 1
        if self.coordinates is None:
            return np.clip(np.rint(u), 0, top).astype(int)
        if top == 0:
            return np.zeros(u.shape, dtype=int)
        grid = np.asarray(self.coordinates)
        above = np.clip(np.searchsorted(grid, u), 1, top)
        nearer_below = np.abs(u - grid[above - 1]) <= np.abs(grid[above] - u)
        return np.where(nearer_below, above - 1, above).astype(int)

    def step_between(self, low: int, high: int, rng: np.random.Generator) -> int:
        """A random step in [low, high], uniform in the coordinate."""
        if self.coordinates is None:
            return int(rng.integers(low, high + 1))
        u = rng.uniform(self.coordinates[low], self.coordinates[high])
        return int(np.clip(self.step_at(u), low, high))

    def random_free(self, rng: np.random.Generator, taken) -> int:
        """A random step not in ``taken`` (which must leave one free), uniform in the
        coordinate."""
        if len(taken) >= self.num_train_timesteps:
            raise ValueError("no free time step left")
        for _ in range(MAX_FREE_DRAWS):
            t = self.step_between(0, self.num_train_timesteps - 1, rng)
            if t not in taken:
                return t
        # the free steps hold a sliver of the coordinate: one of them, uniformly
        free = np.setdiff1d(np.arange(self.num_train_timesteps), list(taken))
        return int(free[rng.integers(len(free))])

    def _nearest_free(self, t: int, taken) -> int:
        for offset in range(1, self.num_train_timesteps):
            for candidate in (t - offset, t + offset):
                if 0 <= candidate < self.num_train_timesteps and candidate not in taken:
                    return candidate
        raise ValueError("no free time step left")

    def random(self, rng: np.random.Generator) -> Candidate:
        """A random immigrant: random steps (uniform in the coordinate); in stage 2 each layer
        skipped with probability 0.1."""
        if self.coordinates is None:
            steps = rng.choice(self.num_train_timesteps, size=self.steps, replace=False)
        else:  # repair moves a step drawn twice to the nearest free one
            steps = self.step_at(rng.uniform(self.coordinates[0], self.coordinates[-1],
                                             size=self.steps))
        masks = [frozenset(np.asarray(self.layers)[rng.random(len(self.layers)) < 0.1].tolist())
                 for _ in steps]
        rules = ([choices[int(rng.integers(len(choices)))] for choices in self.rule_choices]
                 if self.solver_search else None)
        return self.repair(list(zip(steps.tolist(), masks)), rules=rules)
