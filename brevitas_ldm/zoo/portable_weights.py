"""Shipped CLIP text encoders in the key layout every supported transformers release loads.

transformers 5.2x writes a ``CLIPTextModel`` without its ``text_model.`` prefix (``encoder.layers.0...``); releases
before it (5.5, the newest optimum-intel 2.2 allows) do not map those keys back, so they load none of the 36 tensors
and silently run a random text encoder: the embedded model's FP prompt accuracy falls from 0.9 to chance (0.11). With
the prefix (``text_model.encoder.layers.0...``, the layout of SD-1.5's own text encoder) both load every tensor.
``brevitas_ldm.zoo.train`` writes the shipped folders through :func:`prefix_clip_text_keys`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The module CLIPTextModel keeps its transformer under, and the prefix its checkpoints have always used.
CLIP_TEXT_PREFIX = "text_model."


def prefix_clip_text_keys(text_encoder_dir: Path) -> int:
    """Rewrite ``text_encoder_dir/model.safetensors`` with every key under ``text_model.`` (tensors and metadata
    unchanged; written atomically); returns how many keys were renamed (0: already portable, or not a CLIP text
    model)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((text_encoder_dir / "config.json").read_text())
    if config.get("model_type") != "clip_text_model":
        return 0
    path = text_encoder_dir / "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    bare = [key for key in tensors if not key.startswith(CLIP_TEXT_PREFIX)]
    if not bare:
        return 0
    renamed = {key if key.startswith(CLIP_TEXT_PREFIX) else CLIP_TEXT_PREFIX + key: value
               for key, value in tensors.items()}
    staging = path.with_name(path.name + ".portable")
    try:
        save_file(renamed, str(staging), metadata=metadata)
        os.replace(staging, path)      # atomic: the folder never holds half a text encoder
    finally:
        staging.unlink(missing_ok=True)
    return len(bare)
