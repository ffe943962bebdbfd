"""A latency cost table: what each layer costs in a target runtime at each kernel, and what a plan is predicted to cost.

The table is measured on this machine (:mod:`brevitas_ldm.export.latency_costs`): every quantizable layer is
exported alone, in the target's format, at each kernel its menu uses (:mod:`.latency_targets`), and timed in the
target runtime on the input it saw in a real denoiser call; the runtime's fixed cost of one call (an empty model)
is taken off. The whole float denoiser is timed in the same runtime too, and what its layers do not explain (norms,
attention's matmuls, activations, copies) is the table's ``rest_ms``. A plan's latency is predicted as

    latency(plan) = rest_ms + sum over layers of layer_ms[layer][kernel of the layer's precision],

so the float model is predicted exactly. The whole denoiser with every layer on the integer kernel is timed too,
and the integer costs are scaled by one factor (``integer_scale``) so that it is predicted exactly as well: isolated
layers pay for quantize steps the runtime fuses into their neighbours in the whole model. The prediction's error on
a mixed plan is what remains (layout changes between integer and float layers, fusions that differ layer by
layer); the report prints the prediction beside the measured latency of the exported plan, so that error is always
in view.

Tables are cached by the layers' shapes, the target, the runtime version, the CPU model, its ISA flags and the
thread count (:attr:`LatencyTable.key`): a table measured on another CPU or runtime is never reused.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.io import (
    dataclass_from_dict,
    decode_json_float,
    encode_json_floats,
    read_json_file,
    write_bytes_atomic,
)
from brevitas_ldm.planning.latency_targets.base import FLOAT_KERNEL
from brevitas_ldm.precision import Precision
from brevitas_ldm.registry import LATENCY_TARGETS

LATENCY_TABLE_FILE = "latency-table.json"


@dataclass
class LatencyTable:
    """Per-layer, per-kernel milliseconds of one denoiser in one runtime on this machine (module docstring)."""

    target: str
    runtime: str                 # "openvino 2026.4.1-..." / "onnxruntime 1.32.0"
    inference_precision: str     # what the float layers ran in
    cpu: str                     # the CPU model
    isa: list[str]               # the ISA flags that pick the runtime's kernels
    threads: int
    batch_size: int              # denoiser batch of the timed calls
    fp_ms: float                 # the whole float denoiser, one call
    rest_ms: float               # fp_ms minus every layer's float cost
    overhead_ms: float           # one call of an empty model, taken off every layer's figure
    layers: dict[str, dict[str, float]]      # layer -> kernel -> ms
    #: The whole all-integer denoiser's ms, and the factor its measurement scaled the isolated integer costs by.
    integer_ms: float = math.nan
    integer_scale: float = 1.0
    #: Plan units (blocks, or layers for a per-layer plan) -> their layers; filled by the job, not cached.
    units: dict[str, list[str]] = field(default_factory=dict)
    key: str = ""
    measured_s: float = 0.0
    from_cache: bool = False

    # -- prediction ------------------------------------------------------------------------------------------
    def kernel_of(self, precision: Precision) -> str:
        return LATENCY_TARGETS.get(self.target).kernel(precision)

    def layer_ms(self, layer: str, precision: Precision) -> float:
        kernel = self.kernel_of(precision)
        costs = self.layers.get(layer)
        if costs is None:
            raise RecipeError(f"the latency table has no layer {layer!r}: it was measured on another model; delete "
                              f"{LATENCY_TABLE_FILE} from the cache folder to measure it again")
        if kernel not in costs:
            raise RecipeError(f"the latency table has no {kernel} figure for {layer!r} (it measured "
                              f"{', '.join(sorted(costs))}): add a precision that runs as a {kernel} kernel to "
                              f"plan.menu so it is measured")
        return costs[kernel]

    def unit_layers(self, unit: str) -> list[str]:
        if unit in self.units:
            return list(self.units[unit])
        if unit in self.layers:
            return [unit]
        raise RecipeError(f"the latency table knows no plan unit {unit!r}: plan the model it was measured on")

    def unit_ms(self, unit: str, precision: Precision) -> float:
        return math.fsum(self.layer_ms(layer, precision) for layer in self.unit_layers(unit))

    def predict_ms(self, precisions: Mapping[str, Precision]) -> float:
        """Predicted milliseconds of one call with plan units at ``precisions``; layers of no listed unit at float."""
        chosen: dict[str, Precision] = {}
        for unit, precision in precisions.items():
            for layer in self.unit_layers(unit):
                chosen[layer] = precision
        return self.rest_ms + math.fsum(
            self.layer_ms(layer, chosen[layer]) if layer in chosen else costs[FLOAT_KERNEL]
            for layer, costs in self.layers.items())

    def predict_ratio(self, precisions: Mapping[str, Precision]) -> float:
        """Predicted latency of the plan over the float denoiser's, in the same runtime."""
        return self.predict_ms(precisions) / self.fp_ms

    def fixed_ms(self, units: Sequence[str]) -> float:
        """What a plan over ``units`` cannot change: ``rest_ms`` plus the float cost of layers in no unit."""
        covered = {layer for unit in units for layer in self.unit_layers(unit)}
        return self.rest_ms + math.fsum(costs[FLOAT_KERNEL] for layer, costs in self.layers.items()
                                        if layer not in covered)

    def kernel_totals(self) -> dict[str, float]:
        """Kernel -> milliseconds of every layer at that kernel (the table's one-line summary)."""
        kernels = sorted({kernel for costs in self.layers.values() for kernel in costs})
        return {kernel: math.fsum(costs.get(kernel, math.nan) for costs in self.layers.values())
                for kernel in kernels}

    def describe(self) -> str:
        totals = ", ".join(f"{kernel} {ms:.2f} ms" for kernel, ms in self.kernel_totals().items())
        whole = (f"; the all-integer denoiser {self.integer_ms:.2f} ms timed whole (isolated integer costs scaled "
                 f"by {self.integer_scale:.2f} to match it)" if math.isfinite(self.integer_ms) else "")
        return (f"{self.target} ({self.runtime}, {self.inference_precision}, {self.threads} thread(s), batch "
                f"{self.batch_size}) on {self.cpu} [{' '.join(self.isa)}]: float denoiser {self.fp_ms:.2f} ms, of "
                f"which the {len(self.layers)} layers at each kernel: {totals}; the rest {self.rest_ms:.2f} ms{whole}")

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("from_cache")
        return encode_json_floats(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "latency table") -> "LatencyTable":
        values = dict(data)
        if "integer_ms" in values:
            values["integer_ms"] = decode_json_float(values["integer_ms"])
        return dataclass_from_dict(cls, values, source, error=RecipeError)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / LATENCY_TABLE_FILE
        write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path, data = read_json_file(path, LATENCY_TABLE_FILE, "latency table",
                                    "pass a latency-table.json written by brevitas-ldm (or its folder)",
                                    "delete it to measure the table again", RecipeError)
        return cls.from_dict(data, source=str(path))
