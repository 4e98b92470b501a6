"""The layers a candidate may skip: each with its stable name, its module and its bypass (what it
computes instead when skipped). Each model family says which modules those are and what their
bypass is; ``sampling.skipping`` swaps them in at the steps a candidate skips them."""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


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
