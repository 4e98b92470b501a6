import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from autodiff_optuna.errors import UsageError
from autodiff_optuna.sampling import draw, sample
from autodiff_optuna.sampling.rules import StepRule, bounded, diffusers_order, step_rules
from autodiff_optuna.sampling.solvers import make_scheduler

STEPS = (871, 640, 402, 233, 96, 0)  # custom: neither uniform nor starting at T-1


def _diffusers_loop(model, scheduler, noise):
    x = noise.clone()
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x = scheduler.step(model.predict_noise(x, t), t, x).prev_sample
    return x


def _unipc(model, order, steps=None, disable_corrector=()):
    """diffusers' UniPC over its own trailing spacing, or over ``steps`` (its set_timesteps
    takes no custom time steps: they are set as DPMSolverMultistepScheduler sets them)."""
    unipc = UniPCMultistepScheduler.from_config(
        model.scheduler_config, solver_order=order, timestep_spacing="trailing",
        disable_corrector=list(disable_corrector))
    if steps is None:
        unipc.set_timesteps(6)
        return unipc
    unipc.set_timesteps(len(steps))
    unipc.timesteps, unipc.sigmas = make_scheduler(model, "ddim", steps).timesteps, \
        make_scheduler(model, "ddim", steps).sigmas
    return unipc


@pytest.mark.parametrize("order", [1, 2, 3])
def test_constant_order_is_diffusers_dpm_solver(digits, order):
    ref = DPMSolverMultistepScheduler.from_config(
        digits.scheduler_config, algorithm_type="dpmsolver++", solver_order=order,
        final_sigmas_type="zero")
    ref.set_timesteps(timesteps=list(STEPS))
    batch = draw(digits, 32, seed=4)
    expected = _diffusers_loop(digits, ref, batch.noise)
    ours = sample(digits, STEPS, batch, [StepRule(order)] * len(STEPS))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp2m", "dpmpp3m"])
def test_fixed_solvers_are_bit_identical_to_their_scheduler(digits, solver):
    batch = draw(digits, 32, seed=6)
    expected = _diffusers_loop(digits, make_scheduler(digits, solver, STEPS), batch.noise)
    assert torch.equal(sample(digits, STEPS, batch, solver), expected)


def test_a_checkpoints_own_sampler_settings_change_no_solver(digits, monkeypatch):
    """A checkpoint whose scheduler_config.json is a DPM-Solver's (``solver_type="heun"``,
    Karras sigmas: common on the hub) is searched, exported and applied with the same update
    as any other: every solver is built on its training noise schedule alone."""
    batch = draw(digits, 8, seed=6)
    plain = sample(digits, STEPS, batch, "dpmpp2m")
    settings = {"solver_type": "heun", "use_karras_sigmas": True, "solver_order": 3}
    monkeypatch.setattr(digits, "_scheduler_config", {**digits.scheduler_config, **settings})
    assert torch.equal(sample(digits, STEPS, batch, "dpmpp2m"), plain)
    assert make_scheduler(digits, "dpmpp2m", STEPS).config.solver_type == "midpoint"


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("steps", [None, STEPS], ids=["trailing", "custom"])
def test_corrector_everywhere_is_diffusers_unipc(digits, order, steps):
    unipc = _unipc(digits, order, steps)
    batch = draw(digits, 32, seed=2)
    expected = _diffusers_loop(digits, unipc, batch.noise)
    timesteps = tuple(unipc.timesteps.tolist())
    ours = sample(digits, timesteps, batch, [StepRule(order, True)] * len(timesteps))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    if order == 2:
        assert torch.equal(sample(digits, timesteps, batch, "unipc"), ours)


def test_steps_without_corrector_are_unipc_disable_corrector(digits):
    off = (0, 3)
    unipc = _unipc(digits, 2, STEPS, disable_corrector=off)
    batch = draw(digits, 32, seed=8)
    expected = _diffusers_loop(digits, unipc, batch.noise)
    rules = [StepRule(2, i not in off) for i in range(len(STEPS))]
    ours = sample(digits, STEPS, batch, rules)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, sample(digits, STEPS, batch, "unipc"), atol=1e-3)


def test_mixed_rules_batch_alike_and_differ_from_each_fixed_solver(tiny_unet_dir):
    from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel

    model = DiffusersUNetModel("tiny", tiny_unet_dir)
    batch = draw(model, 10, seed=0)
    rules = [[3, True], [1, False], [3, True], [2, False], [2, True], [1, False]]
    whole = sample(model, STEPS, batch, rules)
    torch.testing.assert_close(whole, sample(model, STEPS, batch, rules, batch_size=4),
                               atol=1e-4, rtol=1e-4)
    for solver in ("ddim", "dpmpp2m", "dpmpp3m", "unipc"):
        assert not torch.allclose(whole, sample(model, STEPS, batch, solver), atol=1e-4)


def test_bounded_by_history_and_the_final_steps():
    rules = bounded([StepRule(3, True)] * 5)
    assert [r.order for r in rules] == [1, 2, 3, 2, 1]  # lower_order_final below 15 steps
    assert [r.corrector for r in rules] == [True] * 4 + [False]
    assert [r.order for r in bounded([StepRule(3)] * 16)][-3:] == [3, 3, 1]


def test_diffusers_order():
    assert diffusers_order(step_rules("dpmpp3m", 6)) == 3
    # below 5 steps diffusers' DPM-Solver++(3M) never reaches order 3: it is (2M)
    assert diffusers_order(step_rules("dpmpp3m", 4)) == 2
    # order 3 at a step with one output before it runs as order 2: still DPM-Solver++(2M)
    assert diffusers_order([StepRule(1), StepRule(3), StepRule(2), StepRule(1)]) == 2
    assert diffusers_order([StepRule(2), StepRule(1), StepRule(2), StepRule(1)]) is None
    assert diffusers_order(step_rules("unipc", 4)) is None


@pytest.mark.parametrize("solver, message", [
    ("heun", "unknown solver"),
    ([StepRule(2)] * 3, "3 solver rules for 4"),
    ([[4, False]] * 4, "order must be one of"),
    ([[2, "yes"]] * 4, "corrector must be true or false"),
    ([2, 2, 2, 2], r"\[order, corrector\]"),
])
def test_bad_rules(solver, message):
    with pytest.raises(UsageError, match=message):
        step_rules(solver, 4)


# ---- iPNDM, with the analytical first step ------------------------------------------------

def _ipndm_reference(model, steps, noise, max_order=3, afs=True):
    """iPNDM as diff-sampler writes it (EDM form: x / alpha against sigma, d = eps, the
    Adams-Bashforth buffer warmed up from order 1, AFS's d = x / sqrt(1 + sigma^2)), on the
    model's training schedule, in float64: written apart from ``rules.run_rules``."""
    alphas_cumprod = torch.tensor(_alphas_cumprod(model), dtype=torch.float64)
    sigma = lambda t: float(((1 - alphas_cumprod[t]) / alphas_cumprod[t]).sqrt())  # noqa: E731
    t_steps = [len(alphas_cumprod) - 1, *steps] if afs else list(steps)
    sigmas = [sigma(t) for t in t_steps] + [0.0]
    coefficients = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12]}
    x = noise.to(torch.float64) * (1 + sigmas[0] ** 2) ** 0.5
    buffer = []
    with torch.inference_mode():
        for i, t in enumerate(t_steps):
            if afs and i == 0:
                d = x / (1 + sigmas[0] ** 2) ** 0.5
            else:
                scaled = (x / (1 + sigmas[i] ** 2) ** 0.5).to(torch.float32)
                d = model.predict_noise(scaled, torch.tensor(t)).to(torch.float64)
            buffer.append(d)
            order = min(max_order, len(buffer))
            slope = sum(c * b for c, b in zip(coefficients[order], reversed(buffer)))
            x = x + (sigmas[i + 1] - sigmas[i]) * slope
    return x.to(torch.float32)


def _alphas_cumprod(model):
    from autodiff_optuna.search.context import alphas_cumprod

    return alphas_cumprod(model)


def test_ipndm_is_diff_samplers_ipndm_with_its_analytical_first_step(digits):
    batch = draw(digits, 32, seed=3)
    expected = digits.decode(_ipndm_reference(digits, STEPS, batch.noise))
    torch.testing.assert_close(sample(digits, STEPS, batch, "ipndm"), expected,
                               atol=1e-4, rtol=1e-4)
    # per-step rules whose first is iPNDM's start by the analytical first step too: the fixed
    # ipndm is those rules; with a DDIM first step they start from the noise put there, and the
    # ipndm steps after it warm up from the one noise prediction they have
    rules = [StepRule(3, method="ipndm")] * len(STEPS)
    torch.testing.assert_close(sample(digits, STEPS, batch, rules), expected, atol=1e-4,
                               rtol=1e-4)
    plain = digits.decode(_ipndm_reference(digits, STEPS, batch.noise, afs=False))
    rules = [StepRule(1), *[StepRule(3, method="ipndm")] * (len(STEPS) - 1)]
    torch.testing.assert_close(sample(digits, STEPS, batch, rules), plain, atol=1e-4, rtol=1e-4)


def test_ipndm_order_1_is_ddim_and_a_schedule_from_t_minus_1_has_no_analytical_step(digits):
    batch = draw(digits, 16, seed=5)
    from_the_top = (999, *STEPS[1:])
    first_order = [StepRule(1, method="ipndm")] * len(STEPS)
    torch.testing.assert_close(sample(digits, from_the_top, batch, first_order),
                               sample(digits, from_the_top, batch, "ddim"), atol=1e-5, rtol=1e-5)
    assert torch.equal(sample(digits, from_the_top, batch, "ipndm"),
                       sample(digits, from_the_top, batch,
                              [StepRule(3, method="ipndm")] * len(STEPS)))


def test_ipndm_rules_names_and_refusals():
    from autodiff_optuna.sampling.rules import describe, fixed_solver, single_scheduler_solver

    ipndm = [StepRule(3, method="ipndm")] * 4
    # its orders to the last step, at most the noise predictions there are: one more at the
    # first step after the analytical step, which only a first ipndm step takes
    assert bounded(ipndm) == (StepRule(2, method="ipndm"), *ipndm[1:])
    assert bounded([StepRule(1), *ipndm[1:]]) == (
        StepRule(1), StepRule(2, method="ipndm"), *ipndm[2:])
    # order 1 after the first step is DDIM, written as DDIM; at the first it marks the start
    assert bounded([StepRule(1, method="ipndm")] * 3) == (StepRule(1, method="ipndm"),
                                                          StepRule(1), StepRule(1))
    assert describe("ipndm", 4) == fixed_solver("ipndm", 4) == fixed_solver(ipndm, 4) == "ipndm"
    assert single_scheduler_solver("ipndm", 4) is None and diffusers_order(
        step_rules("ipndm", 4)) is None
    assert describe([[1, True], [3, False, "ipndm"], [2, False], [1, False]], 4) \
        == "per-step 1+C, 2i, 2, 1"
    assert describe([[3, False, "ipndm"], [2, True], [3, False, "ipndm"], [1, False]], 4) \
        == "per-step 2i, 2+C, 3i, 1"
    assert StepRule(4, method="ipndm").to_json() == [4, False, "ipndm"]
    assert step_rules([[4, False, "ipndm"]], 1) == (StepRule(4, method="ipndm"),)
    for rule, message in (([5, False, "ipndm"], "ipndm order must be one of"),
                          ([2, True, "ipndm"], "takes no corrector"),
                          ([2, False, "heun"], "method must be one of")):
        with pytest.raises(UsageError, match=message):
            step_rules([rule], 1)
    with pytest.raises(UsageError, match="no DPMSolverMultistepScheduler runs solver 'ipndm'"):
        from autodiff_optuna.sampling.solvers import solver_config

        solver_config({"num_train_timesteps": 1000}, "ipndm")


def test_the_dp_reads_ipndms_noise_predictions_off_the_teacher(digits):
    from autodiff_optuna.sampling.trajectory_dp import (
        _Hops,
        fit_schedule,
        teacher_trajectory,
        trajectory_error,
    )

    teacher = teacher_trajectory(digits, (999, 700, 400, 200, 100, 0), samples=8, steps=6)
    hops = _Hops(teacher)
    node = 2  # t = 400
    with torch.inference_mode():
        eps = digits.predict_noise(teacher.states[node], torch.tensor(400))
    torch.testing.assert_close(hops._noise(node), eps, atol=1e-4, rtol=1e-4)
    # ipndm starts by the analytical first step: its path leaves the grid's first step
    # analytically, so its 3 steps start below it; so do per-step rules whose first is ipndm,
    # and those with a DDIM first step start there
    steps, error = fit_schedule(teacher, 3, "ipndm")
    assert steps[0] < 999 and len(steps) == 3 and error > 0
    assert trajectory_error(teacher, steps, "ipndm") == pytest.approx(error)
    assert fit_schedule(teacher, 3, [StepRule(3, method="ipndm")] * 3) == (steps, error)
    rules = [StepRule(1), StepRule(3, method="ipndm"), StepRule(3, method="ipndm")]
    steps, error = fit_schedule(teacher, 3, rules)
    assert steps[0] == 999 and trajectory_error(teacher, steps, rules) == pytest.approx(error)
    assert fit_schedule(teacher, 5, "ipndm")[0] == (700, 400, 200, 100, 0)
    with pytest.raises(UsageError, match="the DP picks 1 to 5 steps"):
        fit_schedule(teacher, 6, "ipndm")
    # from T - 1 the fixed ipndm makes no analytical step: the per-step rules' objective
    assert trajectory_error(teacher, (999, 700, 400), "ipndm") == pytest.approx(
        trajectory_error(teacher, (999, 700, 400), rules))
    low = teacher_trajectory(digits, (900, 600, 300, 0), samples=4, steps=4)
    with pytest.raises(UsageError, match="its DP grid must start there, not at 900"):
        fit_schedule(low, 2, "ipndm")


# ---- epsilon scaling ----------------------------------------------------------------------

def test_a_rules_scale_divides_the_networks_noise_prediction_at_its_step(digits):
    from autodiff_optuna.sampling.rules import RuleStepper, run_rules
    from autodiff_optuna.sampling.solvers import network_at

    batch = draw(digits, 8, seed=2)
    stepper = RuleStepper(digits.scheduler_config)
    steps, sigmas = stepper.schedule(STEPS)
    network = network_at(digits, steps, None)
    for method, order in (("dpm", 2), ("ipndm", 3)):
        rules = [StepRule(order, method=method, scale=s) for s in (1.02, 1.01, 1.0, 1.005)]
        plain = [StepRule(order, method=method)] * 4
        start = stepper.start(STEPS, rules)
        with torch.inference_mode():
            scaled = run_rules(stepper, sigmas, rules, batch.noise, network, start=start)
            scales = [rule.scale for rule in rules]
            divided = run_rules(stepper, sigmas, plain, batch.noise,
                                lambda i, x, scales=scales: network(i, x) / scales[i],
                                start=start)
        assert torch.equal(scaled, divided)
        assert not torch.allclose(scaled, run_rules(stepper, sigmas, plain, batch.noise, network,
                                                    start=start))


def test_scaled_rules_names_and_refusals():
    from autodiff_optuna.sampling.rules import common_scale, describe, fixed_solver
    from autodiff_optuna.sampling.solvers import scheduler_solver

    scaled = [[3, False, "ipndm", 1.01]] * 4
    assert step_rules(scaled, 4)[0] == StepRule(3, method="ipndm", scale=1.01)
    assert StepRule(2, scale=1.01).to_json() == [2, False, "dpm", 1.01]
    assert StepRule(2).to_json() == [2, False]
    # a scaled solver is no fixed solver, and is said as one with its scale
    assert fixed_solver(scaled, 4) is None and describe(scaled, 4) == "ipndm, noise / 1.01"
    assert describe([[1, False, "dpm", 1.01], [2, False]], 2) == "per-step 1/1.01, 1"
    # apply runs it with ipndm's scheduler, dividing the output by the one scale
    assert common_scale(scaled, 4) == 1.01 and scheduler_solver(scaled, 4) == "ipndm"
    mixed = [[2, False, "dpm", 1.01], [2, False, "dpm", 1.02]]
    assert common_scale(mixed, 2) is None and scheduler_solver(mixed, 2) is None
    for rule in ([2, False, "dpm", 1.5], [2, False, "dpm", True], [2, False, "dpm", "1"]):
        with pytest.raises(UsageError, match="noise-prediction scale must be a number"):
            step_rules([rule], 1)
