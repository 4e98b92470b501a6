"""The limits of the numbers a command is given for sampling: image counts and noise seeds,
checked before anything is loaded (and without torch, so that the command line's flags are
checked where they are parsed)."""

from autodiff_optuna.errors import UsageError

# the most images one command samples (--samples, --heldout-samples): twenty times FID's
# customary 50,000; a larger count is a typo, refused before anything is loaded or stored
MAX_IMAGES = 1_000_000
# the largest seed of a noise stream: its generator seed, 2 * seed + 1, must fit torch's int64
MAX_SEED = 2**62 - 1


def check_seed(seed: int, flag: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{flag} must be in [0, {MAX_SEED}], got {seed}")


def check_count(n: int, flag: str, limit: int = MAX_IMAGES) -> None:
    """Refuse, in one line, an image count beyond ``limit`` (before any model is loaded)."""
    if n > limit:
        raise UsageError(f"{flag} must be at most {limit:,} images, got {n:,}")
