"""What each embedded model draws and how it is judged: its classes, prompts, classifier and metric names.

Every command that scores samples (evaluate, quantize, qat, the benchmarks) asks :func:`embedded_model` for the
model's entry instead of testing model names, so a new embedded model is one entry here (and its weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brevitas_ldm.zoo import (
    CLASSIFIER_DIR,
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    FASHION_CLASSIFIER_DIR,
    FASHION_MODEL,
)
from brevitas_ldm.zoo.data import DIGIT_NAMES, label_from_prompt, prompt_for
from brevitas_ldm.zoo.fashion_data import (
    FASHION_NAMES,
    fashion_label_from_prompt,
    fashion_prompt,
)


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded class-conditional model and the classifier that judges it."""

    name: str
    pipeline_dir: Path
    classifier_dir: Path
    class_names: tuple[str, ...]
    #: The canonical prompt for class ``label`` (evaluation and calibration cycle through these).
    prompt: Callable[[int], str]
    #: The class a prompt asks for, or None (prompt accuracy counts only prompts that name a class).
    label_from_prompt: Callable[[str], int | None]
    #: metrics.json key of the classifier-feature FID, and how reports and summaries name it.
    fid_key: str
    fid_name: str
    #: True when the FID reference statistics ship as a file (the data is a build-time input only);
    #: False when they are computed from data the package always has (scikit-learn's digits).
    shipped_reference: bool

    def prompts(self) -> list[str]:
        """One canonical prompt per class, in label order."""
        return [self.prompt(label) for label in range(len(self.class_names))]

    def available(self) -> bool:
        return (self.classifier_dir / "model.safetensors").is_file() and (
            not self.shipped_reference or (self.classifier_dir / "fid_reference.safetensors").is_file())


CATALOG: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL, pipeline_dir=EMBEDDED_MODELS[DEFAULT_MODEL], classifier_dir=CLASSIFIER_DIR,
        class_names=DIGIT_NAMES, prompt=prompt_for, label_from_prompt=label_from_prompt,
        fid_key="digits_fid", fid_name="digits-FID", shipped_reference=False),
    FASHION_MODEL: EmbeddedModel(
        name=FASHION_MODEL, pipeline_dir=EMBEDDED_MODELS[FASHION_MODEL], classifier_dir=FASHION_CLASSIFIER_DIR,
        class_names=FASHION_NAMES, prompt=fashion_prompt, label_from_prompt=fashion_label_from_prompt,
        fid_key="fashion_fid", fid_name="fashion-FID", shipped_reference=True),
}

#: Every classifier-FID key a metrics.json can hold (reports list whichever are present).
FID_KEYS = tuple(entry.fid_key for entry in CATALOG.values())


def embedded_model(model: str | Path | None) -> EmbeddedModel | None:
    """The catalog entry of ``model`` (an embedded name, or a path to an embedded model's folder), else None."""
    if model is None:
        return None
    text = str(model)
    if text in CATALOG:
        return CATALOG[text]
    try:
        resolved = Path(text).expanduser().resolve()
    except (OSError, RuntimeError):
        return None
    for entry in CATALOG.values():
        if entry.pipeline_dir.resolve() == resolved:
            return entry
    return None


def default_prompt_for(model: str | Path | None, label: int) -> str:
    """The canonical prompt for class ``label`` of ``model``; models outside the catalog get the digit prompts
    (the project's default, which any CLIP tokenizer accepts)."""
    entry = embedded_model(model) or CATALOG[DEFAULT_MODEL]
    return entry.prompt(label % len(entry.class_names))
