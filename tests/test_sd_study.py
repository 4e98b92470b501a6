"""Stable Diffusion through the command line and through a diffusers pipeline, on the tiny random
SD of tests/tiny_sd.py loaded by the real ``sd14``/``sd15`` presets (``--checkpoint`` points at
it), scored by a stand-in of clean-fid's Inception (tests/realmodel_standins.py). Nothing of
diffusers, transformers, clean-fid or Optuna is mocked."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from realmodel_standins import isolate, save_standin_inception, save_stats
from tiny_sd import PROMPTS, save_tiny_sd, sd_pipeline

import autodiff_optuna as ao
from autodiff_optuna.cli import main
from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import diffusers_fields
from autodiff_optuna.models import PRESETS, ModelOptions, load_model
from autodiff_optuna.sampling import HELDOUT, draw, sample
from autodiff_optuna.sampling.noise import BYTES_PER_VALUE, check_fits, physical_memory

DIM = 8  # the stand-in Inception's features: FID from 9 images up


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-files")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    inception = save_standin_inception(root / "inception" / "inception-2015-12-05.pt", dim=DIM)
    stats = save_stats(root / "stats.npz", np.random.default_rng(0).normal(size=(64, DIM)))
    return SimpleNamespace(sd=save_tiny_sd(root / "sd"), prompts=prompts, inception=inception,
                           stats=stats, root=root)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)


def _model_flags(files, *extra):
    return ["--device", "cpu", "--checkpoint", str(files.sd), "--prompts", str(files.prompts),
            *extra]


def _fid_flags(files, stats=None):
    return ["--ref-stats", str(stats or files.stats), "--inception", str(files.inception)]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def sd_study(files, tmp_path_factory):
    """One short study of both stages of the tiny SD through ``main`` under the sd14 preset:
    (its directory, its command line)."""
    root = tmp_path_factory.mktemp("sd-study")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate(monkeypatch, root)
        argv = ["study", "--model", "sd14", "--steps", "3", "--solver", "dpmpp2m", "--trials",
                "4", "--stage2-trials", "3", "--population", "3", "--samples", "12", "--quiet",
                "--storage", f"sqlite:///{root}/s.db", *_model_flags(files), *_fid_flags(files)]
        assert main(argv) == 0
    return root, argv


def _trials(url: str) -> list:
    return [(t.number, t.state, t.values) for name in optuna.get_all_study_names(url)
            for t in optuna.load_study(study_name=name, storage=url).trials]


@pytest.mark.slow  # a study of both stages, then export, sample, report, refusals: ~20 s
def test_a_study_of_both_stages_then_best_export_and_sample(sd_study, files, tmp_path, capsys):
    root, argv = sd_study
    url = f"sqlite:///{root}/s.db"
    capsys.readouterr()
    assert main(["best", "--name", "sd14-k3", "--storage", url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "sd14" and summary["trials"]["stage1"]["complete"] == 4 \
        and summary["front"]
    assert summary["model_weights"].endswith("*7.5") and "+prompts@" in summary["model_weights"]
    assert "|ref-stats@" in summary["fid_features"]
    # the text encoder and the VAE decoder: counted, beside the UNet's GFLOPs, never skipped
    assert set(summary["unskippable_gflops"]) == {"text_encoder", "vae_decode"}
    assert all(g > 0 for g in summary["unskippable_gflops"].values())
    assert main(["best", "--name", "sd14-k3", "--storage", url]) == 0
    assert "not skippable: text encoder " in capsys.readouterr().out

    schedule = tmp_path / "schedule.json"
    assert main(["export", "--name", "sd14-k3", "--storage", url, "--out", str(schedule)]) == 0
    exported = json.loads(schedule.read_text())
    fields = exported["diffusers"]
    assert fields["timesteps"] == exported["timesteps"] and fields["guidance_scale"] == 7.5
    assert fields["scheduler"] == "DPMSolverMultistepScheduler"
    assert fields["num_train_timesteps"] == 1000
    config = fields["scheduler_config"]
    assert config["solver_order"] == 2 and config["beta_schedule"] == "scaled_linear"

    grid = tmp_path / "grid.png"
    assert main(["sample", "--schedule", str(schedule), "--n", "4", "--out", str(grid),
                 *_model_flags(files)]) == 0
    assert Image.open(grid).size == (2 * (4 * 64 + 2) + 2,) * 2  # 2x2 of 64 px, enlarged 4x
    # the report: held-out FIDs and grids of decoded images, with the study's model flags
    assert main(["report", "--name", "sd14-k3", "--storage", url, "--out", str(tmp_path / "r"),
                 "--artifacts", str(tmp_path / "a"), "--top", "1", "--grid", "4",
                 "--heldout-samples", "9", "--no-png", "--schedule", str(schedule),
                 *_model_flags(files), *_fid_flags(files)]) == 0, capsys.readouterr().err
    exported = next((tmp_path / "r").glob("samples-*exported.png"))  # best-exported, or alone
    assert Image.open(exported).size == Image.open(grid).size
    capsys.readouterr()
    # another guidance scale, or other prompts, is another model: one line naming the flag
    assert main(["sample", "--schedule", str(schedule), "--out", str(grid),
                 *_model_flags(files, "--guidance-scale", "3")]) == 2
    assert "pass --guidance-scale 7.5" in _error(capsys)
    reversed_prompts = tmp_path / "reversed.txt"
    reversed_prompts.write_text("\n".join(reversed(PROMPTS)))
    assert main(["sample", "--schedule", str(schedule), "--out", str(grid), "--device", "cpu",
                 "--checkpoint", str(files.sd), "--prompts", str(reversed_prompts)]) == 2
    assert "pass the --prompts whose prompt list's digest is " in _error(capsys)
    # a resume against another reference is refused, naming the flag; nothing is stored
    before = _trials(url)
    other = save_stats(tmp_path / "other.npz", np.random.default_rng(1).normal(size=(64, DIM)))
    assert main(argv[:-4] + _fid_flags(files, other)) == 2
    err = _error(capsys)
    assert "fid_features: stored" in err and "(pass the --ref-stats whose digest is" in err
    assert _trials(url) == before


@pytest.mark.parametrize("relative", ["unet/config.json", "vae/diffusion_pytorch_model.safetensors",
                                      "text_encoder/model.safetensors",
                                      "scheduler/scheduler_config.json"])
@pytest.mark.parametrize("model, hub_id", [("sd14", "CompVis/stable-diffusion-v1-4"),
                                           ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5")])
def test_a_missing_component_is_one_line_naming_its_url(files, tmp_path, capsys, relative, model,
                                                        hub_id):
    """The preset's folder in the models directory: the file's URL in its repository; a folder
    of one's own (--checkpoint DIR): no public model to point at."""
    copy = tmp_path / "models" / hub_id.split("/")[1]
    shutil.copytree(files.sd, copy)
    (copy / relative).unlink()
    argv = ["study", "--model", model, "--steps", "3", "--storage", f"sqlite:///{tmp_path}/s.db",
            "--device", "cpu", "--prompts", str(files.prompts), *_fid_flags(files)]
    assert main(argv) == 2
    err = _error(capsys)
    assert f"{copy} lacks {relative}: download https://huggingface.co/{hub_id}/resolve/main/" \
           f"{relative} into {copy / relative.split('/')[0]}" in err
    assert main(argv + ["--checkpoint", str(copy)]) == 2
    err = _error(capsys)
    assert f"{copy} lacks {relative}: it is not a diffusers Stable Diffusion folder" in err
    assert "huggingface.co" not in err
    assert not (tmp_path / "s.db").exists()  # refused before any study is made


def test_missing_weights_prompts_and_reference_images_are_one_line(files, tmp_path, capsys):
    models = tmp_path / "models"  # $AUTODIFF_MODELS_DIR: where each missing file goes
    base = ["study", "--model", "sd14", "--steps", "3", "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path}/s.db"]
    assert main(base) == 2
    err = _error(capsys)
    assert err.startswith("error: missing CompVis/stable-diffusion-v1-4 (Stable Diffusion in "
                          "diffusers' format): download https://huggingface.co/CompVis/"
                          "stable-diffusion-v1-4 (unet/config.json, ")
    assert str(models / "stable-diffusion-v1-4") in err and "download sd14` fetches it" in err
    assert main(base + ["--checkpoint", str(files.sd)]) == 2
    err = _error(capsys)
    assert "missing captions_val2014.json (MS-COCO 2014 validation captions" in err
    assert "http://images.cocodataset.org/annotations/annotations_trainval2014.zip" in err
    assert f"put it in {models} (or pass --prompts PATH)" in err
    assert main(base + ["--checkpoint", str(files.sd), "--prompts", str(files.prompts)]) == 2
    err = _error(capsys)
    assert "missing val2014 (MS-COCO 2014 validation images, the zip's val2014/ folder): " \
           f"download http://images.cocodataset.org/zips/val2014.zip and unzip it into {models}" \
           " (or pass --ref-images DIR)" in err
    assert main(base + _model_flags(files) + ["--ref-images", str(tmp_path / "none")]) == 2
    assert "--ref-images " in _error(capsys)
    assert main(base + _model_flags(files) + ["--ref-images", str(tmp_path),
                                              "--ref-teacher", "8"]) == 2
    assert "--ref-images and --ref-teacher: give one FID reference at a time" in _error(capsys)
    assert not (tmp_path / "s.db").exists()


def _images_folder(path, n, size=64):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            path / f"{i}.png")
    return path


@pytest.mark.slow  # 1.9 s on the idle machine: out of the fast subset
def test_scored_against_a_folder_of_images_or_its_own_samples(files, tmp_path, capsys,
                                                              monkeypatch):
    """--ref-images (clean-fid statistics of a folder, cached in the models directory) and
    --ref-teacher (the model's own many-step samples), named in the scorer's recorded name."""
    from autodiff_optuna.metrics import load_scorer
    from autodiff_optuna.metrics.fid import to_uint8
    from autodiff_optuna.metrics.reference import TEACHER_SEED_OFFSET
    from autodiff_optuna.sampling.schedules import uniform

    folder = _images_folder(tmp_path / "real", 12)
    evaluate = ["evaluate", "--model", "sd14", "--timesteps", "999,500", "--samples", "12",
                "--solver", "dpmpp2m", "--json", "--inception", str(files.inception),
                *_model_flags(files)]
    assert main(evaluate + ["--ref-images", str(folder)]) == 0, capsys.readouterr().err
    assert np.isfinite(json.loads(capsys.readouterr().out)["fid"])
    cached = list((tmp_path / "models" / "fid-stats").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("ref-images-")

    options = ModelOptions(checkpoint=str(files.sd), prompts=str(files.prompts),
                           inception=str(files.inception), ref_teacher=3)
    # the teacher's sample count is FID's default for the features (1000 here): 12 suffice
    monkeypatch.setattr("autodiff_optuna.metrics.scorers.default_samples", lambda dim: 12)
    scorer = load_scorer.__wrapped__("sd14", "cpu", options)
    assert "|ref-teacher@" in scorer.name and scorer.name.endswith("*3")
    model = load_model("sd14", "cpu", options)
    images = sample(model, uniform(3, 1000), draw(model, 12, TEACHER_SEED_OFFSET, HELDOUT),
                    "dpmpp2m")
    feats = scorer.features(to_uint8(images))
    np.testing.assert_allclose(scorer.ref_mu, feats.mean(0), rtol=1e-6, atol=1e-6)


def test_memory_check_counts_latents_and_images():
    """A latent model's noise is small, its images large: both are in the per-image bytes."""
    model = SimpleNamespace(name="sd14", sample_shape=(4, 64, 64), image_shape=(3, 512, 512))
    per_image = BYTES_PER_VALUE * (4 * 64 * 64 + 2 * 3 * 512 * 512)
    have = physical_memory()
    if have is None:
        pytest.skip("this system does not say how much memory it has")
    check_fits(model, have // per_image, "--samples")
    with pytest.raises(UsageError, match=r"images of sd14 \(3x512x512\) need about .* at most "
                                         f"{have // per_image:,} here"):
        check_fits(model, have // per_image + 1, "--samples")


# ---- a diffusers StableDiffusionPipeline -----------------------------------------------------

STEPS = [900, 600, 300, 40]


@pytest.mark.parametrize("solver", ["ddim", "dpmpp2m"])
@pytest.mark.parametrize("skips", [False, True])
def test_a_pipeline_samples_what_the_search_sampled(files, solver, skips):
    """``apply`` on a StableDiffusionPipeline built of the same components, called with each
    sample's prompt and noise as latents: the images are ours. The pipeline encodes the batch's
    prompts in one call of its own size, ours in fixed batches of 32, so the text embeddings may
    differ in their last bits on another machine (on this CPU they, and the images, are equal):
    compared to 1e-5."""
    model = load_model("sd14", "cpu", ModelOptions(checkpoint=str(files.sd),
                                                   prompts=str(files.prompts)))
    layers = list(model.skippable_layers())
    skip = ([[layers[0]], [], [layers[3], layers[9]], []] if skips else [[]] * 4)
    schedule = ao.SearchedSchedule(model="sd14", solver=solver, timesteps=STEPS, skip=skip,
                                   diffusers=diffusers_fields(model.scheduler_config, solver,
                                                              STEPS, model.fingerprint))
    batch = draw(model, 6, 3, HELDOUT)
    ours = sample(model, tuple(STEPS), batch, solver, skip=[tuple(s) for s in skip])
    prompts = [model.prompts[i] for i in batch.labels]
    pipe = sd_pipeline(model)
    with ao.apply(pipe, schedule):
        latents = pipe(prompt=prompts, latents=batch.noise.clone(), guidance_scale=7.5,
                       num_inference_steps=50, output_type="latent").images
        images = pipe(prompt=prompts, latents=batch.noise.clone(), guidance_scale=7.5,
                      output_type="pt").images
    torch.testing.assert_close(model.decode(latents), ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(images, (ours / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"  # restored
    if not skips:  # without skips, what the export says to paste gives the same images
        from diffusers import DPMSolverMultistepScheduler

        fields = schedule.diffusers
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(fields["scheduler_config"])
        pasted = pipe(prompt=prompts, latents=batch.noise.clone(), output_type="pt",
                      timesteps=fields["timesteps"], guidance_scale=fields["guidance_scale"]
                      ).images
        torch.testing.assert_close(pasted, images, rtol=0, atol=1e-5)


def test_a_pipeline_refuses_a_schedule_of_another_model(files):
    model = load_model("sd14", "cpu", ModelOptions(checkpoint=str(files.sd),
                                                   prompts=str(files.prompts)))
    pipe = sd_pipeline(model)
    fields = diffusers_fields({**model.scheduler_config, "num_train_timesteps": 500}, "ddim",
                              STEPS)
    other = ao.SearchedSchedule(model="sd15", solver="ddim", timesteps=STEPS, skip=[[]] * 4,
                                diffusers=fields)
    with pytest.raises(ValueError, match="that model has 500 training steps, this pipeline's "
                                         "scheduler 1000"):
        ao.apply(pipe, other)
    adm = ao.SearchedSchedule(model="sd14", solver="ddim", timesteps=STEPS,
                              skip=[["input_blocks.1.0"], [], [], []])
    with pytest.raises(ValueError, match="no layer named 'input_blocks.1.0'"):
        ao.apply(pipe, adm)


def test_download_fetches_the_hub_files_and_says_where_coco_is(files, tmp_path, capsys,
                                                               monkeypatch):
    """``download sd14`` fetches the repository's files (file:// URLs in the hub's layout
    here), not MS-COCO's gigabytes: one line says where those are published."""
    import dataclasses

    from autodiff_optuna.models.files import RemoteFile

    hub = tmp_path / "hub"
    for relative in PRESETS["sd14"].weights.files:
        (hub / "resolve" / "main" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files.sd / relative, hub / "resolve" / "main" / relative)
    weights = PRESETS["sd14"].weights
    local = RemoteFile(weights.name, hub.as_uri(), weights.flag, weights.what,
                       hub_id=weights.hub_id, files=weights.files)
    monkeypatch.setitem(PRESETS, "sd-local", dataclasses.replace(PRESETS["sd14"],
                                                                 name="sd-local", weights=local))
    target = tmp_path / "dest"
    target.mkdir()
    shutil.copy(files.inception, target / "inception-2015-12-05.pt")  # have it: no network
    assert main(["download", "sd-local", "--dir", str(target)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == (
        "not downloaded: MS-COCO 2014 validation captions, annotations/captions_val2014.json in "
        "the zip from http://images.cocodataset.org/annotations/annotations_trainval2014.zip and "
        "MS-COCO 2014 validation images, the zip's val2014/ folder from "
        f"http://images.cocodataset.org/zips/val2014.zip, into {target} (or pass --prompts and "
        "--ref-images)")
    fetched = target / "stable-diffusion-v1-4"
    model = load_model("sd-local", "cpu", ModelOptions(checkpoint=str(fetched),
                                                       prompts=str(files.prompts)))
    assert model.image_shape == (3, 64, 64)


# ---- bench/gpu.py's Stable Diffusion 1.5 row --------------------------------------------------

def _sd15_on_meta():
    from bench.sd_unet import SD15_UNET, RandomSDUNet

    with torch.device("meta"):  # no memory, no arithmetic
        return RandomSDUNet(SD15_UNET, device="meta")


def test_the_bench_builds_sd15s_unet():
    """SD 1.5's config written in bench/sd_unet.py gives its UNet: 859.5 M parameters, and the
    search's 38 skippable layers (every ResnetBlock2D and Transformer2DModel)."""
    model = _sd15_on_meta()
    assert sum(p.numel() for p in model.unet.parameters()) == 859_520_964
    layers = model.skippable_layers()
    assert len(layers) == 38 and model.sample_shape == (4, 64, 64)
    assert sum(".attentions." in name for name in layers) == 16


@pytest.mark.slow  # FLOPs of the 860 M-parameter UNet on the meta device, then the CPU smoke run
def test_the_bench_sd15_row_counts_and_runs(tmp_path):
    from autodiff_optuna.metrics.flops import layer_costs
    from bench import gpu

    costs = layer_costs(_sd15_on_meta())
    assert costs.full / 1e9 == pytest.approx(803.3, rel=1e-3)  # per 512x512 image and call
    try:
        assert gpu.main(["--smoke", "--model", "sd15", "--batch", "2", "--repeats", "1",
                         "--out", str(tmp_path / "sd15.json")]) == 0
    finally:
        torch._dynamo.reset()  # its compiled blocks are not for later tests
    results = json.loads((tmp_path / "sd15.json").read_text())
    assert results["model"] == "sd15" and results["layers"] == 24
    assert set(results["phases"]) == {"eager full", "eager masked", "compiled full",
                                      "compiled masked"}


def test_every_study_preset_names_a_model_and_its_steps():
    """The presets <model>-k<steps>.yaml: the Stable Diffusion ones (sd14-k6, sd15-k4)."""
    from autodiff_optuna.search.config import PRESETS_DIR, load_preset

    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    assert {"sd14-k6", "sd15-k4"} <= set(names)
    for name in names:
        model, steps = name.rsplit("-k", 1)
        values = load_preset(model, int(steps))
        assert values["model"] == model and values["steps"] == int(steps) and model in PRESETS
    assert load_preset("sd14", 6)["solver"] == "dpmpp2m"
