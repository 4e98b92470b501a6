"""Layer skipping that really saves the work: a skipped layer's ``forward`` is swapped for its
bypass (the residual path of a ResBlock, the identity for attention) while it is skipped, so the
layer's own computation never runs. The UNet's skip-connection stack is untouched: blocks still
push and pop their hidden states, only the layers inside them are bypassed.
"""

from collections.abc import Iterable
from contextlib import contextmanager

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.layers import SkippableLayer


@contextmanager
def skipping(layers: dict[str, SkippableLayer], names: Iterable[str]):
    """Within the block, the named layers run their bypass instead of their forward (a name given
    twice is one layer skipped)."""
    swapped = []
    try:
        for name in dict.fromkeys(names):
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
    if not isinstance(skip, (list, tuple)) or not all(
            isinstance(s, (list, tuple)) and all(isinstance(name, str) for name in s)
            for s in skip):
        raise UsageError("'skip' must be a list with one list of layer names per step (each "
                         "name a string)")
    if len(skip) != steps:
        raise UsageError(f"'skip' has {len(skip)} masks for {steps} time steps")
    unknown = sorted({name for s in skip for name in s if name not in known})
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (
            f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise UsageError(f"the model has no layer named {shown}; "
                         f"its skippable layers: {', '.join(known)}")
    return [tuple(name for name in known if name in s) for s in skip]
