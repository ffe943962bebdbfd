"""The noise-additivity model: a configuration's output SQNR and average bits predicted from a block report.

Let ``n_b(p)`` be the output noise-to-signal power ratio measured with block ``b`` alone quantized at precision
``p`` (``10^(-SQNR_dB/10)``). A configuration's output noise ratio is predicted as

    N(config) = sum_b n_b(p_b),        SQNR(config) = -10 log10 N(config).

Why it holds: quantization noise is small next to the signal, so the sampler's output responds to it almost
linearly; the noise each block injects is a (nearly) zero-mean error from rounding its own weights and inputs, so
the contributions of different blocks are close to uncorrelated, and the powers of uncorrelated errors add. The
model breaks when noise is large (non-linear response; it becomes optimistic) or when blocks' errors correlate.
The benchmark (``docs/global-analysis.md``) and the tests report its error against measurement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.precision import FLOAT, Precision, mean_bits, parse_precision
from brevitas_ldm.sqnr import noise_ratio_to_db

PrecisionsLike = Mapping[str, str | Precision]


def _full_assignment(report: BlockReport, precisions: PrecisionsLike,
                     default: str | Precision | None = None) -> dict[str, Precision]:
    """Every block's precision: listed ones as given, the rest at ``default`` (the report's base precision)."""
    report.check_block_names(precisions)
    base = parse_precision(default or report.default_precision, "default precision")
    return {name: parse_precision(precisions.get(name, base), f"precision of {name!r}") for name in report.block_names}


def predict_noise_ratio(report: BlockReport, precisions: PrecisionsLike, default: str | None = None) -> float:
    """Predicted output noise-to-signal ratio: the sum of the blocks' isolated noise ratios."""
    assignment = _full_assignment(report, precisions, default)
    return math.fsum(report.block(name).noise_ratio(p) for name, p in assignment.items())


def predict_sqnr_db(report: BlockReport, precisions: PrecisionsLike, default: str | None = None) -> float:
    """Predicted final-latent SQNR (dB) of a per-block configuration (unlisted blocks at the base precision)."""
    return noise_ratio_to_db(predict_noise_ratio(report, precisions, default))


def average_bits(report: BlockReport, precisions: PrecisionsLike, default: str | None = None) -> tuple[float, float]:
    """(average weight bits weighted by parameter count, average activation bits weighted by input elements).

    Float costs 32 bits; layers the recipe skips count as float.
    """
    assignment = _full_assignment(report, precisions, default)
    weights = [(report.block(n).param_count, p) for n, p in assignment.items()]
    acts = [(report.block(n).act_elements, p) for n, p in assignment.items()]
    return mean_bits(weights + [(report.skipped_param_count, FLOAT)], acts + [(report.skipped_act_elements, FLOAT)])
