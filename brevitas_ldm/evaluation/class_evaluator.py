"""Classifier-feature FID and prompt accuracy for the embedded class-conditional models.

Each embedded model ships a classifier trained on its training split. It plays the role Inception plays for FID
on natural images: its penultimate features are the space the FID is computed in, against the model's real
held-out images; its predictions say whether an image shows the class its prompt asked for. tiny-sd-digits'
reference is computed from scikit-learn's bundled digits; tiny-sd-fashion's ships as statistics of the
Fashion-MNIST test split (``fid_reference.safetensors``), since the data itself is a build-time input only.
"""

from __future__ import annotations

import json
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import torch

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.evaluation.fid import (
    extract_features,
    feature_statistics,
    frechet_distance_from_stats,
)
from brevitas_ldm.zoo.catalog import CATALOG, EmbeddedModel, embedded_model
from brevitas_ldm.zoo.classifier import DigitsClassifier, to_classifier_input


class ClassEvaluator:
    """Scores generated images (N, C, H, W) in [0, 1] of one embedded model against its real held-out images."""

    def __init__(self, entry: EmbeddedModel, classifier_dir: Path | None = None) -> None:
        self.entry = entry
        self.classifier_dir = classifier_dir or entry.classifier_dir
        if not (self.classifier_dir / "model.safetensors").is_file():
            raise BrevitasLDMError(f"the {entry.name} classifier is missing at {self.classifier_dir}: train it with "
                                   f"`python -m brevitas_ldm.zoo.train --model {entry.name}`")
        if entry.shipped_reference and not (self.classifier_dir / "fid_reference.safetensors").is_file():
            raise BrevitasLDMError(f"the {entry.name} FID reference is missing at {self.classifier_dir}: train it "
                                   f"with `python -m brevitas_ldm.zoo.train --model {entry.name}`")
        self.classifier = DigitsClassifier.load(self.classifier_dir)

    @property
    def fid_key(self) -> str:
        return self.entry.fid_key

    @property
    def fid_name(self) -> str:
        return self.entry.fid_name

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return extract_features(to_classifier_input(images.float()), self.classifier.features)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = to_classifier_input(images.float())
        return torch.cat([self.classifier(chunk).argmax(1) for chunk in x.split(256)])

    @cached_property
    def _shipped(self) -> dict[str, np.ndarray]:
        from safetensors.torch import load_file

        return {k: v.numpy() for k, v in load_file(str(self.classifier_dir / "fid_reference.safetensors")).items()}

    @cached_property
    def _split(self):
        from brevitas_ldm.zoo.data import load_split

        return load_split()

    @cached_property
    def reference_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature mean/covariance of the real held-out images (the FID reference)."""
        if self.entry.shipped_reference:
            return self._shipped["mu"], self._shipped["sigma"]
        return feature_statistics(extract_features(self._split.heldout_images, self.classifier.features))

    def fid(self, images: torch.Tensor) -> float:
        return frechet_distance_from_stats(*feature_statistics(self.features(images)), *self.reference_statistics)

    def prompt_accuracy(self, images: torch.Tensor, labels: list[int | None] | torch.Tensor) -> float:
        labels_t = torch.as_tensor([-1 if label is None else int(label) for label in labels])
        asked = labels_t >= 0
        if not bool(asked.any()):
            raise BrevitasLDMError(f"no prompt names a class of {self.entry.name}: prompt accuracy needs prompts "
                                   f"like {self.entry.prompt(7)!r}")
        predictions = self.predict(images)
        return float((predictions[asked] == labels_t[asked]).float().mean())

    def metrics(self, images: torch.Tensor, labels: list[int | None]) -> dict[str, float]:
        """The two figures metrics.json carries: ``<fid_key>`` and ``prompt_accuracy``."""
        return {self.fid_key: self.fid(images), "prompt_accuracy": self.prompt_accuracy(images, labels)}

    def heldout_accuracy(self) -> float:
        """Classifier accuracy on the real held-out images (recorded at training time when the data is not here)."""
        if self.entry.shipped_reference:
            return float(json.loads((self.classifier_dir / "config.json").read_text())["heldout_accuracy"])
        split = self._split
        predictions = torch.cat([self.classifier(c).argmax(1) for c in split.heldout_images.split(256)])
        return float((predictions == split.heldout_labels).float().mean())

    def baselines(self) -> dict[str, float]:
        """The floor and ceiling that put a model's FID in context.

        floor: real training images vs held-out images (what a perfect generator would score);
        ceiling: per-class mean images of the training split (a trivial "generator" with no diversity).
        """
        if self.entry.shipped_reference:
            ref = self._shipped
            floor = frechet_distance_from_stats(ref["train_mu"], ref["train_sigma"], *self.reference_statistics)
            per_class = max(2, int(ref["heldout_count"]) // 10)
            means = np.repeat(ref["class_mean_features"], per_class, axis=0)
            ceiling = frechet_distance_from_stats(*feature_statistics(means), *self.reference_statistics)
            return {"real_train_vs_heldout": floor, "class_mean_images": ceiling}
        split = self._split

        def as_generated(images: torch.Tensor) -> torch.Tensor:  # [-1, 1] grey -> [0, 1] RGB, like a pipeline
            return ((images + 1.0) / 2.0).repeat(1, 3, 1, 1)

        floor = frechet_distance_from_stats(*feature_statistics(self.features(as_generated(split.train_images))),
                                            *self.reference_statistics)
        means = torch.stack([split.train_images[split.train_labels == d].mean(0) for d in range(10)])
        repeated = means.repeat_interleave(max(2, len(split.heldout_labels) // 10), dim=0)
        ceiling = frechet_distance_from_stats(*feature_statistics(self.features(as_generated(repeated))),
                                              *self.reference_statistics)
        return {"real_train_vs_heldout": floor, "class_mean_images": ceiling}


@cache
def _evaluator(name: str) -> ClassEvaluator:
    return ClassEvaluator(CATALOG[name])


def evaluator_for(model: str | Path | None) -> ClassEvaluator | None:
    """The evaluator of ``model`` when it is an embedded model whose classifier is installed, else None (other
    models draw other things: they are judged by SQNR and PSNR against their own FP pipeline)."""
    entry = embedded_model(model)
    if entry is None or not entry.available():
        return None
    return _evaluator(entry.name)
