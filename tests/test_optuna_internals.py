"""Each private Optuna member the package relies on (through ``storage/optuna_internals.py``
only) still does what we rely on. When one of these fails, Optuna changed it: the message names
the member, and ``optuna_internals.py`` is the one place to adapt."""

import contextlib
import inspect
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autodiff_optuna.search.encoding import CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.storage import optuna_internals as internals

optuna.logging.set_verbosity(optuna.logging.WARNING)
PACKAGE = Path(internals.__file__).parents[1]
# every module but optuna_internals reaches Optuna's private API only through it
THROUGH_INTERNALS = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                           if p.name != "optuna_internals.py")
PRIVATE_USE = re.compile(r"\._(get_trials|storage|study_id|trial_id|get_generation_key)\b"
                         r"|optuna\.\w+(\.\w+)*\._\w+|from optuna\S*\._\w+")


@contextlib.contextmanager
def relied_on(what: str):
    """Turn any failure into one line naming the Optuna member that changed."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever broke, say which member it was
        pytest.fail(f"Optuna {optuna.__version__} changed {what}, which "
                    f"autodiff_optuna/storage/optuna_internals.py relies on: "
                    f"{type(err).__name__}: {err}", pytrace=False)


def _study(n=3, **kwargs):
    study = optuna.create_study(**kwargs)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return study


def test_cached_trials():
    with relied_on("Study._get_trials(deepcopy=, states=, use_cache=)"):
        assert {"deepcopy", "states", "use_cache"} <= set(
            inspect.signature(optuna.Study._get_trials).parameters)
        study = _study()
        study.ask()  # a trial starts: its snapshot is read once, then shared
        first = internals.cached_trials(study)
        assert [t.number for t in first] == [0, 1, 2, 3]
        assert internals.cached_trials(study) is first, "the snapshot is not cached"
        complete = internals.cached_trials(study, states=(TrialState.COMPLETE,))
        assert [t.number for t in complete] == [0, 1, 2]


def test_storage_study_and_trial_ids():
    with relied_on("Study._storage, Study._study_id or Trial/FrozenTrial._trial_id"):
        study = _study(study_name="ids")
        storage = internals.storage_of(study)
        assert isinstance(storage, optuna.storages.BaseStorage)
        assert internals.study_id(study) == storage.get_study_id_from_name("ids")
        frozen = study.trials[1]
        assert storage.get_trial(internals.trial_id(frozen)).number == 1
        trial = study.ask()
        assert storage.get_trial(internals.trial_id(trial)).number == trial.number
        assert optuna.load_study(study_name="ids", storage=storage).trials[1].number == 1


def test_set_system_attr():
    with relied_on("BaseStorage.set_trial_system_attr (through Study._storage)"):
        study = optuna.create_study()
        trial = study.ask()  # a sampler writes while its trial runs
        internals.set_system_attr(study, trial, "mine", [1, 2])
        study.tell(trial, 0.0)
        assert study.trials[0].system_attrs["mine"] == [1, 2]


def test_enqueued_params():
    with relied_on("where Study.enqueue_trial keeps a queued trial's parameters "
                   f"(system attribute {internals.ENQUEUED_PARAMS_KEY!r})"):
        study = _study()
        study.enqueue_trial({"x": 0.25})
        waiting = study.get_trials(states=(TrialState.WAITING,))[0]
        assert internals.enqueued_params(waiting) == {"x": 0.25}
        assert internals.enqueued_params(study.trials[0]) == {}


def test_ga_generation_key():
    with relied_on("BaseGASampler._get_generation_key"):
        assert internals.ga_generation_key(EvolutionarySampler) == \
            "EvolutionarySampler:generation"
        # where Optuna's own GA sampler writes the generation, too
        study = _study(6, sampler=optuna.samplers.NSGAIISampler(population_size=2, seed=0))
        key = internals.ga_generation_key(optuna.samplers.NSGAIISampler)
        assert [t.system_attrs[key] for t in study.trials] == [0, 0, 1, 1, 2, 2]


def test_nsgaii_elite_selection():
    """The selection keeps the best trials, best first, for one objective and for two."""
    with relied_on("optuna.samplers.nsgaii._elite_population_selection_strategy."
                   "NSGAIIElitePopulationSelectionStrategy"):
        study = optuna.create_study()
        for value in (0.3, 0.1, 0.4, 0.2):
            study.enqueue_trial({"x": value})
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
        select = internals.nsgaii_elite_selection(2)
        assert [t.number for t in select(study, study.trials)] == [1, 3]

        study = optuna.create_study(directions=["minimize", "minimize"])
        for values in ((1, 3), (3, 1), (4, 4), (2, 2)):
            study.enqueue_trial({"x": values[0], "y": values[1]})
        study.optimize(lambda t: (t.suggest_float("x", 0, 5), t.suggest_float("y", 0, 5)),
                       n_trials=4)
        elites = internals.nsgaii_elite_selection(3)(study, study.trials)
        assert {t.number for t in elites} == {0, 1, 3}  # the first front; trial 2 dominated


def test_the_sampler_is_usable():
    """Everything above, as the sampler uses it: a short study runs."""
    with relied_on("one of the members above, as EvolutionarySampler uses them"):
        space = CandidateSpace(2, 20)
        study = optuna.create_study(sampler=EvolutionarySampler(space, population_size=2))
        study.optimize(lambda t: float(sum(space.suggest(t).timesteps)), n_trials=6)
        assert len({space.decode(t.params) for t in study.trials}) == 6


@pytest.mark.parametrize("module", THROUGH_INTERNALS)
def test_no_private_optuna_use_elsewhere(module):
    source = (PACKAGE / module).read_text()
    assert not PRIVATE_USE.search(source), \
        f"{module} uses a private Optuna member directly: route it through optuna_internals.py"
