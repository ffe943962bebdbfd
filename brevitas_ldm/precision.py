"""Precision of one layer: weight bits, activation bits, or float.

A precision is written as a short string everywhere a user sees one (recipes, plan.json): ``"float"``,
``"w8a8"``, ``"w4a8"``, ``"w8a16"``, or weight-only ``"w8"``; ``"e4m3"`` / ``"e5m2"`` are 8-bit weights and
activations in that OCP fp8 format. Keeping it a string makes a plan file easy to read and to edit by hand.

The integer forms mean "in the recipe's own ``[weights]``/``[activations]`` formats" (integers for every built-in
recipe but ``fp8-e4m3``); an fp8 name puts both tensors of a layer in that format whatever the recipe's base, so
one plan menu can mix fp8, integer and float layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from brevitas_ldm.errors import RecipeError

MIN_BITS, MAX_BITS = 2, 16
FLOAT_BITS = 32
_PATTERN = re.compile(r"^w(\d+)(?:a(\d+))?$")
#: The fp8 formats a precision can name (weights and activations both 8-bit in that format).
FP8_FORMATS = ("e4m3", "e5m2")
_ACCEPTED = "write \"float\", \"w8a8\", \"w4a8\", \"w8a16\", \"w8\" or \"e4m3\""


@dataclass(frozen=True, order=True)
class Precision:
    """``weight_bits``/``act_bits`` of None mean "left in float" for that tensor. ``format``: ``"int"`` (the
    recipe's own formats) or an fp8 format of both tensors (``"e4m3"``, ``"e5m2"``; 8 bits each)."""

    weight_bits: int | None
    act_bits: int | None
    format: str = "int"

    @property
    def is_fp8(self) -> bool:
        return self.format in FP8_FORMATS

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None and self.act_bits is None

    @property
    def name(self) -> str:
        if self.is_float:
            return "float"
        if self.is_fp8:
            return self.format
        if self.weight_bits is None:
            raise RecipeError("activation-only precision is not supported; use wNaM or wN")
        return f"w{self.weight_bits}" + (f"a{self.act_bits}" if self.act_bits is not None else "")

    def effective_weight_bits(self) -> int:
        """Bits a weight costs (32 when left in float), for average-bit budgets."""
        return FLOAT_BITS if self.weight_bits is None else self.weight_bits

    def effective_act_bits(self) -> int:
        return FLOAT_BITS if self.act_bits is None else self.act_bits

    def __str__(self) -> str:
        return self.name


FLOAT = Precision(None, None)


def check_bits(value: object, key: str) -> int:
    """A bit width inside 2..16, or a RecipeError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise RecipeError(f"{key} = {value!r} is out of range: bit widths must be integers from {MIN_BITS} to "
                          f"{MAX_BITS} (use \"float\" to keep a layer unquantized)")
    return value


def parse_precision(text: str | Precision, key: str = "precision") -> Precision:
    """Parse ``"float"``, ``"wNaM"`` or ``"wN"``; errors name the key and the accepted forms."""
    if isinstance(text, Precision):
        return text
    if not isinstance(text, str):
        raise RecipeError(f"{key} = {text!r} is not a precision: {_ACCEPTED}")
    value = text.strip().lower()
    if value in ("float", "fp", "fp32"):
        return FLOAT
    if value in FP8_FORMATS:
        return Precision(8, 8, value)
    match = _PATTERN.match(value)
    if not match:
        raise RecipeError(f"{key} = {text!r} is not a precision: {_ACCEPTED}")
    bits = [int(g) for g in match.groups() if g is not None]
    if any(not MIN_BITS <= b <= MAX_BITS for b in bits):
        raise RecipeError(f"{key} = {text!r} is out of range: bit widths must be from {MIN_BITS} to {MAX_BITS}")
    return Precision(bits[0], bits[1] if len(bits) > 1 else None)


def menu_of(items: Iterable[str | Precision], key: str = "menu") -> list[Precision]:
    """``items`` parsed, each precision once, in first-seen order: the one way a menu is formed (the analysis
    measures it, the planners choose from it)."""
    menu: list[Precision] = []
    for item in items:
        precision = parse_precision(item, key)
        if precision not in menu:
            menu.append(precision)
    return menu


def mean_bits(weight_counts: Iterable[tuple[float, Precision]],
              act_counts: Iterable[tuple[float, Precision]]) -> tuple[float, float]:
    """(average weight bits, average activation bits): each precision's bits weighted by its count (parameters
    for weights, input elements for activations); float costs :data:`FLOAT_BITS`. The one average the planner's
    prediction and the measured footprint both use, so a plan's budget and the run's report agree."""
    def mean(counts: Iterable[tuple[float, Precision]], bits) -> float:
        total = weighted = 0
        for count, precision in counts:
            total += count
            weighted += count * bits(precision)
        return weighted / total if total else 0.0

    return (mean(weight_counts, Precision.effective_weight_bits), mean(act_counts, Precision.effective_act_bits))
