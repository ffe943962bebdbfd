"""What a job's phases share: the pipeline, the recipe, the samples, and what earlier phases produced."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.job.result import QuantizationResult
from brevitas_ldm.planning.latency_table import LatencyTable
from brevitas_ldm.planning.plan import Plan
from brevitas_ldm.precision import Precision
from brevitas_ldm.recipe import Recipe


def analysis_samples(recipe: Recipe, prompts: list, seeds: list[int]) -> tuple[list, list[int]]:
    """The analyses' samples: the first ``analysis.num_prompts`` of the calibration samples."""
    count = min(recipe.analysis.num_prompts, len(prompts))
    return list(prompts[:count]), list(seeds[:count])


def calibration_spec(recipe: Recipe, spec: SamplingSpec) -> SamplingSpec:
    """How the final calibration samples: ``spec`` with ``calibration.sampling_steps`` steps when the recipe sets it."""
    if recipe.calibration.sampling_steps:
        return dataclasses.replace(spec, num_inference_steps=recipe.calibration.sampling_steps)
    return spec


@dataclass
class JobState:
    """The inputs of a job and the values its phases hand on (a plan's overrides, the layers' precisions)."""

    pipe: Any
    recipe: Recipe
    calibration_prompts: list
    calibration_seeds: list[int]
    spec: SamplingSpec                          # the calibration / analysis runs' sampling
    result: QuantizationResult
    plan: Plan | Mapping[str, Any] | None = None     # given by the caller: replaces the global analysis
    progress: bool = False
    cache_dir: str | Path | None = None
    model_id: str | None = None                 # the analysis cache key's model name (``analyze``)
    local: bool | None = None                   # ``analyze --local``; None: the recipe's ``[analysis] local``
    analysis_num_prompts: int | None = None     # ``analyze --num-prompts``; None: the recipe's ``num_prompts``
    overrides: dict[str, Any] | None = None     # block/layer -> precision, from the plan or the global analysis
    layer_precisions: dict[str, Precision] = field(default_factory=dict)
    #: The command's evaluation (FP reference and quantized comparison), when the job includes it.
    evaluation: Any = None
    #: The QAT phases' own inputs and outputs (:class:`~brevitas_ldm.training.qat_phases.QATWork`), in a QAT job.
    qat: Any = None
    notes: list[str] = field(default_factory=list)
    #: ``[plan] target``: the target's latency table, and the float denoiser in its form (in a folder the deployed
    #: latency phase removes) for the deployed-plan timing.
    latency_table: LatencyTable | None = None
    latency_inputs: dict[str, Any] | None = None      # the denoiser call the table and the deployed plan are timed on
    latency_workdir: Any = None
    latency_float_file: Path | None = None

    def _analysis_samples(self) -> tuple[list, list[int]]:
        if self.analysis_num_prompts is not None:
            count = self.analysis_num_prompts
            return list(self.calibration_prompts[:count]), list(self.calibration_seeds[:count])
        return analysis_samples(self.recipe, self.calibration_prompts, self.calibration_seeds)

    @property
    def analysis_prompts(self) -> list:
        return self._analysis_samples()[0]

    @property
    def analysis_seeds(self) -> list[int]:
        return self._analysis_samples()[1]

    @property
    def final_spec(self) -> SamplingSpec:
        """The sampling of the final calibration (and GPTQ's float runs)."""
        return calibration_spec(self.recipe, self.spec)
