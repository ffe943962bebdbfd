"""Global (block-level) SQNR analysis: which blocks of the denoiser cost output quality when quantized.

Following Yang et al. (2023), the denoiser's blocks (:func:`brevitas_ldm.blocks.get_blocks`, in execution order)
are quantized

* **progressively**: block 1, then blocks 1-2, then 1-3, ... The drop in output SQNR each block adds is its
  accumulated sensitivity, the paper's view of where quality is lost along the data path;
* **in isolation**: each block alone, the others in float. Under the noise-additivity model of
  :mod:`brevitas_ldm.plan`, these numbers predict the SQNR of *any* per-block configuration, which is what the
  budget planner optimises.

For every configuration the sampler runs on the analysis prompts/seeds and two figures are streamed through
:class:`~brevitas_ldm.sqnr.SQNRMeter`: the SQNR of the denoiser output at every sampling step along the quantized
trajectory (against the FP trajectory's output at the same step), and the SQNR of the final latents. Only the FP
reference is kept in memory (final latents plus per-step denoiser outputs, which are small).

Cost. Re-quantizing and re-calibrating per configuration would dominate the analysis, so
:class:`PrecisionBank` quantizes and calibrates one copy of the denoiser per precision of the recipe's menu,
*once*, and a configuration is applied by swapping the Brevitas quant layers of those copies into the FP denoiser
(restored afterwards). Because Brevitas' calibration runs with quantization disabled, each copy's activation
ranges are those of the float network, so a swapped-in configuration is exactly the model
``quantize_denoiser(..., precisions=config)`` + calibration would build (the tests check this). Runs use Brevitas'
``quant_inference_mode`` (cached quantized weights), which gives identical outputs at a fraction of the cost.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from brevitas_ldm.blocks import Block, get_blocks, quantizable_modules
from brevitas_ldm.calibration import multi_step_calibration, single_step_calibration
from brevitas_ldm.io import read_json_file, write_bytes_atomic
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.precision import Precision, parse_precision
from brevitas_ldm.quantize import quantize_denoiser, resolve_precisions
from brevitas_ldm.recipe import Recipe
from brevitas_ldm.sampling import (Condition, SamplingSpec, denoiser_step_hook, first_tensor, generate, get_denoiser)
from brevitas_ldm.sqnr import SQNRMeter, db_to_noise_ratio, noise_ratio_to_db

REPORT_FILE = "block_report.json"
PROGRESSIVE_PNG = "global_progressive_sqnr.png"
HEATMAP_PNG = "global_isolated_heatmap.png"
#: Bumped whenever the analysis changes what it measures, so stale caches are not reused.
ANALYSIS_VERSION = 1

LayerPrecisions = Mapping[str, Precision]


# ---------------------------------------------------------------------------------------------------------------
# Per-precision calibrated copies and layer swapping
# ---------------------------------------------------------------------------------------------------------------
def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def calibration_context(denoiser: nn.Module, recipe: Recipe, spec: SamplingSpec, num_train_timesteps: int = 1000):
    """The calibration context manager the recipe asks for (single step, all steps, or uniform steps)."""
    mode = recipe.calibration.mode
    if mode == "single_step":
        return single_step_calibration(denoiser, num_train_timesteps=num_train_timesteps)
    if mode == "uniform_steps":
        return multi_step_calibration(denoiser, steps=recipe.calibration.num_steps,
                                      num_inference_steps=spec.num_inference_steps)
    return multi_step_calibration(denoiser)


class PrecisionBank:
    """The FP denoiser of ``pipe`` plus one quantized, calibrated copy of its layers per precision.

    ``configured(layer_precisions)`` swaps the matching Brevitas layers into the FP denoiser for the duration of a
    ``with`` block, so any per-block or per-layer mix of the bank's precisions runs without re-quantizing. Layers
    the recipe's ``skip_layers`` keep in float are never swapped. Copies are built lazily by :meth:`ensure`.
    """

    def __init__(self, pipe: Any, recipe: Recipe, calibration_prompts: Sequence[Condition],
                 calibration_seeds: Sequence[int], spec: SamplingSpec, progress: bool = False) -> None:
        self.pipe = pipe
        self.recipe = recipe
        self.denoiser = get_denoiser(pipe)
        self.calibration_prompts = list(calibration_prompts)
        self.calibration_seeds = list(calibration_seeds)
        self.calibration_spec = SamplingSpec(spec.num_inference_steps, spec.guidance_scale,
                                             recipe.calibration.batch_size)
        self.progress = progress
        self.fp_layers: dict[str, nn.Module] = dict(quantizable_modules(self.denoiser))
        base = resolve_precisions(self.denoiser, recipe)
        self.skipped: frozenset[str] = frozenset(n for n, p in base.items() if p.is_float)
        self.layers: dict[Precision, dict[str, nn.Module]] = {}
        self.calibration_calls = 0
        self.calibration_s = 0.0
        self._active = False

    @property
    def precisions(self) -> list[Precision]:
        return list(self.layers)

    def ensure(self, precisions: Sequence[Precision | str]) -> "PrecisionBank":
        """Quantize and calibrate a copy for every precision not in the bank yet (float needs none)."""
        for precision in precisions:
            precision = parse_precision(precision)
            if not precision.is_float and precision not in self.layers:
                self._build(precision)
        return self

    def _build(self, precision: Precision) -> None:
        if self._active:
            raise BrevitasLDMError("cannot add a precision to the bank while a configuration is applied")
        start = time.perf_counter()
        clone = copy.deepcopy(self.denoiser)
        targets = [name for name in self.fp_layers if name not in self.skipped]
        quantize_denoiser(clone, self.recipe, {name: precision for name in targets})
        layers = {name: clone.get_submodule(name) for name in targets}
        self.layers[precision] = layers
        if any(getattr(layer, "input_quant", None) is not None and layer.input_quant.is_quant_enabled
               for layer in layers.values()):
            num_train = int(getattr(getattr(self.pipe, "scheduler", None), "config", {}).get("num_train_timesteps",
                                                                                           1000))
            with self.configured({name: precision for name in targets}, inference_mode=False):
                context = calibration_context(self.denoiser, self.recipe, self.calibration_spec, num_train)
                with context:
                    generate(self.pipe, self.calibration_prompts, self.calibration_seeds, self.calibration_spec,
                             progress=False)
                self.calibration_calls += context.calls
        self.calibration_s += time.perf_counter() - start

    def layer_precisions(self, block_precisions: Mapping[str, Precision | str],
                         blocks: Sequence[Block] | None = None) -> dict[str, Precision]:
        """Expand block names (or layer names) to a layer -> precision map; unlisted layers stay float."""
        members = {b.name: b.module_names for b in (blocks or get_blocks(self.denoiser))}
        out: dict[str, Precision] = {}
        for key, value in block_precisions.items():
            precision = parse_precision(value, f"precision of {key!r}")
            if key in members:
                out.update({name: precision for name in members[key]})
            elif key in self.fp_layers:
                out[key] = precision
            else:
                raise RecipeError(f"{key!r} names no block or quantizable layer of {type(self.denoiser).__name__}:"
                                  f" use block names such as {', '.join(list(members)[:4])}")
        return out

    @contextmanager
    def configured(self, layer_precisions: LayerPrecisions, inference_mode: bool = True) -> Iterator[nn.Module]:
        """Swap the bank's quant layers in for ``layer_precisions`` (layer name -> precision), restore on exit."""
        if self._active:
            raise BrevitasLDMError("a bank configuration is already applied: nest no configured() blocks")
        swaps = {}
        for name, precision in layer_precisions.items():
            precision = parse_precision(precision)
            if precision.is_float or name in self.skipped:
                continue
            if precision not in self.layers:
                raise BrevitasLDMError(f"precision {precision} is not in the bank: call ensure([{str(precision)!r}])")
            if name not in self.layers[precision]:
                raise BrevitasLDMError(f"layer {name!r} is not a quantizable layer of the denoiser")
            swaps[name] = self.layers[precision][name]
        self._active = True
        try:
            for name, layer in swaps.items():
                _set_submodule(self.denoiser, name, layer)
            with ExitStack() as stack:
                if inference_mode and swaps:
                    from brevitas.export.inference.manager import quant_inference_mode

                    stack.enter_context(quant_inference_mode(self.denoiser, cache_quant_weight=True))
                yield self.denoiser
        finally:
            for name in swaps:
                _set_submodule(self.denoiser, name, self.fp_layers[name])
            self._active = False


# ---------------------------------------------------------------------------------------------------------------
# FP reference and streamed measurements
# ---------------------------------------------------------------------------------------------------------------
def _sample_arg(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, kwargs.get("sample"), kwargs.get("hidden_states")):
        if isinstance(value, torch.Tensor):
            return value
    return None


@dataclass
class FPReference:
    """The float run every configuration is compared with: final latents and per-step denoiser outputs.

    ``outputs`` is keyed by (sampling run, step); a run is one pipeline call (one batch). ``act_elements`` is,
    per quantizable layer, the number of input elements per sample per denoiser call (what an activation-bit
    budget weighs).
    """

    conditions: list[Condition]
    seeds: list[int]
    spec: SamplingSpec
    latents: torch.Tensor
    outputs: dict[tuple[int, int], torch.Tensor]
    act_elements: dict[str, float]
    calls: int
    seconds: float

    @property
    def num_steps(self) -> int:
        return 1 + max(step for _, step in self.outputs)


@torch.no_grad()
def fp_reference(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec,
                 progress: bool = False) -> FPReference:
    """Run the FP pipeline once with hooks that keep the per-step denoiser outputs and count layer inputs."""
    denoiser = get_denoiser(pipe)
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    elements: dict[str, int] = {}
    samples = [0]
    holder: dict[str, Any] = {}

    def on_step(step, timestep, args, kwargs, output):
        sample = _sample_arg(args, kwargs)
        samples[0] += int(sample.shape[0]) if sample is not None and sample.dim() else 1
        tensor = first_tensor(output)
        if tensor is None:
            raise BrevitasLDMError(f"{type(denoiser).__name__} returned no tensor: the analysis needs the denoiser "
                                   f"output as a tensor, a tuple or a .sample")
        outputs[(holder["tracker"].run, step)] = tensor.detach().float().clone()

    def counter(name):
        def pre_hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                elements[name] = elements.get(name, 0) + args[0].numel()
        return pre_hook

    handles = [layer.register_forward_pre_hook(counter(name)) for name, layer in quantizable_modules(denoiser)]
    start = time.perf_counter()
    try:
        with denoiser_step_hook(denoiser, on_step) as tracker:
            holder["tracker"] = tracker
            latents = generate(pipe, list(conditions), list(seeds), spec, progress=progress, desc="FP reference")
    finally:
        for handle in handles:
            handle.remove()
    seconds = time.perf_counter() - start
    per_sample = {name: count / max(samples[0], 1) for name, count in elements.items()}
    return FPReference(list(conditions), list(seeds), spec, latents, outputs, per_sample, len(outputs), seconds)


@dataclass
class Measurement:
    """Streamed SQNR of one configuration: final latents and the denoiser output at each step."""

    final: SQNRMeter
    steps: list[SQNRMeter]
    calls: int
    seconds: float

    @property
    def final_db(self) -> float:
        return self.final.pooled_db

    @property
    def steps_db(self) -> list[float]:
        return [meter.pooled_db for meter in self.steps]


@torch.no_grad()
def measure(pipe: Any, reference: FPReference, bank: PrecisionBank | None = None,
            layer_precisions: LayerPrecisions | None = None) -> Measurement:
    """Sample with ``layer_precisions`` applied from ``bank`` and compare with ``reference`` at equal seeds."""
    denoiser = get_denoiser(pipe)
    steps = [SQNRMeter() for _ in range(reference.num_steps)]
    holder: dict[str, Any] = {}
    calls = [0]

    def on_step(step, timestep, args, kwargs, output):
        key = (holder["tracker"].run, step)
        if key not in reference.outputs:
            raise BrevitasLDMError(f"denoiser call at run {key[0]}, step {step} has no FP reference: measure with "
                                   f"the prompts, seeds and sampling spec of the reference")
        tensor = first_tensor(output)
        steps[step].update(reference.outputs[key], tensor.float())
        calls[0] += 1

    layer_precisions = layer_precisions or {}
    if layer_precisions and bank is None:
        raise BrevitasLDMError("measuring a quantized configuration needs a PrecisionBank")
    start = time.perf_counter()
    with ExitStack() as stack:
        if bank is not None:
            stack.enter_context(bank.configured(layer_precisions))
        holder["tracker"] = stack.enter_context(denoiser_step_hook(denoiser, on_step))
        latents = generate(pipe, reference.conditions, reference.seeds, reference.spec)
    final = SQNRMeter().update(reference.latents, latents)
    return Measurement(final, steps, calls[0], time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------
def _enc(value: float) -> float | str:
    """JSON has no infinity: +inf SQNR (no noise) is written as the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _dec(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _enc_tree(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _enc_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_enc_tree(v) for v in obj]
    return _enc(obj)


def _dec_dbs(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: [_dec(x) for x in v] if isinstance(v, list) else _dec(v) for k, v in obj.items()}


#: Results are written atomically through the project's one writer (kept under this name for callers).
write_atomic = write_bytes_atomic


@dataclass
class BlockEntry:
    """Everything measured about one block. SQNRs are in dB, keyed by precision name (``"w8a8"``).

    * ``isolated_db``: final-latent SQNR with only this block quantized; ``isolated_steps_db`` per sampling step.
    * ``progressive_db``: final-latent SQNR with this block and all blocks before it quantized.
    * ``progressive_drop_db``: SQNR of the previous prefix minus this one (+inf for the first block: the empty
      prefix is the FP model). It depends on the order and overstates early blocks, whose predecessors are nearly
      noise free, so the threshold rule uses ``share_db`` instead.
    * ``share_db``: how many dB the fully quantized model's SQNR would recover without the noise power this block
      adds in the progressive sweep, 10 log10(N_full / (N_full - max(N_k - N_{k-1}, 0))).
    """

    name: str
    kind: str
    param_count: int
    act_elements: float
    num_layers: int
    isolated_db: dict[str, float] = field(default_factory=dict)
    isolated_steps_db: dict[str, list[float]] = field(default_factory=dict)
    progressive_db: dict[str, float] = field(default_factory=dict)
    progressive_steps_db: dict[str, list[float]] = field(default_factory=dict)
    progressive_drop_db: dict[str, float] = field(default_factory=dict)
    share_db: dict[str, float] = field(default_factory=dict)

    def noise_ratio(self, precision: Precision | str) -> float:
        """Isolated output noise-to-signal ratio at ``precision`` (0 for float)."""
        precision = parse_precision(precision)
        if precision.is_float:
            return 0.0
        if precision.name not in self.isolated_db:
            raise RecipeError(f"block {self.name!r} was not analysed at {precision.name}: add it to plan.menu and "
                              f"rerun the global analysis")
        return db_to_noise_ratio(self.isolated_db[precision.name])


@dataclass
class BlockReport:
    """The global analysis of one model under one recipe: per-block sensitivities, ready for planning."""

    model: str
    recipe: str
    default_precision: str
    high_precision: str
    precisions: list[str]
    progressive_precisions: list[str]
    num_prompts: int
    seeds: list[int]
    steps: int
    guidance_scale: float
    blocks: list[BlockEntry]
    full_db: dict[str, float] = field(default_factory=dict)
    full_steps_db: dict[str, list[float]] = field(default_factory=dict)
    skipped_param_count: int = 0
    skipped_act_elements: float = 0.0
    timing_s: dict[str, float] = field(default_factory=dict)
    denoiser_calls: dict[str, int] = field(default_factory=dict)
    cache_key: str = ""
    from_cache: bool = False

    # -- queries ---------------------------------------------------------------------------------------------
    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def block(self, name: str) -> BlockEntry:
        for entry in self.blocks:
            if entry.name == name:
                return entry
        raise RecipeError(f"unknown block {name!r}: the report has {', '.join(self.block_names)}")

    @property
    def menu(self) -> list[str]:
        """Every precision a plan may use with this report: float plus the analysed ones."""
        return ["float", *[p for p in self.precisions if p != "float"]]

    def ranking(self, precision: str | None = None) -> list[str]:
        """Block names, most sensitive first (lowest isolated SQNR at ``precision``, default: the recipe's)."""
        name = parse_precision(precision or self.default_precision).name
        return sorted(self.block_names, key=lambda b: self.block(b).isolated_db.get(name, math.inf))

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("from_cache")
        data["version"] = ANALYSIS_VERSION
        return _enc_tree(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BlockReport":
        data = dict(data)
        data.pop("version", None)
        blocks = []
        for raw in data.pop("blocks"):
            raw = dict(raw)
            for key in ("isolated_db", "isolated_steps_db", "progressive_db", "progressive_steps_db",
                        "progressive_drop_db", "share_db"):
                raw[key] = _dec_dbs(raw.get(key, {}))
            blocks.append(BlockEntry(**raw))
        data["full_db"] = _dec_dbs(data.get("full_db", {}))
        data["full_steps_db"] = _dec_dbs(data.get("full_steps_db", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise BrevitasLDMError(f"block report has unknown keys {sorted(unknown)}: it was written by another "
                                   f"version; rerun the global analysis")
        return cls(blocks=blocks, **data)

    def save(self, directory: str | Path, figures: bool = True) -> Path:
        """Write ``block_report.json`` (and the PNG figures) into ``directory``, each file atomically."""
        directory = Path(directory)
        path = directory / REPORT_FILE
        write_atomic(path, json.dumps(self.to_dict(), indent=1).encode())
        if figures:
            self.save_figures(directory)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BlockReport":
        """Load a report from ``block_report.json`` or the folder holding it."""
        path, data = read_json_file(path, REPORT_FILE, "block report", "run the global analysis (brevitas-ldm analyze) first",
                                    "rerun the global analysis")
        if data.get("version") != ANALYSIS_VERSION:
            raise BrevitasLDMError(f"{path} was written by analysis version {data.get('version')}, this is "
                                   f"{ANALYSIS_VERSION}: rerun the global analysis")
        return cls.from_dict(data)

    # -- presentation ----------------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """One row per block in execution order: size, isolated SQNR per precision, progressive SQNR and drop."""
        default = self.default_precision
        rank = {name: i + 1 for i, name in enumerate(self.ranking())}
        analysed = [p for p in self.precisions if p != "float"]
        header = ["block", "kind", "params", "act elems", "rank"] + [f"isolated {p} (dB)" for p in analysed]
        header += [f"progressive {default} (dB)", "drop (dB)", "share (dB)"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

        def fmt(value: float | None) -> str:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return "-"
            return "inf" if math.isinf(value) else f"{value:.2f}"

        for entry in self.blocks:
            row = [entry.name, entry.kind, f"{entry.param_count:,}", f"{entry.act_elements:,.0f}", str(rank[entry.name])]
            row += [fmt(entry.isolated_db.get(p)) for p in analysed]
            row += [fmt(entry.progressive_db.get(default)), fmt(entry.progressive_drop_db.get(default)),
                    fmt(entry.share_db.get(default))]
            lines.append("| " + " | ".join(row) + " |")
        if default in self.full_db:
            lines.append("")
            lines.append(f"Fully quantized at {default}: {fmt(self.full_db[default])} dB output SQNR.")
        return "\n".join(lines)

    def save_figures(self, directory: str | Path) -> list[Path]:
        """Progressive SQNR per block, and a block x step heatmap of isolated SQNR (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory = Path(directory)
        names = self.block_names
        written = []

        from brevitas_ldm.figures import save_figure

        def save(fig, filename):
            save_figure(fig, directory / filename)
            written.append(directory / filename)

        directory.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names)), 4.0))
        x = list(range(len(names)))
        for precision in self.progressive_precisions:
            values = [self.block(n).progressive_db.get(precision, math.nan) for n in names]
            ax.plot(x, values, marker="o", label=f"progressive {precision}")
        for precision in self.precisions:
            if precision == "float":
                continue
            values = [self.block(n).isolated_db.get(precision, math.nan) for n in names]
            ax.plot(x, values, linestyle=":", marker=".", label=f"isolated {precision}")
        ax.set_xticks(x, names, rotation=60, ha="right")
        ax.set_ylabel("output SQNR (dB)")
        ax.set_title("Global analysis: SQNR of the final latents vs FP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, PROGRESSIVE_PNG)

        precision = self.default_precision
        rows = [self.block(n).isolated_steps_db.get(precision) for n in names]
        if all(rows):
            fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(rows[0])), max(3.0, 0.35 * len(names))))
            finite = [v for row in rows for v in row if math.isfinite(v)]
            image = ax.imshow([[v if math.isfinite(v) else (max(finite) if finite else 0.0) for v in row]
                               for row in rows], aspect="auto", cmap="viridis")
            ax.set_yticks(range(len(names)), names)
            ax.set_xticks(range(0, len(rows[0]), max(1, len(rows[0]) // 10)))
            ax.set_xlabel("sampling step")
            ax.set_title(f"Isolated {precision}: denoiser-output SQNR (dB) per step")
            fig.colorbar(image, ax=ax)
            save(fig, HEATMAP_PNG)
        return written


# ---------------------------------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------------------------------
def model_fingerprint(module: nn.Module) -> str:
    """A cheap digest of the weights (shapes and float64 sums), so a cache is not reused for changed weights."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in module.state_dict().items():
            value = param.detach().double()
            digest.update(f"{name}:{tuple(param.shape)}:{value.sum().item():.12e}:"
                          f"{value.abs().sum().item():.12e}".encode())
    return digest.hexdigest()[:16]


def _recipe_signature(recipe: Recipe) -> dict[str, Any]:
    """The parts of a recipe that change what the analysis measures (not the plan rule or its budget)."""
    data = recipe.to_dict()
    return {k: data.get(k) for k in ("weights", "activations", "calibration", "skip_layers")}


@dataclass
class _Config:
    kind: str           # "isolated" | "progressive"
    precision: Precision
    index: int          # block index (isolated) or last block of the prefix (progressive)


class BlockSensitivity:
    """Progressive and isolated block analysis of a pipeline's denoiser under ``recipe``.

    ``menu`` lists the precisions measured in isolation (default: the recipe's ``plan.menu`` plus its base and
    high precision); ``progressive`` those swept progressively (default: the recipe's base precision only, the
    paper's analysis). ``calibration_prompts``/``calibration_seeds`` default to the analysis prompts/seeds.

    >>> report = BlockSensitivity(recipe, prompts, seeds, SamplingSpec(20)).run(pipe, cache_dir=".cache")
    """

    def __init__(self, recipe: Recipe, prompts: Sequence[Condition], seeds: Sequence[int],
                 spec: SamplingSpec = SamplingSpec(), menu: Sequence[str | Precision] | None = None,
                 progressive: Sequence[str | Precision] | None = None, progress: bool = True,
                 calibration_prompts: Sequence[Condition] | None = None,
                 calibration_seeds: Sequence[int] | None = None, isolated: bool = True) -> None:
        if len(prompts) != len(seeds):
            raise BrevitasLDMError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
        if not prompts:
            raise BrevitasLDMError("the global analysis needs at least one prompt")
        self.recipe = recipe
        self.prompts = list(prompts)
        self.seeds = [int(s) for s in seeds]
        self.spec = spec
        if menu is None:
            menu = [*recipe.plan.menu, recipe.default_precision, recipe.plan.high_precision]
        names: list[str] = []
        for item in menu:
            name = parse_precision(item, "menu").name
            if name not in names:
                names.append(name)
        self.menu = [parse_precision(n) for n in names]
        self.progressive = [parse_precision(p, "progressive") for p in (progressive if progressive is not None
                                                                          else [recipe.default_precision])]
        self.isolated = isolated
        self.progress = progress
        self.calibration_prompts = list(calibration_prompts) if calibration_prompts is not None else self.prompts
        self.calibration_seeds = list(calibration_seeds) if calibration_seeds is not None else self.seeds
        self.bank: PrecisionBank | None = None
        self.reference: FPReference | None = None

    # -- caching ---------------------------------------------------------------------------------------------
    def cache_key(self, pipe: Any, model_id: str | None = None) -> str:
        denoiser = get_denoiser(pipe)
        payload = {
            "version": ANALYSIS_VERSION,
            "model": model_id if model_id is not None else str(getattr(pipe, "name_or_path", "") or ""),
            "weights": model_fingerprint(denoiser),
            "recipe": _recipe_signature(self.recipe),
            "prompts": [str(p) for p in self.prompts], "seeds": self.seeds,
            "calibration": [[str(p) for p in self.calibration_prompts], self.calibration_seeds],
            "spec": dataclasses.asdict(self.spec) | {"batch_size": None},
            "menu": [p.name for p in self.measured_precisions],
            "progressive": [p.name for p in self.progressive], "isolated": self.isolated,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def measured_precisions(self) -> list[Precision]:
        out = [p for p in self.menu if not p.is_float] if self.isolated else []
        return out + [p for p in self.progressive if not p.is_float and p not in out]

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, pipe: Any, cache_dir: str | Path | None = None, model_id: str | None = None) -> BlockReport:
        """Measure (or load from ``cache_dir``) the block report of ``pipe``'s denoiser."""
        key = self.cache_key(pipe, model_id) if cache_dir is not None else ""
        if cache_dir is not None:
            cached = Path(cache_dir) / f"global-{key}" / REPORT_FILE
            if cached.is_file():
                start = time.perf_counter()
                report = BlockReport.load(cached)
                report.from_cache = True
                report.timing_s = {**report.timing_s, "cache_load": time.perf_counter() - start}
                return report
        report = self._analyse(pipe, model_id)
        report.cache_key = key
        if cache_dir is not None:
            report.save(Path(cache_dir) / f"global-{key}")
        return report

    def _configs(self, num_blocks: int) -> list[_Config]:
        configs = []
        if self.isolated:
            configs += [_Config("isolated", p, i) for p in self.menu if not p.is_float for i in range(num_blocks)]
        for p in self.progressive:
            if p.is_float:
                continue
            # The 1-block prefix is the isolated first block: measured once when both are requested.
            first = 1 if (self.isolated and p in self.menu) else 0
            configs += [_Config("progressive", p, i) for i in range(first, num_blocks)]
        return configs

    def _analyse(self, pipe: Any, model_id: str | None) -> BlockReport:
        start = time.perf_counter()
        denoiser = get_denoiser(pipe)
        blocks = get_blocks(denoiser)
        self.reference = reference = fp_reference(pipe, self.prompts, self.seeds, self.spec, progress=False)
        self.bank = bank = PrecisionBank(pipe, self.recipe, self.calibration_prompts, self.calibration_seeds,
                                         self.spec, progress=self.progress)
        precisions = self.measured_precisions
        for precision in tqdm(precisions, desc="quantize + calibrate", disable=not self.progress, leave=False):
            bank.ensure([precision])
        skipped = bank.skipped
        entries = [BlockEntry(
            name=b.name, kind=b.kind, num_layers=len(b),
            param_count=sum(p.numel() for n in b.module_names if n not in skipped
                            for p in bank.fp_layers[n].parameters(recurse=False)),
            act_elements=sum(reference.act_elements.get(n, 0.0) for n in b.module_names if n not in skipped))
            for b in blocks]
        skipped_params = sum(p.numel() for n in skipped for p in bank.fp_layers[n].parameters(recurse=False))
        skipped_acts = sum(reference.act_elements.get(n, 0.0) for n in skipped)

        calls = {"isolated": 0, "progressive": 0}
        seconds = {"isolated": 0.0, "progressive": 0.0}
        progressive_noise: dict[str, list[float]] = {p.name: [math.nan] * len(blocks) for p in self.progressive}
        configs = self._configs(len(blocks))
        for config in tqdm(configs, desc="global analysis", disable=not self.progress):
            chosen = [blocks[config.index]] if config.kind == "isolated" else blocks[:config.index + 1]
            layers = {name: config.precision for block in chosen for name in block.module_names}
            result = measure(pipe, reference, bank, layers)
            calls[config.kind] += result.calls
            seconds[config.kind] += result.seconds
            entry = entries[config.index]
            name = config.precision.name
            if config.kind == "isolated":
                entry.isolated_db[name] = result.final_db
                entry.isolated_steps_db[name] = result.steps_db
                if config.index == 0 and config.precision in self.progressive:
                    entry.progressive_db[name] = result.final_db
                    entry.progressive_steps_db[name] = result.steps_db
                    progressive_noise[name][0] = result.final.noise_ratio
            else:
                entry.progressive_db[name] = result.final_db
                entry.progressive_steps_db[name] = result.steps_db
                progressive_noise[name][config.index] = result.final.noise_ratio

        report = BlockReport(
            model=model_id if model_id is not None else str(getattr(pipe, "name_or_path", "") or ""),
            recipe=self.recipe.name, default_precision=self.recipe.default_precision.name,
            high_precision=parse_precision(self.recipe.plan.high_precision).name,
            precisions=[p.name for p in (self.menu if self.isolated else [])],
            progressive_precisions=[p.name for p in self.progressive if not p.is_float],
            num_prompts=len(self.prompts), seeds=self.seeds, steps=self.spec.num_inference_steps,
            guidance_scale=self.spec.guidance_scale, blocks=entries, skipped_param_count=skipped_params,
            skipped_act_elements=skipped_acts)
        for name, noise in progressive_noise.items():
            if not noise or math.isnan(noise[-1]):
                continue
            report.full_db[name] = noise_ratio_to_db(noise[-1])
            report.full_steps_db[name] = entries[-1].progressive_steps_db[name]
            previous = 0.0
            for entry, current in zip(entries, noise):
                entry.progressive_drop_db[name] = noise_ratio_to_db(previous) - noise_ratio_to_db(current)
                added = max(current - previous, 0.0)
                if noise[-1] <= 0.0:
                    entry.share_db[name] = 0.0
                elif added >= noise[-1]:
                    entry.share_db[name] = math.inf
                else:
                    entry.share_db[name] = 10.0 * math.log10(noise[-1] / (noise[-1] - added))
                previous = current
        report.timing_s = {"fp_reference": reference.seconds, "quantize_calibrate": bank.calibration_s,
                           "isolated": seconds["isolated"], "progressive": seconds["progressive"],
                           "total": time.perf_counter() - start}
        report.denoiser_calls = {"fp_reference": reference.calls, "calibration": bank.calibration_calls,
                                 "isolated": calls["isolated"], "progressive": calls["progressive"]}
        report.denoiser_calls["total"] = sum(report.denoiser_calls.values())
        return report


# ---------------------------------------------------------------------------------------------------------------
# Applying and measuring plans
# ---------------------------------------------------------------------------------------------------------------
def _plan_precisions(plan: Any) -> dict[str, str]:
    precisions = getattr(plan, "precisions", plan)
    if not isinstance(precisions, Mapping):
        raise BrevitasLDMError("a plan is a Plan or a mapping block name -> precision string")
    return dict(precisions)


def _reference_and_bank(pipe: Any, recipe: Recipe, prompts: Sequence[Condition] | None,
                        seeds: Sequence[int] | None, spec: SamplingSpec | None, bank: "PrecisionBank | None",
                        reference: "FPReference | None", caller: str) -> tuple["FPReference", "PrecisionBank"]:
    """The FP run and calibrated copies a measurement needs: the given ones, or built from prompts/seeds."""
    if reference is None:
        if prompts is None or seeds is None:
            raise BrevitasLDMError(f"{caller} needs prompts and seeds, or an FPReference")
        reference = fp_reference(pipe, prompts, seeds, spec or SamplingSpec())
    if bank is None:
        bank = PrecisionBank(pipe, recipe, reference.conditions, reference.seeds, reference.spec)
    return reference, bank


def measure_plan(pipe: Any, recipe: Recipe, plan: Any, prompts: Sequence[Condition] | None = None,
                 seeds: Sequence[int] | None = None, spec: SamplingSpec | None = None,
                 bank: PrecisionBank | None = None, reference: FPReference | None = None) -> float:
    """Measured final-latent SQNR (dB) of ``plan`` (a Plan or block -> precision mapping) against FP.

    The plan is applied through the per-precision calibrated copies of ``bank`` (built and calibrated on
    ``prompts``/``seeds`` when not given); pass ``reference`` to reuse an FP run.
    """
    reference, bank = _reference_and_bank(pipe, recipe, prompts, seeds, spec, bank, reference, "measure_plan")
    block_precisions = _plan_precisions(plan)
    layers = bank.layer_precisions(block_precisions)
    bank.ensure(sorted({p for p in layers.values()}, key=str))
    return measure(pipe, reference, bank, layers).final_db


def validate_plan(pipe: Any, recipe: Recipe, report: BlockReport, plan: Any, num_random: int = 5, seed: int = 0,
                  prompts: Sequence[Condition] | None = None, seeds: Sequence[int] | None = None,
                  spec: SamplingSpec | None = None, bank: PrecisionBank | None = None,
                  reference: FPReference | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Predicted vs measured output SQNR for ``plan`` and ``num_random`` random plans at the same budget.

    Random plans are drawn by :func:`brevitas_ldm.plan.random_budget_plans` under the plan's budget (a budget
    plan's ``plan.budget``, otherwise the average weight and activation bits the plan uses). Returns one row per plan: name, precisions, avg bits, predicted/measured dB, error.
    """
    from brevitas_ldm.plan import average_bits, predict_sqnr_db, random_budget_plans

    reference, bank = _reference_and_bank(pipe, recipe, prompts, seeds, spec, bank, reference, "validate_plan")
    chosen = _plan_precisions(plan)
    weight_bits, act_bits = average_bits(report, chosen)
    budget = getattr(plan, "budget", None) or {}
    if budget:  # a budget plan: random plans get the same budget, not just what the optimum happened to spend
        weight_bits, act_bits = budget.get("avg_weight_bits", 0.0), budget.get("avg_act_bits", 0.0)
    menu = sorted({*chosen.values()} | set(report.menu), key=str)
    candidates = [("plan", chosen)]
    randoms = random_budget_plans(report, num_random, avg_weight_bits=weight_bits, avg_act_bits=act_bits,
                                  menu=menu, seed=seed)
    candidates += [(f"random {i + 1}", p.precisions) for i, p in enumerate(randoms)]
    rows = []
    for name, precisions in tqdm(candidates, desc="validate plan", disable=not progress, leave=False):
        predicted = predict_sqnr_db(report, precisions)
        measured = measure_plan(pipe, recipe, precisions, bank=bank, reference=reference)
        w, a = average_bits(report, precisions)
        rows.append({"name": name, "precisions": dict(precisions), "avg_weight_bits": w, "avg_act_bits": a,
                     "predicted_db": predicted, "measured_db": measured, "error_db": predicted - measured})
    return rows


__all__ = ["BlockEntry", "BlockReport", "BlockSensitivity", "FPReference", "Measurement", "PrecisionBank", "write_atomic",
           "calibration_context", "fp_reference", "measure", "measure_plan", "model_fingerprint", "validate_plan"]
