"""Reproduce the bundled ``digits`` models: the feature network, FID reference and DDPM.

    python -m autodiff_optuna.training.train_digits [--part features|ddpm|all] [--steps N]
    python -m autodiff_optuna.training.train_digits --model digits-deep --part ddpm

Everything is seeded; the data ships inside scikit-learn. On a GPU the DDPM trains in minutes, on
a 2-core CPU in about an hour (run it in the background). ``make train-digits`` runs it all,
``make train-digits-deep`` the deeper LayerDrop-trained DDPM.
"""

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from autodiff_optuna.metrics.digits_features import DigitsFeatureNet
from autodiff_optuna.models.digits_data import load_digits_uint8, uint8_to_model_range
from autodiff_optuna.models.registry import WEIGHTS_DIR

# The network is kept small on purpose: a study samples it thousands of times on a 2-core CPU.
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=16,
)
# How each bundled digits preset is trained; flags given on the command line override. The deep
# one has two resnets per level (ADM has three) and learns to do without any of its layers:
# each is bypassed with probability 0.3, as a stage-2 mask bypasses it, in half the batches.
RECIPES = {"digits": dict(layers_per_block=1, layerdrop=0.0, full_share=0.0),
           "digits-deep": dict(layers_per_block=2, layerdrop=0.3, full_share=0.5)}
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                        beta_end=0.02, prediction_type="epsilon", clip_sample=False)


def train_feature_net(out_dir: Path, seed: int = 0, epochs: int = 60) -> float:
    """Train the FID feature network; returns its held-out accuracy."""
    torch.manual_seed(seed)
    images, labels = load_digits_uint8()
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = len(images) // 5
    test, train = order[:n_test], order[n_test:]
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    net = DigitsFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(train), generator=gen).split(64):
            idx = torch.from_numpy(train)[batch]
            xb = x[idx]
            # one-pixel shifts: the classifier must not hinge on exact positions
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[test]).argmax(1) == y[test]).float().mean().item()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), out_dir / "features.safetensors")
    with torch.no_grad():
        feats = net.features(x).double().numpy()
    np.savez(out_dir / "reference_stats.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    print(f"feature net: held-out accuracy {accuracy:.4f} on {n_test} digits", flush=True)
    return accuracy


def train_ddpm(out_dir: Path, steps: int, seed: int = 0, batch: int = 256, lr: float = 2e-3,
               ema_decay: float = 0.999, save_every: int = 1000, layerdrop: float = 0.0,
               full_share: float = 0.0, init: Path | None = None,
               layers_per_block: int = UNET_CONFIG["layers_per_block"]) -> None:
    """Train the DDPM (from ``init``, a saved model directory, to fine-tune one). ``layerdrop``:
    in each batch each skippable layer is bypassed with this probability, exactly as a stage-2
    mask bypasses it, so the network learns to do without any of them (LayerDrop); a share
    ``full_share`` of the batches keeps every layer, so the full network stays trained as such
    (trained only on thinned networks, it sums more residuals than it ever saw).
    ``layers_per_block`` deepens a fresh network (ADM has 3 per level): more, smaller layers
    to skip."""
    from diffusers import DDPMScheduler, UNet2DModel

    from autodiff_optuna.models.diffusers_unet import (
        DiffusersUNetModel,
        bypass_for,
        low_cpu_mem_usage,
    )
    from autodiff_optuna.models.layers import find_skippable_layers
    from autodiff_optuna.sampling.skipping import skipping

    torch.manual_seed(seed)
    data = uint8_to_model_range(load_digits_uint8()[0])
    unet = (UNet2DModel.from_pretrained(init / "unet", local_files_only=True,
                                        low_cpu_mem_usage=low_cpu_mem_usage()) if init
            else UNet2DModel(**dict(UNET_CONFIG, layers_per_block=layers_per_block)))
    layers = find_skippable_layers(unet, DiffusersUNetModel.SKIPPABLE_PREFIXES, bypass_for)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = 200

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) + 1e-3

    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    started = time.time()
    running = 0.0
    for step in range(1, steps + 1):
        x0 = data[torch.randint(0, len(data), (batch,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, SCHEDULER_CONFIG["num_train_timesteps"], (batch,), generator=gen)
        # no draws without LayerDrop, so the plain run reproduces the bundled model exactly
        dropped = []
        if layerdrop:  # one draw per layer, after one for the whole batch where it can keep all
            draws = torch.rand(len(layers) + (1 if full_share else 0), generator=gen)
            if not (full_share and draws[0] < full_share):
                dropped = [name for name, u in zip(layers, draws[-len(layers):]) if u < layerdrop]
        with skipping(layers, dropped):
            loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - ema_decay)
        running += loss.item()
        if step % 250 == 0:
            print(f"step {step}/{steps} loss {running / 250:.4f} "
                  f"{time.time() - started:.0f}s", flush=True)
            running = 0.0
        if step % save_every == 0 or step == steps:
            ema.save_pretrained(out_dir / "unet")
            scheduler.save_pretrained(out_dir / "scheduler")
            (out_dir / "training.json").write_text(json.dumps(
                {"steps_done": step, "steps": steps, "batch": batch, "lr": lr,
                 "ema_decay": ema_decay, "seed": seed, "layerdrop": layerdrop,
                 "full_share": full_share, "layers_per_block": unet.config.layers_per_block,
                 "init": str(init) if init else None}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="digits",
                        help="which bundled preset's recipe (its flags below are the defaults)")
    parser.add_argument("--part", choices=["features", "ddpm", "all"], default="all")
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: the preset's bundled directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--layerdrop", type=float, default=None,
                        help="probability of bypassing each skippable layer per batch")
    parser.add_argument("--full-share", type=float, default=None,
                        help="share of LayerDrop batches that keep every layer")
    parser.add_argument("--init", type=Path, default=None,
                        help="fine-tune this saved model directory instead of a fresh network")
    parser.add_argument("--layers-per-block", type=int, default=None,
                        help="resnets per resolution level of a fresh network")
    args = parser.parse_args()
    recipe = {**RECIPES[args.model], **{k: v for k, v in vars(args).items()
                                        if k in RECIPES[args.model] and v is not None}}
    if args.init and args.layers_per_block is not None:
        parser.error("--layers-per-block shapes a fresh network; --init keeps the saved one's")
    if args.model != "digits" and args.part != "ddpm":
        parser.error(f"{args.model} is scored by the digits preset's feature network: "
                     "train it with --model digits, and this one with --part ddpm")
    out = args.out or WEIGHTS_DIR / args.model
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.part in ("features", "all"):
        train_feature_net(out, args.seed)
    if args.part in ("ddpm", "all"):
        train_ddpm(out, args.steps, args.seed, lr=args.lr, init=args.init, **recipe)


if __name__ == "__main__":
    main()
