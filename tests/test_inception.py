"""FID for real models: our Inception path computes features exactly as clean-fid does.

clean-fid's Inception weights (inception-2015-12-05.pt, 100 MB) cannot be fetched here, so these
tests run the feature code on a STAND-IN network: a random TorchScript module with the real
file's interface, loaded through the same code and compared with clean-fid's own
``InceptionV3W`` wrapper and resizer on the same file. The one test that needs the real weights
runs where they are found ($AUTODIFF_MODELS_DIR, ~/.cache/autodiff-optuna or clean-fid's /tmp)
and is skipped, saying so, elsewhere.
"""

import numpy as np
import pytest
import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.inception import (CLEANFID_INCEPTION_DIR, InceptionFeatures,
                                               inception_scorer)
from autodiff_optuna.models.files import resolve
from autodiff_optuna.models.registry import INCEPTION, PRESETS, cleanfid_stats

from realmodel_standins import save_standin_inception, save_stats


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


@pytest.mark.parametrize("mode, resize_inside", [("clean", False),
                                                 ("legacy_tensorflow", True)])
def test_features_equal_cleanfids_own(standin, mode, resize_inside):
    images = _images()
    ours = InceptionFeatures(standin, mode, batch_size=4)(images).numpy()
    theirs = _cleanfid_features(standin, images, resize_inside)
    assert ours.shape == (6, 2048)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_scorer_records_network_mode_and_statistics(tmp_path):
    # 16 features: a 2048-dimensional covariance square root alone takes minutes on the CPU
    standin = save_standin_inception(tmp_path / "inc" / "inception-2015-12-05.pt", dim=16)
    net = InceptionFeatures(standin, "clean")
    feats = net(_images(40, seed=1)).numpy().astype(np.float64)
    stats = save_stats(tmp_path / "ref.npz", feats)
    scorer = inception_scorer(standin, stats, "clean")
    name = scorer.name
    assert name.startswith("inception-v3:inception-2015-12-05.pt@") and ":clean|ref.npz@" in name
    assert scorer.feature_dim == 16
    assert scorer(_images(40, seed=1)) == pytest.approx(0.0, abs=1e-3)  # its own statistics
    assert scorer(_images(40, seed=2)) > 0
    np.savez(tmp_path / "other.npz", mu=feats.mean(0) + 1, sigma=np.cov(feats, rowvar=False))
    assert inception_scorer(standin, tmp_path / "other.npz", "clean").name != name


def test_statistics_of_another_dimension_are_refused(standin, tmp_path):
    stats = save_stats(tmp_path / "small.npz", np.random.default_rng(0).normal(size=(30, 16)))
    with pytest.raises(UsageError, match="16-dimensional statistics.*2048 features"):
        inception_scorer(standin, stats, "clean")


def test_not_an_inception_file_is_one_line(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(UsageError, match="cannot load the Inception network"):
        InceptionFeatures(tmp_path / "x.pt")


def test_file_names_and_urls_are_cleanfids():
    from cleanfid.downloads_helper import inception_url

    assert INCEPTION.url == inception_url
    # get_reference_statistics names its files f"{name}_{mode}_{split}_{res}.npz" under this URL
    stats = PRESETS["ddpm-cifar10"].ref_stats
    assert stats == cleanfid_stats("cifar10", 32, "train")
    assert stats.url == "https://www.cs.cmu.edu/~clean-fid/stats/cifar10_clean_train_32.npz"
    assert PRESETS["ddpm-church256"].ref_stats.name == "lsun_church_clean_train_256.npz"


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
