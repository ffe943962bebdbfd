"""The handwritten-digits data behind tiny-sd-digits.

scikit-learn ships the UCI 8x8 digits inside its wheel, so the embedded model can be trained and judged with
no download. The split is fixed (seeded, stratified) so that the classifier, the diffusion model and every
digits-FID figure refer to the same held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Phrasings used at training time; evaluation uses the first one so that prompts are the same for every run.
PROMPT_TEMPLATES = (
    "a handwritten digit {name}",
    "the handwritten number {name}",
    "a drawing of the digit {name}",
    "digit {name}",
)

IMAGE_SIZE = 32
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


def prompt_for(label: int, template_index: int = 0) -> str:
    """The prompt that asks for digit ``label`` (0..9)."""
    return PROMPT_TEMPLATES[template_index].format(name=DIGIT_NAMES[label])


def label_from_prompt(prompt: str) -> int | None:
    """The digit a prompt asks for, or None when it names no digit (used by prompt accuracy)."""
    words = prompt.lower().replace(",", " ").split()
    for label, name in enumerate(DIGIT_NAMES):
        if name in words or str(label) in words:
            return label
    return None


@dataclass(frozen=True)
class ImageSplit:
    """An embedded model's training data: images in [-1, 1], shape (N, 1, 32, 32), and integer labels (digits
    upsampled from 8x8, Fashion-MNIST padded from 28x28)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    heldout_images: torch.Tensor
    heldout_labels: torch.Tensor


def upsample_digits(images_8x8: np.ndarray) -> torch.Tensor:
    """8x8 images with values 0..16 -> (N, 1, 32, 32) float images in [-1, 1] (bilinear, as a scan would blur)."""
    x = torch.from_numpy(np.asarray(images_8x8, dtype=np.float32)).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


def load_split() -> ImageSplit:
    """The fixed stratified train / held-out split of ``sklearn.datasets.load_digits``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    heldout_mask = np.zeros(len(labels), dtype=bool)
    for label in range(10):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        heldout_mask[idx[: int(round(len(idx) * HELD_OUT_FRACTION))]] = True
    images = upsample_digits(digits.images)
    labels_t = torch.from_numpy(labels)
    return ImageSplit(
        train_images=images[~heldout_mask],
        train_labels=labels_t[~heldout_mask],
        heldout_images=images[heldout_mask],
        heldout_labels=labels_t[heldout_mask],
    )


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: float = 0.08, max_rot_deg: float = 8.0,
            max_scale: float = 0.08) -> torch.Tensor:
    """Small random affine jitter (shift, rotation, scale): more writing styles from 1.4k training digits."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * max_rot_deg * np.pi / 180.0
    scale = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * max_scale
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Pad with the background value (-1) rather than zero (mid-grey).
    out = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out - 1.0
