"""digits-FID and prompt accuracy for tiny-sd-digits: :class:`~brevitas_ldm.evaluation.class_evaluator.ClassEvaluator`
on the digits entry, under the names the digits figures have always had.

The shipped classifier (trained on the same train split, >= 97% held-out accuracy) supplies both: its penultimate
features are the space digits-FID is computed in, against the real held-out digits; its predictions say whether
an image shows the digit its prompt asked for.
"""

from __future__ import annotations

from pathlib import Path

import torch

from brevitas_ldm.evaluation.class_evaluator import ClassEvaluator
from brevitas_ldm.zoo import CLASSIFIER_DIR, DEFAULT_MODEL
from brevitas_ldm.zoo.catalog import CATALOG


class DigitsEvaluator(ClassEvaluator):
    """Scores generated digit images (N, C, H, W) in [0, 1] against the held-out real digits."""

    def __init__(self, classifier_dir: Path = CLASSIFIER_DIR) -> None:
        super().__init__(CATALOG[DEFAULT_MODEL], classifier_dir)

    @classmethod
    def available(cls, classifier_dir: Path = CLASSIFIER_DIR) -> bool:
        return (classifier_dir / "model.safetensors").is_file()

    def digits_fid(self, images: torch.Tensor) -> float:
        return self.fid(images)
