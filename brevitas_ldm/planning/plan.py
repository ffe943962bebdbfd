"""A per-block precision plan: what the planners produce, the user may edit, and quantization consumes.

A :class:`Plan` is plain JSON the user may edit and feed back: ``Plan.load(path).precisions`` goes straight into
``quantize_denoiser(denoiser, recipe, precisions=...)``; :func:`read_plan` checks an edited file against a report.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.io import (
    dataclass_from_dict,
    decode_json_float,
    decode_json_floats,
    encode_json_floats,
    read_json_file,
    write_bytes_atomic,
)
from brevitas_ldm.planning.prediction import average_bits, predict_sqnr_db
from brevitas_ldm.precision import Precision, parse_precision

PLAN_FILE = "plan.json"


@dataclass
class Plan:
    """Which precision each block gets, how it was chosen, and the SQNR figures behind each choice.

    ``precisions`` maps block names to :class:`~brevitas_ldm.precision.Precision` (given as strings such as
    ``"w8a8"``, ``"w8a16"``, ``"float"`` and parsed once, here; ``plan.json`` holds the strings); blocks that are
    not listed get the recipe's base precision, as in :func:`brevitas_ldm.quant.quantize.quantize_denoiser`.
    ``evidence[block]`` holds the block's isolated SQNR per precision, its progressive drop/share and a one-line
    reason.
    """

    precisions: dict[str, Precision]
    method: str = "manual"
    default: Precision = Precision(8, 8)
    predicted_sqnr_db: float = math.nan
    avg_weight_bits: float = math.nan
    avg_act_bits: float = math.nan
    budget: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured_sqnr_db: float | None = None
    model: str = ""
    recipe: str = ""
    #: With ``[plan] target``: the target and the plan's predicted latency there over the float denoiser's
    #: (:class:`~brevitas_ldm.planning.latency_table.LatencyTable`).
    target: str = ""
    predicted_latency_ratio: float = math.nan

    def __post_init__(self) -> None:
        if not isinstance(self.precisions, Mapping):
            raise RecipeError("plan precisions must be a table block name -> precision string")
        self.precisions = {str(k): parse_precision(v, f"plan precision of {k!r}")
                           for k, v in self.precisions.items()}
        self.default = parse_precision(self.default, "plan default")

    # -- checks ----------------------------------------------------------------------------------------------
    def check(self, report: BlockReport, menu: Sequence[Precision] | None = None) -> "Plan":
        """Raise RecipeError naming any block the model lacks or any precision outside ``menu``."""
        report.check_block_names(self.precisions)
        allowed = {*(menu if menu is not None else report.menu), self.default}
        outside = sorted({f"{b}={p}" for b, p in self.precisions.items() if p not in allowed})
        if outside:
            raise RecipeError(f"plan uses precisions outside the menu ({', '.join(outside)}): choose from "
                              f"{', '.join(sorted(map(str, allowed)))} or add them to plan.menu and rerun the "
                              f"analysis")
        return self

    def refresh(self, report: BlockReport) -> "Plan":
        """Recompute the predicted SQNR, average bits and evidence (e.g. after editing the JSON by hand)."""
        self.check(report)
        self.predicted_sqnr_db = predict_sqnr_db(report, self.precisions, self.default)
        self.avg_weight_bits, self.avg_act_bits = average_bits(report, self.precisions, self.default)
        for name in report.block_names:
            self.evidence.setdefault(name, _evidence(report, name, "set by hand"))
        return self

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["precisions"] = {block: str(precision) for block, precision in self.precisions.items()}
        data["default"] = str(self.default)
        return encode_json_floats(copy.deepcopy(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> "Plan":
        if not isinstance(data, Mapping) or "precisions" not in data:
            raise RecipeError(f"{source} is not a plan: it needs a \"precisions\" table block -> precision")
        values = dict(data)
        fix = "fix the edit or rerun the planner"
        for key in ("predicted_sqnr_db", "avg_weight_bits", "avg_act_bits", "measured_sqnr_db",
                    "predicted_latency_ratio"):
            if key == "measured_sqnr_db" and values.get(key) is None:
                continue
            if key == "predicted_latency_ratio" and key not in values:    # a plan written without a target
                continue
            try:
                values[key] = decode_json_float(values.get(key))
            except (TypeError, ValueError):
                raise RecipeError(f"{source}: {key} = {values.get(key)!r} is not a number: {fix}") from None
        for key in ("method", "model", "recipe", "target"):
            if key in values and not isinstance(values[key], str):
                raise RecipeError(f"{source}: {key} = {values[key]!r} must be a string: {fix}")
        budget = values.get("budget", {})
        if not isinstance(budget, Mapping) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in budget.values()):
            raise RecipeError(f"{source}: budget must be a table of numbers (avg_weight_bits, avg_act_bits): {fix}")
        evidence = values.get("evidence", {})
        if not isinstance(evidence, Mapping) or not all(isinstance(v, Mapping) for v in evidence.values()):
            raise RecipeError(f"{source}: evidence must be a table block -> its figures: {fix}")
        try:
            values["evidence"] = {block: _decode_evidence(entry) for block, entry in evidence.items()}
        except (TypeError, ValueError):
            raise RecipeError(f"{source}: evidence holds a *_db figure that is not a number: {fix}") from None
        return dataclass_from_dict(cls, values, source, error=RecipeError)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (atomically); a folder gets ``plan.json`` inside it."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / PLAN_FILE
        write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path, data = read_json_file(path, PLAN_FILE, "plan", "pass a plan.json written by brevitas-ldm (or its folder)",
                                    "fix the edit or rerun the planner", RecipeError)
        return cls.from_dict(data, source=str(path))

    def to_markdown(self) -> str:
        lines = [f"Plan ({self.method}): predicted output SQNR {self.predicted_sqnr_db:.2f} dB, "
                 f"avg weight bits {self.avg_weight_bits:.2f}, avg act bits {self.avg_act_bits:.2f}"
                 + (f", predicted latency {self.predicted_latency_ratio:.3f}x the float denoiser in {self.target}"
                    if self.target and math.isfinite(self.predicted_latency_ratio) else ""), "",
                 "| block | precision | reason |", "|---|---|---|"]
        for name, precision in self.precisions.items():
            lines.append(f"| {name} | {precision} | {self.evidence.get(name, {}).get('reason', '')} |")
        return "\n".join(lines)


def _decode_evidence(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """One block's evidence as written by :meth:`Plan.to_dict`: its ``*_db`` figures back to floats."""
    return {key: decode_json_floats(value) if key.endswith("_db") and value is not None else value
            for key, value in evidence.items()}


def _evidence(report: BlockReport, name: str, reason: str) -> dict[str, Any]:
    entry = report.block(name)
    default = report.default_precision.name
    return {"isolated_db": dict(entry.isolated_db), "progressive_db": entry.progressive_db.get(default),
            "progressive_drop_db": entry.progressive_drop_db.get(default), "share_db": entry.share_db.get(default),
            "param_count": entry.param_count, "act_elements": entry.act_elements, "reason": reason}


def read_plan(path: str | Path, report: BlockReport | None = None,
              menu: Sequence[str | Precision] | None = None) -> Plan:
    """Load a (possibly hand-edited) plan; with a report, check it and refresh its predictions."""
    plan = Plan.load(path)
    if report is not None:
        plan.check(report, None if menu is None else [parse_precision(p, "menu") for p in menu])
        plan.refresh(report)
    return plan
