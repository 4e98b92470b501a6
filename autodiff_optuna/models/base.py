"""The one interface every model family sits behind.

A search only needs three things from a network: its noise prediction at an integer training time
step, the training noise schedule (to build solvers over any subset of its steps), and the shape
of what it generates. Adapters for each family (diffusers UNets, ADM, Stable Diffusion) implement
exactly that; a latent model also turns its samples into images (``decode``).
"""

import abc
import contextlib
import hashlib
from pathlib import Path
from typing import Any

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.layers import find_skippable_layers

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def files_digest(paths) -> str:
    """A short SHA-256 of files' contents, whatever they are named or in which order they come:
    which weights a result came from (renaming or moving a checkpoint does not change it)."""
    per_file = []
    for path in paths:
        digest = hashlib.sha256()
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        per_file.append(digest.digest())
    return hashlib.sha256(b"".join(sorted(per_file))).hexdigest()[:12]


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


class DiffusionModel(abc.ABC):
    """An epsilon-predicting diffusion model with a discrete training schedule."""

    name: str
    sample_shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int | None = None  # class-conditional models draw labels per sample
    device: torch.device = torch.device("cpu")
    # digest of the weights (and of whatever else changes the network's output: a classifier and
    # its guidance scale, a reduced precision): a study refuses to mix results across them
    fingerprint: str = ""
    clip_denoised: bool = False  # the x0 prediction is clipped to [-1, 1] at every step
    precision: str = "fp32"  # autocast dtype of the network (PRECISIONS)
    compiled: bool = False  # torch.compile each skippable block (the rest of the network is eager)
    compile_backend = "inductor"  # torch.compile backend of those blocks (a callable will do)
    _batch_size: int | None = None  # images per network call; None: all at once
    _blocks_compiled: bool = False  # _compile_blocks has run

    unet: torch.nn.Module | None = None  # the denoising network, set by each adapter
    _scheduler_config: dict[str, Any]  # the training schedule, set by each adapter

    @property
    def architecture(self) -> str | None:
        """The loaded network's configuration as JSON (a checkpoint's own ``config.json``): what
        ``--estimate`` counts FLOPs on, where a preset may not know it. None: only the preset's
        architecture is priced (ADM, Stable Diffusion)."""
        return None

    @property
    def network(self) -> torch.nn.Module | None:
        """The module whose layers are skippable (FLOP counts are attributed within it)."""
        return self.unet

    @property
    def batch_size(self) -> int | None:
        """Images per network call, sized to the device on first use (CUDA: measured)."""
        if self._batch_size is None and self.device.type == "cuda":
            self._batch_size = self._measure_batch_size()
        return self._batch_size

    def prepare(self) -> None:
        """Ready the model for sampling, once: size its batch to the device and, with
        ``compiled``, compile its skippable blocks. The sampler calls it before every run
        (``sampling.sample``), whatever batch size its caller passes; once done, it does
        nothing."""
        _ = self.batch_size  # measured on first use
        if self.compiled and not self._blocks_compiled:
            self._compile_blocks()

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The training noise schedule as a diffusers scheduler config (betas, T, ...)."""
        return self._scheduler_config

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config["num_train_timesteps"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape of an image ``decode`` makes of a sample: the sample's own for a model
        that samples pixels (a latent model says its decoder's)."""
        return self.sample_shape

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from the solver's final samples: the samples themselves for a
        model that samples pixels (a latent model runs its decoder)."""
        return x

    def unskippable_work(self) -> dict:
        """The work per image outside the searched network that no mask skips, as
        zero-argument calls for a FLOP counter (``metrics.flops`` counts them): none for a
        model that samples pixels with its network alone."""
        return {}

    def skippable_layers(self) -> dict:
        """Name -> ``SkippableLayer`` for every layer a candidate may skip (built once)."""
        if getattr(self, "_skippable", None) is None:
            self._skippable = self._find_skippable_layers()
        return self._skippable

    # the network's blocks whose layers may be skipped (each family names its own)
    SKIPPABLE_PREFIXES: tuple[str, ...] = ()

    def _find_skippable_layers(self) -> dict:
        """The family's ResBlocks and attention layers under ``SKIPPABLE_PREFIXES``, each with
        its bypass, in ``named_modules`` order (stable names in a stable order)."""
        return find_skippable_layers(self.network, self.SKIPPABLE_PREFIXES, self._bypass_for)

    @abc.abstractmethod
    def _bypass_for(self, module):
        """What a skipped ``module`` computes instead (same call signature), or None when the
        module is not a skippable layer."""

    @abc.abstractmethod
    def predict_noise(self, x: torch.Tensor, t: torch.Tensor,
                      labels: torch.Tensor | None = None) -> torch.Tensor:
        """Epsilon for a batch ``x`` at training time step ``t`` (a 0-d integer tensor)."""

    # ---- runtime shared by the adapters: precision, batch sizing, compilation, x0 clipping ----

    def _configure_runtime(self, device, precision: str | None, compile: bool,
                           batch_size: int | None, batch_size_cpu: int | None = None) -> None:
        self.device = torch.device(device)
        if precision is None:
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        check_batch_size(batch_size)
        self.precision = precision
        self.compiled = bool(compile)
        self._batch_size = batch_size or (batch_size_cpu if self.device.type == "cpu" else None)

    def _runtime_fingerprint(self) -> str:
        """What besides the weights changes the output: recorded with the weights' digest."""
        return "" if self.precision == "fp32" else f"+{self.precision}"

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _padded(self, fn, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Compiled blocks see one batch shape: a short last batch is padded up to it."""
        n, full = len(x), self._batch_size
        if not (self.compiled and full and n < full and not getattr(self, "_eager", False)):
            return fn(x, labels)
        pad = full - n
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        if labels is not None:
            labels = torch.cat([labels, labels.new_zeros(pad)])
        return fn(x, labels)[:n]

    @contextlib.contextmanager
    def eager(self):
        """Run without the compiled blocks (FLOP counting, reference checks)."""
        network = self.network
        saved = {}
        if network is not None:
            for module in network.modules():
                if getattr(module, "_compiled_call_impl", None) is not None:
                    saved[module] = module._compiled_call_impl
                    module._compiled_call_impl = None
        self._eager = True
        try:
            yield
        finally:
            self._eager = False
            for module, impl in saved.items():
                module._compiled_call_impl = impl

    def _compile_blocks(self, backend=None) -> None:
        """``torch.compile`` each skippable block on its own, and nothing else: the glue between
        them (embeddings, resampling, the skip-connection stack, the output head) runs eager. A
        skipped block swaps its ``forward`` for its bypass, which compiles as a second variant
        of that block, so every mask runs compiled without a whole-network recompile per mask.
        ``backend``: ``compile_backend`` unless given."""
        import torch._dynamo.config as dynamo_config

        layers = self.skippable_layers()
        # each block shape is one compiled variant (x2 when it is skipped): raise the limits
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 8 * len(layers))
        if hasattr(dynamo_config, "accumulated_recompile_limit"):
            dynamo_config.accumulated_recompile_limit = max(
                dynamo_config.accumulated_recompile_limit, 64 * len(layers))
        for layer in layers.values():
            layer.module.compile(dynamic=False, backend=backend or self.compile_backend)
        self._blocks_compiled = True

    def _measure_batch_size(self, budget: float = 0.8, cap: int = 1024) -> int:
        """The largest batch whose peak memory fits ``budget`` of the free GPU memory, from the
        peaks of two small eager batches (memory grows linearly with the batch)."""
        peaks = []
        sizes = (4, 8)
        for n in sizes:
            x = torch.zeros((n, *self.sample_shape), device=self.device)
            labels = torch.zeros(n, dtype=torch.long, device=self.device) \
                if self.num_classes else None
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            with torch.inference_mode(), self.eager():
                self.predict_noise(x, torch.tensor(self.num_train_timesteps - 1,
                                                   device=self.device), labels)
            torch.cuda.synchronize(self.device)
            peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
        per_image = max((peaks[1] - peaks[0]) / (sizes[1] - sizes[0]), 1.0)
        free, _ = torch.cuda.mem_get_info(self.device)
        n = int(budget * free / per_image)
        return max(1, min(cap, n - n % 8 if n >= 8 else n))

    def _clip_eps(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Epsilon re-derived from the clipped x0 prediction, as guided-diffusion's
        ``p_mean_variance(clip_denoised=True)`` and its DDIM step compute it (same float64
        coefficients, same order of operations)."""
        recip, recipm1, _ = self._clip_coefficients()
        a = recip[int(t)].to(x.device).float()
        b = recipm1[int(t)].to(x.device).float()
        x0 = (a * x - b * eps).clamp(-1, 1)
        return (a * x - x0) / b

    def _clip_coefficients(self):
        if getattr(self, "_coefficients", None) is None:
            import numpy as np
            from diffusers import DDPMScheduler

            config = self.scheduler_config
            if config.get("trained_betas") is not None:
                betas = np.asarray(config["trained_betas"], dtype=np.float64)
            else:
                betas = DDPMScheduler.from_config(config).betas.double().numpy()
            alphas_cumprod = np.cumprod(1.0 - betas)
            self._coefficients = (torch.from_numpy(np.sqrt(1.0 / alphas_cumprod)),
                                  torch.from_numpy(np.sqrt(1.0 / alphas_cumprod - 1)),
                                  torch.from_numpy(alphas_cumprod))
        return self._coefficients
