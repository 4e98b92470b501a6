"""Compute cost in real FLOPs (multiply-add counted as 2), counted once per model.

Two forward passes at batch 1 under ``torch.utils.flop_counter``: one of the full network, one
with every skippable layer bypassed. A layer's saving is its FLOPs in the first minus what its
bypass still costs in the second (a 1x1 shortcut convolution, say); bypassing keeps every shape,
so the two passes see the same tensors everywhere else. The first pass also records the order in
which the layers run, the stable order of their names. What a model computes outside its searched
network and no mask skips (a latent model's decoder, its text encoder) is counted apart
(``unskippable_gflops``), to be reported beside the network's GFLOPs.
"""

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from autodiff_optuna.errors import UsageError, one_line
from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.sampling.skipping import skipping


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    # the CPU kernel of scaled_dot_product_attention is not in the counter's table
    b, h, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def _custom_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _sdpa_cpu_flops}  # the counter passes shapes


@dataclass(frozen=True)
class LayerCosts:
    full: int  # FLOPs of one network evaluation, per image
    saving: dict[str, int]  # FLOPs saved per evaluation by skipping each layer, execution order

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.saving)

    def gflops(self, skip_per_step) -> float:
        """GFLOPs per image of a candidate: one evaluation per step, minus what it skips."""
        total = sum(self.full - sum(self.saving[name] for name in skipped)
                    for skipped in skip_per_step)
        return total / 1e9


def count_flops(model: DiffusionModel, skip=()) -> tuple[int, dict[str, int]]:
    """Total and per-module FLOPs of one evaluation at batch 1 (module names relative to
    the network), with the layers in ``skip`` bypassed."""
    x = torch.zeros((1, *model.sample_shape), device=model.device)
    t = torch.tensor(model.num_train_timesteps - 1, device=model.device)
    labels = torch.zeros(1, dtype=torch.long, device=model.device) if model.num_classes else None
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_custom_mapping())
    with torch.inference_mode(), model.eager(), skipping(model.skippable_layers(), skip), counter:
        model.predict_noise(x, t, labels)
    # the total counts everything (an ADM-G classifier's forward and backward included); the
    # per-module counts are the skippable network's own (the counter names modules by their
    # root's class name, and a classifier's modules would share the network's paths)
    network = model.network
    root = type(network).__name__ + "." if network is not None else None
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        if root is not None and "." in name and not name.startswith(root):
            continue
        per_module[name.split(".", 1)[1] if "." in name else name] = sum(ops.values())
    return counter.get_total_flops(), per_module


@lru_cache(maxsize=2)  # keyed by the model: keeps no more models than load_model does
def layer_costs(model: DiffusionModel) -> LayerCosts:
    layers = model.skippable_layers()
    order: list[str] = []
    hooks = [layer.module.register_forward_pre_hook(
        lambda *_, name=name: order.append(name) if name not in order else None)
        for name, layer in layers.items()]
    try:
        full, full_modules = count_flops(model)
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        # the model's first evaluation: its sample shape may not be one it can run (a config's
        # sample size too large to allocate, or too small for its downsampling)
        shape = "x".join(map(str, model.sample_shape))
        raise UsageError(f"model {getattr(model, 'name', '')!r} cannot evaluate one sample of "
                         f"its shape {shape} ({one_line(err)}): is its sample size right?") \
            from None
    finally:
        for hook in hooks:
            hook.remove()
    order += [name for name in layers if name not in order]
    _, bypassed_modules = count_flops(model, skip=order)
    saving = {name: full_modules.get(name, 0) - bypassed_modules.get(name, 0) for name in order}
    return LayerCosts(full, saving)


@lru_cache(maxsize=2)  # keyed by the model: keeps no more models than load_model does
def unskippable_gflops(model: DiffusionModel) -> dict[str, float]:
    """GFLOPs per image of the work outside the searched network that no mask can skip, by
    part (Stable Diffusion: its text encoder, one prompt, and VAE decoder, one latent;
    ``DiffusionModel.unskippable_work``); empty for a model that has none."""
    costs = {}
    for part, run in model.unskippable_work().items():
        counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
        with torch.inference_mode(), counter:
            run()
        costs[part] = counter.get_total_flops() / 1e9
    return costs
