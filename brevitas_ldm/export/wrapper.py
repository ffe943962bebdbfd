"""The positional front exporters need on a keyword-driven diffusers denoiser, and the capture of real inputs.

Diffusers denoisers take keyword inputs and return dataclasses; the exporters trace positional tensors and need a
tensor output, so :class:`DenoiserForExport` puts a positional front on the denoiser. Its inputs keep the diffusers
names (``sample``/``hidden_states``, ``timestep``, ``encoder_hidden_states``/``class_labels``) so a runtime feeds the
ONNX file with the same dictionary it would pass to the torch denoiser.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.denoiser.sampling import (
    SamplingSpec,
    denoiser_step_hook,
    first_denoiser_call,
    generate,
    get_denoiser,
)
from brevitas_ldm.errors import ModelError

_SAMPLE_KEYS = ("sample", "hidden_states")
_REQUIRED_INPUTS = {
    "UNet2DConditionModel": ("sample", "timestep", "encoder_hidden_states"),
    "UNet2DModel": ("sample", "timestep"),
    "DiTTransformer2DModel": ("hidden_states", "timestep", "class_labels"),
}


# -- the positional front ----------------------------------------------------------------------------------------

class DenoiserForExport(nn.Module):
    """``denoiser(**dict(zip(input_names, tensors)), return_dict=False)[0]`` as a positional-tensor module.

    Exporters trace ``module(*tensors)`` and need a tensor output; diffusers denoisers take keywords and return a
    dataclass. The wrapped denoiser is shared, not copied, so Brevitas' export mode reaches its quant proxies.
    """

    def __init__(self, denoiser: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.denoiser(**nested_inputs(dict(zip(self.input_names, inputs))), return_dict=False)
        return output[0]


def export_signature(denoiser: nn.Module,
                     example_inputs: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """Input names (sample first, timestep second, the rest in the given order) and the matching tensors."""
    if not isinstance(example_inputs, Mapping) or not example_inputs:
        raise ModelError("example_inputs must be a non-empty dict of the denoiser's keyword tensors, e.g. "
                         "{'sample': ..., 'timestep': ..., 'encoder_hidden_states': ...}")
    inputs = {k: v for k, v in example_inputs.items() if v is not None}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"example input {key!r} is a {type(value).__name__}, not a tensor: pass every denoiser "
                             f"input as a torch.Tensor (e.g. timestep=torch.tensor([999]))")
    required = _REQUIRED_INPUTS.get(type(denoiser).__name__)
    if type(denoiser).__name__ == "UNet2DModel" and _class_conditional(denoiser):
        required = required + ("class_labels",)
    if required is None:
        sample = next((k for k in _SAMPLE_KEYS if k in inputs), None)
        required = (sample or "sample", "timestep")
    missing = [k for k in required if k not in inputs]
    if missing:
        raise ModelError(f"example_inputs for {type(denoiser).__name__} lack {', '.join(missing)}: pass "
                         f"{', '.join(required)} as keyword tensors")
    names = tuple(required[:2]) + tuple(k for k in inputs if k not in required[:2])
    return names, tuple(inputs[k] for k in names)


def call_inputs(denoiser: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor inputs of one observed denoiser call (e.g. from ``denoiser_step_hook``) as keyword tensors.

    Pipelines call ``unet(latents, t, encoder_hidden_states=...)`` with positional and keyword arguments mixed;
    binding them to the forward signature gives the named dict that :func:`export_denoiser`, :func:`verify_onnx`
    and :func:`onnx_latency` take. A dict of tensors (SDXL's ``added_cond_kwargs``) is flattened to dotted names
    (``added_cond_kwargs.text_embeds``) that :func:`nested_inputs` folds back, so every tensor becomes one graph
    input. Non-tensor and None arguments are dropped; tensors are detached copies.
    """
    try:
        bound = inspect.signature(denoiser.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise ModelError(f"cannot match this call to {type(denoiser).__name__}.forward ({exc}): pass the args and "
                         f"kwargs of one real denoiser call") from None
    flat: dict[str, torch.Tensor] = {}
    for name, value in bound.arguments.items():
        if isinstance(value, torch.Tensor):
            flat[name] = value.detach().clone()
        elif isinstance(value, Mapping):
            flat.update({f"{name}{NESTED_SEPARATOR}{key}": item.detach().clone() for key, item in value.items()
                         if isinstance(item, torch.Tensor)})
    return flat


#: Joins a dict argument's name and its key in a flattened input name (``added_cond_kwargs.text_embeds``).
NESTED_SEPARATOR = "."


def nested_inputs(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Fold the dotted names of :func:`call_inputs` back into the keyword arguments the denoiser takes."""
    kwargs: dict[str, Any] = {}
    for name, value in flat.items():
        outer, separator, inner = name.partition(NESTED_SEPARATOR)
        if separator:
            kwargs.setdefault(outer, {})[inner] = value
        else:
            kwargs[name] = value
    return kwargs


def _class_conditional(unet: nn.Module) -> bool:
    config = getattr(unet, "config", None)
    return config is not None and (config.get("num_class_embeds") is not None
                                   or config.get("class_embed_type") is not None)


@torch.no_grad()
def capture_denoiser_calls(pipe: Any, conditions: Sequence[Any], seeds: Sequence[int], spec: SamplingSpec,
                           steps: Collection[int] | None = None) -> list[dict[str, torch.Tensor]]:
    """Keyword tensors of the denoiser calls at sampling ``steps`` (all when None) while ``pipe`` samples.

    The exported graph is traced and checked on exactly what the denoiser sees in the pipeline (conditioning,
    guidance batch, timestep dtype), not on made-up tensors.
    """
    denoiser = get_denoiser(pipe)
    calls: list[dict[str, torch.Tensor]] = []

    def keep(step, timestep, args, kwargs, output):
        if steps is None or step in steps:
            calls.append(call_inputs(denoiser, args, kwargs))

    with denoiser_step_hook(denoiser, keep):
        generate(pipe, list(conditions), list(seeds), spec, output_type="latent")
    return calls


def first_call_inputs(pipe: Any, conditions: Sequence[Any], seeds: Sequence[int],
                      spec: SamplingSpec) -> dict[str, torch.Tensor]:
    """Keyword tensors of the denoiser's first call when ``pipe`` samples ``conditions`` in one batch
    (:func:`~brevitas_ldm.denoiser.sampling.first_denoiser_call`: one denoiser call, which runs)."""
    args, kwargs = first_denoiser_call(pipe, conditions, seeds, spec)
    return call_inputs(get_denoiser(pipe), args, kwargs)
