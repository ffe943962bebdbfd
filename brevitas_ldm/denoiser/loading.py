"""Loading pipelines: the embedded default by name, or any local diffusers pipeline directory.

Nothing is ever fetched from a hub: ``local_files_only`` is always set, and a path that is not a diffusers
pipeline directory gets an error that says what is expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from brevitas_ldm.errors import BrevitasLDMError, ModelError
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


def pipeline_class_name(path: Path) -> str:
    """The pipeline class ``path/model_index.json`` names, checked before diffusers reads it: the file is UTF-8 JSON,
    an object, and its ``_class_name`` is a diffusers pipeline class (one line naming the file otherwise)."""
    index_file = Path(path) / "model_index.json"
    fix = "re-save the pipeline with save_pretrained()"
    try:
        index = json.loads(index_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelError(f"{index_file} is not UTF-8 text: {fix}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{index_file} is not valid JSON ({exc}): {fix}") from None
    except RecursionError:
        raise ModelError(f"{index_file} nests its JSON too deeply to read: {fix}") from None
    if not isinstance(index, dict):
        raise ModelError(f"{index_file} holds a JSON {type(index).__name__}, not the object diffusers writes: {fix}")
    name = index.get("_class_name")
    if not isinstance(name, str) or not name:
        raise ModelError(f"{index_file} has no \"_class_name\" naming the pipeline class: {fix}")
    import diffusers

    try:    # diffusers resolves its names lazily: an optional dependency missing surfaces here
        cls = getattr(diffusers, name, None) if name.isidentifier() and not name.startswith("_") else None
    except (ImportError, RuntimeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ModelError(f"{index_file} names the pipeline class {name[:80]!r}, which diffusers "
                         f"{diffusers.__version__} does not have: fix \"_class_name\" or {fix}")
    return name


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
    class_name = pipeline_class_name(path)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype(dtype))
    except BrevitasLDMError:
        raise       # a quantized folder's own one-line errors (brevitas_ldm.checkpoint.diffusers_quantizer) say it all
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, ImportError) as exc:
        # model_index.json and the component configs are user files: whatever diffusers trips on, say where.
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"could not load the {class_name} pipeline at {path}: {type(exc).__name__}: {first}; "
                         f"re-save it with save_pretrained()") from None
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
