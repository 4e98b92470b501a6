"""A study's cost before it runs (search/estimate.py, `study --estimate`): arithmetic on the
preset (its candidates, confirmation and skip-cost prior), FLOPs counted on the architecture
without weights, hours per device, this machine's timing and start-up."""

import json
import re
import subprocess
import sys

import pytest

from autodiff_optuna.cli import main
from autodiff_optuna.search.config import PRESETS_DIR, configure
from autodiff_optuna.search.estimate import (
    COMPLETE_SHARE,
    HereTiming,
    _linear_fit,
    complete_share,
    estimate,
    image_cost,
    process_seconds,
)

COST_LINE = re.compile(r"^# cost \(study --estimate\):.*$", re.MULTILINE)


@pytest.mark.slow  # 1.7 s on the idle machine: out of the fast subset
def test_counts_follow_the_preset_arithmetic():
    # the paper's budget, unpruned (the preset's comment names these flags)
    config, targets = configure("adm64", 4, trials=500, stage2_trials=750, population=50,
                                min_samples=0)
    result = estimate(config, targets, "adm64-k4")
    cost = image_cost("adm64")
    # stage 1 confirms its 3 best and the uniform baseline; stage 2 (750 trials) 12 of its front;
    # stage 2 first samples its skip-cost prior: 1 + K x L samplings of 64 images
    extras = {1: (4, 0), 2: (12, (1 + config.steps * cost.layers) * 64)}
    for row, candidates in zip(result.stages, (targets.trials, targets.stage2_trials)):
        images = candidates * config.samples  # the carried stage-1 elites are not sampled
        confirmed, prior = extras[row.stage]
        assert (row.candidates, row.images, row.images_at_most) == (candidates, images, images)
        assert (row.confirmed, row.confirmation_images, row.prior_images) == (
            confirmed, confirmed * config.samples, prior)
        total = images + confirmed * config.samples + prior
        assert row.total_images == total
        assert row.network_evaluations == total * config.steps  # no classifier-free guidance
        assert row.classifier_gradients == total * config.steps  # ADM-G: one a step
        assert row.fid_images == total
        assert row.gflops == pytest.approx(total * config.steps
                                           * (cost.network + cost.classifier)
                                           + total * cost.fid_gflops)
        assert set(row.hours) == {"cpu", "h100", "h200"}
    assert "stage 1 its 3 best and the uniform baseline" in " ".join(result.assumptions)


def test_skippable_layers_are_counted_as_the_loaded_model_finds_them():
    from autodiff_optuna.models import load_model

    assert image_cost("digits").layers == len(load_model("digits", "cpu").skippable_layers())
    assert image_cost("digits-deep").layers == 18


@pytest.mark.slow  # 1.6 s on the idle machine: out of the fast subset
def test_flops_are_counted_on_the_architecture_without_weights():
    # guided-diffusion's ImageNet-64 UNet and SD 1.5's UNet, as bench/gpu.py measures them
    assert image_cost("adm64").network == pytest.approx(219.36, rel=1e-3)
    sd = image_cost("sd15")
    assert sd.network == pytest.approx(803.27, rel=1e-3)
    assert sd.calls_per_step == 2  # guidance 7.5: a conditional and an unconditional call
    assert sd.decode > 0


def test_pruned_stage_one_samples_fewer_images_than_at_most():
    config, targets = configure("digits", 4)  # the preset: rungs from 250 images
    stage1 = estimate(config, targets, "digits-k4", stages=(1,)).stages[0]
    assert stage1.images < stage1.images_at_most == targets.trials * config.samples
    # the preset's stage 1 (local moves in noise levels) sampled 50% of its images, ten studies
    # (BENCHMARKS.md, "Since: local moves in noise levels"); moving steps in training steps,
    # the K=4 presets' sampled 44% (six studies)
    assert stage1.images / stage1.images_at_most == pytest.approx(0.50, abs=0.03)
    deep, deep_targets = configure("digits-deep", 4)  # training steps
    deep1 = estimate(deep, deep_targets, "digits-deep-k4", stages=(1,)).stages[0]
    assert deep1.images / deep1.images_at_most == pytest.approx(0.44, abs=0.03)
    # TPE in noise levels: not the mutation the share in noise levels was measured on
    tpe, _ = configure("digits", 4, sampler="tpe", step_moves="noise")
    assert complete_share(tpe) == COMPLETE_SHARE < complete_share(config)
    # digits-k3's stretch moves steps in noise levels too (its share: 58,325 images a study
    # against 57,850 without, BENCHMARKS.md "Stage 1's stretch move")
    assert complete_share(configure("digits", 3)[0]) == complete_share(config)
    assert stage1.fid_computations > stage1.candidates  # one per reported prefix
    assert stage1.samplings == stage1.fid_computations  # a sampling per prefix, and confirmed
    # fewer candidates than the pruner's start-up: every one completes
    config, targets = configure("digits", 4, trials=5)
    stage1 = estimate(config, targets, "digits-k4", stages=(1,)).stages[0]
    assert stage1.images == stage1.images_at_most


def test_cpu_hours_add_every_timed_part_and_the_start_up():
    config, targets = configure("digits", 4, trials=20, stage2_trials=8, samples=300,
                                population=5)
    timing = HereTiming(seconds_per_image=0.004, seconds_per_fid=0.002, how="given",
                        seconds_per_sampling=0.05, seconds_per_trial=0.1,
                        seconds_to_create=0.5, startup_seconds=20.0)
    result = estimate(config, targets, "t", timing=timing)
    for row in result.stages:
        seconds = (row.samplings * 0.05 + row.total_images * 0.004
                   + row.fid_computations * 0.002 + row.candidates * 0.1
                   + (0.5 if row.stage == 1 else 0.0))  # stage 1's study: created first
        assert row.hours["cpu"] * 3600 == pytest.approx(seconds)
    stages = sum(row.hours["cpu"] for row in result.stages) * 3600
    assert result.startup_seconds >= 20.0  # and the FLOP count, where it was not cached yet
    assert result.total_hours["cpu"] * 3600 == pytest.approx(stages + result.startup_seconds)
    assert result.as_dict()["startup_hours"]["cpu"] * 3600 == pytest.approx(
        result.startup_seconds)
    assert any(line.startswith("  start-up: cpu") for line in result.lines())
    assert "  assuming cpu: given" in result.lines()


def test_timings_at_two_batch_sizes_split_a_fixed_part_from_a_part_per_image():
    assert _linear_fit(8, 0.1 + 8 * 0.01, 256, 0.1 + 256 * 0.01) == pytest.approx((0.01, 0.1))
    # noise that makes a part negative, or one size: all of it per image
    assert _linear_fit(8, 1.0, 256, 0.5) == pytest.approx((0.5 / 256, 0.0))
    assert _linear_fit(100, 1.0, 100, 1.0) == pytest.approx((0.01, 0.0))


def test_the_start_up_is_the_process_age():
    if process_seconds() is None:
        pytest.skip("no /proc here: the start-up is the timing alone")
    code = ("import time; time.sleep(1.0); "
            "from autodiff_optuna.search.estimate import process_seconds; "
            "print(process_seconds())")
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout)
    assert 1.0 <= child < 60  # its second of sleep, and its interpreter's start


@pytest.mark.slow  # 1.4 s on the idle machine: out of the fast subset
def test_estimate_json_needs_no_weights(capsys):
    assert main(["study", "--model", "sd15", "--steps", "4", "--estimate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in out["stages"]] == [1, 2]
    # the keys it has always had, and those added beside them
    assert {"stage", "candidates", "images", "images_at_most", "network_evaluations",
            "classifier_gradients", "decoded_images", "fid_images", "fid_computations", "gflops",
            "hours", "confirmed", "confirmation_images", "prior_images", "total_images",
            "samplings"} == set(out["stages"][1])
    assert out["stages"][1]["prior_images"] > 0 == out["stages"][0]["prior_images"]
    assert out["startup_hours"] == {"cpu": 0.0}  # priced from FLOPs: nothing was loaded
    assert set(out["total_hours"]) == {"cpu", "h100", "h200"}
    assert out["total_hours"]["h200"] > 1
    assert any("classifier-free guidance" in line for line in out["assumptions"])


@pytest.mark.slow  # 4.3 s on the idle machine: out of the fast subset
def test_estimate_of_one_stage_times_the_loaded_model(capsys):
    assert main(["study", "--model", "digits", "--steps", "3", "--stage", "1", "--samples",
                 "300", "--trials", "10", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: 10 candidates" in out and "stage 2" not in out
    assert "+ 1,200 confirming 4" in out
    assert "timed here on the loaded model" in out and "after a warm-up" in out
    assert "  start-up: cpu " in out


def test_the_estimate_refuses_what_the_study_refuses(error_line):
    """A loaded model's limits hold for ``--estimate`` as for the study it prices."""
    assert main(["study", "--model", "digits", "--steps", "1001", "--estimate"]) == 2
    assert error_line() == "error: --steps must be in [1, 999] for digits, got 1001"


@pytest.mark.parametrize("model", ["digits", "sd15"])
def test_the_estimate_refuses_a_batch_size_the_study_refuses(model, error_line):
    assert main(["study", "--model", model, "--steps", "4", "--batch-size", "0",
                 "--estimate"]) == 2
    assert error_line() == "error: --batch-size must be at least 1, got 0"


def test_a_checkpoint_that_does_not_load_is_why_no_estimate(tmp_path, error_line):
    """Only its checkpoint knows a ``--model diffusers`` network: where it does not load, that
    is the line (not "pass --checkpoint" to one who did)."""
    assert main(["study", "--model", "diffusers", "--checkpoint", str(tmp_path / "absent"),
                 "--steps", "4", "--estimate"]) == 2
    assert error_line() == f"error: --checkpoint {tmp_path / 'absent'}: no such file"


@pytest.mark.slow  # about 1.5 s: two networks built and counted on the meta device
def test_the_ddpm_presets_are_priced_on_the_papers_networks():
    """google/ddpm-*'s architectures are known without their weights: Ho et al. 2020 give 35.7
    million parameters for the CIFAR-10 network and 114 million for the LSUN ones."""
    import torch
    from diffusers import UNet2DModel

    from autodiff_optuna.models.registry import DDPM_CIFAR10_UNET, DDPM_LSUN256_UNET

    for config, millions in ((DDPM_CIFAR10_UNET, 35.7), (DDPM_LSUN256_UNET, 114)):
        with torch.device("meta"):
            parameters = sum(p.numel() for p in UNet2DModel(**config).parameters())
        assert parameters / 1e6 == pytest.approx(millions, abs=0.5)
    assert image_cost("ddpm-church256").network == image_cost("ddpm-bedroom256").network
    assert image_cost("ddpm-cifar10").layers == 28  # 10 down, 3 mid, 15 up


@pytest.mark.slow  # a few seconds: out of the fast subset
def test_a_users_own_unet_is_priced_on_its_checkpoints_config(tiny_unet_dir, tmp_path,
                                                              capsys):
    """``--model diffusers --checkpoint DIR``: no preset knows the network, the loaded one
    does. A study prints its cost first (it used to stop there, exit 2) and runs."""
    import numpy as np
    from realmodel_standins import save_standin_inception, save_stats

    flags = ["--inception", str(save_standin_inception(tmp_path / "inception.pt", dim=16)),
             "--ref-stats", str(save_stats(tmp_path / "stats.npz",
                                           np.random.default_rng(0).normal(size=(40, 16))))]
    base = ["study", "--model", "diffusers", "--checkpoint", str(tiny_unet_dir), "--steps", "3",
            "--device", "cpu", "--stage", "1", "--trials", "2", "--population", "2",
            "--samples", "40", "--storage", f"sqlite:///{tmp_path}/s.db"]
    tiny = image_cost("diffusers", json.dumps(json.loads(
        (tiny_unet_dir / "unet" / "config.json").read_text())))
    capsys.readouterr()
    assert main(base + flags) == 0
    out = capsys.readouterr().out
    assert f"assuming {tiny.network:.4g} GFLOP per network call, counted on the architecture" \
        in out and "stage 1 done" in out
    assert main(base[:-2] + ["--estimate"]) == 0  # no FID network: priced all the same
    assert "counted on the architecture" in capsys.readouterr().out


def test_the_estimate_checks_the_steps_of_a_model_it_loads_without_its_fid(tiny_unet_dir,
                                                                           error_line):
    """A model whose weights are here but whose FID network is not: the estimate is priced
    from FLOPs, and the model's schedule still bounds --steps."""
    assert main(["study", "--model", "diffusers", "--checkpoint", str(tiny_unet_dir),
                 "--steps", "1001", "--estimate", "--device", "cpu"]) == 2
    assert error_line() == "error: --steps must be in [1, 999] for diffusers, got 1001"


@pytest.mark.slow  # 4.0 s on the idle machine: out of the fast subset
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


def test_a_stage2_patience_gives_the_earliest_end_beside_the_most():
    # digits-k4's preset: 2 generations of 10, less stage 1's 5 elites carried into the first
    config, targets = configure("digits", 4)
    assert targets.stage2_patience == 2
    timing = HereTiming(seconds_per_image=0.004, seconds_per_fid=0.002, how="given",
                        seconds_per_sampling=0.05, seconds_per_trial=0.1,
                        seconds_to_create=0.5, startup_seconds=20.0)
    # the first estimate in a process adds the time it took to count the network to its
    # start-up, and the shorter one below finds that count cached: both must find it cached
    estimate(config, targets, "digits-k4", timing=timing)
    result = estimate(config, targets, "digits-k4", timing=timing)
    assert [row.candidates for row in result.stages] == [targets.trials, targets.stage2_trials]
    earliest = result.as_dict()["earliest"]
    assert earliest["stage2_candidates"] == 2 * config.population - config.population // 2
    shorter = estimate(config, type(targets)(targets.trials, earliest["stage2_candidates"]),
                       "digits-k4", timing=timing)
    for device, hours in earliest["total_hours"].items():
        assert hours == pytest.approx(shorter.total_hours[device], rel=1e-6)
        assert hours < result.total_hours[device]
    first = earliest["stage2_candidates"]
    assert first == 15  # what the preset's comment and README say
    assert any(f"total if stage 2 ends at its patience, after its first {first} candidates"
               in line for line in result.lines())
    # without patience, or with too few trials for it to end anything, no earliest end
    assert "earliest" not in estimate(config, type(targets)(100, 80, 0), "d",
                                      timing=timing).as_dict()
    assert "earliest" not in estimate(config, type(targets)(100, first, 2), "d",
                                      timing=timing).as_dict()
