"""Property tests of the evolutionary sampler, on a cheap synthetic objective."""

import copy
import hashlib
import json
import pickle

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodiff_optuna.sampling import schedules
from autodiff_optuna.search import variation
from autodiff_optuna.search.children import MIN_BANDWIDTH, ParzenChild
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler, SearchSpaceExhausted

optuna.logging.set_verbosity(optuna.logging.WARNING)
T = 1000


LAYERS = ("a", "b", "c")


def _schedule(k):
    return st.lists(st.integers(0, T - 1), min_size=k, max_size=k, unique=True).map(
        lambda s: tuple(sorted(s, reverse=True)))


def _candidate(k, layers=()):
    masks = st.lists(st.frozensets(st.sampled_from(layers)) if layers else st.just(frozenset()),
                     min_size=k, max_size=k)
    return st.tuples(_schedule(k), masks).map(
        lambda sm: CandidateSpace(k, T, layers).candidate(sm[0], sm[1]))


# a stage-1 or stage-2 candidate space of 1-10 steps, a draw of candidates, an operator seed
ANY_CANDIDATE = dict(k=st.integers(1, 10), layers=st.sampled_from([(), LAYERS]), data=st.data(),
                     seed=st.integers(0, 2**32 - 1))


def _valid(candidate, k, t=T, layers=()):
    steps = candidate.timesteps if isinstance(candidate, Candidate) else candidate
    ok = (len(steps) == k and list(steps) == sorted(set(steps), reverse=True)
          and all(0 <= x < t for x in steps))
    if isinstance(candidate, Candidate):
        ok &= len(candidate.skip) == k and all(set(s) <= set(layers) for s in candidate.skip)
    return ok


@settings(max_examples=200, deadline=None)
@given(**ANY_CANDIDATE)
def test_mutation_makes_valid_neighbours(k, layers, data, seed):
    space = CandidateSpace(k, T, layers)
    parent = data.draw(_candidate(k, layers))
    child = variation.mutate(space, parent, np.random.default_rng(seed))
    assert _valid(child, k, layers=layers)
    assert child != parent  # at least one step replaced or shifted, or one mask bit flipped
    if not layers:
        changed = set(child.timesteps) - set(parent.timesteps)
        assert changed  # stage 1: the steps themselves moved


@settings(max_examples=200, deadline=None)
@given(**ANY_CANDIDATE)
def test_crossover_draws_from_the_union(k, layers, data, seed):
    space = CandidateSpace(k, T, layers)
    a, b = data.draw(_candidate(k, layers)), data.draw(_candidate(k, layers))
    child = variation.crossover(space, a, b, np.random.default_rng(seed))
    assert _valid(child, k, layers=layers)
    union = set(a.timesteps) | set(b.timesteps)
    # every step comes from a parent, but for refills of a step both parents gave (a step
    # only repeats among the picks when both parents hold it)
    outside = [t for t in child.timesteps if t not in union]
    assert len(outside) <= len(set(a.timesteps) & set(b.timesteps))
    # a step keeps a mask crossed from the two parents' masks at the position it came from
    # (checked where no refill happens: parents without a common step)
    for t, mask in zip(child.timesteps, child.skip):
        if not set(a.timesteps) & set(b.timesteps):
            assert any(t in (a.timesteps[i], b.timesteps[i])
                       and set(mask) <= set(a.skip[i]) | set(b.skip[i]) for i in range(k))


@settings(max_examples=200, deadline=None)
@given(**ANY_CANDIDATE)
def test_shift_moves_each_step_with_its_mask(k, layers, data, seed):
    space = CandidateSpace(k, T, layers)
    parent = data.draw(_candidate(k, layers))
    rng = np.random.default_rng(seed)
    assert variation.shift(space, parent, np.zeros(k), rng) == parent
    offsets = rng.normal(0.0, 0.4, k)  # a step or two at most
    child = variation.shift(space, parent, offsets, rng)
    assert _valid(child, k, layers=layers)
    shifted = [int(np.rint(t + d)) for t, d in zip(parent.timesteps, offsets)]
    # where no step was repaired (distinct, in range) each step kept its own mask, also two
    # steps 1 apart that crossed (their masks then read swapped by position)
    if len(set(shifted)) == k and all(0 <= t < T for t in shifted):
        assert dict(zip(child.timesteps, child.skip)) == dict(zip(shifted, parent.skip))


def test_parzen_children_sample_around_the_better_half():
    """Children are drawn near the better half of the ranked elites, never near the worse
    half, with a kernel that narrows to MIN_BANDWIDTH of T as the better half agrees."""
    space = CandidateSpace(3, T)
    good = [space.candidate((500 + d, 300 - d, 100 + d)) for d in range(5)]
    bad = [space.candidate((900 - d, 800 - d, 700 - d)) for d in range(5)]
    parzen = ParzenChild(space)
    rng = np.random.default_rng(0)
    children = [parzen(good + bad, rng) for _ in range(300)]
    moved = np.array([c.timesteps for c in children]) - np.array([500, 300, 100])
    assert all(_valid(c, 3) for c in children)
    assert np.abs(moved).max() <= 5 * MIN_BANDWIDTH * T + 4  # 5 kernel widths around the good half
    assert 0.5 * MIN_BANDWIDTH * T < moved.std(axis=0).min()  # and not collapsed onto it


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 6), params=st.lists(st.integers(0, 9), min_size=6, max_size=6),
       bits=st.lists(st.integers(0, 1), min_size=18, max_size=18))
def test_decode_repairs_any_encoding(k, params, bits):
    space = CandidateSpace(k, 10, LAYERS)
    encoded = {f"t{i}": p for i, p in enumerate(params[:k])}
    encoded.update({space.mask_name(i, layer): bits[3 * i + j] for i in range(k)
                    for j, layer in enumerate(LAYERS)})
    candidate = space.decode(encoded)
    assert _valid(candidate, k, 10, LAYERS)
    assert space.decode(space.encode(candidate)) == candidate


def _synthetic_study(storage, k=3, t=60, seed=0, population=8):
    space = CandidateSpace(k, t)
    target = np.array([41, 17, 3][:k])
    sampler = EvolutionarySampler(space, population_size=population, seed=seed,
                                  initial=[space.candidate(schedules.uniform(k, t)),
                                           space.candidate(schedules.trailing(k, t))])
    study = optuna.create_study(storage=storage, sampler=sampler, study_name="synthetic",
                                load_if_exists=True)

    def objective(trial):
        cand = space.decode({n: trial.suggest_int(n, 0, t - 1) for n in space.names})
        trial.set_user_attr("timesteps", list(cand.timesteps))
        return float(np.abs(np.array(cand.timesteps) - target).sum())

    return study, objective, sampler


def test_never_proposes_a_candidate_twice_and_improves():
    study, objective, _ = _synthetic_study(None)
    study.optimize(objective, n_trials=160)
    cands = [tuple(t.user_attrs["timesteps"]) for t in study.trials]
    assert len(set(cands)) == len(cands)
    assert all(_valid(c, 3, 60) for c in cands)
    first_gen = min(t.value for t in study.trials[:8])
    assert study.best_value < first_gen / 3


def test_first_generation_holds_the_initial_spacings():
    study, objective, _ = _synthetic_study(None)
    study.optimize(objective, n_trials=8)
    cands = [tuple(t.user_attrs["timesteps"]) for t in study.trials]
    assert cands[:2] == [schedules.uniform(3, 60), schedules.trailing(3, 60)]
    gens = {t.system_attrs["EvolutionarySampler:generation"] for t in study.trials}
    assert gens == {0}


def test_first_generation_fills_with_random_candidates_or_children():
    """Stage 1's generation 0 is the initial spacings, then the seeded random population;
    stage 2's varies its initial candidates (stage 1's elites) instead."""
    study, objective, sampler = _synthetic_study(None)
    study.optimize(objective, n_trials=8)
    space = CandidateSpace(3, 60)
    for t in study.trials[2:]:
        assert tuple(t.user_attrs["timesteps"]) == space.random(
            np.random.default_rng([0, t.number])).timesteps

    initial = [space.candidate(schedules.uniform(3, 60)), space.candidate((40, 20, 5))]
    sampler = EvolutionarySampler(space, population_size=8, initial=initial,
                                  first_generation="children", gene_mutation_prob=0.2)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=8)
    parents = {step for c in initial for step in c.timesteps}
    children = [set(t.user_attrs["timesteps"]) for t in study.trials[2:]]
    # a child of crossover and mutation keeps most of its steps from its parents
    assert sum(len(c & parents) >= 2 for c in children) >= 4


@pytest.mark.slow  # a search resumed in several processes' worth of samplers
def test_state_lives_in_the_storage(tmp_path):
    """A study resumed by a fresh process (new sampler, same database) continues the very same
    evolution as one that was never interrupted."""
    whole, objective, _ = _synthetic_study(f"sqlite:///{tmp_path}/a.db")
    whole.optimize(objective, n_trials=40)

    first, objective, _ = _synthetic_study(f"sqlite:///{tmp_path}/b.db")
    first.optimize(objective, n_trials=17)
    resumed, objective, _ = _synthetic_study(f"sqlite:///{tmp_path}/b.db")  # new sampler object
    resumed.optimize(objective, n_trials=23)

    def history(study):
        return [(tuple(t.user_attrs["timesteps"]),
                 t.system_attrs["EvolutionarySampler:generation"]) for t in study.trials]

    assert history(resumed) == history(whole)


def test_enqueued_trials_join_the_population():
    study, objective, _ = _synthetic_study(None)
    study.enqueue_trial({"t0": 50, "t1": 30, "t2": 10})
    study.optimize(objective, n_trials=3)
    assert study.trials[0].params == {"t0": 50, "t1": 30, "t2": 10}
    assert study.trials[0].system_attrs["EvolutionarySampler:generation"] == 0
    cands = [tuple(t.user_attrs["timesteps"]) for t in study.trials]
    assert len(set(cands)) == 3


@settings(max_examples=200, deadline=None)
@given(**ANY_CANDIDATE)
def test_encode_with_fits_the_proposal_around_fixed_steps(k, layers, data, seed):
    """Fixed parameters stay; where the fixed steps descend and leave room, the other steps fit
    between them, so the parameters are already canonical and decode keeps every fixed step at
    its position."""
    space = CandidateSpace(k, T, layers)
    proposal = data.draw(_candidate(k, layers))
    fixed_steps = data.draw(_schedule(data.draw(st.integers(1, k))))
    positions = sorted(data.draw(st.lists(st.integers(0, k - 1), min_size=len(fixed_steps),
                                          max_size=len(fixed_steps), unique=True)))
    fixed = {f"t{i}": t for i, t in zip(positions, fixed_steps)}
    if layers:
        fixed[space.mask_name(positions[0], layers[0])] = 1
    params = space.encode_with(proposal, fixed, np.random.default_rng(seed))
    assert {n: params[n] for n in fixed} == fixed and params.keys() == set(space.names)
    decoded = space.decode(params)
    assert _valid(decoded, k, layers=layers)
    room = all(fixed_steps[j] - fixed_steps[j + 1] > positions[j + 1] - positions[j]
               for j in range(len(positions) - 1)) and \
        T - 1 - fixed_steps[0] >= positions[0] and fixed_steps[-1] >= k - 1 - positions[-1]
    if room:
        assert space.encode(decoded) == params
    assert space.encode_with(proposal, {}, np.random.default_rng(seed)) == \
        space.encode(proposal)


def test_suggest_is_the_hand_written_suggestion():
    """``space.suggest(trial)`` suggests exactly what an objective suggesting each parameter of
    ``space.distributions()`` by hand does, for the same trials."""
    space = CandidateSpace(2, 40, LAYERS)

    def run(suggest):
        study = optuna.create_study(directions=["minimize", "minimize"],
                                    sampler=EvolutionarySampler(space, population_size=4))
        study.optimize(lambda t: (float(sum(suggest(t).timesteps)),
                                  float(sum(map(len, suggest(t).skip)))), n_trials=16)
        return [t.params for t in study.trials]

    def by_hand(trial):
        return space.decode({name: trial.suggest_int(name, d.low, d.high)
                             for name, d in space.distributions().items()})

    assert run(space.suggest) == run(by_hand)


# -- a library part: checked input, a finite space, copies -----------------------------------


@pytest.mark.parametrize("args, message", [
    ((5, 3), "do not fit"), ((0, 1000), "at least 1"), ((-2, 1000), "at least 1"),
    ((2.5, 1000), "integer"), ((3, True), "integer"), ((2, 10, "ab"), "not the string"),
    ((2, 10, ("a", "a")), "named twice"), ((2, 10, ("a", "")), "non-empty")])
def test_candidate_space_refuses_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        CandidateSpace(*args)


def test_candidate_space_accepts_numpy_integers_and_lists():
    space = CandidateSpace(np.int64(3), np.int32(60), ["a", "b"])
    assert space == CandidateSpace(3, 60, ("a", "b")) and hash(space) == hash(CandidateSpace(
        3, 60, ("a", "b")))
    assert space.size == 34220 * 2 ** 6


@pytest.mark.parametrize("steps, t, layers, trials", [
    (3, 6, (), 21), (4, 4, (), 2), (2, 3, (), 4), (2, 2, ("a",), 5)])
def test_an_exhausted_space_stops_the_study(steps, t, layers, trials):
    """Every candidate is tried once; the next trial stops the study with one clear error
    instead of searching forever for a candidate that does not exist."""
    space = CandidateSpace(steps, t, layers)
    study = optuna.create_study(sampler=EvolutionarySampler(space, population_size=4))
    with pytest.raises(SearchSpaceExhausted, match=f"all {space.size} candidates"):
        study.optimize(lambda trial: float(sum(space.suggest(trial).timesteps)),
                       n_trials=trials)
    complete = [space.decode(t.params) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == space.size == trials - 1


def test_mutation_of_a_single_candidate_space_is_refused():
    space = CandidateSpace(4, 4)
    with pytest.raises(ValueError, match="single candidate"):
        variation.mutate(space, space.candidate((3, 2, 1, 0)), np.random.default_rng(0))


@pytest.mark.parametrize("copy_of", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))])
def test_the_sampler_copies_and_pickles(copy_of):
    """As Optuna's samplers: a copy, taken even mid-study, continues the same evolution (the
    state is in the storage), and the original is untouched."""
    whole, objective, _ = _synthetic_study(None)
    whole.optimize(objective, n_trials=30)

    study, objective, sampler = _synthetic_study(None)
    study.optimize(objective, n_trials=13)
    study.sampler = copy_of(sampler)
    assert study.sampler is not sampler
    study.optimize(objective, n_trials=17)
    assert [t.params for t in study.trials] == [t.params for t in whole.trials]


def _seeded_stage1(seed: int) -> list[dict]:
    space = CandidateSpace(4, 100)
    initial = [space.candidate([99, 74, 49, 24]), space.candidate([75, 50, 25, 0])]
    study = optuna.create_study(sampler=EvolutionarySampler(space, population_size=8, seed=seed,
                                                            initial=initial))
    target = np.array([80, 41, 17, 3])
    study.optimize(lambda t: float(np.abs(np.array(space.suggest(t).timesteps) - target).sum()),
                   n_trials=120)
    return [t.params for t in study.trials]


def _seeded_stage2(seed: int) -> list[dict]:
    space = CandidateSpace(3, 60, ("a", "b", "c"))
    initial = [space.candidate([59, 39, 19]), space.candidate([50, 30, 10])]
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=EvolutionarySampler(
        space, population_size=6, seed=seed, initial=initial, first_generation="children",
        parzen_prob=0.0))
    study.enqueue_trial(space.encode(initial[0]))

    def objective(trial):
        candidate = space.suggest(trial)
        return (float(np.abs(np.array(candidate.timesteps) - [41, 17, 3]).sum()),
                -float(sum(map(len, candidate.skip))))

    study.optimize(objective, n_trials=90)
    return [t.params for t in study.trials]


@pytest.mark.parametrize("run, seed, fingerprint", [
    (_seeded_stage1, 0, "6912c6bcff2fce18"), (_seeded_stage1, 7, "64600a1504af1b10"),
    (_seeded_stage2, 0, "511d54d33ea1843d"), (_seeded_stage2, 7, "df4fbdab2e6be6dc")])
def test_a_seeded_study_gives_the_same_trials(run, seed, fingerprint):
    """The parameters of every trial of seeded stage-1-like and stage-2-like studies, pinned: a
    change of the sampler's parts that changes a single draw changes the search."""
    params = json.dumps(run(seed), sort_keys=True).encode()
    assert hashlib.sha256(params).hexdigest()[:16] == fingerprint


# -- steps drawn and moved in noise levels -------------------------------------------------------

# DDPM's linear betas, as the bundled models and google/ddpm-* use them
LINEAR_ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))
NOISE_LEVELS = tuple(schedules.noise_coordinates(LINEAR_ABAR).tolist())


def test_noise_coordinates_are_edm_noise_levels():
    u = schedules.noise_coordinates(LINEAR_ABAR)
    sigma = np.sqrt((1 - LINEAR_ABAR) / LINEAR_ABAR)
    assert np.allclose(u, sigma ** (1 / schedules.KARRAS_RHO))
    assert np.all(np.diff(u) > 0)
    # near the data a training step is a far larger move of the noise level than near the noise
    assert u[10] - u[0] > u[760] - u[750]


@pytest.mark.parametrize("schedule", [dict(beta_schedule="squaredcos_cap_v2"),
                                      dict(beta_schedule="linear", rescale_betas_zero_snr=True)])
def test_noise_coordinates_cap_a_schedule_that_ends_in_pure_noise(schedule):
    """guided-diffusion's cosine schedule puts its last step at sigma 10^4, a zero-terminal-SNR
    one at infinity: capped, no step takes more than a few percent of the coordinate."""
    from diffusers import DDPMScheduler

    abar = DDPMScheduler(num_train_timesteps=T, **schedule).alphas_cumprod.numpy()
    u = schedules.noise_coordinates(abar)
    assert np.all(np.isfinite(u)) and np.all(np.diff(u) > 0)
    assert np.diff(u).max() < 0.05 * (u[-1] - u[0])
    CandidateSpace(4, T, coordinates=tuple(u.tolist()))  # a valid coordinate


def test_a_free_step_is_found_however_thin_its_share():
    coordinates = tuple([0.0, 1e-12] + [1.0 + i for i in range(8)])
    space = CandidateSpace(2, 10, coordinates=coordinates)
    rng = np.random.default_rng(0)
    assert space.random_free(rng, set(range(1, 10))) == 0
    assert CandidateSpace(1, 1, coordinates=(0.5,)).step_at([0.0, 3.0]).tolist() == [0, 0]


@settings(max_examples=200, deadline=None)
@given(**ANY_CANDIDATE)
def test_operators_in_noise_levels_make_valid_candidates(k, layers, data, seed):
    space = CandidateSpace(k, T, layers, coordinates=NOISE_LEVELS)
    parent, other = data.draw(_candidate(k, layers)), data.draw(_candidate(k, layers))
    rng = np.random.default_rng(seed)
    assert variation.shift(space, parent, np.zeros(k), rng) == parent
    for child in (variation.mutate(space, parent, rng), space.random(rng),
                  variation.crossover(space, parent, other, rng),
                  variation.shift(space, parent, rng.normal(0.0, 0.05, k), rng)):
        assert _valid(child, k, layers=layers)
    low = data.draw(st.integers(0, T - 1))
    high = data.draw(st.integers(low, T - 1))
    assert low <= space.step_between(low, high, rng) <= high
    assert space.step_at(space.coordinate(range(T))).tolist() == list(range(T))


def test_parzen_children_move_in_noise_levels():
    """In noise levels, the kernel that moves the noisiest step by tens of training steps moves
    the step nearest the data by a few: a 4-step schedule survives its last step moving 5
    steps, not 30 (BENCHMARKS.md, "Stage 1's moves in noise levels")."""
    by_steps = CandidateSpace(4, T)
    by_noise = CandidateSpace(4, T, coordinates=NOISE_LEVELS)
    good = [(750 - 3 * d, 500 + 2 * d, 250 - d, 3 + d % 2) for d in range(6)]
    children = {}
    for space in (by_steps, by_noise):
        parzen, rng = ParzenChild(space), np.random.default_rng(0)
        children[space.coordinates is None] = np.array(
            [parzen([space.candidate(g) for g in good], rng).timesteps for _ in range(300)])
    in_steps, in_noise = children[True], children[False]
    # the last step moved past 10: a third of the children in steps, hardly any in noise levels
    assert np.mean(in_noise[:, 3] > 10) < 0.05 < 0.2 < np.mean(in_steps[:, 3] > 10)
    # ... while the first still moves by tens of steps
    assert np.median(np.abs(in_noise[:, 0] - 745)) > 10


def test_mutation_in_noise_levels_moves_a_step_near_where_it_was():
    """In noise levels, four mutated steps in five move by a Gaussian of 5% of the span, and
    the fifth jumps as in training steps (anywhere, or anywhere between its neighbours): far
    fewer children land far from their parent (BENCHMARKS.md, "Since: local moves in noise
    levels")."""
    parent = (748, 471, 257, 12)
    far = {}
    for coords in (None, NOISE_LEVELS):
        space, rng = CandidateSpace(4, T, coordinates=coords), np.random.default_rng(0)
        u = space.coordinate(parent)
        moved = [np.abs(space.coordinate(variation.mutate(
            space, space.candidate(parent), rng, gene_prob=0.25).timesteps) - u).max()
            for _ in range(400)]
        far["steps" if coords is None else "noise"] = np.mean(
            np.array(moved) > 0.15 * space.coordinate_span)
    assert far["noise"] < 0.25 < 0.4 < far["steps"]


def test_a_stretch_moves_every_step_and_keeps_the_schedule_s_shape():
    """With ``--step-moves stretch``, one step mutation in ``1 / STRETCH_PROB`` scales every
    step's distance from the data end (in noise levels) by one factor: all steps move the same
    way, in proportion. In noise levels without it, or in training steps, none does."""
    parent = (460, 300, 180, 40)
    share = {}
    for moves, coords, stretch in (("steps", None, False), ("noise", NOISE_LEVELS, False),
                                   ("stretch", NOISE_LEVELS, True)):
        space = CandidateSpace(4, T, coordinates=coords, stretch=stretch)
        rng = np.random.default_rng(0)
        low = space.coordinate([0])[0]
        u = space.coordinate(parent) - low
        ratios = np.array([(space.coordinate(variation.mutate(
            space, space.candidate(parent), rng, gene_prob=0.25).timesteps) - low) / u
            for _ in range(400)])
        # all one way and in proportion, to the nearest step (coarser near the data)
        stretched = ratios[((ratios > 1).all(axis=1) | (ratios < 1).all(axis=1))
                           & (np.abs(ratios[:, :3] - ratios[:, :1]).max(axis=1) < 0.02)]
        share[moves] = len(stretched) / len(ratios)
        if stretch:
            assert 0.05 < np.std(np.log(stretched[:, 0])) < 0.15
    assert share["steps"] < 0.01 and share["noise"] < 0.01
    assert abs(share["stretch"] - variation.STRETCH_PROB) < 0.06
    with pytest.raises(ValueError, match="a stretch scales steps in a coordinate"):
        CandidateSpace(4, T, stretch=True)


def test_a_space_that_does_not_stretch_breeds_as_before(monkeypatch):
    """Without ``stretch`` the mutation draws nothing for it: a study made with ``--step-moves
    noise`` resumes on the same stream of children whatever ``STRETCH_PROB`` is."""
    space, parent = CandidateSpace(4, T, coordinates=NOISE_LEVELS), (460, 300, 180, 40)

    def children():
        rng = np.random.default_rng(3)
        return [variation.mutate(space, space.candidate(parent), rng).timesteps
                for _ in range(50)]

    before = children()
    monkeypatch.setattr(variation, "STRETCH_PROB", 0.9)
    assert children() == before


def test_random_candidates_in_noise_levels_reach_the_data_end():
    """Uniform in noise levels, a random schedule ends near the data far more often than
    uniform in steps (where the last of 4 steps lies below 10 in 4% of draws)."""
    rng = np.random.default_rng(0)
    last = {coords is None: [CandidateSpace(4, T, coordinates=coords).random(rng).timesteps[-1]
                             for _ in range(500)] for coords in (None, NOISE_LEVELS)}
    assert np.mean(np.array(last[False]) < 10) > 2 * np.mean(np.array(last[True]) < 10)


@pytest.mark.parametrize("coordinates", [(0.0,) * T, tuple(range(T - 1)),
                                         (float("nan"),) + NOISE_LEVELS[1:]])
def test_candidate_space_refuses_bad_coordinates(coordinates):
    with pytest.raises(ValueError, match="coordinates must be"):
        CandidateSpace(4, T, coordinates=coordinates)


def test_a_study_moves_steps_where_its_configuration_says():
    from autodiff_optuna import search
    from autodiff_optuna.search.config import SearchConfig, configure
    from autodiff_optuna.search.context import alphas_cumprod

    config = SearchConfig("digits", 3, samples=80, population=4, step_moves="noise")
    ctx = search.SearchContext.build(config)
    levels = schedules.noise_coordinates(alphas_cumprod(ctx.model))
    for stage in (1, 2):
        assert np.allclose(ctx.space(stage).coordinate(range(T)), levels)
    assert ctx.space(1) == CandidateSpace(3, T)  # the same candidates, drawn otherwise
    steps = search.SearchContext.of(SearchConfig("digits", 3, samples=80), ctx.model,
                                    ctx.scorer)
    assert steps.space(1).coordinates is None  # the default, and a study made before the field
    # the digits-k4 preset moves them in noise levels, digits-k3's stretches them too (one
    # space, drawn otherwise again); digits-deep's per-step search does neither
    assert configure("digits", 4)[0].step_moves == "noise"
    assert configure("digits", 3)[0].step_moves == "stretch"
    stretched = search.SearchContext.of(SearchConfig("digits", 3, samples=80,
                                                     step_moves="stretch"), ctx.model, ctx.scorer)
    assert stretched.space(1).stretch and not ctx.space(1).stretch
    assert stretched.space(1) == CandidateSpace(3, T)
    assert stretched.space(1).coordinates == ctx.space(1).coordinates
    assert configure("digits-deep", 4)[0].step_moves == "steps"
    assert configure("digits", 4, step_moves="steps")[0].step_moves == "steps"
    # the preset's moves go with its solver and with our sampler, as its noise scale does
    assert configure("digits", 4, solver="search")[0].step_moves == "steps"
    assert configure("digits", 4, sampler="tpe")[0].step_moves == "steps"
    assert configure("digits", 4, solver="search", step_moves="noise")[0].step_moves == "noise"
