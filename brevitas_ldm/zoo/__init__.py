"""The embedded models (tiny-sd-digits, the default, and tiny-sd-fashion) and their classifiers, shipped inside
the package; :mod:`brevitas_ldm.zoo.catalog` says what each draws and how it is judged."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "tiny-sd-digits"
FASHION_MODEL = "tiny-sd-fashion"
EMBEDDED_MODELS = {DEFAULT_MODEL: WEIGHTS_DIR / "tiny-sd-digits", FASHION_MODEL: WEIGHTS_DIR / "tiny-sd-fashion"}
CLASSIFIER_DIR = WEIGHTS_DIR / "digits-classifier"
FASHION_CLASSIFIER_DIR = WEIGHTS_DIR / "fashion-classifier"
