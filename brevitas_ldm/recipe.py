"""Recipes: everything a quantization run decides, as data.

A recipe says how weights and activations are quantized, how activation ranges are calibrated, whether
SmoothQuant runs and where, which sensitivity analyses run, and how the per-block precision plan is chosen.
Built-in recipes are TOML files in the top-level ``recipes/`` folder (installed as ``brevitas_ldm.recipes``);
users register their own with :func:`register_recipe` or load a file with :meth:`Recipe.from_file`.

Validation is strict on purpose: a misspelt key silently falling back to a default would produce a model that
is quantized differently from what the user wrote, so unknown keys and impossible values raise
:class:`RecipeError` naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.limits import MAX_SAMPLES
from brevitas_ldm.precision import FLOAT, Precision, check_bits, parse_precision
from brevitas_ldm.registry import CALIBRATION_MODES, LATENCY_TARGETS, PLAN_METHODS

FORMATS = ("int", "e4m3", "e5m2")
GRANULARITIES = ("per_channel", "per_tensor")
WEIGHT_SCALE_METHODS = ("minmax", "mse")
ROUNDINGS = ("nearest", "gptq")
ACT_SCALE_METHODS = ("minmax", "percentile", "mse")
TIMESTEP_LAYER_CALIBRATIONS = ("calibration_steps", "every_step")
SMOOTHQUANT_SCOPES = ("all", "sensitive")
PLAN_GRANULARITIES = ("block", "layer")
QAT_LEARNABLE = ("weights", "biases", "act_scales")
QAT_TIMESTEP_SAMPLINGS = ("uniform", "high_noise")


def _check_choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise RecipeError(f"{key} = {value!r} is not allowed: choose one of {', '.join(allowed)}")
    return value


def _as_toml(value: Any) -> str:
    """``value`` as it is written in a recipe file, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"\"{value}\"" if isinstance(value, str) else repr(value)


def _check_count(value: int, key: str) -> None:
    if value > MAX_SAMPLES:
        raise RecipeError(f"{key} = {value} is more than the {MAX_SAMPLES:,} one run takes: set a smaller number")


def _check_type(value: Any, kind: type | tuple[type, ...], key: str, what: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RecipeError(f"{key} = {value!r} must be {what}")
    if not isinstance(value, kind):
        raise RecipeError(f"{key} = {value!r} must be {what}")
    return value


@dataclass(frozen=True)
class TensorQuant:
    """How one kind of tensor (weights or activations) is quantized."""

    bits: int = 8
    format: str = "int"
    granularity: str = "per_tensor"
    symmetric: bool = True
    scale_method: str = "minmax"
    percentile: float = 99.999
    #: Weights only: ``"nearest"`` rounds each weight to its nearest grid point; ``"gptq"`` rounds them by GPTQ
    #: against the float inputs of one calibration run (:mod:`brevitas_ldm.quant.gptq`).
    rounding: str = "nearest"

    def validate(self, section: str, scale_methods: tuple[str, ...]) -> None:
        check_bits(self.bits, f"{section}.bits")
        _check_choice(self.format, FORMATS, f"{section}.format")
        _check_choice(self.granularity, GRANULARITIES, f"{section}.granularity")
        _check_type(self.symmetric, bool, f"{section}.symmetric", "true or false")
        _check_choice(self.scale_method, scale_methods, f"{section}.scale_method")
        _check_choice(self.rounding, ROUNDINGS, f"{section}.rounding")
        if self.rounding == "gptq":
            needs = {"format": (self.format, "int"), "symmetric": (self.symmetric, True),
                     "scale_method": (self.scale_method, "minmax")}
            for key, (value, wanted) in needs.items():
                if value != wanted:
                    raise RecipeError(f"{section}.rounding = \"gptq\" needs {section}.{key} = "
                                      f"{_as_toml(wanted)} (it rounds to a fixed symmetric integer grid with "
                                      f"min-max scales), not {_as_toml(value)}: change {section}.{key} or set "
                                      f"{section}.rounding = \"nearest\"")
        _check_type(self.percentile, (int, float), f"{section}.percentile", "a number")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise RecipeError(f"{section}.percentile = {self.percentile!r} must be in (50, 100]")
        if self.format != "int":
            if self.bits != 8:
                raise RecipeError(f"{section}.bits = {self.bits} does not fit format {self.format!r}: "
                                  f"the float formats e4m3 and e5m2 are 8-bit, set bits = 8")
            if not self.symmetric:
                raise RecipeError(f"{section}.symmetric = false is not available for float format "
                                  f"{self.format!r}: set symmetric = true or format = \"int\"")


@dataclass(frozen=True)
class Calibration:
    """Which sampling steps feed activation statistics.

    ``single_step`` is the paper's choice: only the maximum-noise step (t = T) is seen, one denoiser call per
    batch. ``all_steps`` is the plain baseline; ``uniform_steps`` is Q-Diffusion's uniformly sampled steps.
    ``bias_correction``: after calibration, Brevitas' bias correction adds to every biased layer the mean output
    error its quantization causes, measured on the same calibration calls.
    ``timestep_layers``: the timestep/class-embedding projections (``time_embedding``, ``time_emb_proj``, adaLN
    ``norm*.linear``, ...) see only the conditioning vector, one value per timestep, so the maximum-noise step
    shows them one point of their range. ``"every_step"`` (single-step mode) calibrates them on every step of the
    calibration run instead, their range the min-max over the schedule; ``"calibration_steps"`` gives them the
    steps every other layer sees.
    """

    mode: str = "all_steps"
    num_steps: int = 8
    num_prompts: int = 16
    batch_size: int = 8
    sampling_steps: int = 0  # steps of the calibration sampling runs; 0 = the run's own number of steps
    bias_correction: bool = False
    timestep_layers: str = "calibration_steps"

    def validate(self) -> None:
        _check_type(self.mode, str, "calibration.mode", "the name of a calibration mode")
        _check_choice(self.timestep_layers, TIMESTEP_LAYER_CALIBRATIONS, "calibration.timestep_layers")
        CALIBRATION_MODES.get(self.mode).validate(self)
        _check_type(self.bias_correction, bool, "calibration.bias_correction", "true or false")
        value = _check_type(self.sampling_steps, int, "calibration.sampling_steps", "a non-negative integer")
        if value < 0:
            raise RecipeError(f"calibration.sampling_steps = {value} must be >= 0 (0: use the run's --steps)")
        for key in ("num_steps", "num_prompts", "batch_size"):
            value = _check_type(getattr(self, key), int, f"calibration.{key}", "a positive integer")
            if value < 1:
                raise RecipeError(f"calibration.{key} = {value} must be a positive integer")
        _check_count(self.num_prompts, "calibration.num_prompts")


@dataclass(frozen=True)
class SmoothQuant:
    """Activation equalization (SmoothQuant) through Brevitas, on all layers or on the sensitive ones only."""

    enabled: bool = False
    scope: str = "all"
    alpha: float = 0.5
    alpha_grid: tuple[float, ...] = ()
    max_modules: int = 8
    min_activation_share: float = 0.5

    def validate(self) -> None:
        _check_type(self.enabled, bool, "smoothquant.enabled", "true or false")
        _check_choice(self.scope, SMOOTHQUANT_SCOPES, "smoothquant.scope")
        for key, value in [("alpha", self.alpha), *((f"alpha_grid[{i}]", a) for i, a in enumerate(self.alpha_grid))]:
            _check_type(value, (int, float), f"smoothquant.{key}", "a number in [0, 1]")
            if not 0.0 <= float(value) <= 1.0:
                raise RecipeError(f"smoothquant.{key} = {value!r} must be in [0, 1]")
        value = _check_type(self.max_modules, int, "smoothquant.max_modules", "a non-negative integer")
        if value < 0:
            raise RecipeError(f"smoothquant.max_modules = {value} must be >= 0")
        _check_type(self.min_activation_share, (int, float), "smoothquant.min_activation_share", "a number")
        if not 0.0 <= float(self.min_activation_share) <= 1.0:
            raise RecipeError(f"smoothquant.min_activation_share = {self.min_activation_share!r} must be in [0, 1]")


@dataclass(frozen=True)
class Analysis:
    """Which SQNR sensitivity analyses run (``global_`` is ``global`` in TOML)."""

    global_: bool = False
    local: bool = False
    num_prompts: int = 8
    #: Sampling steps of the global analysis' runs; 0 = the run's own ``--steps``. Fewer steps cost proportionally
    #: fewer denoiser calls; the plan is then chosen on shorter trajectories than the ones it will serve.
    steps: int = 0
    #: The paper's progressive sweep (blocks 1..k quantized, k = 1..N): the added-noise view of the report. No
    #: planner needs it (they predict from the isolated measurements), so it can be turned off to save its calls.
    progressive: bool = True

    def validate(self) -> None:
        _check_type(self.global_, bool, "analysis.global", "true or false")
        _check_type(self.progressive, bool, "analysis.progressive", "true or false")
        _check_type(self.local, bool, "analysis.local", "true or false")
        value = _check_type(self.num_prompts, int, "analysis.num_prompts", "a positive integer")
        if value < 1:
            raise RecipeError(f"analysis.num_prompts = {value} must be a positive integer")
        _check_count(value, "analysis.num_prompts")
        steps = _check_type(self.steps, int, "analysis.steps", "a non-negative integer")
        if steps < 0:
            raise RecipeError(f"analysis.steps = {steps} must be 0 (the run's own steps) or a positive number of steps")


@dataclass(frozen=True)
class Deploy:
    """What the quantized model must be for its deployment kernels (part of the model every phase measures).

    ``requantize_conv_outputs``: every Conv2d with 8-bit (or narrower) activations also quantizes its output to
    the recipe's activation format and its bias to int32 at ``s_x * s_w`` (Brevitas ``output_quant`` +
    ``Int32Bias``). onnxruntime then fuses each such convolution into ``QLinearConv``, its fastest CPU kernel, and
    because the analysis, calibration and evaluation run this very model, every reported SQNR is the deployed
    one. Pair it with weights of 7 bits or fewer (``|q| <= 63``) and the fast u8s8 kernel is exact on AVX2 CPUs
    too; 8-bit weights are stored as uint8 by the portable export (exact everywhere, slower).

    ``quantize_query_key``: the query and key projections (``to_q``, ``to_k``) of every attention whose scores are
    their product also quantize their outputs to 8 bits (Brevitas ``output_quant``), where both run integer
    kernels, so the attention scores' MatMul has two 8-bit inputs: OpenVINO runs it on integers, as NNCF's
    transformer preset has it (the whole of NNCF's latency lead on the SD-shaped UNet,
    docs/openvino-quantizer-placement.md). The attention's softmax-by-value product stays float.
    """

    requantize_conv_outputs: bool = False
    quantize_query_key: bool = False

    def validate(self) -> None:
        _check_type(self.requantize_conv_outputs, bool, "deploy.requantize_conv_outputs", "true or false")
        _check_type(self.quantize_query_key, bool, "deploy.quantize_query_key", "true or false")


@dataclass(frozen=True)
class PlanRule:
    """How the per-block precision plan is chosen from the analyses.

    ``uniform``: every block at the recipe's base precision (``weights.bits``/``activations.bits``). ``threshold``:
    blocks whose SQNR drop exceeds ``threshold_db`` get ``high_precision``. ``top_k``: the ``top_k`` most sensitive
    blocks get ``high_precision``. ``budget``: each block picks from ``menu`` to maximise predicted output SQNR under
    the average-bit budgets.

    ``granularity``: what the global analysis measures and the planner assigns, ``block`` (the paper's blocks, swept
    progressively and in isolation) or ``layer`` (every quantizable layer alone, MixDQ-style; no progressive sweep).
    Layers cost one isolated measurement each per menu precision, about 13x the blocks on a UNet, and let a budget
    be spent to the hundredth of a bit.

    ``target``: a deployment runtime (:data:`~brevitas_ldm.registry.LATENCY_TARGETS`: ``openvino-cpu``,
    ``onnxruntime-cpu``) whose per-layer latency table the job measures on this machine (cached), so the report
    gives the plan's predicted latency there beside its measured one. ``max_latency_ratio`` (the budget planner,
    with a target): the plan's predicted latency in the target over the float denoiser's in the same runtime may
    not exceed it; 0 is no latency budget.
    """

    method: str = "uniform"
    high_precision: Precision = Precision(8, 16)
    menu: tuple[Precision, ...] = (FLOAT, Precision(8, 16), Precision(8, 8), Precision(4, 8))
    threshold_db: float = 1.0
    top_k: int = 2
    avg_weight_bits: float = 0.0
    avg_act_bits: float = 0.0
    granularity: str = "block"
    target: str = ""
    max_latency_ratio: float = 0.0

    def __post_init__(self) -> None:
        # Precisions are parsed once, here, from the TOML/Python strings, and held typed from then on.
        object.__setattr__(self, "high_precision", parse_precision(self.high_precision, "plan.high_precision"))
        if isinstance(self.menu, str) or not isinstance(self.menu, (list, tuple)):
            raise RecipeError(f"plan.menu = {self.menu!r} must be a list of precisions, e.g. [\"w8a8\", \"w8a16\"]")
        object.__setattr__(self, "menu", tuple(parse_precision(item, f"plan.menu[{i}]")
                                               for i, item in enumerate(self.menu)))

    def validate(self) -> None:
        _check_type(self.method, str, "plan.method", "the name of a plan method")
        method = PLAN_METHODS.get(self.method)
        _check_choice(self.granularity, PLAN_GRANULARITIES, "plan.granularity")
        if not self.menu:
            raise RecipeError("plan.menu is empty: list at least one precision, e.g. [\"w8a8\", \"w8a16\"]")
        threshold = _check_type(self.threshold_db, (int, float), "plan.threshold_db", "a number of dB")
        if not math.isfinite(threshold):
            raise RecipeError(f"plan.threshold_db = {threshold!r} must be a finite number of dB, e.g. 1.0")
        value = _check_type(self.top_k, int, "plan.top_k", "a non-negative integer")
        if value < 0:
            raise RecipeError(f"plan.top_k = {value} must be >= 0")
        for key in ("avg_weight_bits", "avg_act_bits"):
            budget = _check_type(getattr(self, key), (int, float), f"plan.{key}", "a number of bits")
            if budget != 0 and not 2 <= budget <= 32:
                raise RecipeError(f"plan.{key} = {budget} must be 0 (no budget) or between 2 and 32")
        # A budget below the menu's cheapest entry can never be met: refuse it before hours of analysis.
        for key, bits_of in (("avg_weight_bits", Precision.effective_weight_bits),
                             ("avg_act_bits", Precision.effective_act_bits)):
            budget = getattr(self, key)
            cheapest = min(self.menu, key=bits_of)
            if budget and bits_of(cheapest) > budget:
                raise RecipeError(f"plan.{key} = {budget} cannot be met: the cheapest plan.menu entry ({cheapest}) "
                                  f"has {bits_of(cheapest)} bits; raise plan.{key} to at least {bits_of(cheapest)} "
                                  f"or add a lower-bit entry to plan.menu")
        self._validate_latency(method)
        method.validate(self)

    def _validate_latency(self, method) -> None:
        _check_type(self.target, str, "plan.target", "the name of a latency target, or \"\" for none")
        ratio = _check_type(self.max_latency_ratio, (int, float), "plan.max_latency_ratio", "a latency ratio")
        if ratio != 0 and not (math.isfinite(ratio) and 0 < ratio <= 4):
            raise RecipeError(f"plan.max_latency_ratio = {ratio!r} must be 0 (no latency budget) or a ratio in "
                              f"(0, 4], e.g. 0.45")
        if ratio and not self.target:
            raise RecipeError("plan.max_latency_ratio needs plan.target, the runtime whose latency it bounds: set "
                              "plan.target = \"openvino-cpu\" or \"onnxruntime-cpu\"")
        if self.target:
            LATENCY_TARGETS.get(self.target).check_menu(self.menu)
        if ratio and not method.spends_latency:
            raise RecipeError(f"plan.max_latency_ratio is spent by plan.method = \"budget\" only, not "
                              f"{self.method!r}: set plan.method = \"budget\" or drop plan.max_latency_ratio")



@dataclass(frozen=True)
class QAT:
    """Quantization-aware fine-tuning after PTQ (``brevitas-ldm qat``): distil the quantized denoiser from the float
    one on the float model's own sampling trajectories, through Brevitas' straight-through estimators.

    ``steps = 0`` (the default) makes a PTQ-only recipe. ``learnable``: the quant layers' ``weights`` (full, or
    through rank-``adapter_rank`` adapters merged at the end when ``adapter_rank > 0``), their ``biases``, and the
    calibrated activation scales (``act_scales``, LSQ-style: Brevitas' scale parameters get gradients through the
    rounding). Everything else stays frozen, bit for bit. ``timestep_sampling``: which recorded denoiser calls train,
    ``uniform`` over the schedule or ``high_noise`` (probability falling linearly from the first step to the last).
    ``num_prompts`` trajectories of ``batch_size`` samples are recorded once, before quantization.
    """

    steps: int = 0
    learning_rate: float = 1e-5
    scale_learning_rate: float = 1e-3
    learnable: tuple[str, ...] = ("act_scales",)
    adapter_rank: int = 0
    timestep_sampling: str = "uniform"
    num_prompts: int = 64
    batch_size: int = 8

    def validate(self) -> None:
        for key in ("steps", "adapter_rank"):
            value = _check_type(getattr(self, key), int, f"qat.{key}", "a non-negative integer")
            if value < 0:
                raise RecipeError(f"qat.{key} = {value} must be >= 0")
        for key in ("num_prompts", "batch_size"):
            value = _check_type(getattr(self, key), int, f"qat.{key}", "a positive integer")
            if value < 1:
                raise RecipeError(f"qat.{key} = {value} must be a positive integer")
        _check_count(self.num_prompts, "qat.num_prompts")
        for key in ("learning_rate", "scale_learning_rate"):
            value = _check_type(getattr(self, key), (int, float), f"qat.{key}", "a positive number")
            if not 0.0 < float(value) < 1.0:
                raise RecipeError(f"qat.{key} = {value!r} must be in (0, 1), e.g. 1e-5")
        if isinstance(self.learnable, str) or not isinstance(self.learnable, (list, tuple)) or not self.learnable:
            raise RecipeError(f"qat.learnable = {self.learnable!r} must be a non-empty list drawn from "
                              f"{', '.join(QAT_LEARNABLE)}, e.g. [\"act_scales\"]")
        for i, item in enumerate(self.learnable):
            _check_choice(item, QAT_LEARNABLE, f"qat.learnable[{i}]")
        if len(set(self.learnable)) != len(self.learnable):
            raise RecipeError(f"qat.learnable = {list(self.learnable)!r} names an entry twice: list each once")
        if self.adapter_rank and "weights" not in self.learnable:
            raise RecipeError(f"qat.adapter_rank = {self.adapter_rank} trains the weights through adapters, but "
                              f"qat.learnable has no \"weights\": add it or set qat.adapter_rank = 0")
        _check_choice(self.timestep_sampling, QAT_TIMESTEP_SAMPLINGS, "qat.timestep_sampling")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


def _plain(value: Any) -> Any:
    """A section value as TOML writes it: precisions by name, tuples as lists (the edge where types go)."""
    if isinstance(value, Precision):
        return value.name
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


_SECTIONS: dict[str, type] = {
    "weights": TensorQuant,
    "activations": TensorQuant,
    "calibration": Calibration,
    "smoothquant": SmoothQuant,
    "analysis": Analysis,
    "plan": PlanRule,
    "deploy": Deploy,
    "qat": QAT,
}
_TOML_KEY = {"global_": "global"}
#: Section keys only one of the sections sharing a class has (activations are not rounded ahead of time).
_ONLY_IN = {"rounding": "weights"}
_FIELD_FOR_TOML_KEY = {v: k for k, v in _TOML_KEY.items()}


@dataclass(frozen=True)
class Recipe:
    """A complete quantization recipe (see the module docstring and ``docs/recipes.md``)."""

    name: str
    description: str = ""
    weights: TensorQuant = field(default_factory=lambda: TensorQuant(granularity="per_channel"))
    activations: TensorQuant = field(default_factory=TensorQuant)
    calibration: Calibration = field(default_factory=Calibration)
    smoothquant: SmoothQuant = field(default_factory=SmoothQuant)
    analysis: Analysis = field(default_factory=Analysis)
    plan: PlanRule = field(default_factory=PlanRule)
    deploy: Deploy = field(default_factory=Deploy)
    qat: QAT = field(default_factory=QAT)
    skip_layers: tuple[str, ...] = ()
    #: Layer class name (``Linear``, ``Conv2d``) -> precision, e.g. weight-only Linear layers (``{Linear = "w8"}``).
    type_precisions: tuple[tuple[str, Precision], ...] = ()

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "type_precisions", tuple(
            (type_name, parse_precision(precision, f"type_precisions.{type_name}"))
            for type_name, precision in self.type_precisions))

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise RecipeError("name is missing: every recipe needs a non-empty name = \"...\"")
        _check_type(self.description, str, "description", "a string")
        self.weights.validate("weights", WEIGHT_SCALE_METHODS)
        self.activations.validate("activations", ACT_SCALE_METHODS)
        if self.activations.rounding != "nearest":
            raise RecipeError(f"activations.rounding = {self.activations.rounding!r}: only weights are rounded ahead "
                              f"of time; set weights.rounding instead")
        self.calibration.validate()
        self.smoothquant.validate()
        self.analysis.validate()
        self.plan.validate()
        self.deploy.validate()
        self.qat.validate()
        if self.deploy.quantize_query_key and self.activations.format != "int":
            raise RecipeError(f"deploy.quantize_query_key needs integer activations (activations.format = "
                              f"{self.activations.format!r}): set activations.format = \"int\" or drop the key")
        if self.deploy.requantize_conv_outputs and self.activations.format != "int":
            raise RecipeError(f"deploy.requantize_conv_outputs needs integer activations (activations.format = "
                              f"{self.activations.format!r}): set activations.format = \"int\" or drop the key")
        for i, pattern in enumerate(self.skip_layers):
            _check_type(pattern, str, f"skip_layers[{i}]", "a module-name pattern string")
        for type_name, precision in self.type_precisions:
            _check_choice(type_name, ("Linear", "Conv2d"), "type_precisions key")
            parse_precision(precision, f"type_precisions.{type_name}")
        if PLAN_METHODS.get(self.plan.method).needs_global_analysis and not self.analysis.global_:
            raise RecipeError(f"plan.method = {self.plan.method!r} needs the global analysis: set "
                              f"analysis.global = true or plan.method = \"uniform\"")
        if self.smoothquant.enabled and self.smoothquant.scope == "sensitive" and not self.analysis.local:
            raise RecipeError("smoothquant.scope = \"sensitive\" needs the local analysis: set analysis.local = "
                              "true or smoothquant.scope = \"all\"")

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> "Recipe":
        """Build and validate a recipe from parsed TOML; unknown keys are errors that list the known ones."""
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe must be a TOML table")
        top_known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in top_known:
                raise RecipeError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(top_known))}")
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise RecipeError(f"{source}: [{key}] must be a table of settings")
                kwargs[key] = _section_from_dict(key, value, source, weights_default=(key == "weights"))
            elif key == "skip_layers":
                if not isinstance(value, list):
                    raise RecipeError(f"{source}: skip_layers must be a list of module-name patterns")
                kwargs[key] = tuple(value)
            elif key == "type_precisions":
                if not isinstance(value, dict):
                    raise RecipeError(f"{source}: type_precisions must be a table, e.g. {{ Linear = \"w8\" }}")
                kwargs[key] = tuple(sorted(value.items()))
            else:
                kwargs[key] = value
        if "name" not in kwargs:
            raise RecipeError(f"{source}: name is missing: add name = \"my-recipe\"")
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, text: str, source: str = "recipe") -> "Recipe":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{source} does not parse as TOML ({exc}); fix the syntax or start from "
                              f"`brevitas-ldm recipes show minmax-w8a8`") from None
        except RecursionError:
            raise RecipeError(f"{source} nests its tables or arrays too deeply to read: a recipe is a few flat "
                              f"sections, start from `brevitas-ldm recipes show minmax-w8a8`") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_file(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist: pass a registered recipe name "
                              f"(`brevitas-ldm recipes`) or the path of a .toml file")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecipeError(f"recipe file {str(path)!r} is not UTF-8 text (byte {exc.start} cannot be decoded): "
                              f"save it as UTF-8 TOML") from None
        return cls.from_toml(text, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.skip_layers:
            out["skip_layers"] = list(self.skip_layers)
        if self.type_precisions:
            out["type_precisions"] = {type_name: str(p) for type_name, p in self.type_precisions}
        for section in _SECTIONS:
            fields = {f.name: getattr(getattr(self, section), f.name) for f in dataclasses.fields(_SECTIONS[section])
                      if _ONLY_IN.get(f.name, section) == section}
            out[section] = {_TOML_KEY.get(k, k): _plain(v) for k, v in fields.items()}
        return out

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with top-level fields or whole sections replaced (``recipe.replace(name="x")``)."""
        return dataclasses.replace(self, **changes)

    @property
    def default_precision(self) -> Precision:
        """The precision of every layer the plan does not single out (``e4m3``/``e5m2`` when both tensors are)."""
        shared = self.weights.format if self.weights.format == self.activations.format else "int"
        return Precision(self.weights.bits, self.activations.bits, shared)


def _section_from_dict(section: str, value: dict[str, Any], source: str, weights_default: bool) -> Any:
    section_cls = _SECTIONS[section]
    known = {_TOML_KEY.get(f.name, f.name) for f in fields(section_cls) if _ONLY_IN.get(f.name, section) == section}
    args: dict[str, Any] = {}
    if weights_default:
        args["granularity"] = "per_channel"
    for key, item in value.items():
        if key not in known:
            raise RecipeError(f"{source}: unknown key {section}.{key!r}; known keys in [{section}]: "
                              f"{', '.join(sorted(known))}")
        args[_FIELD_FOR_TOML_KEY.get(key, key)] = tuple(item) if isinstance(item, list) else item
    return section_cls(**args)


# -- registry ---------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Recipe] = {}
_BUILTINS_LOADED = False


def builtin_recipe_files() -> list:
    """The shipped recipe files: package data when installed, the top-level recipes/ folder in a source tree."""
    try:
        folder = resources.files("brevitas_ldm.recipes")
        entries = [entry for entry in folder.iterdir() if entry.name.endswith(".toml")]
    except ModuleNotFoundError:
        entries = []
    if not entries:
        source_tree = Path(__file__).resolve().parent.parent / "recipes"
        entries = sorted(source_tree.glob("*.toml"))
    return entries


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for entry in sorted(builtin_recipe_files(), key=lambda p: p.name):
        recipe = Recipe.from_toml(entry.read_text(), source=f"built-in recipe {entry.name}")
        _REGISTRY.setdefault(recipe.name, recipe)


def register_recipe(recipe: Recipe, overwrite: bool = False) -> Recipe:
    """Make ``recipe`` available by name to :func:`get_recipe` and the command line."""
    _load_builtins()
    if recipe.name in _REGISTRY and not overwrite:
        raise RecipeError(f"a recipe named {recipe.name!r} is already registered: choose another name or pass "
                          f"overwrite=True")
    _REGISTRY[recipe.name] = recipe
    return recipe


def list_recipes() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A registered recipe by name, or a recipe file by path (anything ending in .toml or that exists)."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    _load_builtins()
    text = str(name_or_path)
    if text in _REGISTRY:
        return _REGISTRY[text]
    if text.endswith(".toml") or Path(text).exists():
        return Recipe.from_file(text)
    raise RecipeError(f"unknown recipe {text!r}: choose one of {', '.join(list_recipes())} or pass a .toml file")
