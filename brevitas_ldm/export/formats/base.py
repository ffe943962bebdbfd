"""What an export format is: which models it takes, how it writes a file, and how the file is checked against the
fake-quantized torch model the analysis measured.

``brevitas-ldm export`` and :func:`~brevitas_ldm.export.exporters.export_denoiser` only ask the registered format:
:meth:`ExportFormat.check` refuses a model the format cannot hold (before any trace), :meth:`write` writes the file
(through :func:`~brevitas_ldm.export.exporters.brevitas_export` for Brevitas' managers: eval mode, example inputs
checked first, atomic file, export state cleaned), :meth:`verify` runs it in its runtime and refuses it below the
agreement bound, and :meth:`float_baseline` writes the FP32 twin it is timed against. Subclass it in a module of
your own, then ``EXPORT_FORMATS.register(MyFormat())``: the command line, ``export.json`` and the API take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.x86_storage import WEIGHT_STORAGES


class ExportFormat:
    """Base class of a registered export format (see the module docstring)."""

    #: The ``--format`` value.
    name: str = ""
    #: File suffix of the written file.
    suffix: str = "onnx"
    #: The runtime :meth:`verify` runs the file in (``onnxruntime``, ``openvino``), or None: ``--emulate-cpu`` needs
    #: one.
    runtime: str | None = None
    #: Whether ``opset`` means anything (ONNX formats).
    uses_opset: bool = True
    #: What to try when Brevitas' exporter fails on this format.
    alternative: str = "fmt='onnx-qcdq'"

    def check_weight_storage(self, weight_storage: str) -> None:
        """Refuse a weight storage the format cannot use (the command line calls it before loading the model)."""
        if weight_storage not in WEIGHT_STORAGES:
            raise BrevitasLDMError(f"unknown weight_storage {weight_storage!r}: use one of "
                                   f"{', '.join(WEIGHT_STORAGES)}")

    def check(self, features: Mapping[str, Any], opset: int) -> None:
        """Refuse a model whose :func:`~brevitas_ldm.export.features.quant_features` this format cannot hold."""

    def write(self, denoiser: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: Path, opset: int,
              weight_storage: str, features: Mapping[str, Any]) -> Path:
        raise NotImplementedError(f"export format {self.name!r} does not write files")

    def verify(self, summary: dict, path: Path, denoiser: nn.Module, fresh: Mapping[str, Any], min_sqnr_db: float,
               emulate_cpu: str | None, weight_storage: str) -> None:
        """Check ``path`` against ``denoiser`` on the ``fresh`` inputs, refuse it below ``min_sqnr_db``, and record
        what was found in ``summary`` (``export.json``). Nothing by default (a file no runtime here executes)."""

    @staticmethod
    def record_agreement(summary: dict, verify, min_sqnr_db: float, emulate_cpu: str | None) -> None:
        """Run ``verify(emulate_cpu=None)`` natively and, with ``emulate_cpu``, on that CPU kind; refuse the file below
        ``min_sqnr_db`` on either (nothing is written then), and record both in ``summary``."""
        from brevitas_ldm.export.runtime import check_agreement

        checks = [verify(emulate_cpu=None)] + ([verify(emulate_cpu=emulate_cpu)] if emulate_cpu else [])
        for check in checks:      # a file that is not the measured model is refused, and nothing is written
            check_agreement(check, min_sqnr_db)
        summary["verification"] = checks[0]
        if emulate_cpu:
            summary["emulated_verification"] = checks[1]

    def float_baseline(self, summary: dict, float_denoiser: nn.Module, float_inputs: Mapping[str, Any],
                       fresh: Mapping[str, Any], staging: Path, opset: int) -> None:
        """Write the FP32 denoiser beside the file (``--float-baseline``) and record sizes and latency ratios.
        A format without one leaves this alone: :meth:`check_float_baseline` refuses the option up front."""
        self.check_float_baseline()

    def check_float_baseline(self) -> None:
        """Refuse ``--float-baseline`` for a format that does not override :meth:`float_baseline`."""
        if type(self).float_baseline is ExportFormat.float_baseline:
            raise BrevitasLDMError(f"--float-baseline has no FP32 twin for --format {self.name}: export --format "
                                   f"onnx-qcdq, onnx-int8 or openvino for the comparison, or drop the option")

    # -- latency targets (:mod:`brevitas_ldm.export.latency_costs`) ------------------------------------------
    def write_layer(self, module: nn.Module, example_input: torch.Tensor, path: Path, opset: int) -> Path:
        """Write ``module`` (one quantizable layer, quantized and calibrated, or float) alone in this format, in
        the form the whole denoiser's export gives it, so it can be timed as the runtime runs it in the model."""
        raise BrevitasLDMError(f"--format {self.name} is no latency target: plan for openvino-cpu or "
                               f"onnxruntime-cpu")

    def write_float(self, float_denoiser: nn.Module, float_inputs: Mapping[str, Any], path: Path,
                    opset: int) -> Path:
        """Write the FP32 denoiser in this format's runtime form (the latency baseline)."""
        raise BrevitasLDMError(f"--format {self.name} has no FP32 twin: export --format onnx-int8 or openvino")

    def runner(self, path: Path, inputs: Mapping[str, Any], threads: int | None):
        """A zero-argument callable running ``path`` once on ``inputs`` in this format's runtime (for timing)."""
        raise BrevitasLDMError(f"--format {self.name} has no runtime here to time it in: export --format "
                               f"onnx-int8 or openvino")

    def written(self, path: Path, summary: Mapping[str, Any]) -> str:
        """The first words of the command's summary line."""
        return f"wrote {path} ({summary['size_bytes']:,} bytes)"
