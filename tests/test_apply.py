"""``autodiff_optuna.apply``: a diffusers pipeline built around the bundled digits UNet samples
exactly what ``autodiff_optuna.sample`` samples, on the same noise, with and without skips."""

import copy
import inspect
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
)
from helpers import error_line

import autodiff_optuna as ao
from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import FORMAT, SearchedSchedule, clips, diffusers_fields
from autodiff_optuna.metrics.fid import to_uint8
from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel
from autodiff_optuna.models.identity import model_identity
from autodiff_optuna.models.registry import DIGITS_DIR
from autodiff_optuna.sampling import HELDOUT, draw, sample

N, SEED = 12, 3
STEPS = [900, 600, 300, 40]


def _pipeline(model, cls=DDPMPipeline, **scheduler):
    config = {**model.scheduler_config, **scheduler}
    pipe = cls(unet=model.unet, scheduler=DDPMScheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _schedule(digits, solver="ddim", skips=True, **fields):
    layers = list(digits.skippable_layers())
    skip = [[layers[0]], [], [layers[2], layers[9]], []] if skips else [[]] * 4
    return SearchedSchedule(**{"model": "digits", "solver": solver, "timesteps": STEPS,
                               "skip": skip, **fields})


def _generator():
    """The generator whose draw is ``sample``'s held-out noise for SEED (checked below)."""
    return torch.Generator().manual_seed(2 * SEED + 1)


def _images(pipe, n=N, **kwargs):
    """The pipeline's images, in [0, 1] (as it returns them)."""
    return pipe(batch_size=n, generator=_generator(), output_type="pt", **kwargs).images


def test_the_generator_draws_the_held_out_noise(digits):
    shape = (N, *digits.sample_shape)
    assert torch.equal(torch.randn(shape, generator=_generator()),
                       draw(digits, N, SEED, HELDOUT).noise)


SCALED_IPNDM = [[3, False, "ipndm", 1.015]] * 4  # epsilon scaling: the step divides the output


@pytest.mark.parametrize("cls", [DDPMPipeline, DDIMPipeline])
@pytest.mark.parametrize("solver", ["ddim", "dpmpp2m", "ipndm", SCALED_IPNDM])
@pytest.mark.parametrize("skips", [False, True])
def test_same_images_as_sample(digits, cls, solver, skips):
    pipe = _pipeline(digits, cls)
    schedule = _schedule(digits, solver, skips)
    expected = ao.sample(schedule, n=N, seed=SEED)
    x = sample(digits, tuple(STEPS), draw(digits, N, SEED, HELDOUT), solver,
               skip=[tuple(s) for s in schedule.skip])
    with ao.apply(pipe, schedule):
        # the pipeline's own step count is ignored: the schedule's steps are run
        images = _images(pipe, num_inference_steps=50)
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)
    assert torch.equal(to_uint8(images * 2 - 1), expected)


def test_ipndms_first_step_moves_only_the_applied_pipelines_first_evaluation(digits):
    """``ipndm``'s analytical first step is handed to the UNet's first call of the applied
    pipeline's sampling alone: a call of one's own, or another pipeline sharing the UNet, before
    or after it, sees its own input."""
    schedule = SearchedSchedule(model="digits", solver="ipndm", timesteps=[300, 200, 100, 40],
                                skip=[[]] * 4)
    x = torch.randn((2, *digits.sample_shape), generator=torch.Generator().manual_seed(0))
    t = torch.tensor(300)
    with torch.inference_mode():
        own = digits.unet(x, t).sample
    other = _pipeline(digits, DDIMPipeline)
    before = _images(other, num_inference_steps=4)
    pipe = _pipeline(digits, DDIMPipeline)
    with ao.apply(pipe, schedule):
        with torch.inference_mode():
            assert torch.equal(digits.unet(x, t).sample, own)
        assert torch.equal(_images(other, num_inference_steps=4), before)
        with pytest.raises(ValueError, match="eta must be 0"):  # after its first evaluation
            _images(pipe, eta=0.5)
        with torch.inference_mode():
            assert torch.equal(digits.unet(x, t).sample, own)
        images = _images(pipe)
        with torch.inference_mode():
            assert torch.equal(digits.unet(x, t).sample, own)
    assert torch.equal(to_uint8(images * 2 - 1), ao.sample(schedule, n=N, seed=SEED))


@pytest.mark.parametrize("settings", [{"solver_type": "heun"}, {"use_karras_sigmas": True}])
def test_the_pipeline_schedulers_own_sampler_settings_do_not_apply(digits, settings):
    """A DPM-Solver pipeline's ``solver_type="heun"`` changed the update (36/255 off `sample`),
    and its Karras sigmas refused the schedule's steps after the skip hooks were on the UNet
    (left there for good). The solver is built on the training schedule alone."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = _pipeline(digits)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **settings)
    schedule = _schedule(digits, "dpmpp2m")
    with ao.apply(pipe, schedule):
        images = _images(pipe)
    assert torch.equal(to_uint8(images * 2 - 1), ao.sample(schedule, n=N, seed=SEED))
    assert (len(pipe.unet._forward_pre_hooks), len(pipe.unet._forward_hooks)) == (0, 0)


def test_skips_are_active_at_their_steps(digits):
    pipe = _pipeline(digits)
    with ao.apply(pipe, _schedule(digits, skips=False)):
        full = _images(pipe)
    with ao.apply(pipe, _schedule(digits, skips=True)):
        skipped = _images(pipe)
    assert (full - skipped).abs().max() > 0.05


def test_a_schedule_file(digits, tmp_path):
    schedule = _schedule(digits, "dpmpp2m")
    path = tmp_path / "schedule.json"
    path.write_text(schedule.to_json())
    pipe = _pipeline(digits)
    with ao.apply(pipe, path):
        images = _images(pipe)
    assert torch.equal(to_uint8(images * 2 - 1), ao.sample(schedule, n=N, seed=SEED))
    with ao.apply(pipe, str(path)):
        assert torch.equal(_images(pipe), images)


def test_restored_on_leaving_the_block(digits):
    pipe = _pipeline(digits)
    scheduler = pipe.scheduler
    hooks = len(pipe.unet._forward_pre_hooks), len(pipe.unet._forward_hooks)
    before = _images(pipe, num_inference_steps=5)
    with pytest.raises(RuntimeError, match="inside"):
        with ao.apply(pipe, _schedule(digits)) as inside:
            assert inside is pipe and pipe.scheduler is not scheduler
            raise RuntimeError("inside the block")
    assert pipe.scheduler is scheduler
    assert (len(pipe.unet._forward_pre_hooks), len(pipe.unet._forward_hooks)) == hooks
    assert not any("forward" in vars(layer.module) for layer in digits.skippable_layers().values())
    assert torch.equal(_images(pipe, num_inference_steps=5), before)


def test_a_plain_call_changes_the_pipeline_in_place(digits):
    pipe = _pipeline(digits)
    scheduler = pipe.scheduler
    schedule = _schedule(digits)
    applied = ao.apply(pipe, schedule)
    try:
        assert pipe.scheduler is not scheduler and applied.scheduler is pipe.scheduler
        expected = ao.sample(schedule, n=N, seed=SEED)
        assert torch.equal(to_uint8(_images(pipe) * 2 - 1), expected)
        assert torch.equal(to_uint8(_images(applied) * 2 - 1), expected)  # it calls as pipe
        with pytest.raises(ValueError, match="already applied"):
            ao.apply(pipe, schedule)
    finally:
        assert applied.restore() is pipe
    assert pipe.scheduler is scheduler
    applied.restore()  # twice: nothing more to undo


def test_ddim_eta_must_be_zero(digits):
    with ao.apply(_pipeline(digits, DDIMPipeline), _schedule(digits)) as pipe:
        with pytest.raises(ValueError, match="eta must be 0"):
            _images(pipe, eta=0.5)


def _refusal(pipe, schedule) -> str:
    scheduler = pipe.scheduler
    with pytest.raises(ValueError) as err:
        ao.apply(pipe, schedule)
    assert pipe.scheduler is scheduler  # nothing was changed
    message = str(err.value)
    assert "\n" not in message
    return message


def test_refuses_a_schedule_for_another_model(digits, tmp_path):
    # another number of training steps
    message = _refusal(_pipeline(digits, num_train_timesteps=500), _schedule(digits))
    assert "1000 training steps" in message and "500" in message
    # layers this UNet does not have
    schedule = _schedule(digits, skip=[["down_blocks.7.resnets.0"], [], [], []])
    assert "down_blocks.7.resnets.0" in _refusal(_pipeline(digits), schedule)
    # steps outside the pipeline's range, an unknown solver, a file that is no schedule
    assert "outside" in _refusal(_pipeline(digits), _schedule(digits, model="mine",
                                                              timesteps=[1200, 600, 300, 40]))
    assert "solver" in _refusal(_pipeline(digits), _schedule(digits, solver="euler"))
    (tmp_path / "other.json").write_text("{}")
    assert "not an autodiff-optuna schedule" in _refusal(_pipeline(digits),
                                                         tmp_path / "other.json")


def test_refuses_an_unknown_pipeline(digits):
    pipe = ScoreSdeVePipeline(unet=digits.unet, scheduler=ScoreSdeVeScheduler())
    assert "ScoreSdeVePipeline" in _refusal(pipe, _schedule(digits))


@pytest.mark.parametrize("solver", ["dpmpp2m", "ipndm", SCALED_IPNDM])
def test_clipped_models_are_clipped(digits, solver):
    """A schedule of a model searched with x0 clipping (google's DDPMs) clips in the pipeline
    too: here the digits UNet stands in for one, against the adapter with clipping on."""
    clipping = DiffusersUNetModel("digits-clipped", DIGITS_DIR, clip_denoised=True)
    schedule = _schedule(digits, solver, skips=False, model="ddpm-cifar10")
    x = sample(clipping, tuple(STEPS), draw(digits, N, SEED, HELDOUT), solver)
    unclipped = sample(digits, tuple(STEPS), draw(digits, N, SEED, HELDOUT), solver)
    assert (x - unclipped).abs().max() > 1e-3  # clipping matters on this schedule
    with pytest.warns(UserWarning, match="cannot be checked"):  # a hub model's, not here
        with ao.apply(_pipeline(digits), schedule) as pipe:
            images = _images(pipe)
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


def test_readme_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = re.search(r"```python\n(# readme-example: apply\n.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["images"].shape == (16, 1, 8, 8)
    assert type(namespace["pipe"].scheduler).__name__ == "DDPMScheduler"  # restored


# ---- what an exported schedule tells a diffusers user ----------------------------------------

def _exported(tmp_path, capsys, *extra) -> dict:
    """A short digits study through the command line, exported."""
    from autodiff_optuna.cli import main

    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "--model", "digits", "--steps", "4", "--stage", "1", "--trials", "3",
                 "--population", "3", "--samples", "100", "--min-samples", "0", "--quiet",
                 "--storage", url, "--solver", "dpmpp2m", *extra]) == 0
    capsys.readouterr()
    assert main(["export", "--name", "digits-k4", "--storage", url, "--out",
                 str(tmp_path / "schedule.json")]) == 0
    return json.loads((tmp_path / "schedule.json").read_text())


@pytest.mark.slow  # 13.6 s on the idle machine: out of the fast subset
def test_the_export_holds_the_scheduler_apply_builds(digits, tmp_path, capsys):
    exported = _exported(tmp_path, capsys)
    fields = exported["diffusers"]
    assert fields["timesteps"] == exported["timesteps"] and fields["num_train_timesteps"] == 1000
    assert fields["scheduler"] == "DPMSolverMultistepScheduler" and "guidance_scale" not in fields
    assert exported["identity"] == model_identity(digits)  # recorded by the study
    assert not fields["scheduler_config"]["thresholding"]  # the digits model does not clip
    with ao.apply(_pipeline(digits), tmp_path / "schedule.json") as pipe:
        built = pipe.scheduler
        assert type(built).__name__ == fields["scheduler"]
    from diffusers import DPMSolverMultistepScheduler

    # every setting of the solver apply builds (-inf, not JSON, is left to its default)
    config = fields["scheduler_config"]
    assert set(config) | {"lambda_min_clipped"} == set(
        inspect.signature(DPMSolverMultistepScheduler.__init__).parameters) - {"self"}
    assert {k: built.config[k] for k in config} == config
    pasted = DPMSolverMultistepScheduler.from_config(config)
    assert {k: pasted.config[k] for k in [*config, "lambda_min_clipped"]} == \
        {k: built.config[k] for k in [*config, "lambda_min_clipped"]}
    pasted.set_timesteps(timesteps=fields["timesteps"])
    assert pasted.timesteps.tolist() == built.timesteps.tolist() == exported["timesteps"]


@pytest.mark.slow  # a study and its export, as above
def test_an_ipndm_export_names_apply_and_applies(digits, tmp_path, capsys):
    """No diffusers scheduler runs iPNDM with its analytical first step, nor divides the noise
    prediction (the digits-k4 preset's noise scale): the export's note says to apply it with
    ``apply``, which runs it as ``sample`` does."""
    exported = _exported(tmp_path, capsys, "--solver", "ipndm")
    assert exported["solver"] == [[3, False, "ipndm", 1.015]] * 4
    assert "scheduler" not in exported["diffusers"]
    assert "autodiff_optuna.apply(pipe, schedule)" in exported["diffusers"]["note"]
    with ao.apply(_pipeline(digits), tmp_path / "schedule.json") as pipe:
        images = _images(pipe)
    assert torch.equal(to_uint8(images * 2 - 1),
                       ao.sample(tmp_path / "schedule.json", n=N, seed=SEED))


def test_old_schedule_files_still_load_and_apply(digits, tmp_path):
    old = json.loads(_schedule(digits).to_json())
    del old["diffusers"]  # written before the field existed
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert ao.load_schedule(path).diffusers is None
    with ao.apply(_pipeline(digits), path) as pipe:
        assert pipe.scheduler.timesteps is not None


def test_a_schedule_for_another_number_of_training_steps_is_refused(digits, tmp_path, capsys):
    from autodiff_optuna.cli import main
    from autodiff_optuna.export import diffusers_fields

    fields = diffusers_fields({**digits.scheduler_config, "num_train_timesteps": 500}, "ddim",
                              STEPS)
    schedule = _schedule(digits, skips=False, model="mine", diffusers=fields)
    message = _refusal(_pipeline(digits), schedule)
    assert "that model has 500 training steps, this pipeline's scheduler 1000" in message
    path = tmp_path / "s.json"
    path.write_text(_schedule(digits, skips=False, diffusers=fields).to_json())
    assert main(["sample", "--schedule", str(path), "--out", str(tmp_path / "g.png")]) == 2
    assert f"schedule {path} is for a model of 500 training steps, digits has 1000" in \
        capsys.readouterr().err
    _write(path, diffusers=[1000])
    assert main(["sample", "--schedule", str(path), "--out", str(tmp_path / "g.png")]) == 2
    assert "'diffusers' must be an object" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def _write(path, **fields):
    """A digits schedule file with ``fields`` as given (of any type)."""
    schedule = {"format": FORMAT, "model": "digits", "solver": "ddim", "timesteps": STEPS,
                "skip": [[]] * 4, **fields}
    path.write_text(json.dumps(schedule))
    return path


@pytest.mark.parametrize("field, value, message", [
    ("model", ["digits"], "'model' must be a string, got ['digits']"),
    ("diffusers", "DPMSolverMultistepScheduler", "'diffusers' must be an object"),
    ("diffusers", {"num_train_timesteps": 1000.0},
     "diffusers 'num_train_timesteps' must be an integer, got 1000.0"),
    ("fid", "1.5", "'fid' must be a number, got '1.5'"),
    ("provenance", ["study"], "'provenance' must be an object, got ['study']"),
    ("timesteps", [900, 600.5], "'timesteps' must be a list of integers"),
    ("skip", "mid_block", "'skip' must be a list of lists of layer names"),
    ("identity", {"text_to_image": "no"}, "identity 'text_to_image' must be true or false"),
])
def test_one_reader_and_one_set_of_checks_for_schedule_files(digits, tmp_path, capsys, field,
                                                             value, message):
    from autodiff_optuna.cli import main

    path = _write(tmp_path / "s.json", **{field: value})
    expected = f"schedule {path} is malformed: {message}"
    assert expected in _refusal(_pipeline(digits), path)
    with pytest.raises(UsageError) as err:
        ao.load_schedule(path)
    assert expected in str(err.value)
    assert main(["sample", "--schedule", str(path), "--out", str(tmp_path / "g.png")]) == 2
    assert expected in error_line(capsys)
    with pytest.raises(ValueError, match=re.escape(message)):  # made by hand: the same check
        SearchedSchedule(**_fields(path))


def _fields(path) -> dict:
    data = json.loads(path.read_text())
    del data["format"]
    return data


@pytest.mark.slow  # 5.9 s on the idle machine: out of the fast subset
def test_a_study_from_before_the_training_schedule_exports_without_diffusers_fields(
        tmp_path, capsys):
    import optuna

    from autodiff_optuna.cli import main

    _exported(tmp_path, capsys)
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.load_study(study_name="digits-k4", storage=url).set_user_attr("training_schedule",
                                                                         None)
    assert main(["export", "--name", "digits-k4", "--storage", url, "--out",
                 str(tmp_path / "old.json")]) == 0
    assert json.loads((tmp_path / "old.json").read_text())["diffusers"] is None
    assert "has no diffusers fields; rerun its study command" in capsys.readouterr().err


# ---- the schedule's model: identity, clipping, inputs ----------------------------------------

def test_a_bundled_models_schedule_is_checked_without_a_recorded_identity(digits):
    """README's hand-made digits schedule: the bundled model's identity comes from its files."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # none of ours is issued
        with ao.apply(_pipeline(digits), _schedule(digits)):
            pass
    other_betas = _pipeline(digits, beta_end=0.03)
    assert "its training schedule (betas digest " in _refusal(other_betas, _schedule(digits))
    deep = DiffusersUNetModel("digits-deep", DIGITS_DIR.parent / "digits-deep")
    message = _refusal(_pipeline(deep), _schedule(digits, skips=False))
    assert "its UNet's config (digest " in message and "is not this UNet's" in message


def test_a_recorded_identity_refuses_another_model_and_warns_of_other_weights(digits):
    schedule = _schedule(digits, model="mine", identity=model_identity(digits))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # none of ours is issued
        with ao.apply(_pipeline(digits), schedule):
            pass
    # same network and schedule, other weights (a fine-tune): applied, with a warning
    tuned = copy.deepcopy(digits.unet)
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.mul_(1.01)
    pipe = DDPMPipeline(unet=tuned, scheduler=DDPMScheduler.from_config(digits.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(UserWarning, match="this UNet's weights .* are not the ones it was "
                                         "searched with"):
        with ao.apply(pipe, schedule):
            pass
    # the same weights in half precision are the same weights
    half = DDPMPipeline(unet=copy.deepcopy(digits.unet).half(), scheduler=pipe.scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # none of ours is issued
        ao.apply(half, schedule).restore()
    # another training schedule (same number of steps), another network: refused, named
    message = _refusal(_pipeline(digits, beta_schedule="squaredcos_cap_v2"), schedule)
    assert "its training schedule (betas digest" in message
    text_to_image = {**schedule.identity, "text_to_image": True}
    message = _refusal(_pipeline(digits), _schedule(digits, identity=text_to_image))
    assert "its model is text-to-image, this pipeline's UNet is not text-to-image" in message


def test_a_schedule_without_identity_applies_with_a_warning(digits):
    with pytest.warns(UserWarning, match="does not record its model's identity .* cannot be "
                                         "checked"):
        with ao.apply(_pipeline(digits), _schedule(digits, model="mine")):
            pass


def test_the_diffusers_fields_clip_as_the_search_did(tiny_unet_dir):
    """``--model diffusers`` with DDPMScheduler's defaults (clip_sample): the exported solver
    alone, in a loop of one's own, samples what ``apply`` samples."""
    model = DiffusersUNetModel("diffusers", tiny_unet_dir, clip_denoised=None)
    assert model.clip_denoised and clips("diffusers", model.scheduler_config)
    fields = diffusers_fields(model.scheduler_config, "dpmpp2m", STEPS,
                              clip=clips("diffusers", model.scheduler_config))
    schedule = SearchedSchedule(model="diffusers", solver="dpmpp2m", timesteps=STEPS,
                                skip=[[]] * 4, diffusers=fields, identity=model_identity(model))
    with ao.apply(_pipeline(model), schedule) as pipe:
        applied = _images(pipe)
    noise = torch.randn((N, *model.sample_shape), generator=_generator())

    def pasted(config):
        scheduler = DPMSolverMultistepScheduler.from_config(config)
        scheduler.set_timesteps(timesteps=fields["timesteps"])
        x = noise.clone()
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(model.unet(x, t).sample, t, x).prev_sample
        return (x / 2 + 0.5).clamp(0, 1)

    torch.testing.assert_close(pasted(fields["scheduler_config"]), applied, rtol=0, atol=1e-5)
    unclipped = {**fields["scheduler_config"], "thresholding": False}
    assert (pasted(unclipped) - applied).abs().max() > 1e-2  # clipping matters here


def test_sample_returns_the_inputs_a_pipeline_reproduces(digits):
    schedule = _schedule(digits, "dpmpp2m")
    images, inputs = ao.sample(schedule, n=N, seed=SEED, return_inputs=True)
    assert torch.equal(images, ao.sample(schedule, n=N, seed=SEED))
    assert inputs.prompts is None and inputs.labels is None
    assert torch.equal(torch.randn(inputs.noise.shape, generator=inputs.generator()),
                       inputs.noise)
    with ao.apply(_pipeline(digits), schedule) as pipe:
        again = pipe(batch_size=N, generator=inputs.generator(), output_type="pt").images
    assert torch.equal(to_uint8(again * 2 - 1), images)
