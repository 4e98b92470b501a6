"""Which FID a model preset is scored with, against which reference, and the check that a study's
stored FID features are the ones these flags load (FIDs on other features or statistics cannot be
compared).

A scorer is a feature network and reference statistics, and its name records both by digest,
``<network>|<reference>``, the reference being one of:

- ``ref-stats@<digest>``: a statistics file (``--ref-stats``, else the preset's published one);
- ``ref-images@<digest>``: clean-fid's statistics of a folder of real images (``--ref-images``,
  else the preset's default folder), made once and cached (``metrics/reference.py``);
- ``ref-teacher@<digest>*<steps>``: statistics of the model's own ``steps``-step samples on
  held-out noise (``--ref-teacher``), made once and cached alike.

The bundled digits scorer (its network, with the statistics of all real digits) keeps the name
its studies have always recorded.
"""

from functools import lru_cache

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics import reference
from autodiff_optuna.metrics.fid import (
    FIDScorer,
    default_samples,
    digits_network,
    digits_scorer,
)
from autodiff_optuna.metrics.inception import (
    INCEPTION_SCORER_BATCH,
    InceptionFeatures,
    inception_name,
    inception_scorer,
    inception_weights,
    reference_stats_file,
)
from autodiff_optuna.models.registry import DIGITS_DIR, ModelOptions, get_preset, load_model

REFERENCE_FLAGS = "--ref-stats FILE.npz (mu, sigma), --ref-images DIR or --ref-teacher N"


# as many as load_model keeps: each holds a feature network (Inception's ~100 MB) and its
# reference statistics, so a process scoring for many models keeps no more than two of them
@lru_cache(maxsize=2)
def load_scorer(name: str, device: str = "cpu", options: ModelOptions | None = None) -> FIDScorer:
    """The FID scorer for a model preset, built once per process (and device and options)
    while it is one of the two last asked for; the same arguments as ``models.load_model``."""
    preset = get_preset(name)
    options = options or ModelOptions()
    if preset.fid == "digits":
        return _digits_scorer(name, device, options)
    if preset.fid == "inception":
        return _inception_scorer(preset, device, options)
    raise AssertionError(f"no FID scorer {preset.fid!r}")


def _digits_scorer(name: str, device: str, options: ModelOptions) -> FIDScorer:
    """The digits network (8x8 digits, not Inception's natural images) with the statistics of
    all real digits, or of the model's own samples (``--ref-teacher``)."""
    refused = [flag for flag, value in (("--ref-stats", options.ref_stats),
                                        ("--ref-images", options.ref_images),
                                        ("--inception", options.inception)) if value]
    if refused:
        raise UsageError(f"model {name!r} is scored by its bundled digits network: "
                         f"{' and '.join(refused)} {'does' if len(refused) == 1 else 'do'} not "
                         "apply (--ref-teacher N does)")
    if options.ref_teacher is None:
        return digits_scorer(DIGITS_DIR)
    features, network = digits_network(DIGITS_DIR)
    return _teacher_scorer(name, device, options, features, network)


def _inception_scorer(preset, device: str, options: ModelOptions) -> FIDScorer:
    """clean-fid's Inception against the reference the flags (else the preset) name; each
    reference file is looked for before the network, so a missing one is named first."""
    if options.ref_stats or (preset.ref_stats and not (options.ref_images or options.ref_teacher)):
        stats = reference_stats_file(preset, options.ref_stats)
        return inception_scorer(inception_weights(preset, options), stats, preset.fid_mode,
                                device)
    folder = None
    if options.ref_teacher is None:
        if not (options.ref_images or preset.ref_images):
            raise UsageError(f"model {preset.name!r} has no default FID reference (clean-fid "
                             f"publishes no statistics for it): pass {REFERENCE_FLAGS} (e.g. "
                             "statistics made by cleanfid.fid.make_custom_stats)")
        folder = reference.resolve_images(options.ref_images, preset.ref_images)
    weights = inception_weights(preset, options)
    features = InceptionFeatures(weights, preset.fid_mode, device)
    network = inception_name(weights, preset.fid_mode)
    if folder is None:
        return _teacher_scorer(preset.name, device, options, features, network)
    ref = reference.reference_from_images(folder, features, reference.stats_cache_dir())
    return FIDScorer(features, ref.mu, ref.sigma, name=f"{network}|{ref.name}",
                     batch_size=INCEPTION_SCORER_BATCH)


def _teacher_scorer(name: str, device: str, options: ModelOptions, features,
                    network: str) -> FIDScorer:
    """``features`` against the statistics of the model's own ``--ref-teacher``-step samples:
    as many as FID on these features takes by default (``fid.default_samples``), on held-out
    noise no study or ``evaluate`` samples."""
    model = load_model(name, device, options)  # as the search loads it: the same model
    n = default_samples(reference.feature_dim(features, model.image_shape))
    ref = reference.reference_from_teacher(model, features, options.ref_teacher, n,
                                           cache_dir=reference.stats_cache_dir())
    batching = ({"batch_size": INCEPTION_SCORER_BATCH}
                if isinstance(features, InceptionFeatures) else {})
    return FIDScorer(features, ref.mu, ref.sigma, name=f"{network}|{ref.name}", **batching)


# ---- the scorer a study (or an exported schedule) was made with ---------------------------

def check_same_scorer(scorer, stored: str | None, what: str) -> None:
    """Refuse, in one line naming the flags to pass, FID features and reference statistics
    other than those ``what`` (a study, a schedule file) recorded as ``fid_features``."""
    if stored is None or scorer.name == stored:
        return
    raise UsageError(f"{what} was scored with FID features {stored}, but these flags load "
                     f"{scorer.name}: {features_hint(stored, scorer.name)}")


def features_hint(stored: str, loaded: str) -> str:
    """The flags that load the scorer named ``stored`` (``loaded``: the one these flags load).
    Names are ``<network>[:<mode>]|<reference>``; the bundled digits scorer's has no ``|``."""
    want, have = _name_parts(stored), _name_parts(loaded)
    hints = []
    if want["network"] != have["network"] and want["network"].startswith("inception-v3@") \
            and have["network"].startswith("inception-v3@"):
        hints.append(f"the --inception whose digest is {want['network'].split('@', 1)[1]}")
    if (want["kind"], want["digest"]) != (have["kind"], have["digest"]):
        hints.append(_reference_hint(want, have))
    return "pass " + (" and ".join(hints) or "the --inception and the reference flag "
                      f"({REFERENCE_FLAGS.replace(' or ', ', ')}) it was made with")


def _name_parts(name: str) -> dict:
    network, _, ref = name.partition("|")
    kind, _, digest = ref.partition("@")
    digest, _, steps = digest.partition("*")
    return {"network": network.split(":")[0],  # less the mode
            "kind": kind or None, "digest": digest, "steps": steps}


def _reference_hint(want: dict, have: dict) -> str:
    if want["kind"] is None:  # the bundled digits statistics
        return "no --ref-teacher (it was scored against the bundled statistics of real digits)"
    if want["kind"] == "ref-stats":
        return f"the --ref-stats whose digest is {want['digest']}"
    if want["kind"] == "ref-images":
        return f"the --ref-images folder whose images' digest is {want['digest']}"
    if have["kind"] == "ref-teacher" and want["steps"] == have["steps"]:
        return (f"--ref-teacher {want['steps']} with the model, precision and --inception it "
                f"was made with (its statistics' digest is {want['digest']})")
    return f"--ref-teacher {want['steps']}"
