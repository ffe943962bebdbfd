"""Signal-to-quantization-noise ratio, the one metric every decision in brevitas-ldm is driven by.

SQNR(x, x_q) = 10 log10(||x||^2 / ||x - x_q||^2) dB. It is cheap, needs no labels and is additive in noise power,
which is what lets the global analysis predict a configuration's quality from per-block measurements.
:class:`SQNRMeter` accumulates per-sample signal and noise power sums batch by batch, so hooks can measure
whole sampling trajectories without storing a single tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from brevitas_ldm.errors import BrevitasLDMError


def _check_pair(reference: torch.Tensor, test: torch.Tensor) -> None:
    if reference.shape != test.shape:
        raise BrevitasLDMError(f"SQNR needs tensors of the same shape, got {tuple(reference.shape)} and "
                               f"{tuple(test.shape)}: compare the FP and quantized outputs of the same call")
    if not torch.isfinite(reference).all() or not torch.isfinite(test).all():
        raise BrevitasLDMError("SQNR input contains NaN or Inf: the model produced non-finite values; check the "
                               "calibration data and the quantization ranges")


def power_sums(reference: torch.Tensor, test: torch.Tensor,
               sample_dim: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (or, with ``sample_dim=None``, total) signal and noise power sums in float64."""
    _check_pair(reference, test)
    ref = reference.detach().double()
    noise = ref - test.detach().double()
    if sample_dim is None:
        return ref.pow(2).sum().reshape(1), noise.pow(2).sum().reshape(1)
    ref = ref.movedim(sample_dim, 0).reshape(ref.shape[sample_dim], -1)
    noise = noise.movedim(sample_dim, 0).reshape(noise.shape[sample_dim], -1)
    return ref.pow(2).sum(1), noise.pow(2).sum(1)


def ratio_to_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise); +inf for zero noise; a clear error for a zero signal."""
    if signal <= 0.0:
        raise BrevitasLDMError("SQNR is undefined for a zero reference signal: the reference tensor is all zeros, "
                               "measure a tensor that carries signal")
    if noise <= 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference: torch.Tensor, test: torch.Tensor, per_sample: bool = False,
            sample_dim: int = 0) -> float | torch.Tensor:
    """SQNR of ``test`` against ``reference`` in dB.

    With ``per_sample=False`` (default) the signal and noise powers are pooled over the whole tensor. With
    ``per_sample=True`` a float64 tensor with one SQNR per entry along ``sample_dim`` is returned.
    """
    signal, noise = power_sums(reference, test, sample_dim if per_sample else None)
    if not per_sample:
        return ratio_to_db(signal.item(), noise.item())
    return torch.tensor([ratio_to_db(s, n) for s, n in zip(signal.tolist(), noise.tolist())], dtype=torch.float64)


def db_to_noise_ratio(db: float) -> float:
    """Linear noise-to-signal ratio of an SQNR in dB (the quantity that adds across independent noise sources)."""
    return 0.0 if math.isinf(db) and db > 0 else 10.0 ** (-db / 10.0)


def noise_ratio_to_db(ratio: float) -> float:
    return math.inf if ratio <= 0.0 else -10.0 * math.log10(ratio)


@dataclass
class SQNRMeter:
    """Streaming SQNR: sums of signal and noise power, sample by sample; no tensor is ever kept.

    ``pooled_db`` divides total signal by total noise power (dominated by high-energy samples); ``mean_db`` is the
    mean over samples of their own SQNR in dB (every sample counts the same). Meters merge, so per-worker or
    per-step meters can be combined.
    """

    signal: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)

    def update(self, reference: torch.Tensor, test: torch.Tensor, sample_dim: int = 0) -> "SQNRMeter":
        signal, noise = power_sums(reference, test, sample_dim)
        self.signal.extend(signal.tolist())
        self.noise.extend(noise.tolist())
        return self

    def merge(self, other: "SQNRMeter") -> "SQNRMeter":
        return SQNRMeter(self.signal + other.signal, self.noise + other.noise)

    @property
    def count(self) -> int:
        return len(self.signal)

    def _require_samples(self) -> None:
        if not self.signal:
            raise BrevitasLDMError("the SQNR meter has seen no samples: update() it with reference/test pairs first")

    @property
    def pooled_db(self) -> float:
        self._require_samples()
        return ratio_to_db(math.fsum(self.signal), math.fsum(self.noise))

    @property
    def mean_db(self) -> float:
        self._require_samples()
        values = [ratio_to_db(s, n) for s, n in zip(self.signal, self.noise)]
        return math.fsum(values) / len(values)

    @property
    def noise_ratio(self) -> float:
        """Pooled noise-to-signal power ratio (linear)."""
        self._require_samples()
        total = math.fsum(self.signal)
        if total <= 0:
            ratio_to_db(total, 0.0)
        return math.fsum(self.noise) / total
