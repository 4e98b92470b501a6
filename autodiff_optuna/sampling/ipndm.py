"""The fixed solver ``ipndm`` as a diffusers scheduler, for a pipeline of one's own (``apply``).

No diffusers scheduler runs iPNDM over custom time steps, so ``IPNDMScheduler`` is
``DPMSolverMultistepScheduler`` (its time steps, sigmas and configuration, as ``make_scheduler``
builds it) with iPNDM's update in ``step``: ``rules.RuleStepper.adams_bashforth``, the very
function ``sampling.sample`` runs. The analytical first step moves the noise to the first time
step before the first network evaluation, which a pipeline does not ask its scheduler for:
``first_input`` is that sample, and ``apply`` hands it to the UNet's calls at the first time
step of a pipeline's sampling (``pipelines._first_input_hook``). ``step`` is given the
pipeline's own noise at the first step and moves it alike.
"""

from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from autodiff_optuna.sampling.rules import (
    IPNDM_COEFFICIENTS,
    SOLVERS,
    RuleStepper,
    start_sigma,
)

ORDER = SOLVERS["ipndm"].order


class IPNDMScheduler(DPMSolverMultistepScheduler):
    """iPNDM (order ``ORDER``) with the analytical first step, over custom ``timesteps=``."""

    def set_timesteps(self, *args, **kwargs) -> None:
        super().set_timesteps(*args, **kwargs)
        self.noise_history = []
        self.start_sigma = start_sigma(self.alphas_cumprod, self.timesteps)

    def first_input(self, noise):
        """What the first network evaluation sees: ``noise`` moved from the training schedule's
        last step to the first time step by the analytical first step."""
        if self.start_sigma is None:
            return noise
        return RuleStepper.adams_bashforth(self.start_sigma, self.sigmas[0], 1, [noise], noise)

    def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        """One iPNDM step; at the first, ``sample`` is the pipeline's noise (``first_input`` is
        what the network saw)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        if i == 0:
            self.noise_history = [sample] if self.start_sigma is not None else []
            sample = self.first_input(sample)
        self.noise_history = [*self.noise_history[-(max(IPNDM_COEFFICIENTS) - 1):],
                              model_output]
        prev_sample = RuleStepper.adams_bashforth(self.sigmas[i], self.sigmas[i + 1], ORDER,
                                                  self.noise_history, sample)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
