"""The feature network that stands in for Inception when scoring digits.

Inception expects 299 px natural images; on 8x8 digits its features say little. A small CNN
classifier trained on the digits themselves gives features that separate what matters (which digit,
how it is drawn), and FID is then computed on its penultimate layer exactly as clean-fid does on
Inception's pool layer.
"""

import torch
from torch import nn

FEATURE_DIM = 64


class DigitsFeatureNet(nn.Module):
    """A CNN over uint8 8x8 digits; ``features`` is its penultimate layer, ``forward`` the
    logits."""

    def __init__(self, feature_dim: int = FEATURE_DIM, n_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(64 * 4, feature_dim), nn.GELU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.body(images_uint8.float() / 255.0)

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images_uint8))
