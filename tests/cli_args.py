"""Command-line arguments the job tests share: a quantize run small enough for the test suite."""

#: 4 evaluation samples in one batch, 3 steps, 2 calibration prompts.
FAST = ["--num-samples", "4", "--steps", "3", "--batch-size", "4", "--calibration-prompts", "2"]
