"""The classifier that judges an embedded model's images (its FID features and prompt accuracy).

One architecture for both embedded models (``digits-classifier``, ``fashion-classifier``). Trained on the same
train split as its model and checked on the held-out split, it plays the role Inception
plays for FID on natural images: its penultimate features define the space in which generated and real digits
are compared, and its predictions say whether an image shows the digit its prompt asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """A small CNN on (N, 1, 32, 32) images in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 96, 3, padding=1)
        self.fc1 = nn.Linear(96 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, FEATURE_DIM): the space digits-FID is measured in."""
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(images))

    def save(self, directory: Path, extra: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({"feature_dim": FEATURE_DIM, **(extra or {})}, indent=2))

    @classmethod
    def load(cls, directory: Path) -> "DigitsClassifier":
        model = cls()
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.eval()


def to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """Pipeline images (N, 3, H, W) in [0, 1] or (N, 1, H, W) in [-1, 1] -> (N, 1, 32, 32) in [-1, 1]."""
    if images.shape[1] == 3:
        images = images.mean(dim=1, keepdim=True) * 2.0 - 1.0
    if images.shape[-1] != 32:
        images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    return images
