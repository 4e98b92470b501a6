"""Adapter for openai/guided-diffusion (ADM) checkpoints, through the ``guided-diffusion-sdk``
package (openai's code on PyPI; the optional ``adm`` extra).

- The network is guided-diffusion's own ``UNetModel``, built by its ``create_model`` from the
  preset's flags and loaded from the ``torch.save``d state dict (``64x64_diffusion.pt``). A
  learned-sigma model has 6 output channels: the first 3 (epsilon) drive the solver.
- Class-conditional models get their labels from the sampling noise batch (``noise.draw`` draws
  them uniformly over the classes from the study seed's stream), so sampling stays generic.
- x0 is clipped to [-1, 1] at every step, as guided-diffusion samples (``clip_denoised=True``);
  with a classifier (ADM-G) epsilon is then shifted by ``-sqrt(1 - alpha_bar) * scale *
  grad log p(y | x_t)``, exactly guided-diffusion's ``condition_score`` in its DDIM sampler.
- Skippable layers: every ResBlock and AttentionBlock of the input, middle and output blocks
  (58 for ImageNet-64). A skipped ResBlock returns its skip path ``skip_connection(x_upd(x))``
  (resampled where it is an up/down block); a skipped attention block is the identity.
"""

import math
import warnings
from pathlib import Path

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel, files_digest
from autodiff_optuna.models.files import resolve

EXTRA_HINT = "pip install '.[adm]' (or pip install -r requirements-adm.txt)"


def import_guided_diffusion():
    """guided-diffusion's script_util, or one line telling how to install it."""
    try:
        with warnings.catch_warnings():  # its nn.py uses torch.cuda.amp's deprecated decorators
            warnings.simplefilter("ignore", FutureWarning)
            from guided_diffusion import script_util
    except ImportError as err:
        raise UsageError(f"ADM models need the guided-diffusion-sdk package ({err.name} is "
                         f"missing): {EXTRA_HINT}") from None
    return script_util


def adm_betas(diffusion: dict) -> list[float]:
    """The training betas exactly as guided-diffusion computes them (float64)."""
    from guided_diffusion.gaussian_diffusion import get_named_beta_schedule

    return [float(b) for b in get_named_beta_schedule(diffusion.get("noise_schedule", "linear"),
                                                      int(diffusion.get("diffusion_steps", 1000)))]


def build_unet(flags: dict) -> torch.nn.Module:
    """guided-diffusion's UNetModel from create_model flags, in fp32 (precision is autocast's)."""
    script_util = import_guided_diffusion()
    return script_util.create_model(**{**flags, "use_fp16": False})


def build_classifier(flags: dict) -> torch.nn.Module:
    script_util = import_guided_diffusion()
    return script_util.create_classifier(**{**flags, "classifier_use_fp16": False})


def load_state(module: torch.nn.Module, path: Path, what: str) -> None:
    """A ``torch.save``d state dict into ``module``; a wrong or corrupt file is one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, not a torch file, pickled code
        raise UsageError(f"cannot read {what} {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UsageError(f"{path} does not hold a state dict")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise UsageError(f"{what} {path} does not fit the preset's architecture: "
                         f"{detail[:300]}") from None


class AdmModel(DiffusionModel):
    def __init__(self, name: str, flags: dict, diffusion: dict, checkpoint: Path | None = None,
                 device: str | torch.device = "cpu", classifier: Path | None = None,
                 classifier_flags: dict | None = None, classifier_scale: float = 0.0,
                 clip_denoised: bool = True, precision: str | None = None,
                 compile: bool = False, batch_size: int | None = None,
                 batch_size_cpu: int | None = None, weights_what: str = "weights",
                 classifier_what: str = "classifier"):
        """``checkpoint=None`` keeps guided-diffusion's random initialisation (benchmarks).
        ``weights_what`` / ``classifier_what`` name the files in messages (the presets'
        ``RemoteFile.what``)."""
        self.name = name
        self._configure_runtime(device, precision, compile, batch_size, batch_size_cpu)
        self.flags = dict(flags)
        self.unet = build_unet(flags)
        if checkpoint is not None:
            load_state(self.unet, checkpoint, weights_what)
        self.unet.to(self.device).eval()
        self.num_classes = self.unet.num_classes
        self.learn_sigma = self.unet.out_channels == 2 * self.unet.in_channels
        size = int(flags["image_size"])
        self.sample_shape = (self.unet.in_channels, size, size)
        self._scheduler_config = {"num_train_timesteps": int(diffusion["diffusion_steps"]),
                                  "trained_betas": adm_betas(diffusion)}
        self.clip_denoised = clip_denoised
        self.classifier = None
        self.classifier_scale = float(classifier_scale)
        fingerprint = [files_digest([checkpoint]) if checkpoint is not None else "random"]
        if self.classifier_scale:
            if classifier is None:
                raise UsageError(f"model {name!r}: classifier guidance needs a classifier")
            if not self.num_classes:
                raise UsageError(f"model {name!r} is not class-conditional: no classifier "
                                 "guidance")
            self.classifier = build_classifier(classifier_flags or {})
            load_state(self.classifier, classifier, classifier_what)
            self.classifier.to(self.device).eval().requires_grad_(False)
            fingerprint.append(f"classifier@{files_digest([classifier])}"
                               f"*{self.classifier_scale:g}")
        self.fingerprint = "+".join(fingerprint) + self._runtime_fingerprint()

    @classmethod
    def from_preset(cls, preset, options, device) -> "AdmModel":
        import_guided_diffusion()  # the missing extra is told before any missing file
        scale = preset.classifier_scale if options.classifier_scale is None \
            else options.classifier_scale
        if not (math.isfinite(scale) and scale >= 0):  # nan would pass `scale < 0`
            raise UsageError(f"--classifier-scale must be a number >= 0, got {scale}")
        checkpoint = resolve(preset.weights, options.checkpoint, preset=preset.name)
        classifier = None
        if scale:
            if preset.classifier is None:
                raise UsageError(f"model {preset.name!r} has no classifier for guidance")
            try:
                classifier = resolve(preset.classifier, options.classifier, preset=preset.name)
            except UsageError as err:
                raise UsageError(f"{err}; or --classifier-scale 0 to sample unguided") from None
        elif options.classifier:
            raise UsageError("--classifier needs a --classifier-scale above 0")
        return cls(preset.name, preset.flags, preset.diffusion, checkpoint, device,
                   classifier=classifier, classifier_flags=preset.classifier_flags,
                   classifier_scale=scale, clip_denoised=preset.clip_denoised,
                   precision=options.precision, compile=options.compile,
                   batch_size=options.batch_size, batch_size_cpu=preset.batch_size_cpu,
                   weights_what=preset.weights.what,
                   classifier_what=preset.classifier.what if preset.classifier else "classifier")

    def network_eps(self, x: torch.Tensor, t: torch.Tensor,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's epsilon half, in fp32 (what the solver consumes before clipping)."""
        def run(x, labels):
            ts = t.reshape(-1).expand(len(x)).to(x.device)
            with self._autocast():
                out = self.unet(x, ts, labels)
            return out[:, : x.shape[1]].float()

        return self._padded(run, x, labels)

    def predict_noise(self, x, t, labels=None):
        if self.num_classes and labels is None:
            raise ValueError(f"{self.name} is class-conditional: labels are required")
        eps = self.network_eps(x, t, labels if self.num_classes else None)
        if self.clip_denoised:
            eps = self._clip_eps(x, t, eps)
        if self.classifier is not None:
            alpha_bar = self._clip_coefficients()[2][int(t)].to(x.device).float()
            eps = eps - (1 - alpha_bar).sqrt() * self.classifier_grad(x, t, labels)
        return eps

    def classifier_grad(self, x: torch.Tensor, t: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
        """``scale * grad_x log p(y | x_t)``, as guided-diffusion's ``classifier_sample.py``
        ``cond_fn`` computes it (autograd on, even inside the sampler's inference mode)."""
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            with self._autocast():
                logits = self.classifier(x_in, t.reshape(-1).expand(len(x)).clone())
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            selected = log_probs[torch.arange(len(logits), device=x.device), labels.clone()]
            # backward() rather than autograd.grad(): the FLOP counter's module tracker supports
            # only the former; the classifier's weights need no gradient (frozen at load)
            selected.sum().backward()
        return x_in.grad * self.classifier_scale

    SKIPPABLE_PREFIXES = ("input_blocks.", "middle_block.", "output_blocks.")

    def _bypass_for(self, module):
        return adm_bypass_for(module)


def adm_bypass_for(module):
    """What a skipped guided-diffusion block returns instead (None: not skippable); a function
    of the module alone, so the estimate counts the layers of an ADM built without weights."""
    from guided_diffusion.unet import AttentionBlock, ResBlock

    if isinstance(module, ResBlock):
        return _resblock_bypass(module)
    if isinstance(module, AttentionBlock):
        return _attention_bypass(module)
    return None


def _resblock_bypass(block):
    """A skipped ResBlock returns its skip path: the input, resampled by the block's own
    up/down op (nearest upsampling or average pooling), through ``skip_connection``."""
    def forward(x, emb=None):
        return block.skip_connection(block.x_upd(x))

    return forward


def _attention_bypass(block):
    """A skipped AttentionBlock is the identity (its output is ``x + attention(x)``)."""
    def forward(x):
        return x

    return forward
