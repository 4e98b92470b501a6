"""How much a digits model tolerates skipping: held-out FID of one schedule with structured masks
(every attention layer at every step, every other layer at one step, every layer at one step).

    python -m bench.layerdrop DIR [DIR ...]    # model directories in the bundled layout

Compares the bundled model with LayerDrop fine-tunes of it (``train_digits --layerdrop``); the
numbers are quoted in BENCHMARKS.md (stage 2). Not part of ``make bench``: the fine-tuned models
are not committed (reproduce them with the command lines BENCHMARKS.md gives).
"""

import sys
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.flops import layer_costs
from autodiff_optuna.metrics.scoring import score_schedule
from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel
from autodiff_optuna.sampling import HELDOUT, draw
from bench.search import HELDOUT_SEEDS

SCHEDULE = (466, 318, 213, 98)  # the bundled model's K=4 stage-1 best of an earlier round


def masks(layers: list[str], k: int) -> dict[str, list[tuple[str, ...]]]:
    none = [()] * k

    def at(position: int, skipped) -> list[tuple[str, ...]]:
        return [tuple(skipped) if i == position else () for i in range(k)]

    attention = tuple(name for name in layers if "attentions" in name)
    return {"nothing": none, "every attention layer, every step": [attention] * k,
            **{f"every other layer at step {i + 1}": at(i, layers[::2]) for i in range(k)},
            **{f"every layer at step {i + 1}": at(i, layers) for i in range(k)}}


def probe(directory: Path) -> dict[str, tuple[float, float]]:
    """Mask -> (held-out FID on noise seed 0, 1000 images; GFLOPs saved)."""
    model = DiffusersUNetModel("digits", directory)
    scorer, costs = load_scorer("digits"), layer_costs(model)
    batch = draw(model, 1000, HELDOUT_SEEDS[0], HELDOUT)
    full = costs.gflops([()] * len(SCHEDULE))
    return {label: (score_schedule(model, scorer, SCHEDULE, batch, "ddim", skip=skip),
                    1 - costs.gflops(skip) / full)
            for label, skip in masks(costs.layers, len(SCHEDULE)).items()}


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: python -m bench.layerdrop DIR [DIR ...]", file=sys.stderr)
        raise SystemExit(2)
    try:
        results = [probe(Path(d)) for d in sys.argv[1:]]
    except UsageError as err:
        print(f"bench.layerdrop: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print("| skipped | GFLOPs saved | " + " | ".join(sys.argv[1:]) + " |")
    print("|---" * (len(results) + 2) + "|")
    for label, (_, saving) in results[0].items():
        print(f"| {label} | {saving:.1%} | "
              + " | ".join(f"{r[label][0]:.2f}" for r in results) + " |")


if __name__ == "__main__":
    main()
