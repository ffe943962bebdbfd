"""Quantization-aware fine-tuning of a quantized denoiser (``brevitas-ldm qat``), distilled from the float one."""
