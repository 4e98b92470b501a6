"""Real model families on tiny randomly initialised models saved in the real formats.

Each tiny model goes through exactly the loading, sampling, skipping, FLOP and study code the real
checkpoints use: its preset is the real one (``adm64``, ``ddpm-cifar10``) with small architecture
flags, registered for the test. Nothing of guided-diffusion, diffusers or clean-fid is mocked.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from realmodel_standins import (
    TINY_ADM_FLAGS,
    TINY_CLASSIFIER_FLAGS,
    isolate,
    save_standin_inception,
    save_stats,
    save_tiny_adm,
    save_tiny_ddpm,
    tiny_adm_preset,
    tiny_ddpm_preset,
)

from autodiff_optuna.cli import main
from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.flops import count_flops, layer_costs
from autodiff_optuna.models import PRESETS, ModelOptions, load_model
from autodiff_optuna.sampling import draw, sample
from autodiff_optuna.sampling.skipping import skipping

pytest.importorskip("guided_diffusion", reason="the adm extra (guided-diffusion-sdk) is needed")

STEPS_FROM_900 = (900, 600, 300, 50)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    checkpoint, classifier = save_tiny_adm(root / "adm")
    ddpm = save_tiny_ddpm(root / "ddpm")
    inception = save_standin_inception(root / "inception" / "inception-2015-12-05.pt")
    stats = save_stats(root / "stats.npz", np.random.default_rng(0).normal(size=(64, 16)))
    return dict(checkpoint=checkpoint, classifier=classifier, ddpm=ddpm, inception=inception,
                stats=stats, root=root)


def _isolate(monkeypatch, tmp_path):
    monkeypatch.setitem(PRESETS, "adm-tiny", tiny_adm_preset())
    monkeypatch.setitem(PRESETS, "ddpm-tiny", tiny_ddpm_preset())
    isolate(monkeypatch, tmp_path)


@pytest.fixture(autouse=True)
def tiny_presets(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path)


def _adm(files, scale=0.0):
    options = ModelOptions(checkpoint=str(files["checkpoint"]), classifier_scale=scale,
                           classifier=str(files["classifier"]) if scale else None)
    return load_model("adm-tiny", "cpu", options)


def _gd_reference(files, scale=0.0):
    """guided-diffusion's own network, classifier and DDIM sampler on the same files."""
    import guided_diffusion.gaussian_diffusion as gd
    from guided_diffusion import script_util
    from guided_diffusion.respace import SpacedDiffusion

    unet = script_util.create_model(**{**TINY_ADM_FLAGS, "use_fp16": False})  # its fp32 forward
    unet.load_state_dict(torch.load(files["checkpoint"]))
    unet.eval()
    classifier = script_util.create_classifier(**{**TINY_CLASSIFIER_FLAGS,
                                                  "classifier_use_fp16": False})
    classifier.load_state_dict(torch.load(files["classifier"]))
    classifier.eval()

    def cond_fn(x, t, y=None):  # guided-diffusion's scripts/classifier_sample.py
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    def ddim(steps, batch):
        diffusion = SpacedDiffusion(
            use_timesteps=set(steps), betas=gd.get_named_beta_schedule("cosine", 1000),
            model_mean_type=gd.ModelMeanType.EPSILON,
            model_var_type=gd.ModelVarType.LEARNED_RANGE, loss_type=gd.LossType.MSE)
        with torch.no_grad():
            return diffusion.ddim_sample_loop(
                unet, tuple(batch.noise.shape), noise=batch.noise.clone(), clip_denoised=True,
                model_kwargs={"y": batch.labels}, cond_fn=cond_fn if scale else None)

    return unet, ddim


# ---- ADM -------------------------------------------------------------------------------------

def test_adm_empty_mask_reproduces_guided_diffusions_forward(files):
    model = _adm(files)
    unet, _ = _gd_reference(files)
    x = torch.randn(4, *model.sample_shape, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 7, 999, 421])
    t = torch.tensor(613)
    with torch.inference_mode():
        reference = unet(x, t.expand(4), labels)
        with skipping(model.skippable_layers(), []):
            ours = model.network_eps(x, t, labels)
    assert reference.shape[1] == 6  # learned sigma: epsilon is the first half
    assert torch.equal(ours, reference[:, :3])


def test_adm_ddim_matches_guided_diffusions_sampler(files):
    model = _adm(files)
    _, ddim = _gd_reference(files)
    batch = draw(model, 6, seed=0)
    ours = sample(model, STEPS_FROM_900, batch)
    assert torch.allclose(ours, ddim(STEPS_FROM_900, batch), atol=1e-5)
    assert torch.equal(sample(model, STEPS_FROM_900, batch, skip=[()] * 4), ours)
    # from t = 999, alpha_bar is ~1e-9 and diffusers' float32 alphas_cumprod (guided-diffusion's
    # are float64) shifts the first x0 by about 1e-3 before clipping; nothing more
    steps = (999, 600, 300, 50)
    assert torch.allclose(sample(model, steps, batch), ddim(steps, batch), atol=5e-3)


def test_adm_g_matches_guided_diffusions_classifier_guidance(files):
    guided = _adm(files, scale=4.0)
    _, ddim = _gd_reference(files, scale=4.0)
    batch = draw(guided, 6, seed=0)
    ours = sample(guided, STEPS_FROM_900, batch)
    assert torch.allclose(ours, ddim(STEPS_FROM_900, batch), atol=1e-4)
    assert not torch.allclose(ours, sample(_adm(files), STEPS_FROM_900, batch), atol=1e-2)
    assert "classifier@" in guided.fingerprint and guided.fingerprint.endswith("*4")
    assert guided.fingerprint != _adm(files).fingerprint  # a study refuses to mix the two


def test_adm_labels_are_uniform_and_fixed_by_the_seed(files):
    model = _adm(files)
    assert model.num_classes == 1000
    a, b = draw(model, 4000, seed=3), draw(model, 4000, seed=3)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.noise, b.noise)
    assert not torch.equal(draw(model, 4000, seed=4).labels, a.labels)
    counts = torch.bincount(a.labels, minlength=1000)
    assert a.labels.min() >= 0 and a.labels.max() <= 999 and (counts > 0).sum() > 950


def test_adm_layers_skip_to_their_bypass(files):
    from guided_diffusion.unet import AttentionBlock, ResBlock

    model = _adm(files)
    layers = model.skippable_layers()
    costs = layer_costs(model)
    # every ResBlock and attention block of input/middle/output blocks, in execution order
    assert costs.layers == tuple(layers) == (
        "input_blocks.1.0", "input_blocks.2.0", "input_blocks.3.0", "input_blocks.3.1",
        "middle_block.0", "middle_block.1", "middle_block.2",
        "output_blocks.0.0", "output_blocks.0.1", "output_blocks.1.0", "output_blocks.1.1",
        "output_blocks.1.2", "output_blocks.2.0", "output_blocks.3.0")
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    labels, t = torch.tensor([1, 2]), torch.tensor(400)
    for name, layer in layers.items():
        seen = {}
        hook = layer.module.register_forward_hook(
            lambda m, args, out, seen=seen: seen.update(x=args[0], out=out))
        with torch.inference_mode():
            full = model.network_eps(x, t, labels)
            full_shape = seen["out"].shape
            with skipping(layers, [name]):
                skipped = model.network_eps(x, t, labels)
        hook.remove()
        module = layer.module
        if isinstance(module, ResBlock):  # the skip path, resampled in up/down blocks
            with torch.inference_mode():
                expected = module.skip_connection(module.x_upd(seen["x"]))
        else:
            assert isinstance(module, AttentionBlock)
            expected = seen["x"]
        assert torch.equal(seen["out"], expected) and seen["out"].shape == full_shape
        assert not torch.equal(skipped, full)
        total, _ = count_flops(model, skip=[name])
        assert costs.saving[name] > 0 and total == costs.full - costs.saving[name]
    assert any(layers[n].module.updown for n in layers if isinstance(layers[n].module, ResBlock))


def test_adm_g_counts_the_classifier_but_not_in_the_layers(files):
    plain, guided = layer_costs(_adm(files)), layer_costs(_adm(files, scale=1.0))
    assert guided.saving == plain.saving  # the network's layers only
    assert guided.full > plain.full  # the classifier's forward and backward cost every step


def test_adm64_flags_give_the_papers_network():
    """The real preset's flags: 296 M parameters, 58 skippable layers, 219 GFLOP per image
    (built on the meta device: no memory, no arithmetic)."""
    from autodiff_optuna.models.adm import AdmModel

    preset = PRESETS["adm64"]
    with torch.device("meta"):
        model = AdmModel("adm64", preset.flags, preset.diffusion, None, device="meta")
    model.clip_denoised = False  # the clip reads alpha_bar at a concrete step
    assert sum(p.numel() for p in model.unet.parameters()) == pytest.approx(296e6, rel=0.01)
    assert len(model.skippable_layers()) == 58
    assert model.sample_shape == (3, 64, 64) and model.num_classes == 1000
    assert layer_costs(model).full / 1e9 == pytest.approx(219, rel=0.01)


def test_adm_checkpoint_errors_are_one_line(files, tmp_path):
    from autodiff_optuna.models.registry import load_model as uncached

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read ADM weights"):
        uncached.__wrapped__("adm-tiny", "cpu", ModelOptions(checkpoint=str(tmp_path / "junk.pt"),
                                                             classifier_scale=0))
    wrong = {k: v for k, v in torch.load(files["checkpoint"]).items() if "out." not in k}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(UsageError, match="does not fit the preset's architecture"):
        uncached.__wrapped__("adm-tiny", "cpu", ModelOptions(checkpoint=str(tmp_path / "wrong.pt"),
                                                             classifier_scale=0))


def test_adm_without_the_extra_says_how_to_install(monkeypatch, files):
    import sys

    from autodiff_optuna.models.registry import load_model as uncached

    monkeypatch.setitem(sys.modules, "guided_diffusion", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install '\.\[adm\]'"):
        uncached.__wrapped__("adm-tiny", "cpu", ModelOptions(checkpoint=str(files["checkpoint"])))


@pytest.mark.slow  # torch.compile
def test_compiled_blocks_equal_eager_with_masks_and_a_short_last_batch(files):
    """--compile on the public path (the sampler prepares the model, even when its caller
    passes a batch size): every skippable block compiled, full and bypassed variants, and a
    short last batch padded to the compiled shape; the samples are the eager ones."""
    graphs, batch_sizes = [], []

    def backend(gm, example_inputs):  # torch.compile's eager backend, counting the graphs
        graphs.append(gm)
        return gm.forward

    options = ModelOptions(checkpoint=str(files["checkpoint"]), classifier_scale=0,
                           compile=True, batch_size=4)
    model = load_model.__wrapped__("adm-tiny", "cpu", options)  # not kept in the cache
    model.compile_backend = backend
    layers = model.skippable_layers()
    names = tuple(layers)
    skip = [names[:4], names[-2:]]  # ResBlocks and attention, full and bypassed
    batch = draw(model, 6, seed=0)  # batches of 4 and 2
    hook = model.unet.register_forward_pre_hook(lambda m, args: batch_sizes.append(len(args[0])))
    try:
        compiled = sample(model, (900, 100), batch, batch_size=4, skip=skip)
        assert graphs and all(layer.module._compiled_call_impl is not None
                              for layer in layers.values())
        assert set(batch_sizes) == {4}  # the short batch ran padded to the compiled shape
        batch_sizes.clear()
        with model.eager():
            eager = sample(model, (900, 100), batch, batch_size=4, skip=skip)
        assert sorted(set(batch_sizes)) == [2, 4]
    finally:
        hook.remove()
        torch._dynamo.reset()
    # The padded batch of 4 and the eager batch of 2 take different BLAS blockings, so sums come
    # out in another order: a few float32 ulps (1.3e-5 seen on one CPU). A misplaced bypass or a
    # wrong padding row moves samples by orders of magnitude more.
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)


def test_fingerprints_hash_the_loaded_files_by_content(files, tmp_path):
    """Renaming a checkpoint keeps its fingerprint (a study resumes); for diffusers only the
    weights file from_pretrained reads counts, not other variants beside it."""
    import shutil

    from diffusers import UNet2DModel

    uncached = load_model.__wrapped__
    renamed = tmp_path / "renamed.pt"
    shutil.copy(files["checkpoint"], renamed)
    assert uncached("adm-tiny", "cpu", ModelOptions(checkpoint=str(renamed),
                                                    classifier_scale=0)).fingerprint \
        == _adm(files).fingerprint
    def ddpm(path):
        return uncached("ddpm-tiny", "cpu", ModelOptions(checkpoint=str(path)))

    reference = ddpm(files["ddpm"]).fingerprint
    with_variant = shutil.copytree(files["ddpm"], tmp_path / "with-variant")
    (with_variant / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"another file")
    (with_variant / "diffusion_pytorch_model.bin").write_bytes(b"a stale file")
    assert ddpm(with_variant).fingerprint == reference
    # a repository published as .bin only (the older google/ddpm-*): that file is the one
    bin_only = tmp_path / "bin-only"
    UNet2DModel.from_pretrained(files["ddpm"]).save_pretrained(bin_only, safe_serialization=False)
    shutil.copy(files["ddpm"] / "scheduler_config.json", bin_only)
    assert sorted(p.name for p in bin_only.glob("diffusion_pytorch_model*")) == \
        ["diffusion_pytorch_model.bin"]
    model = ddpm(bin_only)
    assert model.fingerprint != reference
    batch = draw(model, 2, seed=0)
    assert torch.equal(sample(model, (900, 100), batch), sample(ddpm(files["ddpm"]),
                                                                (900, 100), batch))


# ---- google/ddpm-* through diffusers --------------------------------------------------------

def test_ddpm_flat_directory_loads_samples_and_skips(files):
    model = load_model("ddpm-tiny", "cpu", ModelOptions(checkpoint=str(files["ddpm"])))
    assert model.sample_shape == (3, 16, 16) and model.num_classes is None
    assert model.clip_denoised and model.num_train_timesteps == 1000
    costs = layer_costs(model)
    batch = draw(model, 4, seed=0)
    full = sample(model, (999, 500, 100), batch)
    assert torch.equal(sample(model, (999, 500, 100), batch, skip=[(), (), ()]), full)
    skipped = sample(model, (999, 500, 100), batch, skip=[costs.layers[:2], (), costs.layers[-2:]])
    assert skipped.shape == full.shape and not torch.equal(skipped, full)
    assert full.abs().max() <= 1.0 + 1e-5  # x0 clipped, as diffusers' DDPM pipeline samples


def test_ddpm_old_hub_scheduler_config(tmp_path):
    from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel

    model = DiffusersUNetModel("old", save_tiny_ddpm(tmp_path / "d", old_scheduler_config=True))
    assert model.num_train_timesteps == 1000
    assert model.scheduler_config["beta_schedule"] == "linear"


def test_ddpm_hub_id_from_the_offline_cache(files, tmp_path):
    """A hub id resolves through the Hugging Face cache only (HF_HUB_CACHE is this test's)."""
    import shutil

    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--google--ddpm-cifar10-32"
    shutil.copytree(files["ddpm"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert huggingface_hub.constants.HF_HUB_CACHE == str(tmp_path / "hf")
    # uncached: the real preset's name must not hold this tiny model for later tests
    uncached = load_model.__wrapped__
    model = uncached("ddpm-cifar10", "cpu", ModelOptions(checkpoint="google/ddpm-cifar10-32"))
    assert model.sample_shape == (3, 16, 16)
    # and without --checkpoint, the preset's hub id is found in the cache too
    assert uncached("ddpm-tiny", "cpu").fingerprint == model.fingerprint is not None


# ---- studies through the CLI -----------------------------------------------------------------

def _study_args(files, tmp_path, model, *extra):
    return ["study", "--model", model, "--steps", "3", "--trials", "3", "--stage2-trials", "3",
            "--population", "3", "--samples", "20", "--device", "cpu", "--quiet",
            "--storage", f"sqlite:///{tmp_path}/s.db", "--ref-stats", str(files["stats"]),
            "--inception", str(files["inception"]), *extra]


def _stored_config(tmp_path, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/s.db").user_attrs


@pytest.fixture(scope="module")
def adm_g_study(files, tmp_path_factory):
    """One short two-stage study of the tiny ADM-G (its guidance scale: the preset's 1.0),
    shared by the tests that read it: (its directory, its command line)."""
    root = tmp_path_factory.mktemp("adm-g-study")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate(monkeypatch, root)
        argv = _study_args(files, root, "adm-tiny", "--checkpoint", str(files["checkpoint"]),
                           "--classifier", str(files["classifier"]))
        assert main(argv) == 0
    return root, argv


@pytest.mark.slow  # a whole study on ADM-G
def test_short_study_on_tiny_adm_g(adm_g_study, capsys):
    tmp_path, argv = adm_g_study
    assert main(["best", "--name", "adm-tiny-k3", "--storage", f"sqlite:///{tmp_path}/s.db",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials"]["stage1"]["complete"] == 3 and len(summary["front"]) >= 1
    attrs = _stored_config(tmp_path, "adm-tiny-k3")
    # which network and statistics scored every trial, by their digests
    assert attrs["fid_features"].startswith("inception-v3@")
    assert ":legacy_tensorflow|ref-stats@" in attrs["fid_features"]
    assert "classifier@" in attrs["config"]["model_weights"]
    assert summary["model_weights"] == attrs["config"]["model_weights"]
    # another guidance scale is another network: the rerun is refused, naming the field
    assert main(argv + ["--classifier-scale", "2"]) == 2
    assert "model_weights" in capsys.readouterr().err


@pytest.mark.slow  # a whole study and report on ADM-G
def test_report_export_and_sample_need_the_studys_model_flags(adm_g_study, files, tmp_path,
                                                              capsys):
    """``report`` and ``sample`` load the model the study searched with, from the same flags,
    and refuse in one line, naming the flag, any other network or FID features."""
    import optuna

    study_dir, argv = adm_g_study
    url = f"sqlite:///{study_dir}/s.db"
    flags = ["--device", "cpu", "--checkpoint", str(files["checkpoint"]), "--classifier",
             str(files["classifier"]), "--ref-stats", str(files["stats"]), "--inception",
             str(files["inception"])]
    report = ["report", "--name", "adm-tiny-k3", "--storage", url, "--out", str(tmp_path / "r"),
              "--artifacts", str(tmp_path / "a"), "--top", "1", "--grid", "4",
              "--heldout-samples", "17", "--no-png"]
    assert main(report + flags) == 0, capsys.readouterr().err
    assert (tmp_path / "r" / "index.html").is_file()
    exported = next((tmp_path / "r").glob("samples-*exported.png"))  # best-exported, or alone
    assert exported.read_bytes()[:4] == b"\x89PNG"
    attrs = optuna.load_study(study_name="adm-tiny-k3", storage=url).user_attrs
    cached = attrs["heldout_fid"]
    assert cached and all(c["fid_features"] == attrs["fid_features"]
                          and c["model_weights"] == attrs["config"]["model_weights"]
                          for c in cached)
    capsys.readouterr()
    # another guidance scale is another network: one line that names the study's scale
    assert main(report + flags + ["--classifier-scale", "2"]) == 2
    err = _one_line_error(capsys)
    assert "study 'adm-tiny-k3' was made with model weights" in err
    assert "pass --classifier-scale 1" in err
    other = save_stats(tmp_path / "other.npz", np.random.default_rng(1).normal(size=(64, 16)))
    assert main(report + flags + ["--ref-stats", str(other)]) == 2
    err = _one_line_error(capsys)
    assert "was scored with FID features" in err and "the --ref-stats whose digest is" in err
    assert "--inception" not in err  # the network is the study's: only the statistics differ
    # the schedule file records the weights; sampling it takes the same flags
    schedule = tmp_path / "schedule.json"
    assert main(["export", "--name", "adm-tiny-k3", "--storage", url, "--out",
                 str(schedule)]) == 0
    provenance = json.loads(schedule.read_text())["provenance"]
    assert provenance["model_weights"] == attrs["config"]["model_weights"]
    sample = ["sample", "--schedule", str(schedule), "--n", "4", "--out", str(tmp_path / "g.png")]
    model_flags = flags[:6]
    assert main(sample + model_flags) == 0, capsys.readouterr().err
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(sample + model_flags + ["--classifier-scale", "3"]) == 2
    err = _one_line_error(capsys)
    assert f"schedule {schedule} was made with model weights" in err
    assert "pass --classifier-scale 1" in err
    # without flags the files are looked for where the preset's are, and named when missing
    assert main(sample + ["--device", "cpu"]) == 2
    assert "missing 64x64_diffusion.pt (ADM weights)" in _one_line_error(capsys)


def test_mismatch_messages_name_the_flag():
    from types import SimpleNamespace

    from autodiff_optuna.metrics import check_same_scorer
    from autodiff_optuna.models.registry import check_same_model

    def refused(stored, loaded):
        with pytest.raises(UsageError) as err:
            check_same_model(SimpleNamespace(fingerprint=loaded, name="adm64"), stored,
                             "study 's'")
        return str(err.value).split(": pass ", 1)[1]

    check_same_model(SimpleNamespace(fingerprint="abc", name="adm64"), "abc", "study 's'")
    check_same_model(SimpleNamespace(fingerprint="abc", name="adm64"), None, "old")  # unrecorded
    assert refused("abc", "def") == "the --checkpoint whose digest is abc"
    assert refused("abc+bf16", "abc") == "--precision bf16"
    assert refused("abc+classifier@c1*4+bf16", "abc+bf16") == "--classifier-scale 4"
    assert refused("abc", "abc+classifier@c1*1") == "--classifier-scale 0"
    assert refused("abc+classifier@c1*1", "abc+classifier@c2*1") == \
        "the --classifier whose digest is c1"
    assert refused("abc+classifier@c1*1", "xyz+classifier@c1*1+fp16") == \
        "the --checkpoint whose digest is abc and --precision fp32"
    with pytest.raises(UsageError, match="pass the --inception whose digest is n1 and the "
                                         "--ref-stats whose digest is s1$"):
        check_same_scorer(SimpleNamespace(name="inception-v3@n2:clean|ref-stats@s2"),
                          "inception-v3@n1:clean|ref-stats@s1", "study 's'")
    with pytest.raises(UsageError, match="the bundled weights are not the ones"):
        check_same_model(SimpleNamespace(fingerprint="new", name="digits"), "old", "study 's'")
    # Stable Diffusion: the prompt list and the guidance scale are part of the model
    assert refused("w+prompts@p1*7.5", "w+prompts@p1*3") == "--guidance-scale 7.5"
    assert refused("w+prompts@p1*7.5", "w+prompts@p2*7.5+bf16") == \
        "the --prompts whose prompt list's digest is p1 and --precision fp32"


@pytest.mark.parametrize("stored, loaded, hint", [
    ("inception-v3@n:clean|ref-images@i1", "inception-v3@n:clean|ref-images@i2",
     "the --ref-images folder whose images' digest is i1"),
    ("inception-v3@n:clean|ref-teacher@t1*8", "inception-v3@n:clean|ref-stats@s",
     "--ref-teacher 8"),
    ("inception-v3@n:clean|ref-teacher@t1*8", "inception-v3@n:clean|ref-teacher@t2*4",
     "--ref-teacher 8"),
    ("inception-v3@n:clean|ref-teacher@t1*8", "inception-v3@n:clean|ref-teacher@t2*8",
     "--ref-teacher 8 with the model, precision and --inception it was made with (its "
     "statistics' digest is t1)"),
    ("inception-v3@n:clean|ref-stats@s", "inception-v3@m:clean|ref-images@i",
     "the --inception whose digest is n and the --ref-stats whose digest is s"),
    ("digits-cnn64:sklearn-digits-all@d", "digits-cnn64@w|ref-teacher@t*20",
     "no --ref-teacher (it was scored against the bundled statistics of real digits)"),
    ("digits-cnn64@w|ref-teacher@t*20", "digits-cnn64:sklearn-digits-all@d", "--ref-teacher 20"),
])
def test_a_study_scored_against_another_reference_names_the_flag(stored, loaded, hint):
    from types import SimpleNamespace

    from autodiff_optuna.metrics import check_same_scorer

    with pytest.raises(UsageError) as err:
        check_same_scorer(SimpleNamespace(name=loaded), stored, "study 's'")
    assert str(err.value).endswith(f": pass {hint}")


@pytest.mark.slow  # 2.9 s on the idle machine: out of the fast subset
def test_short_study_on_tiny_ddpm(files, tmp_path, capsys):
    argv = _study_args(files, tmp_path, "ddpm-tiny", "--checkpoint", str(files["ddpm"]),
                       "--stage", "1")
    assert main(argv) == 0, capsys.readouterr().err
    attrs = _stored_config(tmp_path, "ddpm-tiny-k3")
    assert ":clean|ref-stats@" in attrs["fid_features"]
    capsys.readouterr()
    assert main(["evaluate", "--model", "ddpm-tiny", "--timesteps", "800,400,50", "--samples",
                 "20", "--device", "cpu", "--checkpoint", str(files["ddpm"]), "--ref-stats",
                 str(files["stats"]), "--inception", str(files["inception"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 20 and np.isfinite(result["fid"])


# ---- any diffusers UNet2DModel: --model diffusers ------------------------------------------

def test_any_diffusers_unet_in_either_layout(files, tiny_unet_dir):
    """The flat layout (google/ddpm-*) and a pipeline's folder (unet/, scheduler/); the
    training schedule is the folder's scheduler config, x0 clipped where it says clip_sample."""
    uncached = load_model.__wrapped__
    flat = uncached("diffusers", "cpu", ModelOptions(checkpoint=str(files["ddpm"])))
    preset = uncached("ddpm-tiny", "cpu", ModelOptions(checkpoint=str(files["ddpm"])))
    assert flat.fingerprint == preset.fingerprint and flat.clip_denoised  # clip_sample: true
    batch = draw(flat, 3, seed=0)
    assert torch.equal(sample(flat, (900, 100), batch), sample(preset, (900, 100), batch))
    nested = uncached("diffusers", "cpu", ModelOptions(checkpoint=str(tiny_unet_dir)))
    assert nested.sample_shape == (1, 8, 8) and nested.num_train_timesteps == 1000
    assert nested.scheduler_config["beta_schedule"] == "linear"


@pytest.mark.slow  # 2.6 s on the idle machine: out of the fast subset
def test_a_study_of_any_diffusers_unet(files, tmp_path, capsys):
    argv = _study_args(files, tmp_path, "diffusers", "--checkpoint", str(files["ddpm"]),
                       "--stage", "1")
    assert main(argv) == 0, capsys.readouterr().err
    attrs = _stored_config(tmp_path, "diffusers-k3")
    assert attrs["config"]["model"] == "diffusers" and "|ref-stats@" in attrs["fid_features"]
    assert attrs["training_schedule"]["num_train_timesteps"] == 1000


@pytest.mark.parametrize("checkpoint, message", [
    (None, "model 'diffusers' needs --checkpoint DIR|HUB_ID: an unconditional diffusers "
           "UNet2DModel"),
    ("SD_UNET", "is a UNet2DConditionModel, not an unconditional diffusers UNet2DModel: Stable "
                "Diffusion runs as --model sd14 or sd15"),
    ("ROOT", "is not a diffusers model directory: it needs unet/config.json and "
             "scheduler/scheduler_config.json"),
    ("STATS", "should be a directory"),
    ("someone/absent-model", "--checkpoint someone/absent-model: not a local directory, and the "
                             "hub model is not in the Hugging Face cache"),
])
def test_not_a_diffusers_unet_is_one_line(files, tmp_path, capsys, checkpoint, message):
    from tiny_sd import save_tiny_sd

    sd_unet = tmp_path / "sd" / "unet"
    if checkpoint == "SD_UNET":  # a Stable Diffusion folder's UNet, beside its scheduler
        save_tiny_sd(tmp_path / "sd")
        shutil.copy(tmp_path / "sd" / "scheduler" / "scheduler_config.json", sd_unet)
        capsys.readouterr()  # transformers' progress bar of the save
    checkpoint = {"SD_UNET": str(sd_unet), "ROOT": str(files["root"]),
                  "STATS": str(files["stats"])}.get(checkpoint, checkpoint)
    argv = ["study", "--model", "diffusers", "--steps", "3", "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path}/s.db", "--ref-stats", str(files["stats"]),
            "--inception", str(files["inception"])]
    assert main(argv + (["--checkpoint", checkpoint] if checkpoint else [])) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "s.db").exists()


# ---- missing files: one line, the file, its URL, where to put it, exit 2 --------------------

def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("model, extra, needles", [
    ("adm64", [], ["missing 64x64_diffusion.pt",
                   "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
                   "64x64_diffusion.pt", "--checkpoint"]),
    ("adm-tiny", ["--checkpoint", "CKPT"],
     ["missing 64x64_classifier.pt", "/jul-2021/64x64_classifier.pt", "--classifier",
      "--classifier-scale 0"]),
    ("adm-tiny", ["--checkpoint", "CKPT", "--classifier-scale", "0"],
     ["missing VIRTUAL_imagenet64_labeled.npz",
      "/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz", "--ref-stats"]),
    ("adm-tiny", ["--checkpoint", "CKPT", "--classifier-scale", "0", "--ref-stats", "STATS"],
     ["missing inception-2015-12-05.pt", "https://nvlabs-fi-cdn.nvidia.com/", "--inception"]),
    ("ddpm-cifar10", [], ["missing google/ddpm-cifar10-32", "https://huggingface.co/google/"
                          "ddpm-cifar10-32", "ddpm-cifar10-32", "--checkpoint"]),
    ("ddpm-tiny", ["--checkpoint", "DDPM", "--inception", "INCEPTION"],
     ["missing cifar10_clean_train_32.npz",
      "https://www.cs.cmu.edu/~clean-fid/stats/cifar10_clean_train_32.npz"]),
])
def test_missing_files_are_one_line_with_url_and_directory(model, extra, needles, files,
                                                          tmp_path, capsys):
    subst = {"CKPT": str(files["checkpoint"]), "STATS": str(files["stats"]),
             "DDPM": str(files["ddpm"]), "INCEPTION": str(files["inception"])}
    argv = ["study", "--model", model, "--steps", "3", "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path}/s.db", *[subst.get(a, a) for a in extra]]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    for needle in needles + [str(tmp_path / "models")]:  # $AUTODIFF_MODELS_DIR: where it goes
        assert needle in err, (needle, err)


def test_files_are_found_in_the_models_directory(files, tmp_path):
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(files["checkpoint"], models / "64x64_diffusion.pt")
    from autodiff_optuna.models.files import resolve

    assert resolve(PRESETS["adm64"].weights) == models / "64x64_diffusion.pt"
    with pytest.raises(UsageError, match="--checkpoint /nope: no such file"):
        resolve(PRESETS["adm64"].weights, "/nope")


def test_bedroom_has_no_default_statistics(files, tmp_path, capsys):
    import dataclasses

    PRESETS["ddpm-tiny"] = dataclasses.replace(tiny_ddpm_preset(), ref_stats=None)
    argv = ["study", "--model", "ddpm-tiny", "--steps", "3", "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path}/s.db", "--checkpoint", str(files["ddpm"])]
    assert main(argv) == 2
    assert "pass --ref-stats" in _one_line_error(capsys)
    assert PRESETS["ddpm-bedroom256"].ref_stats is None


def test_download_fetches_files_and_leaves_nothing_partial(tmp_path, capsys):
    from autodiff_optuna.models.files import RemoteFile, download

    source = tmp_path / "published.pt"
    source.write_bytes(b"weights")
    good = RemoteFile("w.pt", source.as_uri(), "--checkpoint", "weights")
    assert download([good], tmp_path / "dest") == [tmp_path / "dest" / "w.pt"]
    assert (tmp_path / "dest" / "w.pt").read_bytes() == b"weights"
    bad = RemoteFile("x.pt", (tmp_path / "absent.pt").as_uri(), "--checkpoint", "weights")
    with pytest.raises(UsageError, match="cannot download"):
        download([bad], tmp_path / "dest")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["w.pt"]
    assert main(["download", "digits"]) == 0
    assert "bundled" in capsys.readouterr().out
    assert main(["download", "diffusers"]) == 2  # whatever --checkpoint names: nothing to fetch
    assert "nothing of its own to download" in _one_line_error(capsys)


def test_junk_reference_statistics_are_one_line(files, tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert main(["evaluate", "--model", "ddpm-tiny", "--timesteps", "800,50", "--samples", "20",
                 "--device", "cpu", "--checkpoint", str(files["ddpm"]), "--ref-stats", str(junk),
                 "--inception", str(files["inception"])]) == 2
    err = _one_line_error(capsys)
    assert f"cannot read FID reference statistics {junk}" in err


def test_evaluate_refuses_too_few_samples_naming_the_minimum(files, capsys):
    assert main(["evaluate", "--model", "ddpm-tiny", "--timesteps", "800,50", "--samples", "10",
                 "--device", "cpu", "--checkpoint", str(files["ddpm"]), "--ref-stats",
                 str(files["stats"]), "--inception", str(files["inception"])]) == 2
    assert "--samples must exceed the FID feature dimension (16): at least 17, got 10" in \
        _one_line_error(capsys)


def test_download_timeout_must_be_positive(capsys):
    for timeout in ("-1", "0", "nan"):
        assert main(["download", "adm64", "--timeout", timeout]) == 2
        assert "--timeout must be a positive number of seconds" in _one_line_error(capsys)


def test_download_falls_back_to_bin_weights_where_a_hub_repository_has_no_safetensors(
        tmp_path, capsys):
    """The older google/ddpm-* repositories publish diffusion_pytorch_model.bin alone."""
    from autodiff_optuna.models.files import RemoteFile, download

    published = tmp_path / "hub" / "resolve" / "main"  # the hub's URL layout, as file:// URLs
    published.mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.bin", "scheduler_config.json"):
        (published / name).write_text(name)
    remote = PRESETS["ddpm-cifar10"].weights
    assert "diffusion_pytorch_model.safetensors" in remote.files
    local = RemoteFile(remote.name, (tmp_path / "hub").as_uri(), remote.flag, remote.what,
                       hub_id=remote.hub_id, files=remote.files)
    [target] = download([local], tmp_path / "dest")
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json", "diffusion_pytorch_model.bin", "scheduler_config.json"]
    assert "has no diffusion_pytorch_model.safetensors: fetching" in capsys.readouterr().out
    download([local], tmp_path / "dest")  # a rerun finds the .bin and fetches nothing
    assert "downloading" not in capsys.readouterr().out
    (published / "config.json").unlink()  # any other missing file is still an error
    with pytest.raises(UsageError, match="cannot download .*config.json"):
        download([local], tmp_path / "dest2")
