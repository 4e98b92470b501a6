"""What a search needs from its model and metric, built once per process."""

from dataclasses import dataclass, field

import numpy as np

from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.flops import LayerCosts, layer_costs
from autodiff_optuna.models import load_model
from autodiff_optuna.sampling import noise_coordinates, standard_spacings
from autodiff_optuna.search.config import NOISE_MOVES, SearchConfig
from autodiff_optuna.search.encoding import CandidateSpace


@dataclass
class SearchContext:
    """Everything a search needs, built once per process: the configuration, checked against the
    model and metric it runs with, the standard spacings, the cost of every skippable layer."""

    config: SearchConfig
    model: object
    scorer: object
    spacings: dict
    costs: LayerCosts
    # where the sampler draws and moves steps (``config.step_moves``): each training step's
    # noise level, or None (the steps themselves)
    coordinates: tuple[float, ...] | None = field(default=None, repr=False)
    # the trajectory DP's first candidates, once fitted (``stages.dp_candidates``): the
    # estimate's timing creates a study too, and the study it times should not fit them again
    dp_fitted: list | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, config: SearchConfig, device: str = "cpu",
              options=None) -> "SearchContext":
        """``options``: a ``models.ModelOptions`` (--checkpoint, --ref-stats, ...), or None."""
        config.check()
        return cls.of(config, load_model(config.model, device, options),
                      load_scorer(config.model, device, options))

    @classmethod
    def of(cls, config: SearchConfig, model, scorer) -> "SearchContext":
        """The context of a loaded model and scorer, the settings checked against them."""
        config.check_for(model, scorer)
        abar = alphas_cumprod(model)
        spacings = standard_spacings(config.steps, model.num_train_timesteps, abar)
        coordinates = (tuple(noise_coordinates(abar).tolist())
                       if config.step_moves in NOISE_MOVES else None)
        return cls(config, model, scorer, spacings, layer_costs(model), coordinates)

    def space(self, stage: int) -> CandidateSpace:
        layers = self.costs.layers if stage == 2 else ()
        return CandidateSpace(self.config.steps, self.model.num_train_timesteps, layers,
                              solver_search=self.config.solver_search,
                              coordinates=self.coordinates,
                              stretch=self.config.step_moves == "stretch")

    def solver_of(self, candidate) -> object:
        """What ``sampling.sample`` runs a candidate with: its own rules where the study
        searches them, else the study's solver."""
        return self.config.solver_of(candidate.rules)

    @property
    def full_gflops(self) -> float:
        return self.costs.gflops([()] * self.config.steps)

    @property
    def min_gflops(self) -> float:
        """Every layer skipped at every step: what no candidate can go below."""
        return self.costs.gflops([self.costs.layers] * self.config.steps)


def alphas_cumprod(model) -> np.ndarray:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(model.scheduler_config).alphas_cumprod.numpy()
