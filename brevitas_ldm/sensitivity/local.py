"""Local (module-level) SQNR analysis: how much noise each layer makes when it alone is quantized.

The paper's local analysis measures, for every quantizable layer, the SQNR of its output when *only that layer*
is quantized and it receives its full-precision input ("relative SQNR"). Doing that one layer at a time would
cost one sampling run per layer; here every layer is measured in the *same* FP sampling run: a forward hook on
each float layer runs the layer's quantized twin on the very input the float layer just received and feeds a
streaming :class:`~brevitas_ldm.sqnr.SQNRMeter` with (FP output, twin output). The FP run is never perturbed, so
every layer sees exactly the input it has in the float model, at every sampling step.

The twins are the layers of ``quantize_denoiser(deepcopy(denoiser), recipe, precisions)``: the very quant layers
the main job builds, with the recipe's quantizers at each layer's planned precision, and their activation ranges
calibrated *before* the measurement with the recipe's own calibration mode (single-step, all steps or uniform
steps, :func:`brevitas_ldm.calibration.recipe_calibration`). Each twin is run three times per call, its Brevitas
quant proxies toggled through their ``disable_quant`` flag: weights and activations quantized (the relative
SQNR), weights only, and activations only, which splits each layer's noise into a weight-caused and an
activation-caused part; SmoothQuant only helps the second.

Measurements are kept per sampling step (from :func:`brevitas_ldm.sampling.denoiser_step_hook`); a layer is
*time-sensitive* when its per-step SQNR spans more than ``time_sensitive_db`` dB over the trajectory (default
6 dB: its worst step is 4x noisier than its best), i.e. a single static activation range cannot serve all its steps
equally. (3 dB flagged 58% of the layers of tiny-sd-digits at W8A8, 6 dB flags 34%, the ones that stand out.)
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.blocks import get_blocks, module_to_block, quantizable_modules
from brevitas_ldm.calibration import recipe_calibration
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.io import read_json_file
from brevitas_ldm.precision import FLOAT, Precision
from brevitas_ldm.quantize import quant_layers, quantize_denoiser, resolve_precisions
from brevitas_ldm.recipe import Recipe
from brevitas_ldm.sampling import (CallCounter, Condition, SamplingSpec, denoiser_step_hook, generate, get_denoiser,
                                   set_denoiser)
from brevitas_ldm.smoothing import user_facing_names
from brevitas_ldm.sqnr import SQNRMeter, db_to_noise_ratio

#: Layer categories of diffusers denoisers, in the order summaries list them.
CATEGORIES = ("attn_q", "attn_k", "attn_v", "attn_out", "transformer_io", "feed_forward", "resnet_conv",
              "shortcut_conv", "sampler", "time_embedding", "in_out", "other")
CATEGORY_LABELS = {
    "attn_q": "attention query", "attn_k": "attention key", "attn_v": "attention value",
    "attn_out": "attention output", "transformer_io": "transformer proj_in/proj_out",
    "feed_forward": "feed-forward", "resnet_conv": "resnet conv", "shortcut_conv": "shortcut conv",
    "sampler": "up/down sampler", "time_embedding": "time-embedding projection", "in_out": "input/output conv",
    "other": "other"}
VARIANTS = ("total", "weight", "act")
DEFAULT_TIME_SENSITIVE_DB = 6.0


def module_category(name: str) -> str:
    """Category of a diffusers layer from its user-facing qualified name.

    Time-embedding projections include the resnets' ``time_emb_proj`` and, for DiTs, the adaLN projections of the
    timestep/class embedding (``norm1.linear``, ``timestep_embedder``), which all only see the conditioning vector.
    """
    parts = name.split(".")
    last = parts[-1]
    tail2 = ".".join(parts[-2:])
    if last in ("to_q", "add_q_proj", "query", "q_proj"):
        return "attn_q"
    if last in ("to_k", "add_k_proj", "key", "k_proj"):
        return "attn_k"
    if last in ("to_v", "add_v_proj", "value", "v_proj"):
        return "attn_v"
    if tail2 in ("to_out.0", "to_add_out") or last in ("to_add_out", "proj_attn", "out_proj"):
        return "attn_out"
    if "ff" in parts or "ff_context" in parts or "feed_forward" in parts:
        return "feed_forward"
    if last == "conv_shortcut":
        return "shortcut_conv"
    if "downsamplers" in parts or "upsamplers" in parts:
        return "sampler"
    if (last == "time_emb_proj" or parts[0] in ("time_embedding", "time_embed", "time_text_embed", "adaln_single",
                                                  "class_embedding", "add_embedding")
            or "timestep_embedder" in parts or "emb" in parts
            or (len(parts) >= 2 and parts[-2].startswith("norm") and last == "linear")):
        return "time_embedding"
    if "resnets" in parts and last.startswith("conv"):
        return "resnet_conv"
    if "attentions" in parts and last in ("proj_in", "proj_out"):
        return "transformer_io"
    if len(parts) <= 2 and (parts[0] in ("conv_in", "conv_out", "proj_out", "proj_out_1", "proj_out_2", "proj_in",
                                          "x_embedder", "context_embedder") or parts[0] == "pos_embed"):
        return "in_out"
    return "other"


# -- the one-pass measurement ---------------------------------------------------------------------------------------
TwinFn = Callable[[torch.Tensor], torch.Tensor]


class TwinProbe:
    """Forward hooks on float layers that run each layer's twins on the layer's FP input.

    ``twins[name][variant]`` is a callable applied to the FP input of layer ``name``; with ``measure=True`` the
    SQNR of its result against the FP output is accumulated per denoiser call and assigned to a sampling step by
    :meth:`end_call` (hook it to :func:`denoiser_step_hook`). With ``measure=False`` the twins are only fed (e.g.
    to calibrate their activation ranges). Nothing is stored but per-sample power sums.
    """

    def __init__(self, layers: Mapping[str, nn.Module], twins: Mapping[str, Mapping[Any, TwinFn]],
                 measure: bool = True) -> None:
        missing = [name for name in twins if name not in layers]
        if missing:
            raise BrevitasLDMError(f"no float layer for twin {missing[0]!r}: build twins from the same denoiser")
        self.layers = layers
        self.twins = twins
        self.measure = measure
        self.steps: dict[str, dict[Any, dict[int, SQNRMeter]]] = {n: {v: {} for v in t} for n, t in twins.items()}
        self._pending: dict[tuple[str, Any], SQNRMeter] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            with torch.no_grad():
                for variant, fn in self.twins[name].items():
                    y = fn(x)
                    if self.measure:
                        self._pending.setdefault((name, variant), SQNRMeter()).update(output, y)
        return hook

    def __enter__(self) -> "TwinProbe":
        self._handles = [self.layers[name].register_forward_hook(self._hook(name)) for name in self.twins]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def end_call(self, step: int) -> None:
        """Assign what the hooks measured during the denoiser call that just ended to sampling step ``step``."""
        for (name, variant), meter in self._pending.items():
            target = self.steps[name][variant].setdefault(step, SQNRMeter())
            target.signal.extend(meter.signal)
            target.noise.extend(meter.noise)
        self._pending = {}

    def meter(self, name: str, variant: Any, step: int | None = None) -> SQNRMeter:
        """Pooled meter of one layer/variant, over all steps or at one step."""
        by_step = self.steps[name][variant]
        if step is not None:
            return by_step[step]
        merged = SQNRMeter()
        for meter in by_step.values():
            merged = merged.merge(meter)
        return merged


@contextmanager
def _quant_disabled(proxies: Sequence[nn.Module]) -> Iterator[None]:
    """Turn the given Brevitas quant proxies into pass-throughs for one call.

    Sets the same ``disable_quant`` flag Brevitas' ``quantization_status_manager`` sets, on just the twin's own
    proxies: the manager walks the whole module tree and toggles train modes on every call, which made the
    weight-only/activation-only variants cost more than the quantized layers themselves.
    """
    previous = [proxy.disable_quant for proxy in proxies]
    for proxy in proxies:
        proxy.disable_quant = True
    try:
        yield
    finally:
        for proxy, value in zip(proxies, previous):
            proxy.disable_quant = value


def split_twin(twin: nn.Module) -> dict[str, TwinFn]:
    """A Brevitas quant layer as three functions: fully quantized, weight-only, activation-only."""
    act_proxies = [twin.input_quant]
    weight_proxies = [twin.weight_quant]

    def weight_only(x: torch.Tensor) -> torch.Tensor:
        with _quant_disabled(act_proxies):
            return twin(x)

    def act_only(x: torch.Tensor) -> torch.Tensor:
        with _quant_disabled(weight_proxies):
            return twin(x)

    return {"total": twin, "weight": weight_only, "act": act_only}


# -- the report -----------------------------------------------------------------------------------------------------
def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _db_in(value: float | None) -> float:
    return math.inf if value is None else float(value)


@dataclass
class ModuleEntry:
    """One layer's local SQNR figures (dB; ``inf`` where that variant adds no noise, e.g. float activations)."""

    name: str
    block: str
    category: str
    layer_type: str
    precision: str
    sqnr_db: float
    weight_sqnr_db: float
    act_sqnr_db: float
    step_sqnr_db: list[float] = field(default_factory=list)
    step_weight_sqnr_db: list[float] = field(default_factory=list)
    step_act_sqnr_db: list[float] = field(default_factory=list)
    time_sensitive: bool = False

    @property
    def activation_share(self) -> float:
        """Activation-caused fraction of the layer's noise: N_act / (N_act + N_weight) (0 when noise-free)."""
        weight, act = db_to_noise_ratio(self.weight_sqnr_db), db_to_noise_ratio(self.act_sqnr_db)
        return act / (weight + act) if weight + act > 0 else 0.0

    @property
    def interaction_db(self) -> float:
        """Total noise over the sum of the two parts in dB (0 when they add up, as independent noise does)."""
        parts = db_to_noise_ratio(self.weight_sqnr_db) + db_to_noise_ratio(self.act_sqnr_db)
        total = db_to_noise_ratio(self.sqnr_db)
        return 0.0 if parts == 0 or total == 0 else 10.0 * math.log10(total / parts)

    @property
    def step_range_db(self) -> float:
        finite = [v for v in self.step_sqnr_db if math.isfinite(v)]
        return max(finite) - min(finite) if len(finite) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("sqnr_db", "weight_sqnr_db", "act_sqnr_db"):
            data[key] = _finite(data[key])
        for key in ("step_sqnr_db", "step_weight_sqnr_db", "step_act_sqnr_db"):
            data[key] = [_finite(v) for v in data[key]]
        data["activation_share"] = self.activation_share
        data["step_range_db"] = self.step_range_db
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModuleEntry":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("sqnr_db", "weight_sqnr_db", "act_sqnr_db"):
            values[key] = _db_in(values.get(key))
        for key in ("step_sqnr_db", "step_weight_sqnr_db", "step_act_sqnr_db"):
            values[key] = [_db_in(v) for v in values.get(key, [])]
        return cls(**values)


@dataclass
class ModuleReport:
    """Local analysis result: one :class:`ModuleEntry` per quantized layer, in execution order."""

    modules: list[ModuleEntry]
    recipe: str = ""
    default_precision: str = ""
    calibration_mode: str = ""
    timesteps: list[float] = field(default_factory=list)
    num_samples: int = 0
    denoiser_calls: dict[str, int] = field(default_factory=dict)
    time_sensitive_db: float = DEFAULT_TIME_SENSITIVE_DB
    wall_time_s: float = 0.0

    FILENAME = "module_report.json"

    # -- queries --------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> ModuleEntry:
        for entry in self.modules:
            if entry.name == name:
                return entry
        raise KeyError(f"{name!r} is not in the module report")

    def ranked(self) -> list[ModuleEntry]:
        """Worst (lowest relative SQNR) first."""
        return sorted(self.modules, key=lambda e: e.sqnr_db)

    def time_sensitive(self) -> list[ModuleEntry]:
        """Time-sensitive layers, widest per-step SQNR range first."""
        return sorted((e for e in self.modules if e.time_sensitive), key=lambda e: -e.step_range_db)

    def category_summary(self) -> dict[str, dict[str, Any]]:
        """Per category: layer count, mean/min relative SQNR (dB), mean activation share, worst layer, count of
        time-sensitive layers."""
        out: dict[str, dict[str, Any]] = {}
        for category in CATEGORIES:
            entries = [e for e in self.modules if e.category == category]
            if not entries:
                continue
            finite = [e.sqnr_db for e in entries if math.isfinite(e.sqnr_db)]
            worst = min(entries, key=lambda e: e.sqnr_db)
            out[category] = {
                "count": len(entries),
                "mean_sqnr_db": statistics.fmean(finite) if finite else math.inf,
                "min_sqnr_db": worst.sqnr_db,
                "mean_activation_share": statistics.fmean(e.activation_share for e in entries),
                "worst": worst.name,
                "time_sensitive": sum(e.time_sensitive for e in entries),
            }
        return out

    # -- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        summary = {k: {**v, "mean_sqnr_db": _finite(v["mean_sqnr_db"]), "min_sqnr_db": _finite(v["min_sqnr_db"])}
                   for k, v in self.category_summary().items()}
        return {"recipe": self.recipe, "default_precision": self.default_precision,
                "calibration_mode": self.calibration_mode, "timesteps": self.timesteps,
                "num_samples": self.num_samples, "denoiser_calls": self.denoiser_calls,
                "time_sensitive_db": self.time_sensitive_db, "wall_time_s": self.wall_time_s,
                "category_summary": summary, "modules": [e.to_dict() for e in self.modules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModuleReport":
        try:
            modules = [ModuleEntry.from_dict(m) for m in data["modules"]]
        except (KeyError, TypeError) as exc:
            raise BrevitasLDMError(f"not a module report ({exc}): pass a module_report.json written by "
                                   f"ModuleReport.save") from None
        return cls(modules=modules, recipe=data.get("recipe", ""),
                   default_precision=data.get("default_precision", ""),
                   calibration_mode=data.get("calibration_mode", ""), timesteps=list(data.get("timesteps", [])),
                   num_samples=int(data.get("num_samples", 0)), denoiser_calls=dict(data.get("denoiser_calls", {})),
                   time_sensitive_db=float(data.get("time_sensitive_db", DEFAULT_TIME_SENSITIVE_DB)),
                   wall_time_s=float(data.get("wall_time_s", 0.0)))

    def save(self, directory: str | Path, top: int = 30, curves: int = 6) -> Path:
        """Write ``module_report.json``, ``module_sqnr.png`` (the ``top`` worst layers, coloured by noise cause)
        and ``module_sqnr_steps.png`` (per-step SQNR of the ``curves`` most time-sensitive layers); each file is
        written atomically. Returns the JSON path."""
        from brevitas_ldm.io import write_json_atomic

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.FILENAME
        write_json_atomic(path, self.to_dict())
        plot_ranked(self, directory / "module_sqnr.png", top=top)
        plot_steps(self, directory / "module_sqnr_steps.png", count=curves)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModuleReport":
        _, data = read_json_file(path, cls.FILENAME, "module report", "run the local analysis first (brevitas-ldm analyze) or pass the "
                                 "folder holding it", "re-run the local analysis")
        return cls.from_dict(data)

    def to_markdown(self, top: int | None = None) -> str:
        """A table of layers, worst first (``top`` rows, default all), then the per-category summary."""
        def db(value: float) -> str:
            return "float" if math.isinf(value) else f"{value:.2f}"

        rows = self.ranked()[:top] if top else self.ranked()
        lines = [f"Local SQNR analysis ({self.recipe}, {self.default_precision}, {len(self.timesteps)} steps, "
                 f"{self.num_samples} samples): relative SQNR of each layer quantized alone on its FP input. "
                 f"Time-sensitive = per-step SQNR range > {self.time_sensitive_db:g} dB.", "",
                 "| # | layer | block | category | precision | SQNR dB | W-only dB | A-only dB | act share | "
                 "step range dB | time-sensitive |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, e in enumerate(rows, 1):
            lines.append(f"| {i} | `{e.name}` | {e.block} | {e.category} | {e.precision} | {db(e.sqnr_db)} | "
                         f"{db(e.weight_sqnr_db)} | {db(e.act_sqnr_db)} | {e.activation_share:.2f} | "
                         f"{e.step_range_db:.2f} | {'yes' if e.time_sensitive else ''} |")
        lines += ["", "| category | layers | mean SQNR dB | min SQNR dB | mean act share | time-sensitive | worst |",
                  "|---|---|---|---|---|---|---|"]
        for category, s in self.category_summary().items():
            lines.append(f"| {CATEGORY_LABELS[category]} | {s['count']} | {db(s['mean_sqnr_db'])} | "
                         f"{db(s['min_sqnr_db'])} | {s['mean_activation_share']:.2f} | {s['time_sensitive']} | "
                         f"`{s['worst']}` |")
        return "\n".join(lines) + "\n"


def select_for_smoothing(report: ModuleReport, max_modules: int = 8, min_activation_share: float = 0.5) -> list[str]:
    """The worst layers (lowest relative SQNR first) whose noise is mostly activation-caused: SmoothQuant's targets.

    Layers with float activations (nothing to smooth) are never chosen.
    """
    if max_modules < 0 or not 0.0 <= min_activation_share <= 1.0:
        raise RecipeError(f"select_for_smoothing(max_modules={max_modules}, min_activation_share="
                          f"{min_activation_share}): need max_modules >= 0 and a share in [0, 1]")
    chosen = [e.name for e in report.ranked()
              if math.isfinite(e.act_sqnr_db) and e.activation_share >= min_activation_share]
    return chosen[:max_modules]


# -- figures --------------------------------------------------------------------------------------------------------
def plot_ranked(report: ModuleReport, path: Path, top: int = 30) -> None:
    """Horizontal bars of the ``top`` worst layers' relative SQNR, coloured by the activation share of their noise."""
    from brevitas_ldm.figures import plt, save_figure

    entries = [e for e in report.ranked() if math.isfinite(e.sqnr_db)][:top]
    fig, ax = plt.subplots(figsize=(8, 0.28 * max(len(entries), 4) + 1.2))
    cmap = plt.get_cmap("coolwarm")
    if entries:
        shares = [e.activation_share for e in entries]
        ax.barh(range(len(entries)), [e.sqnr_db for e in entries], color=[cmap(s) for s in shares])
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels([e.name for e in entries], fontsize=7)
        ax.invert_yaxis()
        mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
        fig.colorbar(mappable, ax=ax, label="activation share of noise (0 = weights, 1 = activations)")
    ax.set_xlabel("relative SQNR (dB), layer quantized alone")
    ax.set_title(f"Worst layers, {report.recipe} {report.default_precision}")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def plot_steps(report: ModuleReport, path: Path, count: int = 6) -> None:
    """Per-step relative SQNR of the most time-sensitive layers (widest per-step range)."""
    from matplotlib.ticker import MaxNLocator

    from brevitas_ldm.figures import plt, save_figure

    entries = sorted(report.modules, key=lambda e: -e.step_range_db)[:count]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for e in entries:
        values = [v if math.isfinite(v) else float("nan") for v in e.step_sqnr_db]
        ax.plot(range(len(values)), values, marker="o", markersize=3,
                label=f"{e.name} ({e.step_range_db:.1f} dB)" + (" *" if e.time_sensitive else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("sampling step (0 = max noise)")
    ax.set_ylabel("relative SQNR (dB)")
    ax.set_title(f"Most time-sensitive layers (* = range > {report.time_sensitive_db:g} dB)")
    ax.grid(alpha=0.3)
    if entries:
        ax.legend(fontsize=6)
    save_figure(fig, path)


# -- the analysis ---------------------------------------------------------------------------------------------------
RunFn = Callable[[nn.Module], Any]
CalibrationContext = Callable[[nn.Module], Any]


def analyze_modules(denoiser: nn.Module, recipe: Recipe, run_fn: RunFn, calibration_fn: RunFn,
                    precisions: Mapping[str, str | Precision] | None = None,
                    calibration: CalibrationContext | None = None,
                    time_sensitive_db: float = DEFAULT_TIME_SENSITIVE_DB, num_samples: int = 0,
                    num_inference_steps: int | None = None, modules: Sequence[str] | None = None) -> ModuleReport:
    """Relative SQNR of every quantized layer of ``denoiser`` in one FP pass of ``run_fn``.

    ``calibration_fn(model)`` runs calibration data through ``model`` (the quantized copy holding the twins) inside
    ``calibration(model)`` (default: the recipe's calibration mode, which for ``uniform_steps`` needs
    ``num_inference_steps``); ``run_fn(denoiser)`` then runs the analysis
    data through the float ``denoiser`` once, with every layer's twins hooked on. The float denoiser is not
    modified. ``modules`` restricts the analysis to those user-facing layer names (e.g. to re-measure smoothed
    layers); the other layers then get no twin at all. :class:`ModuleSensitivity` is the pipeline-level front end.
    """
    start = time.perf_counter()
    plan = resolve_precisions(denoiser, recipe, precisions)  # user-facing layer names -> precision
    twin_plan = dict(plan)
    if modules is not None:
        unknown = [name for name in modules if name not in plan]
        if unknown:
            raise BrevitasLDMError(f"{unknown[0]!r} is not a Linear/Conv2d layer of {type(denoiser).__name__}: pass "
                                   f"user-facing layer names as listed in the module report")
        wanted = set(modules)
        twin_plan = {name: (p if name in wanted else FLOAT) for name, p in plan.items()}
    quantized = quantize_denoiser(_hookless_copy(denoiser), recipe, twin_plan).eval()
    context = calibration or (lambda model: recipe_calibration(model, recipe, num_inference_steps))
    counter = CallCounter(quantized)
    calibration_context = context(quantized)
    with counter, calibration_context, torch.no_grad():
        calibration_fn(quantized)
    # brevitas_ldm's calibration contexts count the calls they executed (single-step skips all later steps).
    calibration_calls = int(getattr(calibration_context, "calls", counter.count))
    twins = quant_layers(quantized)  # keyed by user-facing names, like everything below
    to_user = user_facing_names(denoiser)  # internal -> user-facing (they differ only for smoothed layers)
    layers = {to_user[name]: module for name, module in quantizable_modules(denoiser) if to_user[name] in twins}
    probe = TwinProbe(layers, {name: split_twin(twins[name]) for name in layers})
    timesteps: dict[int, float] = {}
    calls = 0

    def end_call(step: int, timestep: float, *_: Any) -> None:
        nonlocal calls
        calls += 1
        timesteps.setdefault(step, timestep)
        probe.end_call(step)

    with probe, denoiser_step_hook(denoiser, end_call), torch.no_grad():
        run_fn(denoiser)
    if calls == 0:
        raise BrevitasLDMError("the local analysis saw no denoiser call: run_fn(denoiser) must run data through the "
                               "denoiser it is given")
    blocks = {to_user.get(name, name): block for name, block in module_to_block(get_blocks(denoiser)).items()}
    steps = sorted(timesteps)
    entries = []
    for name, layer in layers.items():
        if not probe.steps[name]["total"]:
            continue  # a layer the data never reached (e.g. an unused embedding projection)
        total, weight, act = (probe.meter(name, v) for v in VARIANTS)
        per_step = {v: [probe.meter(name, v, s).pooled_db if s in probe.steps[name][v] else math.nan
                        for s in steps] for v in VARIANTS}
        entry = ModuleEntry(
            name=name, block=blocks.get(name, "other"), category=module_category(name),
            layer_type=type(layer).__name__, precision=plan[name].name, sqnr_db=total.pooled_db,
            weight_sqnr_db=weight.pooled_db, act_sqnr_db=act.pooled_db, step_sqnr_db=per_step["total"],
            step_weight_sqnr_db=per_step["weight"], step_act_sqnr_db=per_step["act"])
        entry.time_sensitive = entry.step_range_db > time_sensitive_db
        entries.append(entry)
    return ModuleReport(modules=entries, recipe=recipe.name, default_precision=recipe.default_precision.name,
                        calibration_mode=recipe.calibration.mode, timesteps=[timesteps[s] for s in steps],
                        num_samples=num_samples,
                        denoiser_calls={"calibration": calibration_calls, "analysis": calls},
                        time_sensitive_db=time_sensitive_db, wall_time_s=time.perf_counter() - start)


def _hookless_copy(module: nn.Module) -> nn.Module:
    """A deep copy without the forward hooks registered on the original (deepcopy would copy them, so a step
    tracker or call counter hooked on the float denoiser would also fire on the twins' calibration calls)."""
    duplicate = copy.deepcopy(module)
    for sub in duplicate.modules():
        for hooks in (sub._forward_hooks, sub._forward_pre_hooks, sub._forward_hooks_with_kwargs,
                      sub._forward_pre_hooks_with_kwargs, sub._forward_hooks_always_called):
            hooks.clear()
    return duplicate


@contextmanager
def pipeline_denoiser(pipe: Any, denoiser: nn.Module) -> Iterator[Any]:
    """Temporarily make ``denoiser`` the pipeline's denoiser."""
    original = get_denoiser(pipe)
    set_denoiser(pipe, denoiser)
    try:
        yield pipe
    finally:
        set_denoiser(pipe, original)


@dataclass
class ModuleSensitivity:
    """Relative SQNR of every quantizable layer of a pipeline's denoiser, measured in one FP sampling run.

    ``prompts``/``seeds``: the analysis samples (one seed each); ``spec``: how they are sampled. ``precisions``:
    the plan (block or layer names -> precision) the twins follow; default the recipe's precision everywhere.
    ``calibration_prompts``/``calibration_seeds``: data for calibrating the twins' activation ranges with the
    recipe's calibration mode (default: the analysis prompts and seeds). Denoiser calls are counted in
    ``report.denoiser_calls``: ``calibration`` (twin calibration; one per batch in single-step mode) and
    ``analysis`` (the one FP run: one call per step per batch, independent of the number of layers).
    """

    recipe: Recipe
    prompts: Sequence[Condition]
    seeds: Sequence[int]
    spec: SamplingSpec = field(default_factory=SamplingSpec)
    precisions: Mapping[str, str | Precision] | None = None
    calibration_prompts: Sequence[Condition] | None = None
    calibration_seeds: Sequence[int] | None = None
    time_sensitive_db: float = DEFAULT_TIME_SENSITIVE_DB
    progress: bool = True

    def run(self, pipe: Any) -> ModuleReport:
        if len(self.prompts) != len(self.seeds):
            raise BrevitasLDMError(f"{len(self.prompts)} prompts but {len(self.seeds)} seeds: give one seed per "
                                   f"analysis sample")
        cal_prompts = list(self.calibration_prompts if self.calibration_prompts is not None else self.prompts)
        cal_seeds = list(self.calibration_seeds if self.calibration_seeds is not None else self.seeds)
        num_train = int(getattr(getattr(getattr(pipe, "scheduler", None), "config", None), "num_train_timesteps",
                                1000))

        def calibrate(model: nn.Module) -> None:
            with pipeline_denoiser(pipe, model):
                generate(pipe, cal_prompts, cal_seeds, self.spec, progress=self.progress, desc="calibrating twins")

        def run(model: nn.Module) -> None:
            generate(pipe, list(self.prompts), list(self.seeds), self.spec, progress=self.progress,
                     desc="local SQNR analysis")

        return analyze_modules(
            get_denoiser(pipe), self.recipe, run, calibrate, self.precisions,
            calibration=lambda m: recipe_calibration(m, self.recipe, self.spec.num_inference_steps, num_train),
            time_sensitive_db=self.time_sensitive_db, num_samples=len(self.prompts),
            num_inference_steps=self.spec.num_inference_steps)
