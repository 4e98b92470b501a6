"""Layer skipping on real diffusers UNets: exact when empty, shape-preserving, and cheaper by
exactly the FLOPs the profile says."""


import pytest
import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.flops import count_flops, layer_costs
from autodiff_optuna.models import load_model
from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel
from autodiff_optuna.sampling import draw, sample
from autodiff_optuna.sampling.skipping import check_skip, skipping

# skippable layers of the bundled networks: one resnet per level, and two (resnets without a
# shortcut convolution, up blocks of three). Counts, not names, parametrise the tests, so that
# collecting them loads no model.
LAYER_COUNTS = {"digits": 12, "digits-deep": 18}
EVERY_LAYER = [(model, i) for model, count in LAYER_COUNTS.items() for i in range(count)]


def digits_layers() -> list[str]:
    return list(load_model("digits").skippable_layers())


@pytest.fixture(scope="module")
def tiny(tiny_unet_dir):
    return DiffusersUNetModel("tiny", tiny_unet_dir)


def test_layers_are_enumerated_in_a_stable_order(digits, tiny):
    costs = layer_costs(digits)
    assert set(costs.layers) == set(digits.skippable_layers())
    assert costs.layers == layer_costs(digits).layers
    assert costs.layers[0] == "down_blocks.0.resnets.0"  # execution order
    assert costs.layers[-1] == "up_blocks.1.resnets.1"
    assert len(costs.layers) == LAYER_COUNTS["digits"]  # 8 ResBlocks and 4 attention layers
    assert sum("attentions" in name for name in costs.layers) == 4
    deep = layer_costs(load_model("digits-deep")).layers
    assert len(deep) == LAYER_COUNTS["digits-deep"]
    assert sum("attentions" in name for name in deep) == 6
    assert deep[:2] == ("down_blocks.0.resnets.0", "down_blocks.0.resnets.1")


def test_empty_mask_reproduces_the_full_network(digits):
    batch = draw(digits, 16, seed=0)
    steps = (900, 500, 200, 30)
    full = sample(digits, steps, batch, "dpmpp2m")
    assert torch.equal(sample(digits, steps, batch, "dpmpp2m", skip=[(), (), (), ()]), full)


@pytest.mark.parametrize("model, index", EVERY_LAYER)
def test_skipping_one_layer_keeps_shapes_and_saves_its_flops(model, index):
    digits = load_model(model)
    layers = digits.skippable_layers()
    layer = list(layers)[index]
    x = torch.randn(3, *digits.sample_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    shapes = {}

    def record(name):
        return lambda module, args, out: shapes.setdefault(name, []).append(out.shape)

    with torch.inference_mode():
        hooks = [layer.module.register_forward_hook(record(name))
                 for name, layer in layers.items()]
        full = digits.predict_noise(x, t)
        full_shapes, shapes = shapes, {}
        with skipping(layers, [layer]):
            skipped = digits.predict_noise(x, t)
        for hook in hooks:
            hook.remove()
    assert skipped.shape == full.shape and torch.isfinite(skipped).all()
    assert shapes == full_shapes  # every layer's output keeps its shape
    assert not torch.equal(skipped, full)  # the layer really was bypassed
    costs = layer_costs(digits)
    total, per_module = count_flops(digits, skip=[layer])
    assert total == costs.full - costs.saving[layer]
    assert costs.saving[layer] > 0
    # the saving is the layer's own count, less its bypass (a 1x1 shortcut at most)
    _, full_modules = count_flops(digits)
    assert costs.saving[layer] <= full_modules[layer]
    assert costs.saving[layer] >= 0.8 * full_modules[layer]


def test_skipped_layer_does_not_run(digits):
    layer = digits.skippable_layers()["mid_block.attentions.0"]
    calls = []
    hook = layer.module.to_q.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode(), skipping(digits.skippable_layers(), [layer.name]):
            digits.predict_noise(torch.zeros(1, 1, 8, 8), torch.tensor(10))
    finally:
        hook.remove()
    assert calls == []
    assert "forward" not in vars(layer.module)  # restored afterwards


def test_candidate_gflops(digits):
    costs = layer_costs(digits)
    full = costs.gflops([(), (), ()])
    assert full == pytest.approx(3 * costs.full / 1e9)
    one = costs.gflops([("mid_block.resnets.0",), (), ()])
    assert full - one == pytest.approx(costs.saving["mid_block.resnets.0"] / 1e9)


def test_tiny_random_unet_skips_too(tiny):
    costs = layer_costs(tiny)
    batch = draw(tiny, 4, seed=0)
    out = sample(tiny, (999, 400), batch, skip=[costs.layers[:3], costs.layers[3:]])
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("skip, message", [
    ([["nope"], []], "no layer named 'nope'"),
    ([[]], "1 masks for 2 time steps"),
    ("mid_block.resnets.0", "one list of layer names per step"),
])
def test_bad_masks(skip, message):
    with pytest.raises(UsageError, match=message):
        check_skip(skip, 2, digits_layers())


def test_layerdrop_training_bypasses_layers_as_sampling_does(tmp_path):
    """Fine-tuning with every layer dropped trains only what a skipped layer still computes:
    the skippable layers' own weights come out as they went in; their shortcut convolutions
    (the bypass path) and the layers no mask can skip move."""
    from safetensors.torch import load_file

    from autodiff_optuna.models.registry import DIGITS_DIR
    from autodiff_optuna.training.train_digits import train_ddpm

    train_ddpm(tmp_path, steps=2, batch=8, layerdrop=1.0, init=DIGITS_DIR, ema_decay=0.0)
    before = load_file(DIGITS_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    skippable = tuple(f"{name}." for name in digits_layers())
    own = [key for key in before if key.startswith(skippable) and ".conv_shortcut." not in key]
    assert own and all(torch.equal(before[key], after[key]) for key in own)
    assert not torch.equal(before["up_blocks.1.resnets.0.conv_shortcut.weight"],
                           after["up_blocks.1.resnets.0.conv_shortcut.weight"])
    assert not torch.equal(before["conv_out.weight"], after["conv_out.weight"])
    assert not torch.equal(before["conv_in.weight"], after["conv_in.weight"])


def test_layerdrop_full_share_keeps_whole_batches(tmp_path):
    """Batches in the full share keep every layer: with all of them full, the layers train."""
    from safetensors.torch import load_file

    from autodiff_optuna.models.registry import DIGITS_DIR
    from autodiff_optuna.training.train_digits import train_ddpm

    train_ddpm(tmp_path, steps=2, batch=8, layerdrop=1.0, full_share=1.0, init=DIGITS_DIR,
               ema_decay=0.0)
    before = load_file(DIGITS_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    key = "mid_block.attentions.0.to_q.weight"
    assert not torch.equal(before[key], after[key])


def test_deep_digits_is_its_recipe_scored_by_the_digits_network():
    """The committed deeper model was trained by its recipe in train_digits (one place), and
    is scored by the same digits feature network as the bundled one."""
    import json

    from autodiff_optuna.metrics import load_scorer
    from autodiff_optuna.models.registry import PRESETS
    from autodiff_optuna.training.train_digits import RECIPES

    trained = json.loads((PRESETS["digits-deep"].directory / "training.json").read_text())
    assert {k: trained[k] for k in RECIPES["digits-deep"]} == RECIPES["digits-deep"]
    assert load_scorer("digits-deep").name == load_scorer("digits").name
