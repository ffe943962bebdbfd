"""Errors a user can act on.

Every error the product raises for bad input is a ``BrevitasLDMError`` whose message names the problem and the
fix in one line; the command line prints that line and exits with code 2 instead of showing a traceback.
"""


class BrevitasLDMError(Exception):
    """Bad input or an impossible request; the message says what to change."""


class RecipeError(BrevitasLDMError, ValueError):
    """A recipe that does not exist, does not parse, or asks for impossible values."""


class ModelError(BrevitasLDMError, ValueError):
    """A model path or denoiser the product cannot use."""


class CalibrationError(BrevitasLDMError, ValueError):
    """Calibration data that cannot produce quantization ranges (NaN/Inf, empty)."""
