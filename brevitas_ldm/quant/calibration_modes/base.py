"""What a calibration mode is: which denoiser calls feed the activation statistics, what that costs, and how the
report names it.

A mode builds its calibration context manager (Brevitas' ``calibration_mode`` underneath, see
:mod:`brevitas_ldm.quant.calibration`), says how many denoiser calls calibrating ``num_samples`` samples makes (the
plan of work prices them, and the job counts them against the price), and adds its checks to the recipe's.
Subclass it in a module of your own, then ``CALIBRATION_MODES.register(MyMode())``: recipes, the command line and
the report take the new name. Keep torch imports inside the methods, so recipes validate without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brevitas_ldm.errors import RecipeError

if TYPE_CHECKING:
    from brevitas_ldm.recipe import Calibration, Recipe


class CalibrationMode:
    """Base class of a registered calibration mode (see the module docstring)."""

    #: The ``[calibration] mode`` value.
    name: str = ""
    #: Whether ``[calibration] timestep_layers = "every_step"`` means anything for this mode (single-step only).
    sweeps_timestep_layers: bool = False
    #: What the report says after the mode's name (empty: nothing).
    report_note: str = ""

    def validate(self, calibration: "Calibration") -> None:
        """Refuse ``[calibration]`` settings this mode cannot honour, naming the key."""
        if calibration.timestep_layers == "every_step" and not self.sweeps_timestep_layers:
            raise RecipeError(f"calibration.timestep_layers = \"every_step\" needs calibration.mode = "
                              f"\"single_step\" (mode {self.name!r} already chooses the steps every layer sees): "
                              f"set calibration.timestep_layers = \"calibration_steps\"")

    def context(self, denoiser: Any, recipe: "Recipe", num_inference_steps: int, max_noise: int | None,
                bias_correction: bool):
        """The calibration context manager for ``denoiser`` (a ``_StepCalibration``: it counts its calls)."""
        raise NotImplementedError(f"calibration mode {self.name!r} does not build a context")

    def calls(self, recipe: "Recipe", num_samples: int, spec: Any) -> int:
        """Denoiser calls calibrating ``num_samples`` samples drawn with ``spec`` makes, sweeps excluded (every
        step of every batch by default)."""
        from brevitas_ldm.denoiser.sampling import sampling_calls

        return sampling_calls(num_samples, spec)

    def sweep_calls(self, recipe: "Recipe", spec: Any) -> int:
        """Extra one-row calls for the timestep-only layers (none by default)."""
        return 0
