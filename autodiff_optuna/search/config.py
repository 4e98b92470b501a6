"""What defines a search, stored with its study so a rerun can resume it or refuse to mix."""

import dataclasses
import subprocess
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.files import read_text
from autodiff_optuna.sampling.limits import check_count
from autodiff_optuna.sampling.rules import SCALE_RANGE, SOLVERS, describe, with_scale
from autodiff_optuna.version import __version__

# the study presets, <model>-k<steps>.yaml: package data, so that an installed copy has them
PRESETS_DIR = Path(__file__).resolve().parents[1] / "studies"
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
# stage 2's sampler is seeded apart from stage 1's; every seed must suit numpy's legacy
# RandomState (Optuna's RandomSampler), which takes 0 .. 2**32 - 1
STAGE2_SEED_OFFSET = 1000
# a study's --solver: one of the fixed solvers at every step, or "search" (each position's rule
# searched with the steps)
SOLVER_SEARCH = "search"
SOLVER_CHOICES = (*SOLVERS, SOLVER_SEARCH)
# without a flag or a preset: DPM-Solver++(2M) at every step, which a steps-only search led to
# better held-out schedules with than the per-step search, at the same cost (BENCHMARKS.md)
DEFAULT_SOLVER = "dpmpp2m"
# where the evolutionary sampler draws and moves steps: in training steps, or in the model's
# noise levels (``sampling.schedules.noise_coordinates``: a few steps near the data count as
# much as tens near the noise). Noise levels led the digits-k4 preset (iPNDM) to held-out FIDs
# 1.1 to 1.3 below the best fixed sampler on all five seeds (2.07 against 2.42 on average), and
# digits-deep's per-step solver search to worse ones (BENCHMARKS.md, "Stage 1's moves in noise
# levels"): a preset's setting goes with its solver and with our sampler. "stretch": in noise
# levels, and one step mutation in five stretches the whole schedule instead
# (``variation.STRETCH_PROB``): the digits-k3 preset's stage 1 held out 2.84 against 3.09 in
# noise levels alone, twenty seeds (BENCHMARKS.md, "Stage 1's stretch move")
STEP_MOVES = ("steps", "noise", "stretch")
NOISE_MOVES = ("noise", "stretch")  # the step moves made in noise levels
# a study's seed: less than a noise stream's (sampling.limits.MAX_SEED), for its samplers' sake
MAX_STUDY_SEED = 2**32 - 1 - STAGE2_SEED_OFFSET


def study_name(model: str, steps: int) -> str:
    """The name a study gets when none is given (``--name``), and its preset's file stem."""
    return f"{model}-k{steps}"


@dataclass(frozen=True)
class SearchConfig:
    model: str
    steps: int
    solver: str = "ddim"  # what a study stored before the field existed ran with
    samples: int = 1000
    seed: int = 0
    population: int = 20
    min_samples: int | None = None  # first rung of multi-fidelity pruning (stage 1); None: off
    sampler: str = "evolutionary"  # stage 1's; one of STAGE1_SAMPLERS
    # the network's noise prediction divided by this at every step (epsilon scaling,
    # ``sampling.rules``): a property of the solver, every candidate's alike
    noise_scale: float = 1.0
    step_moves: str = "steps"  # one of STEP_MOVES; what a study made before the field ran

    @property
    def solver_search(self) -> bool:
        return self.solver == SOLVER_SEARCH

    @property
    def default_name(self) -> str:
        return study_name(self.model, self.steps)

    @property
    def stage2_elites(self) -> int:
        """How many of stage 1's best distinct candidates stage 2 carries into its first
        generation (fewer where stage 1 has fewer)."""
        return max(2, self.population // 2)

    def solver_of(self, rules=None):
        """What sampling runs a candidate with: its own ``rules`` where the study searches
        them, else the study's solver; scaled by ``noise_scale``."""
        return with_scale(rules or self.solver, self.noise_scale, self.steps)

    @property
    def solver_described(self) -> str:
        """The study's solver as its first line says it (``ipndm, noise / 1.01``)."""
        if self.solver_search:
            scale = f", noise / {self.noise_scale:g}" if self.noise_scale != 1 else ""
            return self.solver + scale
        return describe(self.solver_of(), self.steps)

    def check(self) -> None:
        """Each setting's own range, before anything is loaded."""
        if self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}")
        if self.solver not in SOLVER_CHOICES:
            raise UsageError(f"unknown solver {self.solver!r}; known: {', '.join(SOLVER_CHOICES)}")
        if self.samples < 2:
            raise UsageError(f"--samples must be at least 2, got {self.samples}")
        check_count(self.samples, "--samples")
        if self.min_samples is not None and not 0 < self.min_samples < self.samples:
            raise UsageError(f"--min-samples must be between 1 and --samples ({self.samples}), "
                             f"got {self.min_samples}")
        if self.population < 2:
            raise UsageError(f"--population must be at least 2, got {self.population}")
        if not 0 <= self.seed <= MAX_STUDY_SEED:
            raise UsageError(f"--seed must be in [0, {MAX_STUDY_SEED}], got {self.seed}")
        low, high = SCALE_RANGE
        if not low <= self.noise_scale <= high:
            raise UsageError(f"--noise-scale must be in [{low}, {high}], got {self.noise_scale}")
        if self.step_moves not in STEP_MOVES:
            raise UsageError(f"--step-moves must be one of {', '.join(STEP_MOVES)}, got "
                             f"{self.step_moves!r}")
        if self.sampler not in STAGE1_SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}; known: "
                             f"{', '.join(STAGE1_SAMPLERS)}")

    def check_for(self, model, scorer) -> None:
        """The settings against the model and FID they run with, before any study is made: the
        steps its schedule has, image counts the FID features can take (multi-fidelity's first
        rung too) and this machine's memory can hold."""
        from autodiff_optuna.sampling.noise import check_fits  # torch: reading studies needs none

        self.check_steps(model)
        scorer.check_sample_count(self.samples)
        if self.min_samples is not None:
            scorer.check_sample_count(self.min_samples, "--min-samples")
        check_fits(model, self.samples, "--samples")

    def check_steps(self, model) -> None:
        """The steps against the model's schedule (what ``--estimate`` can check with no FID)."""
        top = model.num_train_timesteps - 1
        if not self.steps <= top:
            raise UsageError(f"--steps must be in [1, {top}] for {self.model}, got {self.steps}")

    def stage_seed(self, stage: int) -> int:
        """The seed of stage ``stage``'s sampler."""
        return self.seed + STAGE2_SEED_OFFSET * (stage - 1)

    def as_attrs(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict:
        """Field defaults: what a study stored before a field existed was run with."""
        return {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}


PRESET_TYPES = {"model": str, "steps": int, "trials": int, "stage2_trials": int,
                "stage2_patience": int,
                "population": int, "samples": int, "solver": str, "seed": int,
                "min_samples": int, "sampler": str, "noise_scale": float, "step_moves": str}


def load_preset(model: str, steps: int, directory: Path = PRESETS_DIR) -> dict:
    """Defaults from the preset ``<model>-k<steps>.yaml`` (in ``PRESETS_DIR``) when the file
    exists."""
    path = directory / f"{study_name(model, steps)}.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UsageError(f"study preset {path} is not valid YAML ({problem}{where})") from None
    if not isinstance(values, dict):
        raise UsageError(f"study preset {path} must be a mapping")
    unknown = set(values) - set(PRESET_TYPES)
    if unknown:
        raise UsageError(f"study preset {path}: unknown keys {sorted(unknown)}; "
                         f"allowed: {sorted(PRESET_TYPES)}")
    for key, value in values.items():
        wanted = PRESET_TYPES[key]
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = values[key] = float(value)  # YAML reads 1 as an integer
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise UsageError(f"study preset {path}: {key} must be {wanted.__name__}, "
                             f"got {value!r}")
    return values


@dataclass(frozen=True)
class Targets:
    """How far a ``study`` command runs: not part of a study's configuration (a rerun may raise
    them and resume)."""

    trials: int  # stage-1 candidates evaluated (complete, or stopped early by the pruner)
    stage2_trials: int  # complete stage-2 trials
    # stage 2 ends before its trials where this many generations in a row found no cheaper
    # point within the export's reach (``search.patience``); 0: it runs all its trials
    stage2_patience: int = 0

    def check(self) -> None:
        for flag, value in (("--trials", self.trials), ("--stage2-trials", self.stage2_trials)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        if self.stage2_patience < 0:
            raise UsageError(f"--stage2-patience must be 0 (off) or more, got "
                             f"{self.stage2_patience}")


DEFAULT_TRIALS = 100
# a study name is a folder name (``report`` writes reports/<name>/, and reports/<name>-stage2/
# for its stage 2): file systems take 255 bytes
MAX_NAME_BYTES = 255 - len("-stage2")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study's report folder (None: it can): empty, '.' or '..', a
    path separator or control character, or more bytes than a file name may have."""
    if name in ("", ".", "..") or not name.isprintable() or any(c in name for c in "/\\"):
        return "it is empty, '.' or '..', or holds a path separator or control character"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long, a file name at most {MAX_NAME_BYTES}"
    return None


def check_study_name(name: str) -> None:
    """Refuse, before anything is made, a name the study's report could not be written under."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"study name {shortened(name)!r} cannot be used: {problem} "
                         "(reports/<name>/ is a folder)")


def shortened(name: str, limit: int = 60) -> str:
    """A name as an error line shows it: its start and end where it is longer than ``limit``."""
    return name if len(name) <= limit else f"{name[:limit - 20]}...{name[-10:]}"


def configure(model: str, steps: int, trials: int | None = None,
              stage2_trials: int | None = None, stage2_patience: int | None = None,
              **flags) -> tuple[SearchConfig, Targets]:
    """The search a ``study`` command asks for: its flags (None: not given) over the preset
    ``<model>-k<steps>.yaml`` over the defaults (a preset's ``noise_scale`` only with its own
    solver). ``flags`` are SearchConfig fields."""
    preset = load_preset(model, steps) if steps >= 1 else {}
    values = {key: flags[key] if flags.get(key) is not None else preset.get(key)
              for key in SearchConfig.defaults()}
    samples = values["samples"] or SearchConfig.samples
    first_rung_too_big = (flags.get("min_samples") is None
                          and (values["min_samples"] or 0) >= samples)
    if values["min_samples"] == 0 or first_rung_too_big:
        # --min-samples 0 turns a preset's pruning off; so does a --samples below its first rung
        values["min_samples"] = None
    values["solver"] = values["solver"] or DEFAULT_SOLVER
    other_solver = values["solver"] != (preset.get("solver") or DEFAULT_SOLVER)
    if flags.get("noise_scale") is None and other_solver:
        # a preset's noise scale was chosen for its solver: another solver runs unscaled
        values["noise_scale"] = None
    if flags.get("step_moves") is None and (
            other_solver or (values["sampler"] or SearchConfig.sampler) != "evolutionary"):
        # ... and its step moves for its solver, with our sampler (measured worse with the
        # per-step solver search; another stage-1 sampler draws steps its own way)
        values["step_moves"] = None
    config = SearchConfig(model, steps, **{k: v for k, v in values.items() if v is not None})
    config.check()
    trials = trials if trials is not None else preset.get("trials", DEFAULT_TRIALS)
    targets = Targets(trials, stage2_trials if stage2_trials is not None
                      else preset.get("stage2_trials", trials),
                      stage2_patience if stage2_patience is not None
                      else preset.get("stage2_patience", 0))
    targets.check()
    return config, targets


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
