"""What defines a search, stored with its study so a rerun can resume it or refuse to mix."""

import dataclasses
import subprocess
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from autodiff_optuna.errors import UsageError
from autodiff_optuna.sampling.solvers import SOLVER_ORDERS

PRESETS_DIR = Path(__file__).resolve().parents[2] / "studies"
PRESET_KEYS = {"model", "steps", "trials", "stage2_trials", "population", "samples", "solver",
               "seed", "min_samples", "sampler"}
# Optuna's own samplers for stage 1, on the same encoding, configured like ours where they
# have the same knob (BENCHMARKS.md compares them); stage 2 is always ours
OPTUNA_SAMPLERS = {
    "tpe": lambda config: optuna.samplers.TPESampler(seed=config.seed),
    "cmaes": lambda config: optuna.samplers.CmaEsSampler(seed=config.seed),
    "nsgaii": lambda config: optuna.samplers.NSGAIISampler(seed=config.seed,
                                                           population_size=config.population),
    "random": lambda config: optuna.samplers.RandomSampler(seed=config.seed),
}
STAGE1_SAMPLERS = ("evolutionary", *OPTUNA_SAMPLERS)  # the default first


@dataclass(frozen=True)
class SearchConfig:
    model: str
    steps: int
    solver: str = "ddim"
    samples: int = 1000
    seed: int = 0
    population: int = 20
    min_samples: int | None = None  # first rung of multi-fidelity pruning (stage 1); None: off
    sampler: str = "evolutionary"  # stage 1's; one of STAGE1_SAMPLERS

    @property
    def default_name(self) -> str:
        return f"{self.model}-k{self.steps}"

    def check(self, num_train_timesteps: int) -> None:
        if not 1 <= self.steps <= num_train_timesteps - 1:
            raise UsageError(f"--steps must be in [1, {num_train_timesteps - 1}] for "
                             f"{self.model}, got {self.steps}")
        if self.solver not in SOLVER_ORDERS:
            raise UsageError(f"unknown solver {self.solver!r}; known: {', '.join(SOLVER_ORDERS)}")
        if self.samples < 2:
            raise UsageError(f"--samples must be at least 2, got {self.samples}")
        if self.population < 2:
            raise UsageError(f"--population must be at least 2, got {self.population}")
        if self.sampler not in STAGE1_SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}; known: "
                             f"{', '.join(STAGE1_SAMPLERS)}")

    def as_attrs(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict:
        """Field defaults: what a study stored before a field existed was run with."""
        return {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}


def load_preset(model: str, steps: int, directory: Path = PRESETS_DIR) -> dict:
    """Defaults from ``studies/<model>-k<steps>.yaml`` when the file exists."""
    path = directory / f"{model}-k{steps}.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"study preset {path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise UsageError(f"study preset {path} must be a mapping")
    unknown = set(values) - PRESET_KEYS
    if unknown:
        raise UsageError(f"study preset {path}: unknown keys {sorted(unknown)}; "
                         f"allowed: {sorted(PRESET_KEYS)}")
    return values


def code_version() -> str:
    from autodiff_optuna import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
