"""Candidates, how they are written into an Optuna trial, and the operators that vary them.

A candidate is K distinct time steps out of T, visited from high to low, and for each step the
set of layers skipped there (stage 2; empty in stage 1). In a trial it is the integer parameters
``t0 .. t{K-1}`` (``t0`` the noisiest) and, in stage 2, one 0/1 parameter ``m{i}:{layer}`` per step
and layer. The evolutionary sampler writes canonical candidates; generic Optuna samplers may not,
so ``decode`` repairs deterministically (sort, then move a repeated step to the nearest free one),
and every sampler is scored on the same encoding. ``CandidateSpace.suggest`` writes a candidate
into a trial and returns it decoded, for objectives of one's own.

A step and its mask travel together: when mutation or crossover moves a step, its mask moves
with it, and the candidate is re-sorted by step.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import IntDistribution

Gene = tuple[int, frozenset]  # (time step, names of the layers skipped at that step)


@dataclass(frozen=True)
class Candidate:
    timesteps: tuple[int, ...]
    skip: tuple[tuple[str, ...], ...]  # per step, in layer order; empty tuples in stage 1

    @property
    def genes(self) -> list[Gene]:
        return [(t, frozenset(s)) for t, s in zip(self.timesteps, self.skip)]


@dataclass(frozen=True)
class CandidateSpace:
    steps: int  # K
    num_train_timesteps: int  # T
    layers: tuple[str, ...] = ()  # skippable layers, in execution order; () in stage 1
    bit_flip_prob: float | None = None  # per mask bit; default: two flips per mutation

    # -- encoding -------------------------------------------------------------------------------

    @property
    def step_names(self) -> list[str]:
        return [f"t{i}" for i in range(self.steps)]

    @property
    def names(self) -> list[str]:
        return self.step_names + [self.mask_name(i, layer) for i in range(self.steps)
                                  for layer in self.layers]

    @staticmethod
    def mask_name(position: int, layer: str) -> str:
        return f"m{position}:{layer}"

    def distributions(self) -> dict[str, IntDistribution]:
        top = self.num_train_timesteps - 1
        return {name: IntDistribution(0, top if name.startswith("t") else 1) for name in self.names}

    def encode(self, candidate: Candidate) -> dict[str, int]:
        params = dict(zip(self.step_names, (int(t) for t in candidate.timesteps)))
        for i, skipped in enumerate(candidate.skip):
            params.update({self.mask_name(i, layer): int(layer in skipped)
                           for layer in self.layers})
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
        return {**self.encode(Candidate(steps, skip)), **fixed}

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
        return self.repair(genes)

    def candidate(self, timesteps: Sequence[int], skip: Sequence[Iterable[str]] | None = None
                  ) -> Candidate:
        skip = skip if skip is not None else [()] * len(timesteps)
        return self.repair(list(zip(timesteps, (frozenset(s) for s in skip))))

    # -- repair and random candidates -----------------------------------------------------------

    def repair(self, genes: Sequence[Gene], rng: np.random.Generator | None = None) -> Candidate:
        """K distinct descending steps: a repeated step moves to the nearest free step (or, with
        ``rng``, to a random free one), keeping its mask; steps are clipped into [0, T-1]."""
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
                               for _, m in ordered))

    def random_free(self, rng: np.random.Generator, taken) -> int:
        while True:
            t = int(rng.integers(self.num_train_timesteps))
            if t not in taken:
                return t

    def _nearest_free(self, t: int, taken) -> int:
        for offset in range(1, self.num_train_timesteps):
            for candidate in (t - offset, t + offset):
                if 0 <= candidate < self.num_train_timesteps and candidate not in taken:
                    return candidate
        raise ValueError("no free time step left")

    def random(self, rng: np.random.Generator) -> Candidate:
        """A random immigrant: random steps; in stage 2 each layer skipped with probability 0.1."""
        steps = rng.choice(self.num_train_timesteps, size=self.steps, replace=False)
        masks = [frozenset(np.asarray(self.layers)[rng.random(len(self.layers)) < 0.1].tolist())
                 for _ in steps]
        return self.repair(list(zip(steps.tolist(), masks)))

    # -- variation operators --------------------------------------------------------------------

    def mutate(self, parent: Candidate, rng: np.random.Generator,
               gene_prob: float = 0.25) -> Candidate:
        """Step mutation (each step with probability ``gene_prob``: replaced by an unused step
        anywhere, or shifted between its neighbours) and, in stage 2, bit-flip mutation of the
        masks. The child always differs from the parent."""
        genes = parent.genes
        if not self.layers or rng.random() < 0.5:
            genes = self._mutate_steps(genes, rng, gene_prob)
        if self.layers:
            genes = self._flip_bits(genes, rng)
        child = self.repair(genes, rng)
        while child == parent:  # e.g. a shift that landed back on its own step
            child = self.repair(self._flip_bits(child.genes, rng) if self.layers
                                else self._mutate_steps(child.genes, rng, gene_prob), rng)
        return child

    def _mutate_steps(self, genes: list[Gene], rng, gene_prob: float) -> list[Gene]:
        steps = [t for t, _ in genes]
        k, top = len(steps), self.num_train_timesteps
        chosen = rng.random(k) < gene_prob
        if not chosen.any():
            chosen[rng.integers(k)] = True
        for i in np.flatnonzero(chosen):
            taken = set(steps)
            upper = steps[i - 1] if i > 0 else top  # exclusive bounds keep the order
            lower = steps[i + 1] if i < k - 1 else -1
            if rng.random() < 0.5 and upper - lower > 2:
                new = int(rng.integers(lower + 1, upper))
                if new == steps[i]:
                    new = self.random_free(rng, taken)
            else:
                new = self.random_free(rng, taken)
            steps[i] = new
        return [(t, m) for t, (_, m) in zip(steps, genes)]

    def _flip_bits(self, genes: list[Gene], rng) -> list[Gene]:
        n_bits = len(genes) * len(self.layers)
        p = self.bit_flip_prob or min(0.5, 2.0 / n_bits)
        flips = rng.random((len(genes), len(self.layers))) < p
        if not flips.any():
            flips[divmod(int(rng.integers(n_bits)), len(self.layers))] = True
        return [(t, m ^ frozenset(np.asarray(self.layers)[row].tolist()))
                for (t, m), row in zip(genes, flips)]

    def shift(self, candidate: Candidate, offsets: Sequence[float],
              rng: np.random.Generator) -> Candidate:
        """Each step moved by its offset (rounded), with its mask; then repaired."""
        genes = [(int(np.rint(t + d)), m) for (t, m), d in zip(candidate.genes, offsets)]
        return self.repair(genes, rng)

    def crossover(self, a: Candidate, b: Candidate, rng: np.random.Generator) -> Candidate:
        """Uniform crossover position by position: each step, with its mask, comes from either
        parent (so all steps come from the union of both parents' steps; a step both would
        give twice is refilled at random); in stage 2 the mask bits of that position are then
        crossed uniformly between the two parents."""
        genes = []
        for (ta, ma), (tb, mb), take_a in zip(a.genes, b.genes, rng.random(self.steps) < 0.5):
            mask = frozenset(layer for layer in self.layers
                             if (layer in ma if rng.random() < 0.5 else layer in mb))
            genes.append((ta if take_a else tb, mask))
        return self.repair(genes, rng)
