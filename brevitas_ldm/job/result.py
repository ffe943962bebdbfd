"""What a quantize job did and what it cost: :class:`QuantizationResult`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.analysis.layer_report import LayerReport
from brevitas_ldm.checkpoint.folder import save_checkpoint
from brevitas_ldm.denoiser.loading import pipeline_source
from brevitas_ldm.denoiser.sampling import denoiser_component, get_denoiser
from brevitas_ldm.planning.latency_table import LatencyTable
from brevitas_ldm.planning.plan import Plan
from brevitas_ldm.precision import Precision
from brevitas_ldm.quant.gptq import GptqResult
from brevitas_ldm.quant.smoothquant import SmoothingResult
from brevitas_ldm.recipe import Recipe

#: What ``plan=`` accepts: a Plan, a plan.json path, or a block/layer name -> precision mapping.
PlanLike = Plan | str | Path | Mapping[str, str | Precision]


@dataclass
class QuantizationResult:
    """What :func:`~brevitas_ldm.workflow.quantize_pipeline` did and what it cost."""

    pipeline: Any
    recipe: Recipe
    precisions: dict[str, Precision]
    plan: Plan | None = None                   # the plan given or chosen by the global analysis
    block_report: BlockReport | None = None    # the global analysis, when it ran
    layer_report: LayerReport | None = None    # the local analysis, when it ran
    smoothing: SmoothingResult = field(default_factory=SmoothingResult)
    gptq: GptqResult = field(default_factory=GptqResult)
    timing_s: dict[str, float] = field(default_factory=dict)
    #: Calls each phase reports it made (an analysis read from the cache made none).
    denoiser_calls: dict[str, int] = field(default_factory=dict)
    #: Calls counted while each phase ran (a hook on the denoiser's class), by the phase's plan-of-work name.
    counted_calls: dict[str, int] = field(default_factory=dict)
    #: ``[plan] target``: the latency table the plan was chosen with, and the deployed plan's predicted and
    #: measured latency in the target (:class:`~brevitas_ldm.job.latency.DeployedLatencyPhase`).
    latency_table: LatencyTable | None = None
    latency: dict[str, Any] = field(default_factory=dict)

    def plan_or_uniform(self, model: str | None) -> Plan:
        """The plan, or for a uniform recipe (no analysis plan) one saying so, so every folder has a plan.json in
        the same file format."""
        return self.plan or Plan(precisions={}, method="uniform", default=str(self.recipe.default_precision),
                                 model=model, recipe=self.recipe.name)

    def save(self, directory: str | Path, model: str | None = None, lora: Mapping[str, Any] | None = None,
             self_contained: bool = True) -> Path:
        """A quantized pipeline folder: an ordinary diffusers folder (``model_index.json``, every component) whose
        denoiser is stored as integer codes with the recipe, precisions, SmoothQuant layout and plan in its
        ``config.json`` ``quantization_config``; ``DiffusionPipeline.from_pretrained(directory)`` reloads it (after
        ``import brevitas_ldm``), as do :func:`brevitas_ldm.from_pretrained` and, onto an FP pipeline,
        :func:`load_quantized`. The other components are hard-linked (or copied) from ``model`` or where the
        pipeline was loaded from. ``self_contained=False`` writes the denoiser only and references that base
        instead (for very large pipelines). ``lora``: the LoRA fused into the base
        (:class:`~brevitas_ldm.denoiser.lora.FusedLora` as a dict), recorded for commands that load the base."""
        model = model or pipeline_source(self.pipeline)
        return save_checkpoint(get_denoiser(self.pipeline), self.recipe, Path(directory), model=model,
                               smoothing_alphas=self.smoothing.alphas, plan=self.plan_or_uniform(model),
                               denoiser_component=denoiser_component(self.pipeline), lora=lora,
                               pipe=self.pipeline, self_contained=self_contained)
