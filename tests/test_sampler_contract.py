"""The EvolutionarySampler keeps Optuna's sampler contract: Optuna's own sampler test cases,
then what a user's study does with it (own parameters, several objectives, fixed parameters,
ask/tell, threads, a study created again under a deleted one's name). A cheap synthetic
objective of the time steps stands in for FID."""

import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import CEILING
from optuna.distributions import FloatDistribution
from optuna.samplers import PartialFixedSampler, RandomSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase
from optuna.trial import TrialState

from autodiff_optuna.sampling import schedules
from autodiff_optuna.search.encoding import CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.storage.optuna_internals import storage_of, trial_id

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # PartialFixedSampler
K, T = 3, 60
SPACE = CandidateSpace(K, T)
TARGET = np.array([41, 17, 3])
GENERATION = "EvolutionarySampler:generation"


def _sampler(seed=0, population=4, **kwargs):
    initial = [SPACE.candidate(schedules.uniform(K, T)), SPACE.candidate(schedules.trailing(K, T))]
    return EvolutionarySampler(SPACE, population_size=population, seed=seed, initial=initial,
                               **kwargs)


def _distance(candidate) -> float:
    return float(np.abs(np.array(candidate.timesteps) - TARGET).sum())


def _objective(trial):
    return _distance(SPACE.suggest(trial))


def _candidates(study):
    return [SPACE.decode(t.params) for t in study.trials if t.state == TrialState.COMPLETE]


def _valid(candidate):
    steps = list(candidate.timesteps)
    return len(steps) == K and steps == sorted(set(steps), reverse=True) and 0 <= steps[-1] \
        and steps[0] < T


# -- Optuna's own sampler test cases: parameters the sampler does not own --------------------


class TestOptunaBasicSamplerCases(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return _sampler


class TestOptunaMultiObjectiveSamplerCases(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return _sampler


# -- a user's study ---------------------------------------------------------------------------


def test_user_parameters_go_to_the_independent_sampler():
    """The encoding is the sampler's; ``guidance`` is the independent sampler's (here one
    that fixes it, to see it was asked)."""
    fixed_guidance = PartialFixedSampler({"guidance": 7.5}, RandomSampler(seed=0))
    study = optuna.create_study(sampler=_sampler(independent_sampler=fixed_guidance))

    def objective(trial):
        candidate = SPACE.suggest(trial)
        guidance = trial.suggest_float("guidance", 1.0, 9.0)
        return _distance(candidate) + guidance

    study.optimize(objective, n_trials=30)
    assert {t.params["guidance"] for t in study.trials} == {7.5}
    candidates = _candidates(study)
    assert len(set(candidates)) == 30 and all(map(_valid, candidates))
    assert max(t.system_attrs[GENERATION] for t in study.trials) >= 4  # it did evolve


def test_sample_relative_answers_only_for_its_search_space():
    sampler = _sampler()
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=6)
    trial = study.ask()
    frozen = storage_of(study).get_trial(trial_id(trial))
    space = sampler.infer_relative_search_space(study, frozen)
    assert space == SPACE.distributions()
    handed = {"t0": space["t0"], "t1": space["t1"], "t2": space["t2"],
              "x": FloatDistribution(0, 1)}
    assert set(sampler.sample_relative(study, frozen, handed)) == {"t0", "t1", "t2"}
    # a step it is not handed is someone else's: nothing is answered before its value is known
    assert sampler.sample_relative(study, frozen, {"t1": space["t1"]}) == {}
    # nor for a name of its own under another distribution
    assert sampler.sample_relative(study, frozen, {"t0": FloatDistribution(0, 1)}) == {}


def test_two_objectives():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=_sampler())

    def objective(trial):
        candidate = SPACE.suggest(trial)
        return _distance(candidate), float(sum(candidate.timesteps))

    study.optimize(objective, n_trials=30)
    candidates = _candidates(study)
    assert len(set(candidates)) == 30 and all(map(_valid, candidates))
    assert study.best_trials


@pytest.mark.parametrize("fixed", [{"t0": 40}, {"t0": 59}, {"t1": 20}, {"t0": 45, "t2": 10}])
def test_partial_fixed_sampler(fixed):
    """Under ``PartialFixedSampler`` the fixed steps are the trial's, and the proposal is fitted
    around them: a valid candidate holding every fixed step (a fixed ``t0`` stays the first)."""
    study = optuna.create_study(sampler=_sampler())
    study.optimize(_objective, n_trials=8)
    study.sampler = PartialFixedSampler(fixed, study.sampler)
    study.optimize(_objective, n_trials=16)
    later = study.trials[8:]
    assert all(t.state == TrialState.COMPLETE for t in later)
    for t in later:
        assert {n: t.params[n] for n in fixed} == fixed
        candidate = SPACE.decode(t.params)
        assert _valid(candidate) and set(fixed.values()) <= set(candidate.timesteps)
        if "t0" in fixed:
            assert candidate.timesteps[0] == fixed["t0"]
        if list(fixed) == ["t0"]:  # known before any other step is drawn: fitted around it
            assert SPACE.encode(candidate) == t.params  # already canonical: nothing repaired
        # (a later fixed step, t2, reaches the trial only after t1 is proposed: decode repairs)
    assert len({SPACE.decode(t.params) for t in later}) >= 12  # still searching the rest


def test_enqueued_trials_full_and_partial():
    study = optuna.create_study(sampler=_sampler())
    study.enqueue_trial({"t0": 50, "t1": 30, "t2": 10})
    study.enqueue_trial({"t0": 15})  # below the uniform spacing's next steps, which it gets
    study.optimize(_objective, n_trials=6)
    assert study.trials[0].params == {"t0": 50, "t1": 30, "t2": 10}
    partial = SPACE.decode(study.trials[1].params)
    assert study.trials[1].params["t0"] == 15 and partial.timesteps[0] == 15
    assert _valid(partial)
    assert len(set(_candidates(study))) == 6
    assert all(t.system_attrs[GENERATION] == 0 for t in study.trials[:4])


def test_ask_and_tell():
    study = optuna.create_study(sampler=_sampler())
    for _ in range(24):
        trial = study.ask()
        study.tell(trial, _distance(SPACE.suggest(trial)))
    candidates = _candidates(study)
    assert len(set(candidates)) == 24 and all(map(_valid, candidates))
    assert [t.system_attrs[GENERATION] for t in study.trials][-1] >= 4
    # the same as optimize() gives (the sampler reads everything from the storage)
    reference = optuna.create_study(sampler=_sampler())
    reference.optimize(_objective, n_trials=24)
    assert _candidates(reference) == candidates


def test_threads_never_propose_the_same_candidate():
    """n_jobs > 1: trials of one process run side by side, before any has written its
    parameters; generation 0 is where all of them want the same initial spacing."""
    study = optuna.create_study(sampler=_sampler(population=8))
    started = threading.Barrier(4, timeout=CEILING)

    def objective(trial):
        if trial.number < 4:
            started.wait()  # all four trials exist, and none has proposed yet
        time.sleep(0.001)  # later ones: interleaved as they come
        return _objective(trial)

    study.optimize(objective, n_trials=48, n_jobs=4)
    candidates = _candidates(study)
    assert len(candidates) == 48 and len(set(candidates)) == 48


@pytest.mark.slow  # 1.6 s on the idle machine: out of the fast subset
def test_a_study_created_again_is_a_new_study(tmp_path):
    """Deleted and created again under its name (SQLite may even give it the same id), a
    study is sampled as a new one: nothing comes from the deleted one's caches."""
    url = f"sqlite:///{tmp_path}/s.db"

    def history(study):
        return [(SPACE.decode(t.params), t.system_attrs[GENERATION]) for t in study.trials]

    sampler = _sampler()
    old = optuna.create_study(storage=url, study_name="s", sampler=sampler)
    old.optimize(lambda t: -_objective(t), n_trials=14)  # another objective: other parents
    optuna.delete_study(study_name="s", storage=url)
    again = optuna.create_study(storage=url, study_name="s", sampler=sampler)
    again.optimize(_objective, n_trials=14)

    fresh = optuna.create_study(storage=f"sqlite:///{tmp_path}/f.db", study_name="s",
                                sampler=_sampler())
    fresh.optimize(_objective, n_trials=14)
    assert history(again) == history(fresh)


def test_reseed_rng():
    """Reseeding changes the per-trial draws and the independent sampler's, as Optuna's
    samplers do under n_jobs > 1; without it the same seed gives the same study."""

    def run(sampler):
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: _objective(t) + t.suggest_float("g", 0, 1), n_trials=8)
        return [(SPACE.decode(t.params), t.params["g"]) for t in study.trials]

    assert run(_sampler(seed=3)) == run(_sampler(seed=3))
    reseeded = _sampler(seed=3)
    reseeded.reseed_rng()
    other = run(reseeded)
    same = run(_sampler(seed=3))
    # the initial spacings come first whatever the seed; then every draw differs
    assert [c for c, _ in other[:2]] == [c for c, _ in same[:2]]
    assert all(a[0] != b[0] for a, b in zip(other[2:], same[2:]))
    assert all(a[1] != b[1] for a, b in zip(other, same))
    PartialFixedSampler({"t0": 50}, reseeded).reseed_rng()  # a wrapper passes it on


# -- the README's example, as written ---------------------------------------------------------


def readme_example(name: str) -> str:
    """The README's fenced Python block that starts with ``# readme-example: <name>``."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = dict((n, code) for code, n in
                  re.findall(r"```python\n(# readme-example: (\S+)\n.*?)```", readme, re.S))
    return blocks[name]


@pytest.mark.slow  # 200 trials on SQLite: about 10 s
def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes mine.db where it runs
    namespace = {"__name__": "readme"}
    exec(compile(readme_example("own-objective"), "README.md", "exec"), namespace)
    study, space, metric = namespace["study"], namespace["space"], namespace["my_metric"]
    assert (tmp_path / "mine.db").is_file()
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 200
    assert len({space.decode(t.params) for t in study.trials}) == 200
    assert study.best_value < metric([750, 500, 250, 0], 1.0) / 3  # well below uniform


# -- several processes on one study -------------------------------------------------------------


def test_two_samplers_never_propose_the_same_candidate(tmp_path):
    """Two processes (here: two sampler objects on one database) start trials before either
    has suggested its parameters: the second sees the first's claim in the storage and
    proposes the next initial candidate, not the same one."""
    url = f"sqlite:///{tmp_path}/s.db"
    first = optuna.create_study(storage=url, study_name="s", sampler=_sampler())
    second = optuna.load_study(storage=url, study_name="s", sampler=_sampler())
    a, b = first.ask(), second.ask()  # both proposed; no parameter is stored yet
    candidates = [SPACE.suggest(a), SPACE.suggest(b)]
    assert candidates == [SPACE.candidate(schedules.uniform(K, T)),
                          SPACE.candidate(schedules.trailing(K, T))]
    first.tell(a, _distance(candidates[0]))
    second.tell(b, _distance(candidates[1]))
    third = first.ask()  # and a claim of a finished trial is its parameters
    assert SPACE.suggest(third) not in candidates


@pytest.mark.slow  # two workers on one SQLite database
def test_workers_on_one_database_never_score_a_candidate_twice(tmp_path):
    """Two workers, each with its own sampler, run side by side on one study: a user's
    objective (no duplicate check of its own) never scores a candidate twice."""
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=url, study_name="s")
    started = threading.Barrier(2, timeout=CEILING)
    errors = []

    def worker():
        try:
            study = optuna.load_study(storage=url, study_name="s", sampler=_sampler(population=6))
            started.wait()
            study.optimize(_objective, n_trials=20)
        except Exception as err:  # noqa: BLE001 - reported by the test thread
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    candidates = _candidates(optuna.load_study(storage=url, study_name="s"))
    assert len(candidates) == 40 and len(set(candidates)) == 40 and all(map(_valid, candidates))
