"""How a candidate schedule is written into an Optuna trial, and read back.

A candidate of K steps is K integer parameters ``t0 .. t{K-1}`` in [0, T-1], ``t0`` the noisiest.
The evolutionary sampler always writes canonical candidates (distinct, descending). Generic Optuna
samplers may not, so ``decode`` repairs deterministically: sort, then move a repeated step to the
nearest free one. Every sampler is therefore scored on the same encoding.
"""

from dataclasses import dataclass

import numpy as np
from optuna.distributions import IntDistribution

from autodiff_optuna.sampling.schedules import Schedule


@dataclass(frozen=True)
class StepSpace:
    steps: int  # K
    num_train_timesteps: int  # T

    @property
    def names(self) -> list[str]:
        return [f"t{i}" for i in range(self.steps)]

    def distributions(self) -> dict[str, IntDistribution]:
        return {name: IntDistribution(0, self.num_train_timesteps - 1) for name in self.names}

    def encode(self, timesteps: Schedule) -> dict[str, int]:
        return dict(zip(self.names, (int(t) for t in timesteps)))

    def decode(self, params: dict[str, int]) -> Schedule:
        return self.repair(params[name] for name in self.names)

    def repair(self, steps, rng: np.random.Generator | None = None) -> Schedule:
        """K distinct descending steps from ``steps``: duplicates move to the nearest free step
        (or, with ``rng``, missing steps are drawn at random)."""
        top = self.num_train_timesteps - 1
        chosen: set[int] = set()
        for t in sorted((min(max(int(s), 0), top) for s in steps), reverse=True):
            if t in chosen and rng is None:
                t = self._nearest_free(t, chosen)
            chosen.add(t)
        while len(chosen) < self.steps:
            chosen.add(self.random_free(rng, chosen) if rng is not None
                       else self._nearest_free(top, chosen))
        return tuple(sorted(chosen, reverse=True)[: self.steps])

    def random_free(self, rng: np.random.Generator, taken) -> int:
        while True:
            t = int(rng.integers(self.num_train_timesteps))
            if t not in taken:
                return t

    def _nearest_free(self, t: int, taken: set[int]) -> int:
        for offset in range(1, self.num_train_timesteps):
            for candidate in (t - offset, t + offset):
                if 0 <= candidate < self.num_train_timesteps and candidate not in taken:
                    return candidate
        raise ValueError("no free time step left")

    def random(self, rng: np.random.Generator) -> Schedule:
        picks = rng.choice(self.num_train_timesteps, size=self.steps, replace=False)
        return tuple(sorted((int(t) for t in picks), reverse=True))
