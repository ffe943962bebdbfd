"""The embedded default model, tiny-sd-digits, and its digits classifier (shipped inside the package)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "tiny-sd-digits"
EMBEDDED_MODELS = {DEFAULT_MODEL: WEIGHTS_DIR / "tiny-sd-digits"}
CLASSIFIER_DIR = WEIGHTS_DIR / "digits-classifier"
