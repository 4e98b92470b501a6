import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from hypothesis import settings

from autodiff_optuna.models import load_model

# property tests draw the same examples on every run (seeded, as every test here): a failure
# is the code's or the test's, reproducible, never the luck of one run
settings.register_profile("seeded", derandomize=True)
settings.load_profile("seeded")


@pytest.fixture(scope="session")
def digits():
    return load_model("digits")


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised UNet2DModel in diffusers' save_pretrained format."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-unet")
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                layers_per_block=1, norm_num_groups=8,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


@pytest.fixture
def error_line(capsys):
    """Reads what a command printed on stderr and checks it is one ``error: ...`` line."""
    return lambda: helpers.error_line(capsys)


@pytest.fixture
def spawn(tmp_path):
    """Starts ``python -m autodiff_optuna ARGS`` processes; every one still running when the
    test ends, passed or failed, is killed and reaped. Each writes its stderr to a file
    (``proc.err_path``): a pipe nobody reads could fill and stall it."""
    started = []

    def start(args: list[str]) -> subprocess.Popen:
        err_path = tmp_path / f"worker-{len(started)}.err"
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "autodiff_optuna", *args],
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
        proc.err_path = err_path
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
