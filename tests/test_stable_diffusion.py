"""Stable Diffusion v1 through the model interface, on a tiny random SD in diffusers' format
(tests/tiny_sd.py: diffusers' and transformers' own classes, saved and loaded as the hub's)."""

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from tiny_sd import PROMPTS, save_tiny_sd, sd_pipeline

import autodiff_optuna as ao
from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import diffusers_fields
from autodiff_optuna.metrics.fid import to_uint8
from autodiff_optuna.metrics.flops import count_flops, layer_costs
from autodiff_optuna.models.identity import model_identity
from autodiff_optuna.models.prompts import read_prompts, resolve_prompts
from autodiff_optuna.models.registry import COCO_IMAGES, PRESETS, ModelOptions, load_model
from autodiff_optuna.models.stable_diffusion import REPO_FILES, StableDiffusionModel
from autodiff_optuna.sampling import HELDOUT, SEARCH, draw, sample
from autodiff_optuna.sampling.skipping import skipping

STEPS = (999, 749, 499, 249)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def sd(sd_dir):
    return StableDiffusionModel("sd-tiny", sd_dir, list(PROMPTS))


def _images(model, seed, n=4, purpose=SEARCH, skip=None):
    """The sampler's images: the latents it samples, decoded by the model's VAE."""
    batch = draw(model, n, seed, purpose)
    return batch, to_uint8(sample(model, STEPS, batch, "dpmpp2m", skip=skip))


def test_latent_shapes_prompts_and_layers(sd):
    assert sd.sample_shape == (4, 8, 8) and sd.image_shape == (3, 64, 64)
    assert sd.num_classes == len(PROMPTS) and sd.num_train_timesteps == 1000
    assert sd.scheduler_config["beta_schedule"] == "scaled_linear"
    layers = list(sd.skippable_layers())
    assert "down_blocks.0.attentions.0" in layers and "mid_block.attentions.0" in layers
    assert "up_blocks.1.resnets.1" in layers and len(layers) == 12
    assert all(".transformer_blocks." not in name for name in layers)  # whole blocks only
    weights, prompts = sd.fingerprint.split("+")
    assert len(weights) == 12 and prompts.startswith("prompts@") and prompts.endswith("*7.5")


def test_same_seed_same_prompts_noise_and_images(sd, sd_dir):
    batch, images = _images(sd, seed=3)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 64, 64)
    again_batch, again = _images(sd, seed=3)
    assert torch.equal(batch.labels, again_batch.labels) and torch.equal(images, again)
    # another process: the model loaded again, its text embeddings computed again
    fresh = StableDiffusionModel("sd-tiny", sd_dir, list(PROMPTS))
    assert torch.equal(_images(fresh, seed=3)[1], images)
    other, other_images = _images(sd, seed=4)
    assert not torch.equal(other_images, images)
    heldout, _ = _images(sd, seed=3, purpose=HELDOUT)
    assert not torch.equal(heldout.noise, batch.noise)


def test_a_prompts_embedding_does_not_depend_on_its_batch(sd, sd_dir):
    everything = sd.prompt_embeddings(torch.arange(len(PROMPTS)))
    fresh = StableDiffusionModel("sd-tiny", sd_dir, list(PROMPTS))
    for i in (3, 1):  # alone, after prompt 0 at load
        assert torch.equal(fresh.prompt_embeddings(torch.tensor([i])), everything[i:i + 1])
    assert torch.equal(fresh.prompt_embeddings(torch.tensor([4, 4, 2])),
                       everything[[4, 4, 2]])


def _reference_eps(model, x, t, labels, scale):
    """Guidance computed here from transformers' and diffusers' own calls."""
    tok, enc = model.tokenizer, model.text_encoder

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
        return enc(ids)[0]

    with torch.no_grad():
        cond = model.unet(x, t, encoder_hidden_states=embed(
            [model.prompts[i] for i in labels])).sample
        uncond = model.unet(x, t, encoder_hidden_states=embed([""] * len(x))).sample
    return uncond + scale * (cond - uncond), cond


def test_classifier_free_guidance(sd, sd_dir):
    x = torch.randn((3, *sd.sample_shape), generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor(500), torch.tensor([2, 0, 4])
    guided, cond = _reference_eps(sd, x, t, labels, 7.5)
    with torch.inference_mode():
        torch.testing.assert_close(sd.predict_noise(x, t, labels), guided, rtol=1e-4, atol=1e-4)
        plain = StableDiffusionModel("sd-tiny", sd_dir, list(PROMPTS), guidance_scale=1)
        torch.testing.assert_close(plain.predict_noise(x, t, labels), cond, rtol=1e-5,
                                   atol=1e-5)
        assert not torch.allclose(sd.predict_noise(x, t, torch.tensor([1, 1, 1])), guided)
    assert plain.fingerprint.split("+")[1].endswith("*1") and plain.fingerprint != sd.fingerprint
    with pytest.raises(ValueError, match="labels"):
        sd.predict_noise(x, t)


# diffusers 0.42's own Transformer2DModel output class warns that it is deprecated
@pytest.mark.filterwarnings("ignore:`Transformer2DModelOutput` is deprecated:FutureWarning")
def test_skipped_layers_change_output_and_flops(sd):
    x = torch.randn((2, *sd.sample_shape), generator=torch.Generator().manual_seed(1))
    t, labels = torch.tensor(700), torch.tensor([0, 3])
    layers = sd.skippable_layers()
    costs = layer_costs(sd)
    full, per_module = count_flops(sd)
    assert costs.full == full and set(costs.saving) == set(layers)
    with torch.inference_mode():
        eps = sd.predict_noise(x, t, labels)
        for name in ("mid_block.attentions.0", "down_blocks.1.resnets.0"):
            with skipping(layers, [name]):
                assert not torch.allclose(sd.predict_noise(x, t, labels), eps)
            skipped, _ = count_flops(sd, skip=[name])
            assert 0 < costs.saving[name] and skipped == full - costs.saving[name]
        # an attention block's bypass does no work at all; its output type is the block's
        assert costs.saving["mid_block.attentions.0"] == per_module["mid_block.attentions.0"]
        block, h = layers["mid_block.attentions.0"].module, torch.randn(1, 64, 2, 2)
        real = block(h, encoder_hidden_states=torch.randn(1, 77, 32))
        with skipping(layers, ["mid_block.attentions.0"]):
            assert block(h, return_dict=False)[0] is h
            out = block(h)
        assert type(out) is type(real) and out.sample is h
        torch.testing.assert_close(sd.predict_noise(x, t, labels), eps)  # restored
    # the whole schedule's cost, as stage 2 counts it: steps x (full - skipped)
    assert costs.gflops([("mid_block.attentions.0",), ()]) == pytest.approx(
        (2 * full - costs.saving["mid_block.attentions.0"]) / 1e9)


def test_flops_count_both_halves_of_the_guided_batch(sd, sd_dir):
    plain = StableDiffusionModel("sd-tiny", sd_dir, list(PROMPTS), guidance_scale=1)
    guided_flops, _ = count_flops(sd)
    plain_flops, _ = count_flops(plain)
    assert guided_flops == 2 * plain_flops  # the text encoder is not in either count
    # counted beside them: one prompt through the text encoder, one latent through the decoder
    from autodiff_optuna.metrics.flops import unskippable_gflops

    costs = unskippable_gflops(sd)
    assert set(costs) == {"text_encoder", "vae_decode"} and all(g > 0 for g in costs.values())
    assert unskippable_gflops(plain) == costs  # guidance runs the UNet twice, not these


def test_decode_is_the_vae_and_sliced(sd):
    z = torch.randn((5, *sd.sample_shape), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = sd.vae.decode(z / sd.vae.config.scaling_factor).sample
    whole = sd.decode(z)
    assert whole.shape == (5, 3, 64, 64)
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-5)
    sd.decode_batch_size = 2
    try:
        torch.testing.assert_close(sd.decode(z), whole, rtol=1e-5, atol=1e-5)
    finally:
        sd.decode_batch_size = 4


def test_the_search_scores_it_like_any_model(sd, tmp_path):
    """Sampled, decoded and scored by FID with (a stand-in of) clean-fid's Inception."""
    from realmodel_standins import save_standin_inception, save_stats

    from autodiff_optuna.metrics.inception import InceptionFeatures, inception_scorer

    standin = save_standin_inception(tmp_path / "inception-2015-12-05.pt", dim=8)
    batch, images = _images(sd, seed=0, n=12)
    feats = InceptionFeatures(standin)(images).numpy().astype(np.float64)
    scorer = inception_scorer(standin, save_stats(tmp_path / "ref.npz", feats))
    assert scorer(images) == pytest.approx(0.0, abs=1e-3)
    _, skipped = _images(sd, seed=0, n=12, skip=[("mid_block.resnets.0",)] * 4)
    assert not torch.equal(skipped, images) and scorer(skipped) > scorer(images)


# ---- presets and bad input -------------------------------------------------------------------

def test_preset_facts():
    sd14, sd15 = PRESETS["sd14"], PRESETS["sd15"]
    assert (sd14.family, sd14.fid, sd14.fid_mode) == ("stable-diffusion", "inception", "clean")
    assert sd14.weights.hub_id == "CompVis/stable-diffusion-v1-4"
    assert sd15.weights.url == \
        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert sd15.weights.files == REPO_FILES and sd14.guidance_scale == 7.5
    assert sd14.prompts.name == "captions_val2014.json" and sd14.ref_images is COCO_IMAGES
    assert COCO_IMAGES.url == "http://images.cocodataset.org/zips/val2014.zip"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert any(f.startswith(part + "/") for f in REPO_FILES)


def _tiny_preset():
    return dataclasses.replace(PRESETS["sd14"], name="sd-tiny", batch_size_cpu=None)


def test_from_preset(sd_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODIFF_MODELS_DIR", str(tmp_path / "models"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    model = StableDiffusionModel.from_preset(
        _tiny_preset(), ModelOptions(checkpoint=str(sd_dir), prompts=str(prompts),
                                     guidance_scale=3), "cpu")
    assert model.prompts == list(PROMPTS) and model.guidance_scale == 3
    with pytest.raises(UsageError, match=r"missing captions_val2014\.json.*"
                                         r"annotations_trainval2014\.zip"):
        StableDiffusionModel.from_preset(_tiny_preset(), ModelOptions(checkpoint=str(sd_dir)),
                                         "cpu")
    with pytest.raises(UsageError, match="--prompts .*no such file.*images.cocodataset.org"):
        StableDiffusionModel.from_preset(
            _tiny_preset(), ModelOptions(checkpoint=str(sd_dir),
                                         prompts=str(tmp_path / "absent.txt")), "cpu")
    with pytest.raises(UsageError) as err:  # no weights anywhere, nor in the HF cache
        StableDiffusionModel.from_preset(_tiny_preset(), ModelOptions(prompts=str(prompts)),
                                         "cpu")
    assert str(err.value).startswith(
        "missing CompVis/stable-diffusion-v1-4 (Stable Diffusion in diffusers' format): "
        "download https://huggingface.co/CompVis/stable-diffusion-v1-4 (unet/config.json, ")
    assert str(tmp_path / "models" / "stable-diffusion-v1-4") in str(err.value)
    with pytest.raises(UsageError, match="no classifier guidance"):
        StableDiffusionModel.from_preset(
            _tiny_preset(), ModelOptions(classifier_scale=1.0, prompts=str(prompts)), "cpu")


@pytest.mark.parametrize("relative", ["unet/diffusion_pytorch_model.safetensors",
                                      "vae/config.json", "text_encoder/model.safetensors",
                                      "scheduler/scheduler_config.json"])
def test_a_missing_component_is_one_line(sd_dir, tmp_path, relative):
    copy = tmp_path / "sd"
    shutil.copytree(sd_dir, copy)
    (copy / relative).unlink()
    with pytest.raises(UsageError) as err:  # one's own folder: no public copy to point at
        StableDiffusionModel("sd-tiny", copy, list(PROMPTS))
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert f"{copy} lacks {relative}: it is not a diffusers Stable Diffusion folder" in message
    assert "huggingface.co" not in message
    with pytest.raises(UsageError) as err:  # a published model's folder: where to get it
        StableDiffusionModel("sd-tiny", copy, list(PROMPTS), hub_id="CompVis/stable-diffusion-v1-4")
    assert f"https://huggingface.co/CompVis/stable-diffusion-v1-4/resolve/main/{relative} " \
        f"into {copy / relative.split('/')[0]}" in str(err.value)


def test_a_tokenizer_saved_by_todays_transformers_loads(sd, sd_dir, tmp_path):
    """transformers 5 saves tokenizer.json alone (no vocab.json, merges.txt): whatever
    transformers loads is loaded; a tokenizer it cannot load is one line naming its folder."""
    from transformers import CLIPTokenizer

    copy = tmp_path / "sd"
    shutil.copytree(sd_dir, copy)
    shutil.rmtree(copy / "tokenizer")
    CLIPTokenizer.from_pretrained(sd_dir / "tokenizer").save_pretrained(copy / "tokenizer")
    assert not (copy / "tokenizer" / "vocab.json").exists()
    fresh = StableDiffusionModel("sd-tiny", copy, list(PROMPTS))
    labels = torch.arange(len(PROMPTS))
    assert torch.equal(fresh.prompt_embeddings(labels), sd.prompt_embeddings(labels))
    for kept in ([], ["tokenizer_config.json"]):  # nothing to load a vocabulary from
        for file in (copy / "tokenizer").iterdir():
            if file.name not in kept:
                file.unlink()
        with pytest.raises(UsageError) as err:
            StableDiffusionModel("sd-tiny", copy, list(PROMPTS))
        assert f"cannot load the tokenizer in {copy / 'tokenizer'}" in str(err.value) \
            or f"cannot load {copy / 'tokenizer'}: " in str(err.value)
        assert len(str(err.value).splitlines()) == 1 and "huggingface.co" not in str(err.value)


def test_bad_checkpoints_and_scales_are_one_line(sd_dir, tmp_path):
    copy = tmp_path / "sd"
    shutil.copytree(sd_dir, copy)
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk" * 10)
    for directory, message in ((copy, "cannot load"), (tmp_path / "none", "not a directory")):
        with pytest.raises(UsageError, match=message) as err:
            StableDiffusionModel("sd-tiny", directory, list(PROMPTS))
        assert len(str(err.value).splitlines()) == 1
    for scale in (-1, float("nan")):
        with pytest.raises(UsageError, match="--guidance-scale"):
            StableDiffusionModel("sd-tiny", sd_dir, list(PROMPTS), guidance_scale=scale)


def test_prompts_plain_text_and_coco(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("\ufeff a cat \n\n\ta dog\n")
    assert read_prompts(text) == ["a cat", "a dog"]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 9, "id": 1, "caption": "A cat on a mat.\n"},
        {"image_id": 9, "id": 2, "caption": " a dog"}]}))
    assert read_prompts(coco) == ["A cat on a mat.", "a dog"]
    assert resolve_prompts(str(coco)) == coco


def test_the_same_prompt_list_is_the_same_model(sd, sd_dir, tmp_path):
    """The fingerprint records the prompt list, not the file it came from."""
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"annotations": [{"caption": p} for p in PROMPTS]}))
    same = StableDiffusionModel("sd-tiny", sd_dir, read_prompts(coco))
    assert same.fingerprint == sd.fingerprint
    other = StableDiffusionModel("sd-tiny", sd_dir, list(reversed(PROMPTS)))
    assert other.fingerprint.split("+")[0] == sd.fingerprint.split("+")[0]
    assert other.fingerprint != sd.fingerprint


@pytest.mark.parametrize("content, message", [
    (b"\n  \n\t\n", "holds no prompts"),
    (b"", "holds no prompts"),
    (b"caf\xe9\n", "not UTF-8"),
    (b'{"annotations": [', "not valid JSON"),
    (b'{"images": []}', "not COCO captions"),
    (b'{"annotations": [{"caption": 3}]}', "annotation 0 has no 'caption'"),
    (b'{"annotations": []}', "holds no prompts"),
])
def test_bad_prompts_are_one_line(tmp_path, content, message):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as err:
        read_prompts(path)
    assert len(str(err.value).splitlines()) == 1 and str(path) in str(err.value)


def test_oversized_and_unreadable_prompts(tmp_path, monkeypatch):
    import autodiff_optuna.models.prompts as prompts_module

    monkeypatch.setattr(prompts_module, "MAX_PROMPTS_BYTES", 100)
    big = tmp_path / "big.txt"
    big.write_text("a cat\n" * 40)
    with pytest.raises(UsageError, match="larger than"):
        read_prompts(big)
    with pytest.raises(UsageError, match="is a directory"):
        read_prompts(tmp_path)


# ---- a StableDiffusionPipeline of one's own ----------------------------------------------------


@pytest.fixture(scope="module")
def sd14(sd_dir, tmp_path_factory):
    """The tiny SD as the sd14 preset loads it (``--checkpoint``, ``--prompts``)."""
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    options = ModelOptions(checkpoint=str(sd_dir), prompts=str(prompts))
    return load_model("sd14", "cpu", options), options


def test_readmes_digits_schedule_is_refused_by_a_stable_diffusionsd_pipeline(sd):
    schedule = ao.SearchedSchedule(model="digits", solver="ddim", timesteps=[999, 600, 300, 40],
                                   skip=[[], ["mid_block.attentions.0"], [], []])
    with pytest.raises(ValueError) as err:
        ao.apply(sd_pipeline(sd), schedule)
    message = str(err.value)
    assert "its model is not text-to-image, this pipeline's UNet is text-to-image" in message
    assert "its model's UNet is a UNet2DModel, this pipeline's a UNet2DConditionModel" in message
    assert len(message.splitlines()) == 1


def test_sample_returns_the_prompts_and_latents_a_pipeline_reproduces(sd14):
    model, options = sd14
    steps = list(STEPS)
    schedule = ao.SearchedSchedule(
        model="sd14", solver="dpmpp2m", timesteps=steps, skip=[[], ["mid_block.resnets.0"],
                                                               [], []],
        diffusers=diffusers_fields(model.scheduler_config, "dpmpp2m", steps, model.fingerprint),
        identity=model_identity(model))
    images, inputs = ao.sample(schedule, n=3, seed=1, options=options, return_inputs=True)
    assert inputs.prompts == [model.prompts[i] for i in draw(model, 3, 1, HELDOUT).labels]
    pipe = sd_pipeline(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # none of ours is issued
        with ao.apply(pipe, schedule):
            again = pipe(prompt=inputs.prompts, latents=inputs.noise.clone(), output_type="pt",
                         guidance_scale=schedule.diffusers["guidance_scale"]).images
    # the pipeline encodes its prompts in a batch of its own size: equal to the last bits here
    assert (to_uint8(again * 2 - 1).int() - images.int()).abs().max() <= 1
    with ao.apply(pipe, schedule):  # another guidance scale than the schedule's: a warning
        with pytest.warns(UserWarning, match="guidance_scale 3 is not the schedule's: it was "
                                             r"searched with guidance_scale=7\.5"):
            pipe(prompt=inputs.prompts, latents=inputs.noise.clone(), output_type="latent",
                 guidance_scale=3, num_inference_steps=2)
