"""The local analysis' result: every layer's relative SQNR, its weight/activation split, per step, as JSON and figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.analysis.figures import plt, save_figure
from brevitas_ldm.denoiser.layer_categories import CATEGORIES, CATEGORY_LABELS
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.io import (
    dataclass_from_dict,
    decode_json_float,
    encode_json_floats,
    read_json_file,
    write_json_atomic,
)
from brevitas_ldm.precision import Precision, parse_precision
from brevitas_ldm.sqnr import db_to_noise_ratio

VARIANTS = ("total", "weight", "act")
RANKED_PNG = "layer_sqnr.png"
STEPS_PNG = "layer_sqnr_steps.png"
DEFAULT_TIME_SENSITIVE_DB = 6.0


@dataclass
class LayerEntry:
    """One layer's local SQNR figures (dB; ``inf`` where that variant adds no noise, e.g. float activations)."""

    name: str
    block: str
    category: str
    layer_type: str
    precision: Precision
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
        data["precision"] = self.precision.name
        data["activation_share"] = self.activation_share
        data["step_range_db"] = self.step_range_db
        return encode_json_floats(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerEntry":
        values = dict(data)
        for key in ("sqnr_db", "weight_sqnr_db", "act_sqnr_db"):
            values[key] = decode_json_float(values.get(key))
        for key in ("step_sqnr_db", "step_weight_sqnr_db", "step_act_sqnr_db"):
            values[key] = [decode_json_float(v) for v in values.get(key, [])]
        if "precision" in values:       # text enters here: typed from now on
            values["precision"] = parse_precision(values["precision"], "layer report entry precision")
        return dataclass_from_dict(cls, values, "layer report entry", derived=("activation_share", "step_range_db"))


@dataclass
class LayerReport:
    """Local analysis result: one :class:`LayerEntry` per quantized layer, in execution order."""

    modules: list[LayerEntry]
    recipe: str = ""
    default_precision: Precision | None = None
    calibration_mode: str = ""
    timesteps: list[float] = field(default_factory=list)
    num_samples: int = 0
    denoiser_calls: dict[str, int] = field(default_factory=dict)
    time_sensitive_db: float = DEFAULT_TIME_SENSITIVE_DB
    wall_time_s: float = 0.0
    #: In a torch.distributed job, what each rank did (its sampling steps, denoiser calls, seconds); empty otherwise.
    work_per_rank: list[dict[str, Any]] = field(default_factory=list)

    FILENAME = "layer_report.json"

    # -- queries --------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerEntry:
        for entry in self.modules:
            if entry.name == name:
                return entry
        raise KeyError(f"{name!r} is not in the layer report")

    def ranked(self) -> list[LayerEntry]:
        """Worst (lowest relative SQNR) first."""
        return sorted(self.modules, key=lambda e: e.sqnr_db)

    def time_sensitive(self) -> list[LayerEntry]:
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
        summary = encode_json_floats(self.category_summary())
        return {"recipe": self.recipe,
                "default_precision": self.default_precision.name if self.default_precision else "",
                "calibration_mode": self.calibration_mode, "timesteps": self.timesteps,
                "num_samples": self.num_samples, "denoiser_calls": self.denoiser_calls,
                "time_sensitive_db": self.time_sensitive_db, "wall_time_s": self.wall_time_s,
                **({"work_per_rank": self.work_per_rank} if self.work_per_rank else {}),
                "category_summary": summary, "modules": [e.to_dict() for e in self.modules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerReport":
        if not isinstance(data, Mapping) or not isinstance(data.get("modules"), list):
            raise BrevitasLDMError("not a layer report (no \"modules\" list): pass a layer_report.json written by "
                                   "LayerReport.save")
        values = dict(data)
        values["modules"] = [LayerEntry.from_dict(m) for m in data["modules"]]
        default = values.get("default_precision")
        values["default_precision"] = parse_precision(default, "layer report default_precision") if default else None
        # the project's one unknown-key policy; the category summary is recomputed from the entries
        return dataclass_from_dict(cls, values, "layer report", derived=("category_summary",))

    def save(self, directory: str | Path, top: int = 30, curves: int = 6) -> Path:
        """Write ``layer_report.json``, ``layer_sqnr.png`` (the ``top`` worst layers, coloured by noise cause)
        and ``layer_sqnr_steps.png`` (per-step SQNR of the ``curves`` most time-sensitive layers); each file is
        written atomically. Returns the JSON path."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.FILENAME
        write_json_atomic(path, self.to_dict())
        plot_ranked(self, directory / RANKED_PNG, top=top)
        plot_steps(self, directory / STEPS_PNG, count=curves)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LayerReport":
        _, data = read_json_file(path, cls.FILENAME, "layer report",
                                 "run the local analysis first (brevitas-ldm analyze) or pass the "
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


def select_for_smoothing(report: LayerReport, max_modules: int = 8, min_activation_share: float = 0.5) -> list[str]:
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
def plot_ranked(report: LayerReport, path: Path, top: int = 30) -> None:
    """Horizontal bars of the ``top`` worst layers' relative SQNR, coloured by the activation share of their noise."""

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


def plot_steps(report: LayerReport, path: Path, count: int = 6) -> None:
    """Per-step relative SQNR of the most time-sensitive layers (widest per-step range)."""
    from matplotlib.ticker import MaxNLocator

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
