"""A study's stored record: the user attributes that make an Optuna study one of ours.

A study this program creates carries a marker (``autodiff_optuna``: ``{"schema": N}``), written
first, and its configuration (``config``), written last. A study is recognised as ours only when
its record meets the schema below: a configuration that is a mapping holding the fields every
version of this program stored, with their types, a stage of 1 or 2 (a stage-2 study naming its
stage-1 study), and a marker, where it has one, of the marker's form. Another program's study,
whatever it keeps under ``config``, does not meet that by accident, and nothing that writes,
deletes or lists a study as ours takes one that does not.

Studies made before the marker existed meet the same schema without it; they get the marker on
their next writable open (``mark``). A study made by an earlier version is brought up to today's
record here too: ``upgrade`` writes the facts it lacks (computed by the caller, which has the
model), and the readers below fall back where a fact may be missing.
"""

from collections.abc import Callable, Mapping

import optuna

MARKER_ATTR = "autodiff_optuna"  # the marker: {"schema": SCHEMA}
SCHEMA = 1  # the version of the record's layout this code writes
CONFIG_ATTR = "config"  # the configuration a study was made with (what a rerun must match)
STAGE_ATTR = "stage"  # 1 or 2
STAGE1_ATTR = "stage1_study"  # a stage-2 study's stage-1 study
STAGE2_ATTR = "stage2_study"  # a stage-1 study's stage-2 study
TARGET_ATTR = "target"  # the evaluated trials the last run of the study aimed at
# stage 2: why its last run ended before that target (``search.patience``); None: it did not
STAGE2_STOPPED_ATTR = "stage2_stopped"
HEARTBEAT_ATTR = "heartbeat"  # the longest heartbeat interval (seconds) a worker ran it with
PRUNED_AT = "pruned_at_samples"  # a trial the pruner stopped: the images it cost
# more of a study's record (stage 1's, stage 2's or both, as each says)
CODE_VERSION_ATTR = "code_version"  # the program's version that made the study
FID_FEATURES_ATTR = "fid_features"  # the FID feature network the study scores with
SPACINGS_ATTR = "spacings"  # stage 1: the standard spacings queued first, by name ("uniform")
TRAINING_SCHEDULE_ATTR = "training_schedule"  # stage 1: the model's diffusers scheduler config
FULL_GFLOPS_ATTR = "full_gflops"  # the full network's GFLOPs per image at the study's steps
UNSKIPPABLE_ATTR = "unskippable_gflops"  # stage 2: GFLOPs per image no mask skips
LAYERS_ATTR = "layers"  # stage 2: the skippable layers, in the masks' order
LAYER_SAVINGS_ATTR = "layer_gflops_saved"  # stage 2: GFLOPs per image skipping each saves
IDENTITY_ATTR = "model_identity"  # stage 1: which model the study searched (models.identity)
RESULT_ATTR = "result"  # the result as the study command last stored it (the dashboard's)
HELDOUT_FID_ATTR = "heldout_fid"  # the report's cache of held-out FIDs
# a trial's record
TIMESTEPS_ATTR = "timesteps"  # its schedule's time steps
RULES_ATTR = "rules"  # per step [order, corrector(, method(, scale))], where the solver is searched
SKIP_ATTR = "skip"  # stage 2: per step, the layers skipped there
GFLOPS_ATTR = "gflops"  # stage 2: its GFLOPs per image
SPACING_ATTR = "spacing"  # stage 1, a first trial: the standard spacing it is
DP_SPACING = "dp"  # the SPACING_ATTR of the trajectory DP's spacing
SOLVER_ATTR = "solver"  # stage 1, a first trial where the solver is searched: its solver
FAIL_REASON_ATTR = "fail_reason"  # why it failed
SURPLUS_ATTR = "surplus"  # pruned unrun: the target was reached by other workers
DUPLICATE_OF_ATTR = "duplicate_of"  # pruned unrun: the trial that holds its candidate
STAGE1_TRIAL_ATTR = "stage1_trial"  # a stage-2 trial carried from stage 1: that trial's number
CONFIRMED_ATTR = "confirmed_fid"  # prefix of a study's "confirmed_fid:<trial>" user attrs
# prefix of "confirmed_fid_spread:<trial>": the confirmed FID's bootstrap standard deviation
CONFIRMED_SPREAD_ATTR = "confirmed_fid_spread"
SKIP_COST_ATTR = "skip_cost"  # a stage-2 study's measured per-(step, layer) skip cost
# a stage-2 study's bound on its trials' search FID: the uniform schedule's, on the same noise
# (a trial above it is infeasible, bred from last; a study made before has none)
FID_BOUND_ATTR = "fid_bound"

DEFAULT_HEARTBEAT = 10  # seconds: the study command's --heartbeat when none is given

# the fields of the configuration every version stored, with their types
CONFIG_TYPES = {"model": str, "steps": int, "solver": str, "samples": int, "seed": int}


def _is(value, kind: type) -> bool:
    """``isinstance``, but a bool is no int (JSON's true is not a step count)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def stage_of(attrs: Mapping) -> int | None:
    """The study's stage (a study made before stages were recorded is stage 1); None for any
    value that is not 1 or 2."""
    stage = attrs.get(STAGE_ATTR, 1)
    return stage if _is(stage, int) and stage in (1, 2) else None


def schema_problems(attrs: Mapping) -> list[str]:
    """The attributes of a study's record that do not meet the schema ([]: it does)."""
    config = attrs.get(CONFIG_ATTR)
    if not isinstance(config, Mapping):
        return [CONFIG_ATTR]
    problems = [f"{CONFIG_ATTR}.{key}" for key, kind in CONFIG_TYPES.items()
                if not _is(config.get(key), kind)]
    stage = stage_of(attrs)
    if stage is None or config.get(STAGE_ATTR, stage) != stage:
        problems.append(STAGE_ATTR)
    if stage == 2 and not isinstance(attrs.get(STAGE1_ATTR), str):
        problems.append(STAGE1_ATTR)
    if not isinstance(attrs.get(STAGE2_ATTR, ""), (str, type(None))):
        problems.append(STAGE2_ATTR)
    return problems


def is_marked(attrs: Mapping) -> bool:
    """Whether the study carries this program's marker (in the marker's form)."""
    marker = attrs.get(MARKER_ATTR)
    return isinstance(marker, Mapping) and _is(marker.get("schema"), int)


def is_ours(attrs: Mapping) -> bool:
    """Whether a study's user attributes are a complete record of ours: the schema met, and the
    marker, where there is one, of its form."""
    return not schema_problems(attrs) and (MARKER_ATTR not in attrs or is_marked(attrs))


def mark(study: optuna.Study) -> None:
    """Write the marker (on a new study, first; on one of ours made before it existed)."""
    if not is_marked(study.user_attrs):
        study.set_user_attr(MARKER_ATTR, {"schema": SCHEMA})


def upgrade(study: optuna.Study, facts: Mapping[str, Callable[[], object]]) -> list[str]:
    """Bring a study made by an earlier version up to today's record: each of ``facts``
    (attribute name: a function computing its value, called only where the study lacks it) is
    written; one it holds is kept as it was made. Returns the names written."""
    attrs = study.user_attrs
    missing = [name for name in facts if name not in attrs]
    for name in missing:
        study.set_user_attr(name, facts[name]())
    return missing


def full_gflops(stage1_attrs: Mapping, stage2_attrs: Mapping | None = None) -> float | None:
    """The full network's GFLOPs per image at the study's steps: stage 1's record, else its
    stage 2's (a stage 1 made before it recorded them); None where neither holds it."""
    full = stage1_attrs.get(FULL_GFLOPS_ATTR)
    if full is None and stage2_attrs is not None:
        full = stage2_attrs.get(FULL_GFLOPS_ATTR)
    return full


def training_schedule(stage1_attrs: Mapping) -> dict | None:
    """The model's training schedule (its diffusers scheduler config) stage 1 recorded; None
    where it was made before it did and has not been run since."""
    schedule = stage1_attrs.get(TRAINING_SCHEDULE_ATTR)
    return schedule if isinstance(schedule, dict) else None


def linked_stage2_name(attrs: Mapping) -> str | None:
    """The stage-2 study a stage-1 record names (None: none, or not a name)."""
    name = attrs.get(STAGE2_ATTR)
    return name if isinstance(name, str) and name else None


def note_run(study: optuna.Study, target: int, heartbeat: int | None) -> None:
    """Record what a run of the study aims at (``list`` shows how far it got) and the longest
    heartbeat interval any worker beats at (``delete`` tells a live worker from a dead one by
    it). Written only when it changes."""
    attrs = study.user_attrs
    if attrs.get(TARGET_ATTR) != target:
        study.set_user_attr(TARGET_ATTR, target)
    stored = attrs.get(HEARTBEAT_ATTR)
    if heartbeat and not (_is(stored, int) and stored >= heartbeat):
        study.set_user_attr(HEARTBEAT_ATTR, heartbeat)


def target_of(attrs: Mapping) -> int | None:
    target = attrs.get(TARGET_ATTR)
    return target if _is(target, int) and target > 0 else None


def heartbeat_of(attrs: Mapping, default: int) -> int:
    beat = attrs.get(HEARTBEAT_ATTR)
    return beat if _is(beat, int) and beat > 0 else default
