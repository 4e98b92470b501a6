"""A study's cost before it runs (search/estimate.py, `study --estimate`): arithmetic on the
preset, FLOPs counted on the architecture without weights, hours per device."""

import json
import re

import pytest

from autodiff_optuna.cli import main
from autodiff_optuna.search.config import PRESETS_DIR, configure
from autodiff_optuna.search.estimate import estimate, image_cost

COST_LINE = re.compile(r"^# cost \(study --estimate\):.*$", re.MULTILINE)


def test_counts_follow_the_preset_arithmetic():
    config, targets = configure("adm64", 4)
    result = estimate(config, targets, "adm64-k4")
    cost = image_cost("adm64")
    for row, candidates in zip(result.stages, (targets.trials, targets.stage2_trials)):
        images = candidates * config.samples
        assert (row.candidates, row.images, row.images_at_most) == (candidates, images, images)
        assert row.network_evaluations == images * config.steps  # no classifier-free guidance
        assert row.classifier_gradients == images * config.steps  # ADM-G: one a step
        assert row.fid_images == images
        assert row.gflops == pytest.approx(images * config.steps
                                           * (cost.network + cost.classifier)
                                           + images * cost.fid_gflops)
        assert set(row.hours) == {"cpu", "h100", "h200"}


def test_flops_are_counted_on_the_architecture_without_weights():
    # guided-diffusion's ImageNet-64 UNet and SD 1.5's UNet, as bench/gpu.py measures them
    assert image_cost("adm64").network == pytest.approx(219.36, rel=1e-3)
    sd = image_cost("sd15")
    assert sd.network == pytest.approx(803.27, rel=1e-3)
    assert sd.calls_per_step == 2  # guidance 7.5: a conditional and an unconditional call
    assert sd.decode > 0


def test_pruned_stage_one_samples_fewer_images_than_at_most():
    config, targets = configure("digits", 4)
    stage1 = estimate(config, targets, "digits-k4", stages=(1,)).stages[0]
    assert stage1.images < stage1.images_at_most == targets.trials * config.samples
    assert stage1.fid_computations > stage1.candidates  # one per reported prefix


def test_estimate_json_needs_no_weights(capsys):
    assert main(["study", "--model", "sd15", "--steps", "4", "--estimate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in out["stages"]] == [1, 2]
    assert set(out["total_hours"]) == {"cpu", "h100", "h200"}
    assert out["total_hours"]["h200"] > 1
    assert any("classifier-free guidance" in line for line in out["assumptions"])


def test_estimate_of_one_stage_times_the_loaded_model(capsys):
    assert main(["study", "--model", "digits", "--steps", "3", "--stage", "1", "--samples",
                 "300", "--trials", "10", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: 10 candidates" in out and "stage 2" not in out
    assert "timed on this machine" in out


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_preset_files_state_their_projected_cost(path):
    """Every preset whose architecture is known states its cost, and the statement is true."""
    model, steps = path.stem.rsplit("-k", 1)
    stated = COST_LINE.search(path.read_text())
    try:
        image_cost(model)
    except Exception:  # an architecture only its checkpoint has: nothing can be stated
        assert stated is None
        return
    config, targets = configure(model, int(steps))
    assert stated is not None, f"{path.name} does not state its cost"
    assert stated.group(0) == estimate(config, targets, path.stem).preset_comment()
