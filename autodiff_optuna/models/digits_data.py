"""The bundled data set: scikit-learn's 8x8 handwritten digits (1,797 images, 17 grey levels).

The data ships inside scikit-learn, so the bundled model and its FID reference can be rebuilt on a
machine with no network at all.
"""

import numpy as np
import torch

DIGIT_LEVELS = 16  # sklearn stores each pixel as an integer in [0, 16]


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 images (N, 1, 8, 8) in [0, 255], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / DIGIT_LEVELS)).astype(np.uint8)
    return images[:, None, :, :], digits.target.astype(np.int64)


def uint8_to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 images to the [-1, 1] float range the diffusion model is trained on."""
    return torch.from_numpy(images).float() / 127.5 - 1.0


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of n indices into two halves (the data's own FID floor)."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]
