"""FID for real models: our Inception path computes features exactly as clean-fid does.

clean-fid's Inception weights (inception-2015-12-05.pt, 100 MB) cannot be fetched here, so these
tests run the feature code on a STAND-IN network: a random TorchScript module with the real
file's interface, loaded through the same code. In clean mode our resize and normalisation are
compared with clean-fid's own resizer and ``InceptionV3W`` wrapper on the same file. In
legacy_tensorflow mode there is nothing of clean-fid's to compare with: it hands the uint8 pixels
to the network's own forward (its resizer is the identity), and the resize inside is the real
file's, which a stand-in cannot check. So that mode's test checks what our side must do, with a
probe network whose "features" describe the input it received. The one test that needs the real
weights runs where they are found ($AUTODIFF_MODELS_DIR, ~/.cache/autodiff-optuna or clean-fid's
/tmp) and is skipped, saying so, elsewhere.
"""

import numpy as np
import pytest
import torch
from realmodel_standins import save_standin_inception, save_stats
from torch import nn

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDScorer, load_reference_stats
from autodiff_optuna.metrics.inception import (
    CLEANFID_INCEPTION_DIR,
    InceptionFeatures,
    inception_scorer,
)
from autodiff_optuna.models.files import resolve
from autodiff_optuna.models.registry import INCEPTION, PRESETS, cleanfid_stats


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A 2048-feature stand-in under clean-fid's file name (its wrapper hard-codes both)."""
    return save_standin_inception(
        tmp_path_factory.mktemp("inc") / "inception-2015-12-05.pt", dim=2048)


def _images(n=6, size=20, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _cleanfid_features(path, images, resize_inside):
    """clean-fid's own path: InceptionV3W (no download) and, in clean mode, its resizer as
    ``get_model_features`` applies it, image by image."""
    from cleanfid.fid import get_batch_features
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    net = InceptionV3W(str(path.parent), download=False, resize_inside=resize_inside).eval()
    if resize_inside:
        batch = images.float()
    else:
        resize = build_resizer("clean")
        batch = torch.cat([torch.tensor(resize(img.permute(1, 2, 0).numpy())
                                        .transpose((2, 0, 1))).unsqueeze(0) for img in images])
    return get_batch_features(batch, net, torch.device("cpu"))


def test_clean_features_equal_cleanfids_own(standin):
    images = _images()
    ours = InceptionFeatures(standin, "clean", batch_size=4)(images).numpy()
    theirs = _cleanfid_features(standin, images, resize_inside=False)
    assert ours.shape == (6, 2048)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


class _ProbeLayers(nn.Module):
    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


class InputProbe(nn.Module):
    """clean-fid's TorchScript interface; its features say what ``forward`` was given: per
    channel the mean, min and max, then the height and width."""

    def __init__(self):
        super().__init__()
        self.layers = _ProbeLayers()

    def forward(self, img, return_features: bool = False):
        size = torch.tensor([img.shape[2], img.shape[3]], dtype=img.dtype).expand(img.shape[0], 2)
        return torch.cat([img.mean((2, 3)), img.amin((2, 3)), img.amax((2, 3)), size], 1)


def test_legacy_tensorflow_hands_the_network_its_own_pixels(tmp_path):
    """ADM's reference statistics were computed with the resize inside the network: clean-fid's
    legacy_tensorflow mode resizes nothing outside it (its resizer is the identity) and passes
    the [0, 255] values, unnormalised, as float (``InceptionV3W(resize_inside=True)``)."""
    from cleanfid.resize import build_resizer

    pixels = _images(5, size=20, seed=3)[0].permute(1, 2, 0).numpy()
    assert build_resizer("legacy_tensorflow")(pixels) is pixels
    path = tmp_path / "probe.pt"
    torch.jit.save(torch.jit.script(InputProbe().eval()), str(path))
    net = InceptionFeatures(path, "legacy_tensorflow", batch_size=2)
    for images in (_images(5, size=20, seed=3), _images(3, size=12, seed=4)[:, :1]):
        x = images.expand(-1, 3, -1, -1).double()  # greyscale: three equal channels
        expected = torch.cat([x.mean((2, 3)), x.amin((2, 3)), x.amax((2, 3)),
                              torch.tensor([x.shape[2], x.shape[3]]).expand(len(x), 2)], 1)
        np.testing.assert_allclose(net(images).numpy(), expected.numpy(), rtol=1e-6)


def test_scorer_records_network_mode_and_statistics(tmp_path):
    # 16 features: a 2048-dimensional covariance square root alone takes minutes on the CPU
    standin = save_standin_inception(tmp_path / "inc" / "inception-2015-12-05.pt", dim=16)
    net = InceptionFeatures(standin, "clean")
    feats = net(_images(40, seed=1)).numpy().astype(np.float64)
    stats = save_stats(tmp_path / "ref.npz", feats)
    scorer = inception_scorer(standin, stats, "clean")
    name = scorer.name
    assert name.startswith("inception-v3@") and ":clean|ref-stats@" in name
    assert scorer.feature_dim == 16
    assert scorer(_images(40, seed=1)) == pytest.approx(0.0, abs=1e-3)  # its own statistics
    assert scorer(_images(40, seed=2)) > 0
    np.savez(tmp_path / "other.npz", mu=feats.mean(0) + 1, sigma=np.cov(feats, rowvar=False))
    assert inception_scorer(standin, tmp_path / "other.npz", "clean").name != name
    assert inception_scorer(standin, stats, "legacy_tensorflow").name != name
    # by contents: the same files under other names are the same features (a study resumes)
    renamed = tmp_path / "elsewhere"
    renamed.mkdir()
    (renamed / "net.pt").write_bytes(standin.read_bytes())
    (renamed / "stats.npz").write_bytes(stats.read_bytes())
    assert inception_scorer(renamed / "net.pt", renamed / "stats.npz", "clean").name == name


def test_statistics_of_another_dimension_are_refused(standin, tmp_path):
    stats = save_stats(tmp_path / "small.npz", np.random.default_rng(0).normal(size=(30, 16)))
    with pytest.raises(UsageError, match="16-dimensional statistics.*2048 features"):
        inception_scorer(standin, stats, "clean")


def test_a_successful_load_shows_no_warning(standin):
    """torch.jit.load is deprecated in torch, and it is how clean-fid's file is read: a user
    has nothing to do about that, so a load that works prints nothing."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whatever pyproject.toml's filters say
        InceptionFeatures(standin)


def test_not_an_inception_file_is_one_line(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(UsageError, match="cannot load the Inception network"):
        InceptionFeatures(tmp_path / "x.pt")


def test_file_names_and_urls_are_cleanfids():
    # INCEPTION's URL is clean-fid's own inception_url (imported); the file name is the one its
    # InceptionV3W reads from its directory
    assert INCEPTION.name == "inception-2015-12-05.pt"
    # get_reference_statistics names its files f"{name}_{mode}_{split}_{res}.npz" under this URL
    stats = PRESETS["ddpm-cifar10"].ref_stats
    assert stats == cleanfid_stats("cifar10", 32, "train")
    assert stats.url == "https://www.cs.cmu.edu/~clean-fid/stats/cifar10_clean_train_32.npz"
    assert PRESETS["ddpm-church256"].ref_stats.name == "lsun_church_clean_train_256.npz"


def _write(path, payload):
    path.write_bytes(payload)
    return path


def test_reference_statistics_that_cannot_be_read_are_one_line(tmp_path):
    """A junk, truncated or foreign file as --ref-stats is named in one UsageError line."""
    good = save_stats(tmp_path / "good.npz", np.random.default_rng(0).normal(size=(30, 4)))
    np.save(tmp_path / "array.npy", np.zeros(4))
    cases = {
        "junk.npz": (_write(tmp_path / "junk.npz", b"not statistics\n" * 20), "cannot read"),
        "empty.npz": (_write(tmp_path / "empty.npz", b""), "cannot read"),
        "cut.npz": (_write(tmp_path / "cut.npz", good.read_bytes()[:300]), "cannot read"),
        "array.npy": (tmp_path / "array.npy", "not an .npz archive"),
        "other.npz": (tmp_path / "other.npz", "holds no 'mu' and 'sigma'"),
        "shapes.npz": (tmp_path / "shapes.npz", r"got shapes \(4,\) and \(3, 3\)"),
        "objects.npz": (tmp_path / "objects.npz", "cannot read"),
    }
    np.savez(tmp_path / "other.npz", mean=np.zeros(4))
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(4), sigma=np.eye(3))
    np.savez(tmp_path / "objects.npz", mu=np.array([{}], dtype=object), sigma=np.eye(1))
    corrupt = bytearray(good.read_bytes())
    corrupt[100:140] = bytes(40)  # inside mu's data: the zip's CRC check fails
    cases["crc.npz"] = (_write(tmp_path / "crc.npz", bytes(corrupt)), "cannot read")
    for name, (path, message) in cases.items():
        with pytest.raises(UsageError, match=message) as err:
            load_reference_stats(path)
        assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1, name
    mu, sigma = load_reference_stats(good)
    assert mu.shape == (4,) and sigma.shape == (4, 4)


def test_sample_counts_for_inception_features():
    """2048 features: 1000 images (the old default) give a singular covariance."""
    from autodiff_optuna.reporting.evaluate import evaluate_samples

    scorer = FIDScorer(lambda x: x, np.zeros(2048), np.eye(2048), name="inception")
    assert scorer.min_samples == 2049 and scorer.default_samples == 4096
    with pytest.raises(UsageError, match="at least 2049, got 1000"):
        scorer.check_sample_count(1000)
    scorer.check_sample_count(2049)
    # evaluate: the study preset's count (adm64-k4.yaml), else the scorer's default
    assert evaluate_samples("adm64", 4, scorer) == 5000
    assert evaluate_samples("adm64", 3, scorer) == 4096


def _real_inception():
    try:
        return resolve(INCEPTION, None, [CLEANFID_INCEPTION_DIR])
    except UsageError:
        return None


@pytest.mark.skipif(_real_inception() is None,
                    reason="clean-fid's Inception weights are absent on this machine: the "
                           "feature code is tested with a stand-in network instead")
def test_real_inception_equals_cleanfid():
    path = _real_inception()
    images = _images(4, size=64)
    ours = InceptionFeatures(path, "clean")(images).numpy()
    np.testing.assert_allclose(ours, _cleanfid_features(path, images, False), atol=1e-4)
