"""Which FID a model preset is scored with, and the check that a study's stored FID features are
the ones these flags load (FIDs on other features or statistics cannot be compared)."""

from functools import cache

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDScorer, digits_scorer
from autodiff_optuna.metrics.inception import inception_scorer_for
from autodiff_optuna.models.registry import DIGITS_DIR, ModelOptions, get_preset


@cache
def load_scorer(name: str, device: str = "cpu", options: ModelOptions | None = None) -> FIDScorer:
    """The FID scorer for a model preset, built once per process (and device and options);
    the same arguments as ``models.load_model``."""
    preset = get_preset(name)
    options = options or ModelOptions()
    if preset.fid == "digits":
        if options.ref_stats or options.inception:
            raise UsageError(f"model {name!r} is scored by its bundled digits network: "
                             "--ref-stats and --inception do not apply")
        return digits_scorer(DIGITS_DIR)
    if preset.fid == "inception":
        return inception_scorer_for(preset, options, device)
    raise AssertionError(f"no FID scorer {preset.fid!r}")


def check_same_scorer(scorer, stored: str | None, what: str) -> None:
    """Refuse, in one line naming the flags to pass, FID features and reference statistics
    other than those ``what`` (a study, a schedule file) recorded as ``fid_features``."""
    if stored is None or scorer.name == stored:
        return
    raise UsageError(f"{what} was scored with FID features {stored}, but these flags load "
                     f"{scorer.name}: {_features_hint(stored, scorer.name)}")


def _features_hint(stored: str, loaded: str) -> str:
    """``inception_scorer``'s names: ``inception-v3@<digest>:<mode>|ref-stats@<digest>``."""
    (want_net, _, want_stats), (have_net, _, have_stats) = (
        stored.partition("|"), loaded.partition("|"))
    want_net, have_net = want_net.split(":")[0], have_net.split(":")[0]  # less the mode
    hints = []
    if stored.startswith("inception-v3@") and loaded.startswith("inception-v3@"):
        if want_net != have_net:
            hints.append(f"the --inception whose digest is {want_net.split('@', 1)[1]}")
        if want_stats != have_stats:
            hints.append(f"the --ref-stats whose digest is {want_stats.split('@')[-1]}")
    return "pass " + (" and ".join(hints) or "the --ref-stats and --inception it was made with")
