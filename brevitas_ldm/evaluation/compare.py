"""Image PSNR, the one comparison metric SQNR (``brevitas_ldm.sqnr``) does not cover: decoded images in [0, 1]."""

from __future__ import annotations

import math

import torch


def psnr_db(reference: torch.Tensor, test: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR of images in [0, peak]; +inf when identical."""
    mse = float((reference.double() - test.double()).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)
