"""Loading pipelines: the embedded default by name, or any local diffusers pipeline directory.

Nothing is ever fetched from a hub: ``local_files_only`` is always set, and a path that is not a diffusers
pipeline directory gets an error that says what is expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from brevitas_ldm.errors import ModelError
from brevitas_ldm.zoo import DEFAULT_MODEL, EMBEDDED_MODELS


def resolve_model_path(model: str | Path) -> Path:
    """The directory behind ``model`` (an embedded model name or a path), checked to be a diffusers pipeline."""
    text = str(model)
    if text in EMBEDDED_MODELS:
        path = EMBEDDED_MODELS[text]
        if not (path / "model_index.json").is_file():
            raise ModelError(f"the embedded model {text!r} is not in this installation ({path}): train it with "
                             f"`python -m brevitas_ldm.zoo.train --model {text}` or reinstall brevitas-ldm")
        return path
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelError(f"model path {text!r} does not exist: pass --model {DEFAULT_MODEL} or the directory of a "
                         f"diffusers pipeline saved with save_pretrained()")
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{text!r} is not a diffusers pipeline directory (no model_index.json): pass a folder "
                         f"written by pipeline.save_pretrained(), or --model {DEFAULT_MODEL}")
    return path


def model_display_name(model: str | Path) -> str:
    text = str(model)
    return text if text in EMBEDDED_MODELS else str(Path(text).expanduser().resolve())


#: ``--dtype`` names and the torch dtypes a pipeline can be loaded in.
DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str) -> Any:
    """The torch dtype behind a ``--dtype`` name, refused in one line when it is none of :data:`DTYPES`."""
    import torch

    if name not in DTYPES:
        raise ModelError(f"--dtype {name!r} is not supported: use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def resolve_device(name: str) -> str:
    """The torch device behind ``--device``: ``auto`` is CUDA when present, else the CPU; a device this machine
    does not have is refused in one line."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ModelError(f"--device {name!r} is not a torch device: pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {name} asks for CUDA, which this machine does not have: pass --device cpu")
    return name


def load_pipeline(model: str | Path = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32") -> Any:
    """Load a pipeline offline with diffusers' ``DiffusionPipeline.from_pretrained`` in ``dtype`` (float32,
    float16 or bfloat16) on ``device``, progress bars off. Analysis, calibration and evaluation then run in that
    dtype, and SQNR is measured against the float reference in the same dtype."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading chatter (optional torchvision image processors, accelerate hints) is not the user's problem.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()

    path = resolve_model_path(model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path / 'model_index.json'} is not valid JSON ({exc}): re-save the pipeline") from None
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype(dtype))
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelError(f"could not load the {index.get('_class_name', 'diffusers')} pipeline at {path}: "
                         f"{str(exc).splitlines()[0]}; re-save it with save_pretrained()") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_source(pipe: Any) -> str | None:
    """Where ``pipe`` was loaded from, as :func:`load_pipeline` takes it again: an embedded model's name, a
    pipeline directory's absolute path, or None for a pipeline built in memory."""
    source = getattr(pipe, "name_or_path", None)
    if not source or not (Path(source) / "model_index.json").is_file():
        return None
    resolved = Path(source).resolve()
    for name, path in EMBEDDED_MODELS.items():
        if path.resolve() == resolved:
            return name
    return str(resolved)
