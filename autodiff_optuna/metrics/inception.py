"""FID for real models: clean-fid's Inception-V3 with reference statistics, no download ever.

clean-fid loads its TorchScript Inception (``inception-2015-12-05.pt``) from a fixed path
(``/tmp``), downloading it when absent, and fetches its precomputed statistics on demand; neither
may happen in a search. So the network is loaded here from a path resolved like every model file
(``--inception``, ``$AUTODIFF_MODELS_DIR``, the default models directory, then clean-fid's own
``/tmp`` copy, read-only), and the statistics likewise (``--ref-stats``, the models directories,
then clean-fid's ``stats/`` folder). Features are computed exactly as clean-fid computes them:

- ``clean``: each image resized to 299x299 by clean-fid's own resizer (PIL bicubic on float
  channels, ``build_resizer("clean")``), then the network's ``layers`` on ``(x - 128) / 128``
  (``InceptionV3W.forward`` with ``resize_inside=False``);
- ``legacy_tensorflow``: the uint8 images into the network's own forward, which resizes inside
  like TensorFlow's FID graph (``resize_inside=True``): how ADM's evaluator computed the
  statistics of its reference batches.

The network runs in batches on the scorer's device (the GPU when there is one); the CPU resize
runs on a thread pool.
"""

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDScorer, load_reference_stats
from autodiff_optuna.models.base import files_digest
from autodiff_optuna.models.files import RemoteFile, quiet_loading, resolve
from autodiff_optuna.models.registry import INCEPTION

MODES = ("clean", "legacy_tensorflow")
CLEANFID_INCEPTION_DIR = Path("/tmp")  # cleanfid.features.feature_extractor's fixed path


def cleanfid_stats_dir() -> Path | None:
    """clean-fid's package ``stats/`` folder, where it keeps the statistics it downloads."""
    spec = importlib.util.find_spec("cleanfid")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "stats"


class InceptionFeatures:
    """uint8 images (n, 3, H, W) -> (n, d) float features, as clean-fid computes them."""

    def __init__(self, path: Path, mode: str = "clean", device: str | torch.device = "cpu",
                 batch_size: int | None = None):
        if mode not in MODES:
            raise UsageError(f"unknown FID mode {mode!r}; known: {', '.join(MODES)}")
        self.device = torch.device(device)
        try:
            with quiet_loading():
                self.base = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as err:
            raise UsageError(f"cannot load the Inception network {path} (a TorchScript file "
                             f"such as clean-fid's inception-2015-12-05.pt): "
                             f"{str(err).splitlines()[0]}") from None
        if not hasattr(self.base, "layers"):
            raise UsageError(f"{path} is not clean-fid's Inception network (it has no 'layers')")
        self.mode = mode
        self.batch_size = batch_size or (500 if self.device.type == "cuda" else 100)
        self._resize = None

    def resize(self, images: np.ndarray) -> np.ndarray:
        """clean-fid's clean resize, image by image: (n, H, W, 3) uint8 -> (n, 3, 299, 299)."""
        if self._resize is None:
            from cleanfid.resize import build_resizer

            self._resize = build_resizer("clean")
        workers = min(len(images), os.cpu_count() or 1) or 1
        with ThreadPoolExecutor(workers) as pool:
            resized = list(pool.map(self._resize, images))
        return np.stack(resized).transpose(0, 3, 1, 2)

    @torch.inference_mode()
    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise ValueError("expected a uint8 batch (n, C, H, W)")
        if images_uint8.shape[1] == 1:  # greyscale: three equal channels, as PIL would
            images_uint8 = images_uint8.expand(-1, 3, -1, -1)
        chunks = []
        for start in range(0, len(images_uint8), self.batch_size):
            batch = images_uint8[start:start + self.batch_size].cpu()
            if self.mode == "clean":
                x = torch.from_numpy(self.resize(batch.permute(0, 2, 3, 1).numpy()))
                x = x.to(self.device, torch.float32)
                feats = self.base.layers.forward((x - 128) / 128)
            else:
                x = batch.to(self.device, torch.float32)
                feats = self.base(x, return_features=True)
            chunks.append(feats.reshape(len(batch), -1).float().cpu())
        return torch.cat(chunks)


def inception_name(weights: Path, mode: str) -> str:
    """The network's part of a scorer's name: by contents alone (a renamed or moved file is the
    same network), and the mode its features are computed in."""
    return f"inception-v3@{files_digest([weights])}:{mode}"


def inception_scorer(weights: Path, stats: Path, mode: str = "clean",
                     device: str | torch.device = "cpu") -> FIDScorer:
    """A scorer whose name records the network, the mode and the statistics (by digest)."""
    net = InceptionFeatures(weights, mode, device)
    mu, sigma = load_reference_stats(stats)
    probe = net(torch.zeros((2, 3, 16, 16), dtype=torch.uint8))
    if probe.shape[1] != mu.shape[0]:
        raise UsageError(f"{stats} holds {mu.shape[0]}-dimensional statistics, but the "
                         f"Inception network {weights} gives {probe.shape[1]} features")
    return FIDScorer(net, mu, sigma, name=f"{inception_name(weights, mode)}|ref-stats@"
                     f"{files_digest([stats])}", batch_size=INCEPTION_SCORER_BATCH)


# images per call of the Inception features (InceptionFeatures batches on the device within it)
INCEPTION_SCORER_BATCH = 10_000


def reference_stats_file(preset, override: str | None) -> Path:
    """``--ref-stats``, else the preset's published statistics (clean-fid's ``stats/`` folder
    is looked in too)."""
    if override:
        any_stats = RemoteFile("reference statistics", "", "--ref-stats", "FID statistics")
        return resolve(preset.ref_stats or any_stats, override)
    extra = [d for d in [cleanfid_stats_dir()] if d is not None]
    return resolve(preset.ref_stats, None, extra, preset=preset.name)


def inception_weights(preset, options) -> Path:
    """clean-fid's Inception file: ``--inception``, the models directories, clean-fid's /tmp."""
    return resolve(INCEPTION, options.inception, [CLEANFID_INCEPTION_DIR], preset=preset.name)
