"""The quantize job as one list of phase objects.

Each phase (:class:`~brevitas_ldm.job.phase.JobPhase`) says whether the recipe enables it, what it will cost
(its denoiser calls, priced by the object that makes them) and how it runs. :func:`~brevitas_ldm.workflow.
quantize_pipeline` runs :data:`QUANTIZE_PHASES`, the commands' plan of work prices the same list
(:func:`~brevitas_ldm.job.run.price_phases`), and each phase's executed calls are counted as it runs
(``QuantizationResult.counted_calls``), so the price and the work cannot drift apart unseen.
"""

from brevitas_ldm.job.calibration import CalibrationPhase
from brevitas_ldm.job.evaluation import FpEvaluationPhase, QuantizedEvaluationPhase
from brevitas_ldm.job.global_analysis import GlobalAnalysisPhase
from brevitas_ldm.job.gptq import GptqPhase
from brevitas_ldm.job.latency import DeployedLatencyPhase, LatencyTablePhase
from brevitas_ldm.job.local_analysis import LocalAnalysisPhase
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.plan import PlanPhase
from brevitas_ldm.job.quantization import QuantizationPhase
from brevitas_ldm.job.result import PlanLike, QuantizationResult
from brevitas_ldm.job.run import price_phases, run_phases
from brevitas_ldm.job.smoothing import SmoothingPhase
from brevitas_ldm.job.state import JobState

#: What :func:`~brevitas_ldm.workflow.quantize_pipeline` runs, in order.
QUANTIZE_PHASES: tuple[JobPhase, ...] = (LatencyTablePhase(), GlobalAnalysisPhase(), PlanPhase(), LocalAnalysisPhase(),
                                         SmoothingPhase(), QuantizationPhase(), GptqPhase(), CalibrationPhase(),
                                         DeployedLatencyPhase())
#: What ``brevitas-ldm quantize`` runs: the FP reference, the quantize job, the quantized evaluation.
EVALUATED_PHASES: tuple[JobPhase, ...] = (FpEvaluationPhase(), *QUANTIZE_PHASES, QuantizedEvaluationPhase())
#: What ``brevitas-ldm analyze`` runs (the local analysis only with ``--local``; the latency table with
#: ``[plan] target``).
ANALYSIS_PHASES: tuple[JobPhase, ...] = (LatencyTablePhase(), GlobalAnalysisPhase(always=True), PlanPhase(),
                                         LocalAnalysisPhase())

__all__ = ["ANALYSIS_PHASES", "EVALUATED_PHASES", "QUANTIZE_PHASES", "CalibrationPhase", "DeployedLatencyPhase",
           "FpEvaluationPhase", "GlobalAnalysisPhase", "GptqPhase", "JobPhase", "JobState", "LatencyTablePhase",
           "LocalAnalysisPhase", "PlanLike", "PlanPhase", "QuantizationPhase", "QuantizationResult",
           "QuantizedEvaluationPhase", "SmoothingPhase", "price_phases", "run_phases"]
