"""GPU speed of sampling through the project's own path (ADM-64; SD 1.5's UNet), in under 5 min.

``--model sd15`` measures the same row for Stable Diffusion 1.5's UNet at 512x512 (64x64 latents,
bench/sd_unet.py); the default is ADM-64.

    python -m bench.gpu --out gpu.json            # on a GPU machine (random weights)
    python -m bench.gpu --model sd15 --out gpu-sd15.json
    python -m bench.gpu --smoke [--model sd15]    # tiny model on the CPU: proves the script runs

What it measures, each through ``autodiff_optuna.sampling.sample`` (the solver loop every trial
runs) on guided-diffusion's ImageNet-64 UNet (the adm64 preset's flags, random weights, bf16
autocast), at one batch (default 512) and 4 DDIM steps:

- eager, full network; eager, with a per-step skip mask (a stage-2 candidate);
- ``--compile`` (each skippable block compiled on its own), full and masked;
- the batch size the adapter picks for the device (two small probes of peak memory);
- the Inception pass of FID (clean-fid's network when its weights are at hand, else skipped)
  and the clean-mode resize on the CPU.

Throughput is images per second per network evaluation (batch x steps / seconds), the unit of
the reference figures in ../shared/reference/ANCHORS.md and BENCHMARKS.md. The masked
candidate's speed-up is compared with its GFLOP saving: the target is a time saving of at least
80% of the FLOP saving. Every phase checks a deadline and is skipped, saying so,
when the run would pass it.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ANCHORS = {"eager_bf16": 712, "compiled_bf16": 1709, "floor": 3487, "gflop": 219}
# images per batch: ADM-64's anchors were measured at 512; SD 1.5's UNet at 512x512 is ~4x the
# FLOPs per image and its attention holds 4096 tokens at the top level
DEFAULT_BATCH = {"adm64": 512, "sd15": 32}
TINY_FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                  num_head_channels=16, attention_resolutions="8", class_cond=True,
                  learn_sigma=True, resblock_updown=True, use_new_attention_order=True,
                  use_scale_shift_norm=True)


def build(smoke: bool, device: str, precision: str, compile: bool, batch: int,
          model: str = "adm64"):
    if model == "sd15":  # bench/sd_unet.py: SD 1.5's UNet config, random weights
        from bench.sd_unet import SD15_UNET, TINY_SD_UNET, RandomSDUNet

        return RandomSDUNet(TINY_SD_UNET if smoke else SD15_UNET, device, precision, compile,
                            batch)
    from autodiff_optuna.models.adm import AdmModel
    from autodiff_optuna.models.registry import PRESETS

    preset = PRESETS["adm64"]
    flags = TINY_FLAGS if smoke else preset.flags
    torch.manual_seed(0)
    model = AdmModel("adm64-random", flags, preset.diffusion, checkpoint=None, device=device,
                     precision=precision, compile=compile, batch_size=batch)
    with torch.no_grad():  # ADM zero-initialises its output convolutions
        for p in model.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def candidate_mask(costs, steps: int, target: float = 0.3):
    """Per step, a different set of layers whose savings add up to about ``target`` of the
    network's FLOPs (what a stage-2 candidate looks like: masks that differ between steps)."""
    ranked = sorted(costs.layers, key=lambda n: -costs.saving[n])
    masks = []
    for step in range(steps):
        chosen, saved = [], 0
        for name in ranked[step:] + ranked[:step]:
            if saved >= target * costs.full:
                break
            if saved + costs.saving[name] <= 1.15 * target * costs.full:
                chosen.append(name)
                saved += costs.saving[name]
        masks.append(tuple(n for n in costs.layers if n in chosen))
    return masks


def timed(model, batch, steps, skip, repeats: int) -> float:
    from autodiff_optuna.sampling import sample

    best = float("inf")
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(model, steps, batch, "ddim", batch_size=len(batch.noise), skip=skip)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, seconds")
    parser.add_argument("--model", choices=sorted(DEFAULT_BATCH), default="adm64",
                        help="adm64 (ImageNet 64x64 ADM) or sd15 (Stable Diffusion 1.5's UNet "
                             "at 512x512, one UNet call per image: no guidance, no VAE)")
    parser.add_argument("--batch", type=int, help="images per batch (default adm64 512, sd15 "
                                                  "32; smoke 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--budget", type=float, default=280.0, help="seconds for the whole run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; smoke: eager)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if not args.smoke and device == "cpu":
        print("no GPU: run with --smoke on a CPU", file=sys.stderr)
        return 2
    batch_n = args.batch or (8 if args.smoke else DEFAULT_BATCH[args.model])
    precision = "fp32" if device == "cpu" else "bf16"
    backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    from autodiff_optuna.metrics.flops import layer_costs
    from autodiff_optuna.sampling import draw, standard_spacings
    from autodiff_optuna.search.context import alphas_cumprod

    results = {"device": torch.cuda.get_device_name() if device == "cuda" else
               platform.processor() or platform.machine(), "torch": torch.__version__,
               "model": args.model, "smoke": args.smoke, "batch": batch_n, "steps": args.steps,
               "precision": precision, "compile_backend": backend, "phases": {}, "skipped": []}
    if args.model == "adm64":
        results["anchors_h200"] = ANCHORS

    def report(name, seconds, gflops_per_image):
        evals = batch_n * args.steps
        row = {"seconds": seconds, "img_per_s_per_eval": evals / seconds,
               "gflops_per_image_per_eval": gflops_per_image / args.steps,
               "achieved_tflops": evals * gflops_per_image / args.steps / seconds / 1e3}
        results["phases"][name] = row
        print(f"{name:18s} {row['img_per_s_per_eval']:9.1f} img/s per eval  "
              f"({seconds:.3f} s, {row['achieved_tflops']:.1f} TFLOP/s)", flush=True)

    t0 = time.monotonic()
    model = build(args.smoke, device, precision, False, batch_n, args.model)
    results["build_s"] = time.monotonic() - t0
    costs = layer_costs(model)
    steps = standard_spacings(args.steps, model.num_train_timesteps,
                              alphas_cumprod(model))["uniform"]
    masks = candidate_mask(costs, args.steps)
    full_gflops, masked_gflops = costs.gflops([()] * args.steps), costs.gflops(masks)
    results.update(layers=len(costs.layers), gflop_per_eval=costs.full / 1e9,
                   timesteps=list(steps), masks=[list(m) for m in masks],
                   flop_saving=1 - masked_gflops / full_gflops)
    print(f"{results['device']}: {len(costs.layers)} layers, {costs.full / 1e9:.2f} GFLOP/eval, "
          f"batch {batch_n}, steps {list(steps)}, mask saves {results['flop_saving']:.1%} FLOPs",
          flush=True)
    batch = draw(model, batch_n, seed=0)

    def phase(name, fn):
        if time.monotonic() > deadline:
            results["skipped"].append(f"{name}: past the {args.budget:.0f} s budget")
            print(f"{name}: skipped (budget)", flush=True)
            return None
        return fn()

    def full_and_masked(kind):
        """Timed sampling with the full network and with the masks, each reported."""
        out = []
        for label, mask, gflops in (("full", None, full_gflops), ("masked", masks, masked_gflops)):
            seconds = phase(f"{kind} {label}",
                            lambda mask=mask: timed(model, batch, steps, mask, args.repeats))
            if seconds:
                report(f"{kind} {label}", seconds, gflops)
            out.append(seconds)
        return out

    # eager
    phase("warmup", lambda: timed(model, batch, steps, None, 1))
    full, masked = full_and_masked("eager")

    # the adapter's own batch sizing (CUDA only: two small eager probes of peak memory)
    if device == "cuda":
        model._batch_size = None
        model.compiled = False
        results["auto_batch_size"] = phase("batch probe", lambda: model.batch_size)
        model._batch_size = batch_n

    # compiled: every skippable block on its own; the first runs include compilation
    def compile_model():
        start = time.monotonic()
        model.compiled = True
        model._compile_blocks(backend)  # what --compile does on the first sampling call
        timed(model, batch, steps, None, 1)
        timed(model, batch, steps, masks, 1)
        return time.monotonic() - start

    results["compile_s"] = phase("compile", compile_model)
    cfull, cmasked = full_and_masked("compiled")

    for kind, f, m in (("eager", full, masked), ("compiled", cfull, cmasked)):
        if f and m:
            time_saving = 1 - m / f
            ratio = time_saving / results["flop_saving"]
            results[f"{kind}_mask_time_saving"] = time_saving
            results[f"{kind}_mask_saving_ratio"] = ratio
            print(f"{kind}: the mask saves {time_saving:.1%} of the time for "
                  f"{results['flop_saving']:.1%} of the FLOPs ({ratio:.0%}; target >= 80%)")

    # FID's side: clean-fid's clean resize on the CPU, the Inception network on the device
    # (measured with ADM's 64x64 images; the sd15 row is the UNet alone)
    if args.model == "adm64":
        phase("inception", lambda: inception(results, device, 64 if args.smoke else 1000))

    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def inception(results, device, n):
    from autodiff_optuna.errors import UsageError
    from autodiff_optuna.metrics.inception import CLEANFID_INCEPTION_DIR, InceptionFeatures
    from autodiff_optuna.models.files import resolve
    from autodiff_optuna.models.registry import INCEPTION

    images = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    try:
        weights = resolve(INCEPTION, None, [CLEANFID_INCEPTION_DIR])
    except UsageError as err:
        results["skipped"].append(f"inception: {err}")
        print(f"inception: skipped ({err})")
        weights = None
    net = InceptionFeatures(weights, "clean", device) if weights else None
    start = time.perf_counter()
    if net is None:
        from cleanfid.resize import build_resizer

        resize = build_resizer("clean")
        for image in images[:64].permute(0, 2, 3, 1).numpy():
            resize(image)
        per_s = 64 / (time.perf_counter() - start)
        results["clean_resize_img_per_s_per_core"] = per_s
        print(f"clean resize (1 core): {per_s:.0f} img/s")
        return
    resized = torch.from_numpy(net.resize(images.permute(0, 2, 3, 1).numpy()))
    results["clean_resize_img_per_s"] = n / (time.perf_counter() - start)
    x = ((resized.to(device, torch.float32) - 128) / 128)
    with torch.inference_mode():
        net.base.layers.forward(x[:8])
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, n, net.batch_size):
            net.base.layers.forward(x[i:i + net.batch_size])
        if device == "cuda":
            torch.cuda.synchronize()
    results["inception_img_per_s"] = n / (time.perf_counter() - start)
    print(f"clean resize {results['clean_resize_img_per_s']:.0f} img/s (thread pool); "
          f"Inception {results['inception_img_per_s']:.0f} img/s")


if __name__ == "__main__":
    sys.exit(main())
