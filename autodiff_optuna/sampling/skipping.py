"""Layer skipping that really saves the work: a skipped layer's ``forward`` is swapped for its
bypass (the residual path of a ResBlock, the identity for attention) while it is skipped, so the
layer's own computation never runs. The UNet's skip-connection stack is untouched: blocks still
push and pop their hidden states, only the layers inside them are bypassed.
"""

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from autodiff_optuna.errors import UsageError


@dataclass(frozen=True)
class SkippableLayer:
    name: str  # stable: the module's path in the network
    module: nn.Module
    bypass: Callable  # called with the module's own arguments in place of its forward


def find_skippable_layers(network: nn.Module, prefixes: tuple[str, ...],
                          bypass_for: Callable) -> dict[str, SkippableLayer]:
    """Every module under ``prefixes`` that ``bypass_for`` gives a bypass, by name, in
    ``named_modules`` order (stable names in a stable order)."""
    layers = {}
    for name, module in network.named_modules():
        bypass = bypass_for(module) if name.startswith(prefixes) else None
        if bypass is not None:
            layers[name] = SkippableLayer(name, module, bypass)
    return layers


@contextmanager
def skipping(layers: dict[str, SkippableLayer], names: Iterable[str]):
    """Within the block, the named layers run their bypass instead of their forward."""
    swapped = []
    try:
        for name in names:
            layer = layers[name]
            layer.module.forward = layer.bypass  # an instance attribute shadows the method
            swapped.append(layer.module)
        yield
    finally:
        for module in swapped:
            del module.forward


def check_skip(skip, steps: int, known: Iterable[str]) -> list[tuple[str, ...]]:
    """A per-step list of layer names, checked against the model: one line per mistake."""
    known = list(known)
    if not isinstance(skip, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in skip):
        raise UsageError("'skip' must be a list with one list of layer names per step")
    if len(skip) != steps:
        raise UsageError(f"'skip' has {len(skip)} masks for {steps} time steps")
    unknown = sorted({name for s in skip for name in s if name not in known})
    if unknown:
        raise UsageError(f"the model has no layer named {', '.join(map(repr, unknown))}; "
                         f"its skippable layers: {', '.join(known)}")
    return [tuple(name for name in known if name in s) for s in skip]
