"""The evaluation around a quantize job (``brevitas-ldm quantize``): the FP reference on the evaluation set before
the job, the quantized pipeline on the same prompts and seeds after it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from brevitas_ldm.cost import Phase, rank_sampling_calls
from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.evaluation.comparison import (
    Reference,
    compare_quantized,
    fp_reference,
)
from brevitas_ldm.evaluation.prompts import EvaluationSet
from brevitas_ldm.evaluation.run import Generation
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState


@dataclass
class Evaluation:
    """What the evaluation phases take (``eval_set``, ``spec``, the embedded model's class ``evaluator`` or None)
    and what they measure."""

    eval_set: EvaluationSet
    spec: SamplingSpec
    evaluator: Any
    reference: Reference | None = None
    quantized: dict[str, Any] = field(default_factory=dict)
    generation: Generation | None = None
    per_step_sqnr_db: list[float] = field(default_factory=list)
    timing_s: dict[str, float] = field(default_factory=dict)


class _EvaluationPhase(JobPhase):
    """Sampling the evaluation set once (this rank's share of its batches), FP or fake-quantized."""

    quantized = False

    def enabled(self, state: JobState) -> bool:
        return state.evaluation is not None

    def cost(self, state: JobState) -> Phase:
        evaluation = state.evaluation
        return Phase(self.name, rank_sampling_calls(len(evaluation.eval_set), evaluation.spec), self.quantized,
                     evaluation.spec.batch_size)


class FpEvaluationPhase(_EvaluationPhase):
    name = "FP evaluation"
    key = "fp_evaluation"

    def run(self, state: JobState) -> None:
        evaluation = state.evaluation
        start = time.perf_counter()
        evaluation.reference = fp_reference(state.pipe, evaluation.eval_set, evaluation.spec, evaluation.evaluator)
        evaluation.timing_s[self.key] = time.perf_counter() - start


class QuantizedEvaluationPhase(_EvaluationPhase):
    name = "quantized evaluation"
    key = "evaluation"
    quantized = True

    def run(self, state: JobState) -> None:
        evaluation = state.evaluation
        start = time.perf_counter()
        evaluation.quantized, evaluation.generation, evaluation.per_step_sqnr_db = compare_quantized(
            state.pipe, evaluation.eval_set, evaluation.spec, evaluation.reference, state.result.precisions,
            evaluation.evaluator)
        evaluation.timing_s[self.key] = time.perf_counter() - start
