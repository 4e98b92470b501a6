"""FID reference statistics of a folder of real images (``--ref-images``) and of a model's own
many-step samples (``--ref-teacher``).

clean-fid's Inception weights are absent here, so the networks are stand-ins with its TorchScript
interface (tests/realmodel_standins.py); what is compared with clean-fid is its own code path on
the same file: ``InceptionV3W`` and ``get_folder_features``, the mean and covariance as
``make_custom_stats`` takes them (which itself cannot run here: it loads the network from
clean-fid's fixed /tmp path, downloading it, and writes into clean-fid's package folder).
"""

import io
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from realmodel_standins import save_standin_inception
from torch import nn

import autodiff_optuna.metrics.reference as reference
from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDScorer, to_uint8
from autodiff_optuna.metrics.inception import InceptionFeatures
from autodiff_optuna.metrics.reference import (
    TEACHER_SEED_OFFSET,
    image_files,
    reference_from_images,
    reference_from_teacher,
    resolve_images,
)
from autodiff_optuna.models.files import RemoteFile


class _WideLayers(nn.Module):
    """2048 features cheaply (clean-fid's wrapper views them as 2048): a pooled linear map."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.linear = nn.Linear(48, 2048)

    def forward(self, x):
        return torch.tanh(self.linear(self.pool(x).flatten(1)))[:, :, None, None]


class WideStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _WideLayers()

    def forward(self, img, return_features: bool = False):
        x = F.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear",
                          align_corners=False)
        return self.layers((x - 128) / 128).flatten(1)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 2048-feature stand-in under clean-fid's file name (its InceptionV3W reads both)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wide") / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(WideStandIn().eval()), str(path))
    return path


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    return save_standin_inception(tmp_path_factory.mktemp("narrow") / "inception.pt", dim=16)


def _folder(path, n, seed=0, size=8, start=0):
    """``n`` random RGB PNGs (and, for variety, every fifth a greyscale JPEG-free PNG)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(start, start + n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(pixels if i % 5 else pixels[:, :, 0])
        sub = path / "nested" if i % 7 == 0 else path  # clean-fid reads any depth
        sub.mkdir(exist_ok=True)
        image.save(sub / f"{i:05d}.png")
    return path


def _cleanfid_folder_features(folder, standin_path, mode="clean", batch_size=7):
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    net = InceptionV3W(str(standin_path.parent), download=False,
                       resize_inside=mode == "legacy_tensorflow").eval()
    return get_folder_features(str(folder), net, num_workers=0, batch_size=batch_size,
                               device=torch.device("cpu"), mode=mode, verbose=False)


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_folder_features_are_cleanfids(wide, tmp_path, mode):
    folder = _folder(tmp_path / "imgs", 12)
    # the same batches as clean-fid's (a batch's size may change a float's last bit)
    features = InceptionFeatures(wide, mode, batch_size=7)
    ours = reference.folder_features(image_files(folder), features)
    np.testing.assert_array_equal(ours, _cleanfid_folder_features(folder, wide, mode))


@pytest.mark.slow  # 2049 images through clean-fid's resizer, twice: about 20 s on one core
def test_statistics_equal_cleanfids_custom_stats(wide, tmp_path):
    folder = _folder(tmp_path / "imgs", 2049)
    ref = reference_from_images(folder, InceptionFeatures(wide, batch_size=64),
                                tmp_path / "cache")
    feats = _cleanfid_folder_features(folder, wide, batch_size=64)  # make_custom_stats's
    np.testing.assert_array_equal(ref.mu, np.mean(feats, axis=0))
    np.testing.assert_array_equal(ref.sigma, np.cov(feats, rowvar=False))
    with pytest.raises(UsageError, match="holds 2048 images.*at least 2049"):
        reference_from_images(_folder(tmp_path / "few", 2048), InceptionFeatures(wide),
                              tmp_path / "cache")


def test_statistics_are_cached_by_content(narrow, tmp_path, monkeypatch):
    features = InceptionFeatures(narrow)
    folder = _folder(tmp_path / "imgs", 24)
    cache = tmp_path / "cache"
    first = reference_from_images(folder, features, cache)
    feats = reference.folder_features(image_files(folder), features)
    np.testing.assert_array_equal(first.mu, np.mean(feats, axis=0))
    np.testing.assert_array_equal(first.sigma, np.cov(feats, rowvar=False))
    (stats,) = cache.iterdir()
    saved = stats.read_bytes()
    # a rerun, or the same images under other names elsewhere, computes nothing
    moved = tmp_path / "moved"
    for i, file in enumerate(image_files(folder)):
        (moved / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (moved / f"d{i % 3}" / f"x{i}.png").write_bytes(open(file, "rb").read())
    monkeypatch.setattr(reference, "folder_features", _must_not_run)
    for again in (reference_from_images(folder, features, cache),
                  reference_from_images(moved, features, cache)):
        assert again.name == first.name
        np.testing.assert_array_equal(again.mu, first.mu)
        np.testing.assert_array_equal(again.sigma, first.sigma)
    monkeypatch.undo()
    # computed again, the same statistics are the same bytes (a scorer's digest is stable)
    stats.unlink()
    reference_from_images(folder, features, cache)
    assert stats.read_bytes() == saved
    # other images, or another network or mode: other statistics
    _folder(folder, 1, seed=9, start=100)
    assert reference_from_images(folder, features, cache).name != first.name
    reference_from_images(moved, InceptionFeatures(narrow, "legacy_tensorflow"), cache)
    assert len(list(cache.iterdir())) == 3


def _must_not_run(*args, **kwargs):
    raise AssertionError("the cached statistics should have been used")


def test_images_scored_against_their_own_folder(narrow, tmp_path):
    """Images written to PNG and read back by clean-fid have the features our scorer computes
    for the same uint8 tensors: FID of a folder's own images against its statistics is 0."""
    images = torch.randint(0, 256, (30, 3, 12, 12), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    features = InceptionFeatures(narrow)
    ref = reference_from_images(folder, features, tmp_path / "cache")
    scorer = FIDScorer(features, ref.mu, ref.sigma, name=f"test|{ref.name}")
    assert scorer(images) == pytest.approx(0.0, abs=1e-4)


def test_bad_folders_are_one_line(narrow, tmp_path):
    features = InceptionFeatures(narrow)
    few = _folder(tmp_path / "few", 16)
    (few / "notes.txt").write_text("not an image")  # not an image extension: not counted
    cases = [(few, "holds 16 images: FID needs more than its feature dimension \\(16\\), "
                   "at least 17"),
             (tmp_path / "absent", "no such folder")]
    junk = _folder(tmp_path / "junk", 20)
    (junk / "00003.png").write_bytes(b"not a png at all")
    cases.append((junk, "cannot read reference image .*00003.png"))
    cut = _folder(tmp_path / "cut", 20, size=64)
    (cut / "00004.png").write_bytes((cut / "00004.png").read_bytes()[:200])
    cases.append((cut, "cannot read reference image .*00004.png"))
    for folder, message in cases:
        with pytest.raises(UsageError, match=message) as err:
            reference_from_images(folder, features, tmp_path / "cache")
        assert len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # nothing half-made is cached


def test_resolving_the_reference_folder(tmp_path, monkeypatch):
    coco = RemoteFile("val2014", "http://images.cocodataset.org/zips/val2014.zip",
                      flag="--ref-images", what="MS-COCO 2014 validation images")
    monkeypatch.setenv("AUTODIFF_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(UsageError, match=r"missing val2014 .*val2014\.zip and unzip it into "
                                         + str(tmp_path / "models")):
        resolve_images(None, coco)
    (tmp_path / "models" / "val2014").mkdir(parents=True)
    assert resolve_images(None, coco) == tmp_path / "models" / "val2014"
    (tmp_path / "file").write_text("")
    for override, message in ((tmp_path / "file", "is not a folder"),
                              (tmp_path / "nowhere", "no such folder.*val2014.zip")):
        with pytest.raises(UsageError, match=message):
            resolve_images(str(override), coco)
    assert resolve_images(str(tmp_path), coco) == tmp_path


# ---- the model's own samples ----------------------------------------------------------------

@pytest.mark.slow  # 1.6 s on the idle machine: out of the fast subset
def test_teacher_statistics_of_digits(digits, tmp_path, monkeypatch):
    """Any model: the bundled digits model under its own FID network (64 features)."""
    from autodiff_optuna.metrics.fid import digits_scorer
    from autodiff_optuna.models.registry import DIGITS_DIR
    from autodiff_optuna.sampling import HELDOUT, draw, sample
    from autodiff_optuna.sampling.schedules import uniform

    scorer = digits_scorer(DIGITS_DIR)
    lines = io.StringIO()
    monkeypatch.setattr(reference, "TEACHER_CHUNK", 32)  # chunks of 32 images: 3 lines
    ref = reference_from_teacher(digits, scorer, steps=10, n=80, seed=1, solver="ddim",
                                 cache_dir=tmp_path, stream=lines)
    monkeypatch.undo()
    # a line as it starts and one per chunk of images made, with an ETA, as a study's trials
    head, *progress = lines.getvalue().splitlines()
    assert head == ("FID reference: 80 samples of digits, 10 steps of ddim on held-out noise "
                    "(made once and cached)")
    assert [line.split("  (")[0] for line in progress] == [
        "teacher [32/80] images", "teacher [64/80] images", "teacher [80/80] images"]
    assert all(re.search(r"\(\d+\.\ds, ETA \d+m\d\ds\)$", line) for line in progress)
    batch = draw(digits, 80, 1 + TEACHER_SEED_OFFSET, HELDOUT)
    images = to_uint8(sample(digits, uniform(10, 1000), batch, "ddim"))
    feats = scorer.features(images)
    np.testing.assert_allclose(ref.mu, feats.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ref.sigma, np.cov(feats, rowvar=False), rtol=1e-6, atol=1e-6)
    # cached: the same arguments reuse it, other ones do not
    monkeypatch.setattr("autodiff_optuna.sampling.sample", _must_not_run)
    lines = io.StringIO()
    again = reference_from_teacher(digits, scorer, steps=10, n=80, seed=1, solver="ddim",
                                   cache_dir=tmp_path, stream=lines)
    assert lines.getvalue() == ""  # cached: nothing to wait for
    monkeypatch.undo()
    assert again.name == ref.name and np.array_equal(again.sigma, ref.sigma)
    other = reference_from_teacher(digits, scorer, steps=20, n=80, seed=1, solver="ddim",
                                   cache_dir=tmp_path)
    assert other.name != ref.name and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(UsageError, match="at least 65, got 64"):
        reference_from_teacher(digits, scorer, steps=10, n=64, seed=1)
    with pytest.raises(UsageError, match="--ref-teacher must be between 1 and"):
        reference_from_teacher(digits, scorer, steps=0, n=80, seed=1)


def test_teacher_statistics_of_stable_diffusion(narrow, tmp_path):
    """A latent model's samples are decoded before their features are taken."""
    from tiny_sd import PROMPTS, save_tiny_sd

    from autodiff_optuna.models.stable_diffusion import StableDiffusionModel
    from autodiff_optuna.sampling import HELDOUT, draw, sample
    from autodiff_optuna.sampling.schedules import uniform

    sd = StableDiffusionModel("sd-tiny", save_tiny_sd(tmp_path / "sd"), list(PROMPTS))
    features = InceptionFeatures(narrow)
    ref = reference_from_teacher(sd, features, steps=6, n=20, seed=0)
    batch = draw(sd, 20, TEACHER_SEED_OFFSET, HELDOUT)
    images = to_uint8(sample(sd, uniform(6, 1000), batch, "dpmpp2m"))  # decoded
    feats = features(images).numpy().astype(np.float64)
    np.testing.assert_allclose(ref.mu, feats.mean(0), rtol=1e-6, atol=1e-6)
    assert ref.mu.shape == (16,) and ref.sigma.shape == (16, 16)


@pytest.mark.slow  # a study, 1000 teacher samples, refusals and an evaluate: ~10 s on one core
def test_a_digits_study_against_its_own_teacher(tmp_path, capsys, monkeypatch):
    """--ref-teacher on the bundled model: its own digits features, the statistics of its
    5-step samples, cached; the study records them, and refuses another reference."""
    import optuna

    from autodiff_optuna.cli import main

    monkeypatch.setenv("AUTODIFF_MODELS_DIR", str(tmp_path / "models"))
    url = f"sqlite:///{tmp_path}/s.db"
    study = ["study", "--model", "digits", "--steps", "3", "--stage", "1", "--trials", "3",
             "--population", "3", "--samples", "100", "--min-samples", "0", "--quiet",
             "--storage", url]
    assert main(study + ["--ref-teacher", "5"]) == 0, capsys.readouterr().err
    stored = optuna.load_study(study_name="digits-k3", storage=url)
    features = stored.user_attrs["fid_features"]
    assert features.startswith("digits-cnn64@") and "|ref-teacher@" in features
    assert features.endswith("*5")
    assert [p.name.startswith("ref-teacher-") for p in (tmp_path / "models" / "fid-stats")
            .iterdir()] == [True]
    trials = [(t.number, t.values) for t in stored.trials]
    capsys.readouterr()
    for other, message in (([], "fid_features: stored"), (["--ref-stats", "x.npz"],
                                                          "--ref-stats does not apply")):
        assert main(study + other) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
        if not other:  # the bundled statistics: the flag that loads the study's is named
            assert err.endswith("(pass --ref-teacher 5)); rerun with the stored values or "
                                "choose a new --name")
    assert [(t.number, t.values) for t in optuna.load_study(
        study_name="digits-k3", storage=url).trials] == trials
    assert main(["evaluate", "--model", "digits", "--timesteps", "999,500,0", "--samples",
                 "100", "--ref-teacher", "5", "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["fid"])
