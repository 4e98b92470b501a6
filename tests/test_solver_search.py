"""The solver searched with the steps (issue: beat every few-step sampler): each position's
rule is a pair of trial parameters, bred with the steps, bounded by the history it can use,
and carried through the study's result, the export, evaluate and apply."""

import json

import numpy as np
import optuna
import pytest

from autodiff_optuna.cli import main
from autodiff_optuna.export import SearchedSchedule, diffusers_fields, read_schedule
from autodiff_optuna.sampling.rules import SOLVERS, StepRule, bounded, describe, fixed_solver
from autodiff_optuna.search import variation
from autodiff_optuna.search.encoding import CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler

SPACE = CandidateSpace(4, 1000, solver_search=True)


def test_rules_are_trial_parameters_and_decode_bounded():
    candidate = SPACE.candidate([750, 500, 250, 0], rules=[StepRule(3, True)] * 4)
    params = SPACE.encode(candidate)
    assert {f"{kind}{i}" for i in range(4) for kind in "ocp"} <= set(params)
    # order at most the history (1 at the first step), 1 at the last; no corrector after it
    assert candidate.rules == bounded([StepRule(3, True)] * 4)
    assert candidate.rules[0].order == 1 and candidate.rules[-1] == StepRule(1, False)
    assert SPACE.decode(params) == candidate


def test_a_space_without_the_search_is_as_before():
    space = CandidateSpace(4, 1000)
    candidate = space.candidate([750, 500, 250, 0])
    assert candidate.rules == () and not any(n[0] in "oc" for n in space.encode(candidate))


def test_every_position_offers_exactly_the_rules_that_differ():
    choices = SPACE.rule_choices
    ipndm = [StepRule(order, method="ipndm") for order in (1, 2, 3)]
    # the first step: DDIM with or without the corrector after it, or iPNDM's analytical start
    # and one or two noise predictions; the last: DDIM, or iPNDM of order 2 or 3
    assert choices[0] == [StepRule(1, False), StepRule(1, True), *ipndm[:2]]
    assert choices[-1] == [StepRule(1, False), *ipndm[1:]]
    assert SPACE.size == CandidateSpace(4, 1000).size * np.prod([len(c) for c in choices])


def test_mutation_and_crossover_breed_rules_within_their_bounds():
    rng = np.random.default_rng(0)
    a = SPACE.candidate([750, 500, 250, 0], rules=[SOLVERS["ddim"]] * 4)
    b = SPACE.candidate([900, 600, 300, 0], rules=[SOLVERS["unipc"]] * 4)
    seen = set()
    for _ in range(200):
        child = variation.mutate(SPACE, variation.crossover(SPACE, a, b, rng), rng)
        assert child.rules == bounded(child.rules)
        seen.add(child.rules)
    assert len(seen) > 4  # rules vary, not only steps


def test_the_sampler_searches_rules_on_any_objective():
    sampler = EvolutionarySampler(SPACE, population_size=6, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(sum(SPACE.suggest(t).rules[i].corrector for i in range(4))),
                   n_trials=30)
    assert study.best_value == 0
    rules = {tuple(t.params[f"o{i}"] for i in range(4)) for t in study.trials}
    assert len(rules) > 1


def test_describe_names_a_fixed_solver_or_each_step():
    assert describe([[1, False], [2, False], [2, False], [1, False]], 4) == "dpmpp2m"
    assert fixed_solver([[1, True], [2, False], [2, True], [1, False]], 4) is None
    assert describe([[1, True], [2, False], [2, True], [1, False]], 4) == \
        "per-step 1+C, 2, 2+C, 1"


def test_export_of_mixed_rules_says_no_single_scheduler_runs_them(tmp_path):
    rules = [[1, True], [2, False], [2, True], [1, False]]
    fields = diffusers_fields({"num_train_timesteps": 1000}, rules, [750, 500, 250, 0])
    assert "scheduler" not in fields and "autodiff_optuna.sample" in fields["note"]
    two = diffusers_fields({"num_train_timesteps": 1000},
                           [[1, False], [2, False], [2, False], [1, False]], [750, 500, 250, 0])
    assert two["scheduler"] == "DPMSolverMultistepScheduler"
    assert two["scheduler_config"]["solver_order"] == 2
    path = tmp_path / "s.json"
    path.write_text(SearchedSchedule("digits", rules, [750, 500, 250, 0], [[]] * 4,
                                     diffusers=fields).to_json())
    assert read_schedule(path).solver == rules


@pytest.mark.parametrize("solver", [[[1, "yes"]] * 4, [[1]] * 4, 3])
def test_a_malformed_solver_is_refused(tmp_path, solver):
    with pytest.raises(ValueError, match="'solver'"):
        SearchedSchedule("digits", solver, [750, 500, 250, 0], [[]] * 4)


@pytest.mark.slow
def test_a_searched_study_exports_and_evaluates_its_rules(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "--model", "digits", "--steps", "3", "--trials", "10", "--samples",
                 "200", "--population", "6", "--min-samples", "0", "--stage", "1", "--solver",
                 "search",
                 "--storage", url, "--quiet"]) == 0
    study = optuna.load_study(study_name="digits-k3", storage=url)
    first = [t for t in study.trials if t.user_attrs.get("spacing") == "uniform"]
    # uniform with each distinct fixed solver: the baselines a user could pick
    assert {t.user_attrs["solver"] for t in first} >= {"ddim", "dpmpp2m", "unipc", "ipndm"}
    assert all("rules" in t.user_attrs for t in study.trials if t.state.is_finished()
               and t.state == optuna.trial.TrialState.COMPLETE)
    out = tmp_path / "schedule.json"
    assert main(["export", "--name", "digits-k3", "--storage", url, "--out", str(out)]) == 0
    exported = json.loads(out.read_text())
    capsys.readouterr()
    assert main(["evaluate", "--schedule", str(out), "--samples", "200", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["solver"] == exported["solver"] and scored["fid"] > 0
    # the baseline is uniform with the schedule's own solver where it is one fixed solver, else
    # the library's default: never DDIM's weak uniform by accident
    for rules, baseline in (([[1, True], [2, False], [1, False]], "dpmpp2m"), ("unipc", "unipc"),
                            ([[2, True], [2, True], [1, False]], "unipc")):  # runs as UniPC
        out.write_text(json.dumps({**exported, "solver": rules}))
        assert main(["evaluate", "--schedule", str(out), "--samples", "100", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["uniform_solver"] == baseline


def test_from_t_minus_1_rules_that_run_alike_are_one_candidate():
    """No analytical first step runs from T - 1: an ipndm first step is DDIM there, and the
    orders after it are what the noise predictions allow. Such rules are one candidate, written
    as the fixed solver that runs so; below T - 1 they differ."""
    ipndm = StepRule(3, method="ipndm")
    variants = ([StepRule(1, method="ipndm"), *[ipndm] * 3], [ipndm] * 4,
                [StepRule(1), StepRule(2, method="ipndm"), ipndm, ipndm])
    top = {SPACE.candidate([999, 700, 400, 100], rules=rules) for rules in variants}
    assert len(top) == 1 and fixed_solver(top.pop().rules, 4) == "ipndm"
    assert len({SPACE.candidate([998, 700, 400, 100], rules=rules) for rules in variants}) == 3
    candidate = SPACE.candidate([999, 700, 400, 100], rules=variants[2])
    assert SPACE.decode(SPACE.encode(candidate)) == candidate


def test_a_study_made_before_p_and_e_resumes_without_repeating_a_candidate(tmp_path):
    import sqlite3

    from autodiff_optuna.search.proposals import Proposals

    db = tmp_path / "s.db"
    args = ["study", "--model", "digits", "--steps", "3", "--samples", "80", "--population",
            "4", "--min-samples", "0", "--stage", "1", "--solver", "search", "--storage",
            f"sqlite:///{db}", "--quiet"]
    # the first three trials: uniform with DDIM, 2M and UniPC, as a study made before p{i}
    # and e stored them (without those parameters)
    assert main([*args, "--trials", "3"]) == 0
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM trial_params WHERE param_name = 'e' OR param_name LIKE 'p%'")
    space = CandidateSpace(3, 1000, solver_search=True)
    study = optuna.load_study(study_name="digits-k3", storage=f"sqlite:///{db}")
    old = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(old) == 3 and not any("e" in t.params for t in old)
    # each is its candidate to the sampler: not proposed again, and a parent
    assert all(Proposals(space).candidate_of(t) == space.decode(t.params) for t in old)
    assert main([*args, "--trials", "16"]) == 0
    study = optuna.load_study(study_name="digits-k3", storage=f"sqlite:///{db}")
    done = [space.decode(t.params) for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 16 and len(set(done)) == len(done)


def test_ipndm_rules_are_searched_and_a_study_made_before_decodes_as_it_ran():
    """iPNDM is a searched rule (``p{i}``) of orders 1 to 3; a first ipndm step starts by the
    analytical first step, so all-iPNDM rules are the fixed ``ipndm``."""
    ipndm = SOLVERS["ipndm"]
    assert SPACE.encodes(ipndm) and not SPACE.encodes(StepRule(4, method="ipndm"))
    candidate = SPACE.candidate([800, 500, 250, 0], rules=[ipndm] * 4)
    assert fixed_solver(candidate.rules, 4) == "ipndm"
    params = SPACE.encode(candidate)
    assert [params[f"p{i}"] for i in range(4)] == [1] * 4
    assert SPACE.decode(params) == candidate
    # another sampler's corrector bit on an ipndm step is ignored, not an error
    assert SPACE.decode({**params, "c1": 1}) == candidate
    # trials of a study made before p{i} existed: DPM-Solver++'s rules, as they ran
    old = {k: v for k, v in params.items() if k[0] != "p"}
    assert all(rule.method == "dpm" for rule in SPACE.decode(old).rules)
    with pytest.raises(ValueError, match="searched rules are of order .*, unscaled"):
        SPACE.candidate([750, 500, 250, 0], rules=[StepRule(4, method="ipndm")] * 4)


@pytest.mark.slow  # two stages and an evaluate: 20 s
def test_an_ipndm_study_runs_both_stages_and_its_export_evaluates(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "--model", "digits", "--steps", "4", "--trials", "8", "--samples",
                 "150", "--population", "4", "--min-samples", "0", "--stage2-trials", "4",
                 "--solver", "ipndm", "--noise-scale", "1", "--storage", url, "--quiet"]) == 0
    out = tmp_path / "schedule.json"
    assert main(["export", "--name", "digits-k4", "--storage", url, "--out", str(out)]) == 0
    exported = json.loads(out.read_text())
    assert exported["solver"] == "ipndm"
    capsys.readouterr()
    assert main(["evaluate", "--schedule", str(out), "--samples", "150", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["uniform_solver"] == "ipndm" and scored["fid"] > 0
    assert describe("ipndm", 4) == "ipndm"


def test_a_noise_scale_study_samples_exports_and_resumes_with_it(tmp_path, capsys):
    """``--noise-scale`` divides every candidate's noise prediction (epsilon scaling): the
    search scores with it, the export carries it, evaluate's baseline is the solver without it,
    and a resume must name the same."""
    from autodiff_optuna.metrics.fid import to_uint8
    from autodiff_optuna.sampling import HELDOUT, draw

    def study(url, *flags):
        return main(["study", "--model", "digits", "--steps", "3", "--trials", "3", "--samples",
                     "80", "--population", "4", "--min-samples", "0", "--stage", "1",
                     "--solver", "ipndm", "--storage", url, *flags])

    scaled, plain = f"sqlite:///{tmp_path}/scaled.db", f"sqlite:///{tmp_path}/plain.db"
    assert study(scaled, "--noise-scale", "1.015", "--quiet") == 0
    assert study(plain, "--noise-scale", "1", "--quiet") == 0  # the preset's is 1.015
    first = {url: optuna.load_study(study_name="digits-k3", storage=url).trials[0]
             for url in (scaled, plain)}
    assert first[scaled].params == first[plain].params  # uniform, both
    assert first[scaled].value != first[plain].value  # scored with the scale
    out = tmp_path / "schedule.json"
    assert main(["export", "--name", "digits-k3", "--storage", scaled, "--out", str(out)]) == 0
    exported = json.loads(out.read_text())
    assert exported["solver"] == [[3, False, "ipndm", 1.015]] * 3
    assert "autodiff_optuna.apply" in exported["diffusers"]["note"]
    capsys.readouterr()
    assert main(["evaluate", "--schedule", str(out), "--samples", "100", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["uniform_solver"] == "ipndm"
    # the exported solver is the search's: ao.sample of the file samples it
    import autodiff_optuna as ao
    from autodiff_optuna.models import load_model
    from autodiff_optuna.sampling import sample

    model = load_model("digits")
    x = sample(model, tuple(exported["timesteps"]), draw(model, 4, 0, HELDOUT),
               [StepRule(3, method="ipndm", scale=1.015)] * 3)
    assert torch_equal(ao.sample(str(out), n=4, seed=0), to_uint8(model.decode(x)))
    # best --json says it; the report samples its grids and held-out column with it
    assert main(["best", "--name", "digits-k3", "--storage", scaled, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["noise_scale"] == 1.015
    assert main(["report", "--name", "digits-k3", "--storage", scaled, "--out",
                 str(tmp_path / "report"), "--grid", "4", "--heldout-samples", "80",
                 "--top", "1", "--device", "cpu"]) == 0
    assert "ipndm, noise / 1.015" in (tmp_path / "report" / "index.html").read_text()
    capsys.readouterr()
    # the first line says it; a resume with another scale is refused, nothing run
    assert study(scaled, "--noise-scale", "1.015") == 0
    assert "ipndm, noise / 1.015" in capsys.readouterr().out
    assert study(scaled, "--noise-scale", "1.02", "--quiet") == 2
    assert ("noise_scale: stored 1.015, requested 1.02 (--noise-scale 1.015 resumes it)"
            in capsys.readouterr().err)
    assert study(scaled, "--noise-scale", "1.5", "--quiet") == 2
    assert "--noise-scale must be in [0.9, 1.1], got 1.5" in capsys.readouterr().err
    # ... and one whose sampler moves steps otherwise (its preset's, digits-k3's: stretch)
    assert study(scaled, "--noise-scale", "1.015", "--step-moves", "noise", "--quiet") == 2
    assert ("step_moves: stored 'stretch', requested 'noise' (--step-moves stretch resumes it)"
            in capsys.readouterr().err)
    # a digits-k3 study made before the preset stretched: the flag that resumes it, nothing run
    before = f"sqlite:///{tmp_path}/before.db"
    assert study(before, "--noise-scale", "1.015", "--step-moves", "noise", "--quiet") == 0
    capsys.readouterr()
    assert study(before, "--noise-scale", "1.015", "--quiet") == 2
    assert ("step_moves: stored 'noise', requested 'stretch' (--step-moves noise resumes it)"
            in capsys.readouterr().err)
    # ... or in generations of another size
    assert study(scaled, "--noise-scale", "1.015", "--population", "7", "--quiet") == 2
    assert ("population: stored 4, requested 7 (--population 4 resumes it)"
            in capsys.readouterr().err)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
