"""Brevitas quantizer injectors for a recipe's tensor settings.

Brevitas configures quant layers through injector classes; this module maps a recipe's ``[weights]`` and
``[activations]`` sections (format, granularity, symmetry, scale method) plus a bit width to the matching
Brevitas quantizer, specialised with ``.let(...)``. The scale methods:

* weights ``minmax``: scale from the absolute max (symmetric) or min/max (asymmetric) of each channel;
  ``mse``: Brevitas' MSE-optimal scale search. With ``rounding = "gptq"`` the min-max scale is computed once from
  the float weights and kept in a parameter (Brevitas' ``parameter_from_stats``), so GPTQ's updates do not move it.
* activations ``minmax``: running (averaged over calibration batches) absolute max, or min/max when asymmetric;
  ``percentile``: Brevitas' default 99.999th percentile; ``mse``: Brevitas' MSE scale.
"""

from __future__ import annotations

from functools import lru_cache

from brevitas.core.stats.stats_op import NegativeMinOrZero
from brevitas.inject.enum import ScalingImplType, StatsOp
from brevitas.quant.experimental.float_quant_ocp import (
    Fp8e4m3OCPActPerTensorFloat,
    Fp8e4m3OCPActPerTensorFloatMSE,
    Fp8e4m3OCPWeightPerChannelFloat,
    Fp8e4m3OCPWeightPerChannelFloatMSE,
    Fp8e4m3OCPWeightPerTensorFloat,
    Fp8e4m3OCPWeightPerTensorFloatMSE,
    Fp8e5m2OCPActPerTensorFloat,
    Fp8e5m2OCPWeightPerChannelFloat,
    Fp8e5m2OCPWeightPerTensorFloat,
)
from brevitas.quant.scaled_int import (
    Int8ActPerTensorFloat,
    Int8ActPerTensorFloatMSE,
    Int8WeightPerChannelFloat,
    Int8WeightPerChannelFloatMSE,
    Int8WeightPerTensorFloat,
    Int8WeightPerTensorFloatMSE,
)
from brevitas.quant.shifted_scaled_int import (
    ShiftedUint8ActPerTensorFloat,
    ShiftedUint8ActPerTensorFloatMSE,
    ShiftedUint8WeightPerChannelFloat,
    ShiftedUint8WeightPerChannelFloatMSE,
    ShiftedUint8WeightPerTensorFloat,
    ShiftedUint8WeightPerTensorFloatMSE,
)

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.recipe import TensorQuant

#: Calibration passes are counted by the caller, so the stats collection window must never close early.
COLLECT_STATS_STEPS = 1_000_000

_INT_WEIGHT = {
    # (granularity, symmetric, mse) -> base quantizer
    ("per_channel", True, False): Int8WeightPerChannelFloat,
    ("per_channel", True, True): Int8WeightPerChannelFloatMSE,
    ("per_tensor", True, False): Int8WeightPerTensorFloat,
    ("per_tensor", True, True): Int8WeightPerTensorFloatMSE,
    ("per_channel", False, False): ShiftedUint8WeightPerChannelFloat,
    ("per_channel", False, True): ShiftedUint8WeightPerChannelFloatMSE,
    ("per_tensor", False, False): ShiftedUint8WeightPerTensorFloat,
    ("per_tensor", False, True): ShiftedUint8WeightPerTensorFloatMSE,
}
_FLOAT_WEIGHT = {
    ("e4m3", "per_channel", False): Fp8e4m3OCPWeightPerChannelFloat,
    ("e4m3", "per_channel", True): Fp8e4m3OCPWeightPerChannelFloatMSE,
    ("e4m3", "per_tensor", False): Fp8e4m3OCPWeightPerTensorFloat,
    ("e4m3", "per_tensor", True): Fp8e4m3OCPWeightPerTensorFloatMSE,
    ("e5m2", "per_channel", False): Fp8e5m2OCPWeightPerChannelFloat,
    ("e5m2", "per_tensor", False): Fp8e5m2OCPWeightPerTensorFloat,
}


@lru_cache(maxsize=None)
def weight_quantizer(spec: TensorQuant, bits: int):
    """The Brevitas weight quantizer injector for ``spec`` at ``bits``."""
    mse = spec.scale_method == "mse"
    if spec.format == "int":
        base = _INT_WEIGHT[(spec.granularity, spec.symmetric, mse)]
        if spec.rounding == "gptq":
            # GPTQ rounds against a fixed grid: the min-max scale is taken once and kept (brevitas_ldm.quant.gptq)
            return base.let(bit_width=bits, scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS)
        return base.let(bit_width=bits)
    key = (spec.format, spec.granularity, mse)
    if key not in _FLOAT_WEIGHT:
        raise RecipeError(f"weights.scale_method = {spec.scale_method!r} is not available for format "
                          f"{spec.format!r}: use scale_method = \"minmax\"")
    return _FLOAT_WEIGHT[key]


@lru_cache(maxsize=None)
def act_quantizer(spec: TensorQuant, bits: int):
    """The Brevitas activation (layer-input) quantizer injector for ``spec`` at ``bits``."""
    if spec.granularity != "per_tensor":
        raise RecipeError("activations.granularity = \"per_channel\" is not supported for activations: "
                          "set activations.granularity = \"per_tensor\"")
    if spec.format != "int":
        if spec.scale_method == "mse" and spec.format == "e4m3":
            return Fp8e4m3OCPActPerTensorFloatMSE.let(collect_stats_steps=COLLECT_STATS_STEPS)
        base = Fp8e4m3OCPActPerTensorFloat if spec.format == "e4m3" else Fp8e5m2OCPActPerTensorFloat
        if spec.scale_method == "minmax":
            return base.let(scaling_stats_op=StatsOp.MAX, collect_stats_steps=COLLECT_STATS_STEPS)
        return base.let(high_percentile_q=float(spec.percentile), collect_stats_steps=COLLECT_STATS_STEPS)
    if spec.symmetric:
        if spec.scale_method == "mse":
            return Int8ActPerTensorFloatMSE.let(bit_width=bits, collect_stats_steps=COLLECT_STATS_STEPS)
        if spec.scale_method == "minmax":
            return Int8ActPerTensorFloat.let(bit_width=bits, scaling_stats_op=StatsOp.MAX,
                                             collect_stats_steps=COLLECT_STATS_STEPS)
        return Int8ActPerTensorFloat.let(bit_width=bits, high_percentile_q=float(spec.percentile),
                                         collect_stats_steps=COLLECT_STATS_STEPS)
    if spec.scale_method == "mse":
        return ShiftedUint8ActPerTensorFloatMSE.let(bit_width=bits, collect_stats_steps=COLLECT_STATS_STEPS)
    if spec.scale_method == "minmax":
        return ShiftedUint8ActPerTensorFloat.let(bit_width=bits, scaling_stats_op=StatsOp.MIN_MAX,
                                                 zero_point_stats_impl=NegativeMinOrZero,
                                                 collect_stats_steps=COLLECT_STATS_STEPS)
    return ShiftedUint8ActPerTensorFloat.let(bit_width=bits, high_percentile_q=float(spec.percentile),
                                             low_percentile_q=100.0 - float(spec.percentile),
                                             collect_stats_steps=COLLECT_STATS_STEPS)
