"""The global analysis' result: per-block sensitivities, ready for planning, saved and reloaded as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.analysis.figures import save_figure
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.io import (
    dataclass_from_dict,
    decode_json_floats,
    encode_json_floats,
    read_json_file,
    write_bytes_atomic,
)
from brevitas_ldm.precision import FLOAT, Precision, parse_precision
from brevitas_ldm.sqnr import db_to_noise_ratio

REPORT_FILE = "block_report.json"
PROGRESSIVE_PNG = "global_progressive_sqnr.png"
ADDED_NOISE_PNG = "global_added_noise.png"
HEATMAP_PNG = "global_isolated_heatmap.png"
#: Bumped whenever the analysis changes what it measures, so stale caches are not reused.
ANALYSIS_VERSION = 3


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
    param_count: int          # weight elements of its quantized layers (what the weight-bit budget counts)
    act_elements: float
    num_layers: int
    isolated_db: dict[str, float] = field(default_factory=dict)
    isolated_steps_db: dict[str, list[float]] = field(default_factory=dict)
    progressive_db: dict[str, float] = field(default_factory=dict)
    progressive_steps_db: dict[str, list[float]] = field(default_factory=dict)
    progressive_drop_db: dict[str, float] = field(default_factory=dict)
    share_db: dict[str, float] = field(default_factory=dict)

    def noise_ratio(self, precision: Precision) -> float:
        """Isolated output noise-to-signal ratio at ``precision`` (0 for float)."""
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
    default_precision: Precision
    high_precision: Precision
    #: The precisions the isolated sweep measured (each block's ``isolated_db`` is keyed by their names).
    precisions: list[Precision]
    #: The precisions the progressive sweep measured (``progressive_db`` keys).
    progressive_precisions: list[Precision]
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
    #: In a torch.distributed job, what each rank did (configurations, denoiser calls, seconds); empty otherwise.
    work_per_rank: list[dict[str, Any]] = field(default_factory=list)
    cache_key: str = ""
    from_cache: bool = False

    def __post_init__(self) -> None:
        # Text enters here (a loaded file, or a caller's "w8a8"); the report holds typed precisions from then on.
        self.default_precision = parse_precision(self.default_precision, "block report default_precision")
        self.high_precision = parse_precision(self.high_precision, "block report high_precision")
        self.precisions = [parse_precision(p, "block report precisions") for p in self.precisions]
        self.progressive_precisions = [parse_precision(p, "block report progressive_precisions")
                                       for p in self.progressive_precisions]

    # -- queries ---------------------------------------------------------------------------------------------
    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def check_block_names(self, names) -> None:
        """Refuse, in one line, plan entries that name no block of this report's model (a typo, another model)."""
        unknown = [name for name in names if name not in self.block_names]
        if unknown:
            raise RecipeError(f"plan names unknown blocks {', '.join(map(repr, unknown))}: the model's blocks are "
                              f"{', '.join(self.block_names)}")

    def block(self, name: str) -> BlockEntry:
        for entry in self.blocks:
            if entry.name == name:
                return entry
        raise RecipeError(f"unknown block {name!r}: the report has {', '.join(self.block_names)}")

    @property
    def menu(self) -> list[Precision]:
        """Every precision a plan may use with this report: float plus the analysed ones."""
        return [FLOAT, *[p for p in self.precisions if not p.is_float]]

    def measured(self, precision: Precision) -> bool:
        """Whether the isolated sweep measured ``precision`` (float needs no measurement)."""
        return precision.is_float or precision in self.precisions

    def ranking(self, precision: Precision | None = None) -> list[str]:
        """Block names, most sensitive first (lowest isolated SQNR at ``precision``, default: the recipe's)."""
        name = (precision or self.default_precision).name
        return sorted(self.block_names, key=lambda b: self.block(b).isolated_db.get(name, math.inf))

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("from_cache")
        for key in ("default_precision", "high_precision"):
            data[key] = getattr(self, key).name
        for key in ("precisions", "progressive_precisions"):
            data[key] = [p.name for p in getattr(self, key)]
        if not data["work_per_rank"]:
            data.pop("work_per_rank")     # a single process' report stays what it always was
        data["version"] = ANALYSIS_VERSION
        return encode_json_floats(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BlockReport":
        data = dict(data)
        data.pop("version", None)
        blocks = []
        for raw in data.pop("blocks"):
            raw = dict(raw)
            for key in ("isolated_db", "isolated_steps_db", "progressive_db", "progressive_steps_db",
                        "progressive_drop_db", "share_db"):
                raw[key] = decode_json_floats(raw.get(key, {}))
            blocks.append(dataclass_from_dict(BlockEntry, raw, "block report entry"))
        data["full_db"] = decode_json_floats(data.get("full_db", {}))
        data["full_steps_db"] = decode_json_floats(data.get("full_steps_db", {}))
        return dataclass_from_dict(cls, {**data, "blocks": blocks}, "block report")

    def save(self, directory: str | Path, figures: bool = True) -> Path:
        """Write ``block_report.json`` (and the PNG figures) into ``directory``, each file atomically."""
        directory = Path(directory)
        path = directory / REPORT_FILE
        write_bytes_atomic(path, json.dumps(self.to_dict(), indent=1).encode())
        if figures:
            self.save_figures(directory)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BlockReport":
        """Load a report from ``block_report.json`` or the folder holding it."""
        path, data = read_json_file(path, REPORT_FILE, "block report",
                                    "run the global analysis (brevitas-ldm analyze) first",
                                    "rerun the global analysis")
        if data.get("version") != ANALYSIS_VERSION:
            raise BrevitasLDMError(f"{path} was written by analysis version {data.get('version')}, this is "
                                   f"{ANALYSIS_VERSION}: rerun the global analysis")
        return cls.from_dict(data)

    # -- presentation ----------------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """One row per block in execution order: size, isolated SQNR per precision, progressive SQNR and drop."""
        default = self.default_precision.name
        rank = {name: i + 1 for i, name in enumerate(self.ranking())}
        analysed = [p.name for p in self.precisions if not p.is_float]
        header = ["block", "kind", "params", "act elems", "rank"] + [f"isolated {p} (dB)" for p in analysed]
        header += [f"progressive {default} (dB)", "drop (dB)", "share (dB)"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

        def fmt(value: float | None) -> str:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return "-"
            return "inf" if math.isinf(value) else f"{value:.2f}"

        for entry in self.blocks:
            row = [entry.name, entry.kind, f"{entry.param_count:,}", f"{entry.act_elements:,.0f}",
                   str(rank[entry.name])]
            row += [fmt(entry.isolated_db.get(p)) for p in analysed]
            row += [fmt(entry.progressive_db.get(default)), fmt(entry.progressive_drop_db.get(default)),
                    fmt(entry.share_db.get(default))]
            lines.append("| " + " | ".join(row) + " |")
        if default in self.full_db:
            lines.append("")
            lines.append(f"Fully quantized at {default}: {fmt(self.full_db[default])} dB output SQNR.")
        return "\n".join(lines)

    def added_noise_shares(self, precision: Precision) -> dict[str, float]:
        """Per block, the noise power it adds to the final latents in the progressive sweep, as a fraction of the
        fully quantized model's: (N_k - N_{k-1}) / N_full with N = 10^(-SQNR/10) (the signal power cancels).

        Total SQNR flattens once an early block's noise dominates (26.3 dB after conv_in, 25.5 dB after all blocks
        in a tiny-sd-digits report), yet later blocks still add noise; in noise power each block's contribution stays
        visible and the fractions sum to 1. Empty when the sweep did not run at ``precision``."""
        names = self.block_names
        values = [self.block(n).progressive_db.get(precision.name) for n in names]
        if not names or any(v is None or not math.isfinite(v) for v in values):
            return {}
        noise = [db_to_noise_ratio(v) for v in values]
        full = noise[-1]
        if full <= 0.0:
            return {}
        return {name: (noise[i] - (noise[i - 1] if i else 0.0)) / full for i, name in enumerate(names)}

    def save_figures(self, directory: str | Path) -> list[Path]:
        """Progressive SQNR per block, and a block x step heatmap of isolated SQNR (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory = Path(directory)
        names = self.block_names
        written = []

        def save(fig, filename):
            save_figure(fig, directory / filename)
            written.append(directory / filename)

        directory.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(_width(len(names)), 4.0))
        x = list(range(len(names)))
        for precision in self.progressive_precisions:
            values = [self.block(n).progressive_db.get(precision.name, math.nan) for n in names]
            ax.plot(x, values, marker="o", label=f"progressive {precision}")
        for precision in self.precisions:
            if precision.is_float:
                continue
            values = [self.block(n).isolated_db.get(precision.name, math.nan) for n in names]
            ax.plot(x, values, linestyle=":", marker=".", label=f"isolated {precision}")
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=_tick_size(len(names)))
        ax.set_ylabel("output SQNR (dB)")
        ax.set_title("Global analysis: SQNR of the final latents vs FP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, PROGRESSIVE_PNG)

        shares = {precision: self.added_noise_shares(precision) for precision in self.progressive_precisions}
        if any(shares.values()):
            fig, ax = plt.subplots(figsize=(_width(len(names)), 4.0))
            width = 0.8 / max(1, len(shares))
            for index, (precision, share) in enumerate(shares.items()):
                ax.bar([i + index * width for i in x], [100.0 * share.get(n, math.nan) for n in names], width,
                       label=f"progressive {precision}")
            ax.axhline(0.0, color="black", linewidth=0.6)
            ax.set_xticks(x, names, rotation=60, ha="right", fontsize=_tick_size(len(names)))
            ax.set_ylabel("added noise power (% of fully quantized)")
            ax.set_title("Global analysis: noise each block adds to the final latents, in execution order")
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=7)
            save(fig, ADDED_NOISE_PNG)

        precision = self.default_precision
        rows = [self.block(n).isolated_steps_db.get(precision.name) for n in names]
        if all(rows):
            fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(rows[0])), min(30.0, max(3.0, 0.35 * len(names)))))
            finite = [v for row in rows for v in row if math.isfinite(v)]
            image = ax.imshow([[v if math.isfinite(v) else (max(finite) if finite else 0.0) for v in row]
                               for row in rows], aspect="auto", cmap="viridis")
            ax.set_yticks(range(len(names)), names, fontsize=_tick_size(len(names)))
            ax.set_xticks(range(0, len(rows[0]), max(1, len(rows[0]) // 10)))
            ax.set_xlabel("sampling step")
            ax.set_title(f"Isolated {precision}: denoiser-output SQNR (dB) per step")
            fig.colorbar(image, ax=ax)
            save(fig, HEATMAP_PNG)
        return written


def _width(units: int) -> float:
    """Figure width in inches for ``units`` ticks: 0.6 in each, within 6..30 (a layer-granularity report has 100+)."""
    return min(30.0, max(6.0, 0.6 * units))


def _tick_size(units: int) -> float:
    return 8.0 if units <= 40 else max(3.0, 8.0 * 40 / units)
