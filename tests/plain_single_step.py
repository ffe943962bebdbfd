"""The quickstart recipe's machinery at a test's own sampling steps.

Tests that count denoiser calls or compare runs step by step need the global analysis to sample the steps the test
asks for (not the recipe's 6), and single-step calibration to make exactly one call per batch (without the one-row
sweep of the timestep-only layers, which tests/test_calibration.py and tests/test_families.py cover).
"""

from __future__ import annotations

import dataclasses

from brevitas_ldm.recipe import Recipe, get_recipe


def plain_single_step(name: str = "sqnr-hybrid-w8a8") -> Recipe:
    recipe = get_recipe(name)
    return recipe.replace(analysis=dataclasses.replace(recipe.analysis, steps=0),
                          calibration=dataclasses.replace(recipe.calibration, timestep_layers="calibration_steps"))
