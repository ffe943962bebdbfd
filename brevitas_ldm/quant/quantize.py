"""Recipe + per-layer precision map -> a Brevitas fake-quantized denoiser.

Built on Brevitas' ``layerwise_quantize``: every Linear/Conv2d becomes a ``QuantLinear``/``QuantConv2d`` whose
weight quantizer and input (activation) quantizer are chosen *per layer name* through Brevitas' name-keyed
lambdas (``lambda module, name: ...``). Layers planned as float are put on Brevitas' ``name_blacklist`` so they
stay plain torch layers and export as float.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping

import brevitas.nn as qnn
import torch
from brevitas.graph.quantize import layerwise_quantize
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.quant.scaled_int import Int32Bias
from torch import nn

from brevitas_ldm.denoiser.blocks import Block, expand_to_layers
from brevitas_ldm.denoiser.names import user_facing_names
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.precision import FLOAT, Precision, parse_precision
from brevitas_ldm.quant.integer_codes import FP8_FORMATS
from brevitas_ldm.quant.quantizers import act_quantizer, weight_quantizer
from brevitas_ldm.recipe import Recipe, TensorQuant

PrecisionMap = dict[str, Precision]


def resolve_precisions(denoiser: nn.Module, recipe: Recipe,
                       overrides: Mapping[str, str | Precision] | None = None,
                       blocks: list[Block] | None = None) -> PrecisionMap:
    """The precision of every quantizable layer of ``denoiser``.

    Start from the recipe's base precision, apply block entries of ``overrides`` (``"up_blocks.1"``: all its
    layers), then the recipe's ``skip_layers`` (float), then layer entries of ``overrides`` (so they win).
    Keys are user-facing layer names: a layer wrapped by SmoothQuant keeps its original name.
    """
    layer_names = list(user_facing_names(denoiser).values())
    precisions: PrecisionMap = {name: recipe.default_precision for name in layer_names}
    typed = {key: parse_precision(value, f"precision of {key!r}") for key, value in (overrides or {}).items()}
    from_blocks, layer_overrides = expand_to_layers(denoiser, typed, user_facing_names(denoiser), blocks)
    precisions.update(from_blocks)
    # Order: recipe default < block entries < type_precisions < the recipe's skip_layers < explicit layer entries.
    if recipe.type_precisions:
        by_type = dict(recipe.type_precisions)
        internal_to_user = user_facing_names(denoiser)
        modules = dict(denoiser.named_modules())
        for internal, user in internal_to_user.items():
            kind = "Linear" if isinstance(modules[internal], nn.Linear) else "Conv2d"
            if kind in by_type:
                precisions[user] = by_type[kind]
    check_skip_layers(denoiser, recipe.skip_layers, layer_names)
    for name in layer_names:
        if any(_skips(pattern, name) for pattern in recipe.skip_layers):
            precisions[name] = FLOAT
    precisions.update(layer_overrides)
    return precisions


#: The first and last layers of the denoiser families (UNets' ``conv_in``/``conv_out``, transformers' patch
#: embedders and output projections): a recipe meant for every family (the built-in QAT ones keep them float) may
#: list them all, so these alone may name no layer of a given denoiser.
FAMILY_EDGE_LAYERS = frozenset({"conv_in", "conv_out", "pos_embed", "proj_out", "x_embedder", "context_embedder",
                                "proj_in", "norm_out.linear"})


def _skips(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def check_skip_layers(denoiser: nn.Module, patterns: tuple[str, ...], layer_names: list[str] | None = None) -> None:
    """Refuse a ``skip_layers`` entry that matches no quantizable layer (a typo would leave the layer quantized
    without a word), naming the closest layer names; :data:`FAMILY_EDGE_LAYERS` are exempt."""
    names = layer_names if layer_names is not None else list(user_facing_names(denoiser).values())
    for i, pattern in enumerate(patterns):
        if pattern in FAMILY_EDGE_LAYERS or any(_skips(pattern, name) for name in names):
            continue
        import difflib

        close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close else f"layer names look like {', '.join(names[:3])}")
        raise RecipeError(f"skip_layers[{i}] = {pattern!r} names no quantizable layer of {type(denoiser).__name__} "
                          f"({hint}): fix the name, or use an fnmatch pattern such as \"*.attn2.to_k\"")


def tensor_spec(spec: TensorQuant, precision: Precision) -> TensorQuant:
    """The recipe's settings for one tensor of a layer at ``precision``: an fp8 precision (``e4m3``) puts the
    tensor in that format (symmetric, nearest rounding: what fp8 takes), keeping the recipe's granularity and
    scale method; an integer precision keeps the recipe's own section."""
    if not precision.is_fp8 or spec.format == precision.format:
        return spec
    scale_method = spec.scale_method if spec.scale_method != "mse" or precision.format == "e4m3" else "minmax"
    return dataclasses.replace(spec, format=precision.format, bits=8, symmetric=True, rounding="nearest",
                               scale_method=scale_method)


def quantize_denoiser(denoiser: nn.Module, recipe: Recipe,
                      precisions: Mapping[str, str | Precision] | None = None) -> nn.Module:
    """Replace the denoiser's layers in place with Brevitas quant layers following ``precisions``.

    ``precisions`` may be partial (block or layer names); see :func:`resolve_precisions`. Activation scales are
    uninitialised until the model is calibrated (:mod:`brevitas_ldm.quant.calibration`).
    """
    plan = resolve_precisions(denoiser, recipe, precisions)
    # Brevitas hands the hooks internal names (``x.layer`` under a SmoothQuant wrapper); plans use user-facing ones.
    to_user = user_facing_names(denoiser)

    def weight_quant(module: nn.Module, name: str):
        precision = plan[to_user.get(name, name)]
        bits = precision.weight_bits
        return weight_quantizer(tensor_spec(recipe.weights, precision), bits) if bits is not None else None

    def input_quant(module: nn.Module, name: str):
        precision = plan[to_user.get(name, name)]
        bits = precision.act_bits
        return act_quantizer(tensor_spec(recipe.activations, precision), bits) if bits is not None else None

    # Brevitas only evaluates per-name hooks written as lambdas (it checks for ``<lambda>``).
    common = {"weight_quant": lambda module, name: weight_quant(module, name),
              "input_quant": lambda module, name: input_quant(module, name), "bias_quant": None,
              "return_quant_tensor": False}
    conv = common
    if recipe.deploy.requantize_conv_outputs:
        def output_quant(module: nn.Module, name: str):
            return act_quantizer(recipe.activations, 8) if _integer_input(plan[to_user.get(name, name)]) else None

        def bias_quant(module: nn.Module, name: str):
            return Int32Bias if output_quant(module, name) is not None and module.bias is not None else None

        conv = {**common, "output_quant": lambda module, name: output_quant(module, name),
                "bias_quant": lambda module, name: bias_quant(module, name)}
    linear = common
    if recipe.deploy.quantize_query_key:
        integer_pairs = {layer for pair in query_key_pairs(denoiser)
                         if all(_integer_input(plan[layer]) for layer in pair) for layer in pair}

        # symmetric whatever the recipe's activations: a zero point on either input keeps OpenVINO's fused attention
        # from running its scores on integers (the asymmetric-activation file ran them float, 0.492x vs 0.456x of
        # the FP32 IR on sd15-half); projections' outputs are centred, so the zero point buys little there
        query_key_spec = dataclasses.replace(recipe.activations, symmetric=True)

        def query_key_quant(module: nn.Module, name: str):
            return act_quantizer(query_key_spec, 8) if to_user.get(name, name) in integer_pairs else None

        linear = {**common, "output_quant": lambda module, name: query_key_quant(module, name)}
    layer_map = {nn.Linear: (qnn.QuantLinear, linear), nn.Conv2d: (qnn.QuantConv2d, conv)}
    blacklist = [internal for internal, user in to_user.items() if plan[user].is_float]
    was_training = denoiser.training
    layerwise_quantize(denoiser, compute_layer_map=layer_map, name_blacklist=blacklist)
    denoiser.train(was_training)
    return denoiser


def _integer_input(precision: Precision) -> bool:
    """Whether a layer at ``precision`` runs an integer kernel: integer weights and 8-bit-or-narrower inputs."""
    return precision.weight_bits is not None and precision.act_bits is not None and precision.act_bits <= 8


def query_key_pairs(denoiser: nn.Module) -> list[tuple[str, str]]:
    """``(to_q, to_k)`` of every diffusers ``Attention`` whose scores are the two projections' outputs multiplied
    (reshaped into heads and scaled, which per-tensor quantization commutes with): not those that normalise the
    query and key first (SD3, Flux) or append extra keys (``added_kv_proj_dim``)."""
    from diffusers.models.attention_processor import Attention

    return [(f"{name}.to_q", f"{name}.to_k") for name, module in denoiser.named_modules()
            if isinstance(module, Attention) and module.norm_q is None and module.norm_k is None
            and getattr(module, "added_kv_proj_dim", None) is None]


def quant_layers(denoiser: nn.Module) -> dict[str, QuantWeightBiasInputOutputLayer]:
    """User-facing name -> Brevitas quant layer, for every quantized Linear/Conv2d."""
    to_user = user_facing_names(denoiser)
    return {to_user.get(n, n): m for n, m in denoiser.named_modules()
            if isinstance(m, (qnn.QuantLinear, qnn.QuantConv2d))}


def proxy_bits(proxy: nn.Module) -> int | None:
    """Bit width of an enabled Brevitas quant proxy (None when disabled); FP8 proxies report no bit_width and count
    as 8 bits. The one reader of a proxy's bits: precisions, footprints and the exporters' feature checks."""
    if not proxy.is_quant_enabled:
        return None
    bit_width = getattr(proxy, "bit_width", None)
    if bit_width is None:
        return 8
    return int(bit_width().item())


def _fp8_format(layer: nn.Module) -> str:
    """``e4m3``/``e5m2`` when both the weight and the input of ``layer`` are quantized to that fp8 format."""
    formats = set()
    for proxy in (layer.weight_quant, layer.input_quant):
        if not proxy.is_quant_enabled or not hasattr(proxy, "exponent_bit_width"):
            return "int"
        formats.add((int(proxy.exponent_bit_width()), int(proxy.mantissa_bit_width())))
    fmt = FP8_FORMATS.get(formats.pop()) if len(formats) == 1 else None
    return fmt.name if fmt is not None else "int"


def read_precisions(denoiser: nn.Module) -> PrecisionMap:
    """Read back the precision of every layer from the Brevitas quant proxies (float layers -> ``float``)."""
    out: PrecisionMap = {}
    to_user = user_facing_names(denoiser)
    for internal, module in denoiser.named_modules():
        name = to_user.get(internal, internal)
        if isinstance(module, (qnn.QuantLinear, qnn.QuantConv2d)):
            weight_bits = proxy_bits(module.weight_quant)
            act_bits = proxy_bits(module.input_quant)
            out[name] = Precision(weight_bits, act_bits, _fp8_format(module))
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            out[name] = FLOAT
    return out


def initialise_weight_scales(model: nn.Module) -> int:
    """Give every weight quantizer whose scale is a parameter initialised from statistics (``scale_method = "mse"``)
    its value now, from the current weights; returns how many layers needed it.

    Brevitas sets such a scale on the quantizer's first forward. ``quant_inference_mode`` never makes that forward:
    it caches the weights quantized with the never-initialised scale, which made ``mse`` weights give -11 to -19 dB
    on tiny-sd-digits in evaluation and in the analysis bank, and a state dict taken before it omits the scale.
    Call it once the float weights are final (after SmoothQuant), before inference mode or saving.
    """
    count = 0
    with torch.no_grad():
        for layer in model.modules():     # not quant_layers(): no names needed, and the bank calls this per run
            if not isinstance(layer, (qnn.QuantLinear, qnn.QuantConv2d)) or not layer.weight_quant.is_quant_enabled:
                continue
            # (vars(), not getattr(): a missing attribute costs nn.Module an exception, at every module of the tree)
            if any(vars(m).get("init_done", True) is False for m in layer.weight_quant.modules()):
                layer.quant_weight()
                count += 1
    return count


def fast_inference(denoiser: nn.Module):
    """Brevitas' ``quant_inference_mode`` with cached quantized weights: the same outputs (bit-identical on CPU),
    about 2-3x faster than re-quantizing the weights at every call, so evaluation sampling is cheaper.

    Enter it only once the model is calibrated and its quantization settings are fixed (the caches are filled
    on the first call inside the context; weight scales not yet initialised are, first). A model without quant
    layers gets a no-op context.
    """
    from contextlib import nullcontext

    from brevitas.export.inference import quant_inference_mode

    if not quant_layers(denoiser):
        return nullcontext()
    initialise_weight_scales(denoiser)
    return quant_inference_mode(denoiser, cache_quant_weight=True)
