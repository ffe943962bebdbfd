"""What a latency target is: a runtime on this CPU that the planner can spend a latency budget on.

A target names the export format it deploys (``brevitas-ldm export --format``), the float precision its float
layers run in, and, for every precision a plan may give a layer, the *kernel* the runtime runs it with. Precisions
that share a kernel (w8a8, w4a8 and w4a6 all run as one u8 x i8 convolution in OpenVINO: a 4-bit weight is an int8
weight with 16 levels) share one latency measurement, so the cost table measures each layer once per kernel, not
once per precision; a precision the target cannot deploy at all (FP8 for the integer runtimes) is refused in
``plan.menu`` up front. The measurement itself (timing each layer in the runtime) lives on the export floor
(:mod:`brevitas_ldm.export.latency_costs`), which reads the target's ``export_format``.

Subclass :class:`LatencyTarget` in a module of your own and ``LATENCY_TARGETS.register(MyTarget())``: recipes
and the planner take the new name. Keep the module free of heavy imports: recipes validate against it.
"""

from __future__ import annotations

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.precision import Precision

#: The kernels a layer can run with: integer weights and integer activations of at most 8 bits (one integer
#: matmul/convolution), integer weights with float activations (the runtime decompresses the weights to float:
#: weight-only and 16-bit-activation layers), and float.
INTEGER_KERNEL, WEIGHT_COMPRESSED, FLOAT_KERNEL = "integer", "weight-compressed", "float"


class LatencyTarget:
    """Base class of a registered latency target (see the module docstring)."""

    #: The ``[plan] target`` value.
    name: str = ""
    #: The registered export format (:data:`~brevitas_ldm.registry.EXPORT_FORMATS`) the target deploys.
    export_format: str = ""
    #: The runtime the format runs in (what the cost table's version string names).
    runtime: str = ""
    #: The precision the runtime runs float layers in while the table is measured and the plan is timed: the
    #: precision the analysis measured (f32), so the predicted SQNR is the deployed one.
    inference_precision: str = "f32"
    #: Activation bits the runtime's integer kernels take.
    max_integer_act_bits: int = 8

    def kernel(self, precision: Precision) -> str:
        """The kernel this target runs a layer at ``precision`` with (:data:`INTEGER_KERNEL`, ...)."""
        if precision.is_float:
            return FLOAT_KERNEL
        if precision.is_fp8:
            raise RecipeError(f"{precision} is FP8, which {self.name} does not run: remove it from plan.menu or "
                              f"drop plan.target")
        if precision.act_bits is not None and precision.act_bits <= self.max_integer_act_bits:
            return INTEGER_KERNEL
        return WEIGHT_COMPRESSED

    def check_menu(self, menu) -> None:
        """Refuse, naming ``plan.menu``, a precision this target cannot deploy."""
        for index, precision in enumerate(menu):
            try:
                self.kernel(precision)
            except RecipeError as error:
                raise RecipeError(f"plan.menu[{index}] = \"{precision}\": {error}") from None

    def representative(self, menu, kernel: str) -> Precision:
        """The menu precision a kernel is measured at: the one with the most bits (the largest data it moves)."""
        candidates = [p for p in menu if self.kernel(p) == kernel]
        if not candidates:
            raise RecipeError(f"no plan.menu precision runs as a {kernel} kernel on {self.name}")
        return max(candidates, key=lambda p: (p.effective_weight_bits(), p.effective_act_bits()))
