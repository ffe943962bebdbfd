"""digits-FID and prompt accuracy for models that draw handwritten digits (the embedded tiny-sd-digits).

The shipped classifier (trained on the same train split, >= 97% held-out accuracy) supplies both: its penultimate
features are the space digits-FID is computed in, against the real held-out digits; its predictions say whether
an image shows the digit its prompt asked for.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.evaluation.fid import (
    extract_features,
    feature_statistics,
    frechet_distance_from_stats,
)
from brevitas_ldm.zoo import CLASSIFIER_DIR
from brevitas_ldm.zoo.classifier import DigitsClassifier, to_classifier_input
from brevitas_ldm.zoo.data import load_split


class DigitsEvaluator:
    """Scores generated digit images (N, C, H, W) in [0, 1] against the held-out real digits."""

    def __init__(self, classifier_dir: Path = CLASSIFIER_DIR) -> None:
        if not (classifier_dir / "model.safetensors").is_file():
            raise BrevitasLDMError(f"the digits classifier is missing at {classifier_dir}: train it with "
                                   f"`python -m brevitas_ldm.zoo.train`")
        self.classifier = DigitsClassifier.load(classifier_dir)

    @classmethod
    def available(cls, classifier_dir: Path = CLASSIFIER_DIR) -> bool:
        return (classifier_dir / "model.safetensors").is_file()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return extract_features(to_classifier_input(images.float()), self.classifier.features)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = to_classifier_input(images.float())
        return torch.cat([self.classifier(chunk).argmax(1) for chunk in x.split(256)])

    @cached_property
    def _heldout(self):

        return load_split()

    @cached_property
    def reference_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature mean/covariance of the real held-out digits (the FID reference)."""
        return feature_statistics(extract_features(self._heldout.heldout_images, self.classifier.features))

    def digits_fid(self, images: torch.Tensor) -> float:
        return frechet_distance_from_stats(*feature_statistics(self.features(images)), *self.reference_statistics)

    def prompt_accuracy(self, images: torch.Tensor, labels: list[int | None] | torch.Tensor) -> float:
        labels_t = torch.as_tensor([-1 if label is None else int(label) for label in labels])
        asked = labels_t >= 0
        if not bool(asked.any()):
            raise BrevitasLDMError("no prompt names a digit: prompt accuracy needs prompts like "
                                   "'a handwritten digit seven'")
        predictions = self.predict(images)
        return float((predictions[asked] == labels_t[asked]).float().mean())

    def heldout_accuracy(self) -> float:
        split = self._heldout
        predictions = torch.cat([self.classifier(c).argmax(1) for c in split.heldout_images.split(256)])
        return float((predictions == split.heldout_labels).float().mean())

    def baselines(self) -> dict[str, float]:
        """The floor and ceiling that put a model's digits-FID in context.

        floor: real training digits vs held-out digits (what a perfect generator would score);
        ceiling: per-class mean images of the training split (a trivial "generator" with no diversity).
        """
        split = self._heldout

        def as_generated(images: torch.Tensor) -> torch.Tensor:  # [-1, 1] grey -> [0, 1] RGB, like a pipeline
            return ((images + 1.0) / 2.0).repeat(1, 3, 1, 1)

        floor = frechet_distance_from_stats(*feature_statistics(self.features(as_generated(split.train_images))),
                                            *self.reference_statistics)
        means = torch.stack([split.train_images[split.train_labels == d].mean(0) for d in range(10)])
        repeated = means.repeat_interleave(max(2, len(split.heldout_labels) // 10), dim=0)
        ceiling = frechet_distance_from_stats(*feature_statistics(self.features(as_generated(repeated))),
                                              *self.reference_statistics)
        return {"real_train_vs_heldout": floor, "class_mean_images": ceiling}
