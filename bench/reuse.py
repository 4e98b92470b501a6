"""The stage-2 issue's second kind of skip, DeepCache's idea, measured against the bypass.

A skipped layer today runs its bypass (a ResBlock's shortcut, the identity for attention): its
contribution to the step is dropped. DeepCache instead reuses what the skipped part computed at
the previous step. Per layer, that is: at a step where the layer is *reused*, it returns its
bypass plus the residual it added the last time it ran (``output - bypass(input)``, kept per
batch of images), at the same saving (its own computation never runs) plus one addition. The
first step cannot reuse (nothing ran before it).

    python -m bench.reuse [STEPS_JSON]    # bench/results.json["reuse"], BENCHMARKS.md "reuse"

Per bundled model, on one schedule (STEPS_JSON: ``{"digits": [..], "digits-deep": [..]}``, the
stage-1 best of a preset study; else the DP spacing of the preset's solver):

1. each (step, layer)'s quality cost of bypassing it and of reusing it: the prior's measure
   (``skip_cost.diagonal_distance``, how much farther from the data the images' features are,
   on ``COST_IMAGES`` images of the search stream);
2. for each kind, masks grown greedily by that kind's cost per GFLOP saved, and the FID, on
   ``HELDOUT_SAMPLES`` images of the held-out stream, of the first mask of each growth that
   saves at least each of ``SAVINGS``: which kind keeps more quality at equal compute.
"""

import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

COST_IMAGES = 256
HELDOUT_SAMPLES = 1797
SAVINGS = (0.1, 0.2, 0.3, 0.4)
MODELS = ("digits", "digits-deep")
KINDS = ("bypass", "reuse")
KEY = "reuse"


@contextmanager
def _layers_at(layers: dict, step: int, cells: set, kind: str, kept: dict):
    """The network at step ``step``: the layers of ``cells`` at that step bypassed, or reused
    (their bypass plus ``kept``'s residual of their last run); with ``kind == "reuse"`` every
    layer that runs keeps its residual for a later step."""
    swapped = []
    try:
        for name, layer in layers.items():
            module = layer.module
            if (step, name) in cells:
                if kind == "bypass":
                    module.forward = layer.bypass
                else:
                    module.forward = _reused(layer, kept)
            elif kind == "reuse":
                module.forward = _kept(layer, kept)
            else:
                continue
            swapped.append(module)
        yield
    finally:
        for module in swapped:
            del module.forward


def _reused(layer, kept: dict):
    def forward(*args, **kwargs):
        return layer.bypass(*args, **kwargs) + kept[layer.name]
    return forward


def _kept(layer, kept: dict):
    def forward(*args, **kwargs):
        output = type(layer.module).forward(layer.module, *args, **kwargs)
        kept[layer.name] = output - layer.bypass(*args, **kwargs)
        return output
    return forward


@torch.inference_mode()
def sample_cells(model, timesteps, batch, solver, cells: set, kind: str) -> torch.Tensor:
    """``sampling.sample`` with the (step, layer) ``cells`` bypassed or reused."""
    from autodiff_optuna.sampling.rules import RuleStepper, run_rules, step_rules

    rules = step_rules(solver, len(timesteps))
    layers = model.skippable_layers()
    model.prepare()
    stepper = RuleStepper(model.scheduler_config)
    steps, sigmas = stepper.schedule(timesteps, model.device)
    size = model.batch_size or len(batch.noise)
    outputs = []
    for start in range(0, len(batch.noise), size):
        x = batch.noise[start:start + size].to(model.device)
        labels = None if batch.labels is None else batch.labels[start:start + size]
        kept: dict = {}  # this batch's residuals: a reused layer adds its own images' residual

        def network(i, x, labels=labels, kept=kept):
            with _layers_at(layers, i, cells, kind, kept):
                return model.predict_noise(x, steps[i], labels)

        outputs.append(model.decode(run_rules(stepper, sigmas, rules, x, network,
                                              start=stepper.start(timesteps, solver))).cpu())
    return torch.cat(outputs)


def measure_model(name: str, timesteps: list[int]) -> dict:
    from autodiff_optuna.metrics import load_scorer
    from autodiff_optuna.metrics.fid import to_uint8
    from autodiff_optuna.metrics.flops import layer_costs
    from autodiff_optuna.models import load_model
    from autodiff_optuna.sampling import HELDOUT, SEARCH, draw
    from autodiff_optuna.search.config import configure
    from autodiff_optuna.search.skip_cost import diagonal_distance

    model, scorer = load_model(name), load_scorer(name)
    solver = configure(name, len(timesteps))[0].solver
    costs = layer_costs(model)
    layers = list(costs.layers)
    small = draw(model, COST_IMAGES, 0, SEARCH)
    held = draw(model, HELDOUT_SAMPLES, 0, HELDOUT)

    def distance(cells, kind) -> float:
        images = sample_cells(model, timesteps, small, solver, cells, kind)
        if not torch.isfinite(images).all():
            return math.inf
        return diagonal_distance(scorer.features(to_uint8(images)), scorer.ref_mu,
                                 scorer.ref_sigma)

    full = distance(set(), "bypass")
    cost = {kind: [[(distance({(i, layer)}, kind) - full) if (kind, i) != ("reuse", 0)
                    else math.inf for layer in layers] for i in range(len(timesteps))]
            for kind in KINDS}
    full_gflops = costs.gflops([()] * len(timesteps))

    def share(cells) -> float:
        return costs.gflops([[layer for layer in layers if (i, layer) in cells]
                             for i in range(len(timesteps))]) / full_gflops

    def heldout_fid(cells, kind) -> float:
        images = sample_cells(model, timesteps, held, solver, cells, kind)
        return float(scorer(to_uint8(images))) if torch.isfinite(images).all() else math.inf

    growth = {}
    for kind in KINDS:
        order = sorted(((i, layer) for i in range(len(timesteps)) for layer in layers
                        if math.isfinite(cost[kind][i][layers.index(layer)])
                        and costs.saving[layer] > 0),
                       key=lambda c: max(cost[kind][c[0]][layers.index(c[1])], 0.0)
                       / costs.saving[c[1]])
        cells, points = set(), []
        for target in SAVINGS:
            while order and 1 - share(cells) < target:
                cells.add(order.pop(0))
            if 1 - share(cells) < target:
                break
            points.append({"saving": 1 - share(cells), "cells": len(cells),
                           "heldout_fid": heldout_fid(cells, kind)})
            print(f"  {name} {kind}: {points[-1]['saving']:.1%} saved, "
                  f"held-out FID {points[-1]['heldout_fid']:.2f}", flush=True)
        growth[kind] = points
    finite = {kind: [c for row in cost[kind] for c in row if math.isfinite(c)] for kind in KINDS}
    return {"timesteps": timesteps, "solver": solver, "layers": layers,
            "full_heldout_fid": heldout_fid(set(), "bypass"),
            "cost": {k: [[c if math.isfinite(c) else None for c in row] for row in v]
                     for k, v in cost.items()},
            "median_cost": {k: float(np.median(v)) for k, v in finite.items()},
            "reuse_cheaper_share": float(np.mean(
                [r < b for rr, bb in zip(cost["reuse"][1:], cost["bypass"][1:])
                 for r, b in zip(rr, bb)])),
            "growth": growth}


def markdown(entry: dict) -> str:
    lines = [f"Machine: {entry['machine']}.", "",
             f"Per model, its schedule's (step, layer) costs measured on {COST_IMAGES} images "
             "of the search stream (the skip-cost prior's distance), masks grown greedily by "
             f"each kind's cost per GFLOP saved, each mask's FID on {HELDOUT_SAMPLES} images "
             "of the held-out stream.", "",
             "| model | schedule | full network | median cost: bypass / reuse | reuse cheaper "
             "(steps 2+) | " + " | ".join(f">= {s:.0%} saved: bypass / reuse" for s in SAVINGS)
             + " |", "|---|---|---|---|---|" + "---|" * len(SAVINGS)]
    for name, r in entry["models"].items():
        cells = []
        for k in range(len(SAVINGS)):
            pair = [r["growth"][kind][k] if k < len(r["growth"][kind]) else None
                    for kind in KINDS]
            cells.append(" / ".join("-" if p is None else
                                    f"{p['heldout_fid']:.2f} ({p['saving']:.0%})" for p in pair))
        lines.append(f"| {name} | {r['timesteps']} {r['solver']} | {r['full_heldout_fid']:.2f} | "
                     f"{r['median_cost']['bypass']:.3f} / {r['median_cost']['reuse']:.3f} | "
                     f"{r['reuse_cheaper_share']:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure(schedules: dict | None = None) -> dict:
    from bench.run import machine

    schedules = schedules or {}
    models = {}
    for name in MODELS:
        steps = schedules.get(name) or _dp_spacing(name)
        print(f"{name}: {steps}", flush=True)
        models[name] = measure_model(name, list(steps))
    return {"machine": machine(), "models": models}


def _dp_spacing(name: str) -> list[int]:
    from autodiff_optuna.models import load_model
    from autodiff_optuna.sampling.trajectory_dp import dp_schedule
    from autodiff_optuna.search.config import configure

    config = configure(name, 4)[0]
    return list(dp_schedule(load_model(name), 4, config.solver))


def main() -> None:
    from bench.run import RESULTS, write_sections

    schedules = json.loads(Path(sys.argv[1]).read_text()) if sys.argv[1:] else None
    entry = measure(schedules)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[KEY] = entry
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_sections({KEY: markdown(entry)})
    print(f"updated bench/results.json ({KEY}) and BENCHMARKS.md ({KEY})")


if __name__ == "__main__":
    main()
